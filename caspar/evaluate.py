"""How good a model is: test metrics, the two baselines every run is compared with, and plots."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.ensemble import HistGradientBoostingRegressor  # noqa: E402
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score  # noqa: E402


def metrics(y_true: np.ndarray, y_pred: np.ndarray, prefix: str) -> dict[str, float]:
    return {f"{prefix}_mse": float(mean_squared_error(y_true, y_pred)),
            f"{prefix}_mae": float(mean_absolute_error(y_true, y_pred)),
            f"{prefix}_r2": float(r2_score(y_true, y_pred))}


def baselines(x_train, y_train, x_test, y_test, seed: int = 0) -> dict[str, float]:
    """Always predicting the train mean, and gradient-boosted trees on the same features."""
    mean = np.full(len(y_test), float(np.mean(y_train)))
    trees = HistGradientBoostingRegressor(random_state=seed).fit(x_train, y_train)
    return {**metrics(y_test, mean, "baseline_mean_test"), **metrics(y_test, trees.predict(x_test), "baseline_gbdt_test")}


def predict(model, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    # predict_on_batch reuses the compiled function without predict()'s per-call set-up (~50 ms),
    # which dominated the permutation importance's dozens of calls
    batches = [model.predict_on_batch(x[start:start + batch_size]) for start in range(0, len(x), batch_size)]
    return np.concatenate(batches).reshape(-1) if batches else np.zeros(0, np.float32)


def group_importance(model, x_val: np.ndarray, y_val: np.ndarray, groups: list[tuple[str, int]],
                     seed: int = 0) -> dict[str, float]:
    """Permutation importance per feature group (one registered feature or block): the rise in
    validation MSE when the group's columns are shuffled together across rows."""
    rng = np.random.default_rng(seed)
    base = float(np.mean((predict(model, x_val) - y_val) ** 2))
    order = rng.permutation(len(x_val))
    importance, start = {}, 0
    for name, width in groups:
        shuffled = x_val.copy()
        shuffled[:, start:start + width] = x_val[order, start:start + width]
        importance[name] = float(np.mean((predict(model, shuffled) - y_val) ** 2)) - base
        start += width
    return importance


def plot_learning_curve(history: dict, path: str) -> None:
    figure, axis = plt.subplots(figsize=(6, 4))
    for key in ("loss", "val_loss"):
        if key in history:
            axis.plot(np.arange(1, len(history[key]) + 1), history[key], label=key)
    axis.set(xlabel="epoch", ylabel="MSE", title="Learning curve", yscale="log")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_predictions(y_true: np.ndarray, y_pred: np.ndarray, path: str) -> None:
    figure, axis = plt.subplots(figsize=(5, 5))
    axis.scatter(y_true, y_pred, s=4, alpha=0.4)
    axis.plot([0, 1], [0, 1], color="grey", linewidth=1)
    axis.set(xlabel="actual reward", ylabel="predicted reward", title="Test split: predicted vs actual",
             xlim=(0, 1), ylim=(0, 1))
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_importance(importance: dict[str, float], path: str, top: int = 25) -> None:
    ranked = sorted(importance.items(), key=lambda item: item[1], reverse=True)[:top]
    figure, axis = plt.subplots(figsize=(7, 0.3 * len(ranked) + 1.2))
    axis.barh([name for name, _ in ranked][::-1], [value for _, value in ranked][::-1])
    axis.set(xlabel="validation MSE increase when shuffled", title="Permutation importance per feature group")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)

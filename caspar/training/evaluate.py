"""How good a model is: test metrics, the baselines every run is compared with on the same rows,
the verdict that decides whether it is registered, and plots."""
from __future__ import annotations

from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score  # noqa: E402


def metrics(y_true: np.ndarray, y_pred: np.ndarray, prefix: str) -> dict[str, float]:
    """MSE, MAE and R² of predictions.

    Args:
        y_true: [rows] rewards.
        y_pred: [rows] predictions.
        prefix: the metrics' names' start ("test": test_mse, test_mae, test_r2).

    Returns:
        {prefix_mse, prefix_mae, prefix_r2}.
    """
    return {f"{prefix}_mse": float(mean_squared_error(y_true, y_pred)),
            f"{prefix}_mae": float(mean_absolute_error(y_true, y_pred)),
            f"{prefix}_r2": float(r2_score(y_true, y_pred))}


# The outside baselines: scikit-learn's histogram GBDT and LightGBM with their defaults (100
# iterations, learning rate 0.1, 31 leaves of at least 20 rows, no L2, every feature and row), as
# tree recipes: the job fits them with the model's trees, as Ray tasks on the same rows (early
# stopping off, as in every recipe: above 10,000 rows scikit-learn would hold out random rows, which
# leaks within games; LightGBM deterministic and row-wise, as every recipe).
GBDT_BASELINE, LIGHTGBM_BASELINE = "GBDT baseline", "LightGBM baseline"


def baseline_recipes(seed: int = 0) -> list:
    """The outside baselines as tree recipes (caspar.model.trees.Recipe), named GBDT_BASELINE and
    LIGHTGBM_BASELINE.

    Args:
        seed: their seed.

    Returns:
        [scikit-learn's histogram GBDT, LightGBM], each with its library's defaults.
    """
    from caspar.model.trees import Recipe

    return [Recipe("sklearn", 100, 0.1, 31, 20, 0.0, 1.0, 1.0, seed, label=GBDT_BASELINE),
            Recipe("lightgbm", 100, 0.1, 31, 20, 0.0, 1.0, 1.0, seed, label=LIGHTGBM_BASELINE)]


def baseline_parameters() -> dict[str, str]:
    """Returns the baselines' recipes and library versions, for a run's MLflow parameters."""
    import lightgbm
    import sklearn

    return {"baseline_gbdt": f"HistGradientBoostingRegressor() with its defaults (early_stopping=False), "
                             f"scikit-learn {sklearn.__version__}",
            "baseline_lightgbm": f"LGBMRegressor() with its defaults (deterministic, row-wise), "
                                 f"LightGBM {lightgbm.__version__}"}


def baselines(x_train, y_train, x_test, y_test, seed: int = 0, fitted: dict | None = None) -> dict[str, float]:
    """Always predicting the train mean, and GBDT and LightGBM with their defaults, on the same features.

    Args:
        x_train: [rows, features] the rows the baselines are fitted on (normalised as the model's).
        y_train: [rows] their rewards.
        x_test: [test rows, features].
        y_test: [test rows] rewards.
        seed: the GBDTs' seed.
        fitted: {name: model} of baseline_recipes(seed) already fitted on these rows (the job's
            tree fits did, as Ray tasks); None or empty: fitted here, one after another, on one thread.

    Returns:
        Their test metrics: baseline_mean_test_*, baseline_gbdt_test_*, baseline_lightgbm_test_*.
    """
    from caspar.model.trees import fit
    from caspar.runtime import fit_threads

    if not fitted:
        fitted = {recipe.name: fit(recipe, x_train, y_train, threads=1) for recipe in baseline_recipes(seed)}
    mean = np.full(len(y_test), float(np.mean(y_train)))
    with fit_threads(1):  # scikit-learn predicts tree by tree, each a parallel region of every CPU otherwise
        gbdt, light = fitted[GBDT_BASELINE].predict(x_test), fitted[LIGHTGBM_BASELINE].predict(x_test)
    return {**metrics(y_test, mean, "baseline_mean_test"), **metrics(y_test, gbdt, "baseline_gbdt_test"),
            **metrics(y_test, light, "baseline_lightgbm_test")}


def own_trees(model):
    """The trees of a model.

    Args:
        model: a Keras model.

    Returns:
        Its TreeEnsemble layer, or None for a network without trees.
    """
    from caspar.model.layers import TreeEnsemble

    return next((layer for layer in model.layers if isinstance(layer, TreeEnsemble)), None)


def scorecard(model, normalizer, x_fit, y_fit, x_test, y_test, seed: int = 0, members=None,
              fitted_baselines: dict | None = None) -> dict[str, float]:
    """Test metrics of the model and of every baseline fitted on the model's own rows.

    Args:
        model: the Keras model (normalised inputs).
        normalizer: its Normalizer.
        x_fit: [rows, features] raw, the rows the model's trees were fitted on.
        y_fit: [rows] their rewards.
        x_test: [test rows, features] raw.
        y_test: [test rows] rewards.
        seed: the baselines' seed.
        members: {name: fitted tree model} scored alone too (None: none).
        fitted_baselines: the baselines already fitted on x_fit (see baselines), or None.

    Returns:
        test_* of the model; baseline_* of the train mean, GBDT and LightGBM with defaults, the
        model's own trees alone (clipped to [0, 1] as the model's output is) and each member
        (e.g. baseline_trees_lightgbm_test_r2).
    """
    n_fit, n_test = normalizer.transform(x_fit), normalizer.transform(x_test)
    results = {**metrics(y_test, predict(model, n_test), "test"), **baselines(n_fit, y_fit, n_test, y_test, seed,
                                                                             fitted_baselines)}
    trees = own_trees(model)
    if trees is not None:
        alone = np.clip(np.asarray(trees(n_test)).reshape(-1), 0.0, 1.0)
        results |= metrics(y_test, alone, "baseline_trees_test")
    for name, member in (members or {}).items():
        results |= metrics(y_test, np.clip(member.predict(n_test), 0.0, 1.0), f"baseline_trees_{name}_test")
    return results


REFUSED, WORSE_THAN_TREES, GOOD = "refused", "worse-than-its-trees", "good"
SAME_R2 = 5e-5  # R² this close to a baseline's is the same figure (the trees alone ship: their own R²)


@dataclass
class Verdict:
    """What the scores say of a model: refused (not registered, not exported), worse than its own
    trees (registered with a warning), or good; and why, in words."""
    kind: str  # REFUSED: not registered, not exported; WORSE_THAN_TREES: registered with a warning
    message: str = ""  # the warning or the refusal, if any
    reason: str = ""  # what was measured: the baselines beaten and not beaten (the tag caspar.verdict_reason)


BASELINE_NAMES = {"baseline_trees_test_r2": "its own trees", "baseline_trees_sklearn_test_r2": "its sklearn trees alone",
                  "baseline_trees_lightgbm_test_r2": "its LightGBM trees alone", "baseline_gbdt_test_r2": "GBDT (defaults)",
                  "baseline_lightgbm_test_r2": "LightGBM (defaults)", "baseline_mean_test_r2": "the train mean"}


def verdict(results: dict[str, float]) -> Verdict:
    """Judges a model by its test R² against its baselines.

    Args:
        results: the scorecard's metrics.

    Returns:
        REFUSED unless it beats always predicting the train mean; WORSE_THAN_TREES below its own
        trees alone; else GOOD; with the baselines it beats and does not beat.
    """
    r2, mean = results["test_r2"], results["baseline_mean_test_r2"]
    compared = [(name, results[key]) for key, name in BASELINE_NAMES.items() if key in results]
    beaten = [f"{name} {value:.4f}" for name, value in compared if r2 > value + SAME_R2]
    same = [f"{name} {value:.4f}" for name, value in compared if abs(r2 - value) <= SAME_R2]  # e.g. the trees that ship alone
    not_beaten = [f"{name} {value:.4f}" for name, value in compared if r2 < value - SAME_R2]
    reason = (f"test R² {r2:.4f}; beats " + (", ".join(beaten) or "no baseline")
              + ("; equals " + ", ".join(same) if same else "")
              + ("; does not beat " + ", ".join(not_beaten) if not_beaten else ""))
    if not r2 > mean:
        return Verdict(REFUSED, f"not registered: test R² {r2:.4f} does not beat always predicting the train mean "
                                f"(R² {mean:.4f}); try a lower --learning-rate, or the defaults", reason)
    trees = results.get("baseline_trees_test_r2")
    if trees is not None and r2 < trees:
        return Verdict(WORSE_THAN_TREES, f"test R² {r2:.4f} is below the model's own trees alone ({trees:.4f}): the "
                                         "network's correction did not carry over to the test games", reason)
    return Verdict(GOOD, "", reason)


def in_words(verdict: Verdict) -> str:
    """The verdict's comparison as a sentence.

    Args:
        verdict: a Verdict.

    Returns:
        The baselines the model beats on the test games, and those it does not.
    """
    return (verdict.reason.replace("test R²", "on the test games, test R²", 1).replace("; beats ", ": better than ", 1)
            .replace("; equals ", "; the same as ", 1).replace("; does not beat ", "; not better than ", 1)
            + " (each fitted on the same rows)")


def summary_line(results: dict[str, float], fit_on: str = "train") -> str:
    """The model's test figures beside its baselines', all fitted on the same rows.

    Args:
        results: the scorecard's metrics.
        fit_on: the run's --fit-on ("all": the figures are of the same recipes fitted on train + validation).

    Returns:
        One line.
    """
    trees = f"own trees alone {results['baseline_trees_test_r2']:.4f}, " if "baseline_trees_test_r2" in results else ""
    light = f"LightGBM {results['baseline_lightgbm_test_r2']:.4f}, " if "baseline_lightgbm_test_r2" in results else ""
    how = " (trees fitted on every game; the figures are the same recipe's fitted on train + validation)" \
        if fit_on == "all" else ""
    return (f"test R² {results['test_r2']:.4f} (MSE {results['test_mse']:.5f}, MAE {results['test_mae']:.4f}); "
            f"baselines on the same rows: {trees}GBDT {results['baseline_gbdt_test_r2']:.4f}, {light}"
            f"train mean {results['baseline_mean_test_r2']:.4f}{how}")


def gain_by_game(y: np.ndarray, before: np.ndarray, after: np.ndarray, games: np.ndarray) -> dict:
    """How much `after` lowers the squared error of `before`, game by game. Choosing among many
    candidates on a few games favours a lucky one; a change counts only when the games agree it helps.

    Args:
        y: [rows] rewards.
        before: [rows] predictions without the change (e.g. the trees alone).
        after: [rows] predictions with it.
        games: [rows] the game of each row.

    Returns:
        {"mean": the mean of the games' differences, "standard_error": its standard error,
        "games": how many, "beyond_noise": whether the mean is more than twice its standard error}.
    """
    worse, better = (before - y) ** 2, (after - y) ** 2
    names = np.unique(games)
    gains = np.array([np.mean(worse[games == g] - better[games == g]) for g in names])
    error = float(np.std(gains, ddof=1) / np.sqrt(len(gains))) if len(gains) > 1 else float("inf")
    return {"mean": float(np.mean(gains)), "standard_error": error, "games": len(names),
            "beyond_noise": bool(np.mean(gains) > 2 * error)}


class WeightedTrees:
    """The trees alone as their own libraries compute them: clip(sum of weight x model.predict(x), 0, 1),
    what the compiled TreeEnsemble layer computes (a test holds them within 1e-5), in C++ instead of
    TensorFlow's graph: the permutation importance's many predictions in a fraction of the time.

    Args:
        weighted: (fitted tree model, weight) per member.
    """

    def __init__(self, weighted: list[tuple[object, float]]):
        self.weighted = weighted

    def predict_on_batch(self, x: np.ndarray) -> np.ndarray:
        """As a Keras model's predict_on_batch (caspar.training.evaluate.predict), on one thread:
        scikit-learn predicts tree by tree, each tree a parallel region over the rows; with a few
        hundred rows the threads gain nothing, and beside other busy programs every region waited
        for a thread the machine had descheduled (the permutation importance's 56 x 600 regions
        took minutes beside two CPU-bound processes).

        Args:
            x: [rows, features] normalised.

        Returns:
            [rows, 1] predictions.
        """
        from caspar.runtime import fit_threads

        with fit_threads(1):
            total = sum(weight * model.predict(x) for model, weight in self.weighted)
        return np.clip(total, 0.0, 1.0).reshape(-1, 1)


def predict(model, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """A model's predictions, a batch at a time.

    Args:
        model: a Keras model, or anything with predict_on_batch (WeightedTrees).
        x: [rows, features] normalised.
        batch_size: rows per call.

    Returns:
        [rows] predictions.
    """
    # predict_on_batch reuses the compiled function without predict()'s per-call set-up (~50 ms),
    # which dominated the permutation importance's dozens of calls
    batches = [model.predict_on_batch(x[start:start + batch_size]) for start in range(0, len(x), batch_size)]
    return np.concatenate(batches).reshape(-1) if batches else np.zeros(0, np.float32)


def group_importance(model, x_val: np.ndarray, y_val: np.ndarray, groups: list[tuple[str, int]],
                     seed: int = 0, progress=None) -> dict[str, float]:
    """Permutation importance per feature group (one registered feature or block): the rise in
    MSE when the group's columns are shuffled together across rows.

    Args:
        model: a Keras model, or anything with predict_on_batch.
        x_val: [rows, features] normalised.
        y_val: [rows] rewards.
        groups: (name, width) of each group, in column order.
        seed: the shuffle's seed.
        progress: called with the number of groups done after each (or None).

    Returns:
        {group name: the rise in MSE}.
    """
    rng = np.random.default_rng(seed)
    base = float(np.mean((predict(model, x_val) - y_val) ** 2))
    order = rng.permutation(len(x_val))
    importance, start = {}, 0
    for name, width in groups:
        shuffled = x_val.copy()
        shuffled[:, start:start + width] = x_val[order, start:start + width]
        importance[name] = float(np.mean((predict(model, shuffled) - y_val) ** 2)) - base
        start += width
        if progress:
            progress(len(importance))
    return importance


def plot_learning_curve(losses: dict[str, list[float]], path: str) -> None:
    """Draws the training and validation loss per epoch.

    Args:
        losses: a History's losses.
        path: the PNG to write.
    """
    figure, axis = plt.subplots(figsize=(6, 4))
    for key in ("loss", "val_loss"):
        if key in losses:
            axis.plot(np.arange(1, len(losses[key]) + 1), losses[key], label=key)
    axis.set(xlabel="epoch", ylabel="MSE", title="Learning curve", yscale="log")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_predictions(y_true: np.ndarray, y_pred: np.ndarray, path: str) -> None:
    """Draws predicted against actual rewards.

    Args:
        y_true: [rows] rewards.
        y_pred: [rows] predictions.
        path: the PNG to write.
    """
    figure, axis = plt.subplots(figsize=(5, 5))
    axis.scatter(y_true, y_pred, s=4, alpha=0.4)
    axis.plot([0, 1], [0, 1], color="grey", linewidth=1)
    axis.set(xlabel="actual reward", ylabel="predicted reward", title="Test split: predicted vs actual",
             xlim=(0, 1), ylim=(0, 1))
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_importance(importance: dict[str, float], path: str, top: int = 25) -> None:
    """Draws the largest permutation importances.

    Args:
        importance: {group: rise in MSE} (group_importance).
        path: the PNG to write.
        top: how many groups.
    """
    ranked = sorted(importance.items(), key=lambda item: item[1], reverse=True)[:top]
    figure, axis = plt.subplots(figsize=(7, 0.3 * len(ranked) + 1.2))
    axis.barh([name for name, _ in ranked][::-1], [value for _, value in ranked][::-1])
    axis.set(xlabel="validation MSE increase when shuffled", title="Permutation importance per feature group")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)

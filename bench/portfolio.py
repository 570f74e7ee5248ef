"""Benchmark: what other tree models add to a default train's two recipes, by game fold (printed
figures, not a test). The ceiling of what a study's tree search can reach on a corpus.

    python bench/portfolio.py --data data/corpus [--folds 5] [--only 1 2] [--cache /tmp/portfolio]
        [--candidates sk_more lgb_more ...]

Per fold of a 5-fold split by game of the train and validation splits (bench/study.py's folds; the
test split untouched), on the other games: every candidate is cross-fitted by game (5 folds, as a
study's recipe trial is) and fitted on all of them, one thread each, two at a time. Then, as the
study chooses its ensemble: ensemble selection on the out-of-fold predictions of the default pair
and the pair plus each candidate (and plus all of them), each scored on the held-out games. Fits
are cached in --cache (a rerun adds only what is missing).

Candidates: the default recipes with other settings (more or fewer leaves, more iterations, other
learning rates, feature and row shares, regularisation), the defaults with another seed, and
CatBoost and XGBoost with common settings (benchmark-only: `pip install catboost==1.2.10
xgboost==3.2.0` into the venv that runs this; a candidate whose library is missing is left out).
"""
import argparse
import dataclasses
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from caspar.model.trees import Recipe, ensemble_weights, fit  # noqa: E402

DEFAULTS = {"sklearn": Recipe("sklearn", 600, 0.03, 31, 10, 0.0, 0.5, 0.8, 0),
            "lightgbm": Recipe("lightgbm", 600, 0.03, 31, 10, 0.0, 0.5, 0.8, 0)}
RECIPES = {
    "lgb_deep": Recipe("lightgbm", 600, 0.03, 63, 20, 0.0, 0.3, 0.7, 0),
    "lgb_shallow": Recipe("lightgbm", 600, 0.03, 7, 30, 0.0, 0.5, 0.8, 0),
    "sk_big": Recipe("sklearn", 600, 0.03, 63, 40, 1.0, 0.3, 0.8, 0),
    "lgb_reg": Recipe("lightgbm", 600, 0.05, 31, 50, 10.0, 0.2, 0.6, 0),
    "sk_small": Recipe("sklearn", 600, 0.05, 15, 20, 0.0, 0.8, 0.8, 0),
    "lgb_slow": Recipe("lightgbm", 1200, 0.015, 31, 10, 0.0, 0.3, 0.7, 0),
    "lgb_more": Recipe("lightgbm", 1500, 0.03, 31, 10, 0.0, 0.5, 0.8, 0),
    "lgb_ff9": Recipe("lightgbm", 600, 0.03, 31, 5, 0.0, 0.9, 1.0, 0),
    "sk_more": Recipe("sklearn", 1500, 0.03, 31, 10, 0.0, 0.5, 0.8, 0),
    "lgb_fast": Recipe("lightgbm", 600, 0.1, 31, 10, 0.0, 0.5, 0.8, 0),
    "sk_ml3": Recipe("sklearn", 600, 0.05, 63, 3, 0.0, 0.7, 0.8, 0),
    "seed1_sklearn": dataclasses.replace(DEFAULTS["sklearn"], seed=1),
    "seed1_lightgbm": dataclasses.replace(DEFAULTS["lightgbm"], seed=1),
}
OTHERS = ("catboost", "xgboost")
INNER_FOLDS, INNER_SEED = 5, 7


def fitted(name: str, x: np.ndarray, y: np.ndarray):
    """A candidate fitted with one thread."""
    if name == "catboost":
        import catboost

        return catboost.CatBoostRegressor(iterations=1000, learning_rate=0.05, depth=6, thread_count=1, random_seed=0,
                                          verbose=0).fit(x, y)
    if name == "xgboost":
        import xgboost

        return xgboost.XGBRegressor(n_estimators=600, learning_rate=0.03, max_depth=6, subsample=0.8,
                                    colsample_bytree=0.5, min_child_weight=5, n_jobs=1, random_state=0,
                                    tree_method="hist").fit(x, y)
    return fit({**DEFAULTS, **RECIPES}[name], x, y, threads=1)


_DATA = None


def data(path: str):
    """(x, y, games, outer folds) of the train and validation splits, as bench/study.py splits them."""
    global _DATA
    if _DATA is None:
        from sklearn.model_selection import GroupKFold

        from caspar.data.prepared import load_prepared

        prepared = load_prepared(path)
        x = np.concatenate([prepared.splits[n][0] for n in ("train", "val")])
        y = np.concatenate([prepared.splits[n][1] for n in ("train", "val")])
        games = np.concatenate([prepared.files[n] for n in ("train", "val")])
        _DATA = x, y, games, list(GroupKFold(5).split(x, groups=games))
    return _DATA


def job(task: tuple) -> str:
    """One fit of a candidate: inner fold 0-4 (predicting that fold) or 5 (all rows, predicting the held-out games)."""
    from caspar.model.crossfit import game_folds

    path, cache, name, k, inner = task
    out = os.path.join(cache, f"{name}-{k}-{inner}.npy")
    if os.path.exists(out):
        return out
    x, y, games, splits = data(path)
    rest, held_out = splits[k]
    fold = game_folds(games[rest], INNER_FOLDS, INNER_SEED)
    if inner == INNER_FOLDS:
        prediction = fitted(name, x[rest], y[rest]).predict(x[held_out])
    else:
        prediction = fitted(name, x[rest][fold != inner], y[rest][fold != inner]).predict(x[rest][fold == inner])
    np.save(out + ".tmp.npy", np.asarray(prediction, np.float64))
    os.replace(out + ".tmp.npy", out)
    return out


def r2(prediction: np.ndarray, y: np.ndarray) -> float:
    return float(1 - np.mean((prediction - y) ** 2) / np.var(y))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/prepared")
    parser.add_argument("--only", type=int, nargs="*", help="these folds only (1-based)")
    parser.add_argument("--cache", default="/tmp/caspar-portfolio")
    parser.add_argument("--candidates", nargs="*", default=[*RECIPES, *OTHERS])
    args = parser.parse_args()
    available = []
    for name in args.candidates:
        try:
            if name in OTHERS:
                __import__(name)
            available.append(name)
        except ImportError:
            print(f"{name}: not installed, left out", flush=True)
    os.makedirs(args.cache, exist_ok=True)
    folds = [k for k in range(5) if not args.only or k + 1 in args.only]
    names = [*DEFAULTS, *available]
    tasks = [(args.data, args.cache, name, k, inner) for k in folds for name in names for inner in range(INNER_FOLDS + 1)]
    started = time.perf_counter()
    with ProcessPoolExecutor(2) as pool:
        for done, _ in enumerate(pool.map(job, tasks), 1):
            if done % 6 == 0 or done == len(tasks):
                print(f"{done} of {len(tasks)} fits ({time.perf_counter() - started:.0f} s)", flush=True)
    from caspar.model.crossfit import game_folds

    x, y, games, splits = data(args.data)
    gains: dict[str, list[float]] = {}
    for k in folds:
        rest, held_out = splits[k]
        fold = game_folds(games[rest], INNER_FOLDS, INNER_SEED)
        oof, test = {}, {}
        for name in names:
            oof[name] = np.empty(len(rest))
            for inner in range(INNER_FOLDS):
                oof[name][fold == inner] = np.load(os.path.join(args.cache, f"{name}-{k}-{inner}.npy"))
            test[name] = np.load(os.path.join(args.cache, f"{name}-{k}-{INNER_FOLDS}.npy"))

        def ensemble(members: list[str], oof=oof, test=test, y_fit=y[rest], y_held=y[held_out]):
            weights = ensemble_weights(np.stack([oof[m] for m in members], axis=1), y_fit)
            return r2(sum(w * test[m] for w, m in zip(weights, members)), y_held), dict(zip(members, weights))

        base, _ = ensemble(list(DEFAULTS))
        print(f"fold {k + 1}: the default pair {base:.4f} on the held-out games; alone: "
              + ", ".join(f"{name} {r2(test[name], y[held_out]):.4f}" for name in names), flush=True)
        for name in [*available, "all"]:
            score, weights = ensemble([*DEFAULTS, *available] if name == "all" else [*DEFAULTS, name])
            gains.setdefault(name, []).append(score - base)
            weight = ", ".join(f"{m} {w:.2f}" for m, w in weights.items() if w) if name == "all" else f"{weights[name]:.2f}"
            print(f"  + {name}: {score - base:+.4f} (weight {weight})", flush=True)
    print(f"{len(folds)} folds: what each adds to the default pair on the held-out games (mean; per fold):")
    for name, values in gains.items():
        print(f"  {name}: {np.mean(values):+.4f} ({', '.join(f'{v:+.4f}' for v in values)})")


if __name__ == "__main__":
    main()

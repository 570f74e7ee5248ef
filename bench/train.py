"""Benchmark of training (printed figures, not a test).

    python bench/train.py --data data/prepared [--cv-folds 5] [--fit-on train+val] [--set '{"trees": 0}']
                          [--skip-throughput] [--test-split --seeds 3]

1. Throughput: samples per second of the seed architecture (4 x 354 sigmoid units, SGD with
   Nesterov momentum) at batch 34, and of the default configuration at its default batch size,
   timed over whole epochs after a warm-up epoch.
2. Quality, by cross-validation by game over the train and validation splits (the test split stays
   untouched, so defaults chosen this way never see it): each fold's games are scored by the model
   `jobs/train.py` would ship when trained on the other games (a ninth of those held out for early
   stopping, then refitted on all of them as --fit-on says), beside baselines fitted on the same
   rows: the model's own trees alone, GBDT with scikit-learn's defaults, and the model before its
   refit. Paired differences per fold, then their mean ± sd. --set tries other values (JSON of
   Hyperparameters fields).
3. Only with --test-split: runs of the configuration through `caspar.train.train` with --seeds
   seeds, scored on the test split (a throw-away MLflow store). Report these; choose nothing by them.
"""
import argparse
import dataclasses
import json
import os
import tempfile
import time

from caspar.config import FIT_ON, Hyperparameters, TrainConfig
from caspar.model import Normalizer
from caspar.prepared import load_prepared

DEFAULTS = Hyperparameters()

SEED_ARCHITECTURE = {"hidden_layers": [354] * 4, "activation": "sigmoid", "optimizer": "sgd",
                     "learning_rate": 0.01, "dropout_rate": 0.06, "trees": 0, "ensemble_size": 1}


def throughput(config: dict, x, y, epochs: int = 3) -> float:
    import keras

    from caspar.train import fit

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            if epoch > 0:  # the first epoch builds the graph
                self.seconds.append(time.perf_counter() - self.started)

    timer = Timer()
    timer.seconds = []
    fit(dataclasses.replace(DEFAULTS, **config, epochs=epochs + 1, patience=epochs + 1), x, y, x[:256], y[:256],
        callbacks=[timer])
    return len(x) * len(timer.seconds) / sum(timer.seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=TrainConfig.data)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--cv-folds", type=int, default=5, help="folds of the cross-validation by game (0: none)")
    parser.add_argument("--fit-on", default=TrainConfig.fit_on, choices=FIT_ON, help="as jobs/train.py --fit-on")
    parser.add_argument("--set", default="{}", help="JSON: Hyperparameters fields to change")
    parser.add_argument("--test-split", action="store_true", help="also score --seeds runs on the test split")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    changes = json.loads(args.set)
    prepared = load_prepared(args.data)
    x, y = prepared.splits["train"]
    normalizer = Normalizer.fit(x)
    if not args.skip_throughput:
        print_throughput(normalizer.transform(x), y)
    if args.cv_folds:
        cross_validation(prepared, changes, args.cv_folds, args.fit_on)
    if args.test_split:
        test_split_runs(args.data, prepared, normalizer, changes, args.seeds, args.fit_on)


def print_throughput(x, y) -> None:
    seed_rate = throughput({**SEED_ARCHITECTURE, "batch_size": 34}, x, y)
    print(f"seed architecture (4 x 354, sigmoid, SGD), batch 34: {seed_rate:,.0f} samples/s", flush=True)
    default_rate = throughput({}, x, y)
    print(f"default configuration, batch {DEFAULTS.batch_size}: {default_rate:,.0f} samples/s", flush=True)
    seed_default_batch = throughput({**SEED_ARCHITECTURE, "batch_size": DEFAULTS.batch_size}, x, y)
    print(f"seed architecture, batch {DEFAULTS.batch_size}: {seed_default_batch:,.0f} samples/s", flush=True)


def test_split_runs(data: str, prepared, normalizer, changes: dict, seeds: int, fit_on: str) -> None:
    import numpy as np

    from caspar import evaluate
    from caspar.train import train

    x_val, y_val = prepared.splits["val"]
    figures = []
    with tempfile.TemporaryDirectory() as store:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}/mlflow.db"
        for seed in range(DEFAULTS.seed, DEFAULTS.seed + seeds):
            result = train(TrainConfig(data=data, experiment_name="bench", fit_on=fit_on, **changes, seed=seed), prepared)
            figures.append(result.metrics)
            print(f"seed {seed}: {result.epochs} epochs, {result.seconds:.0f} s; {evaluate.summary_line(result.metrics, fit_on)}",
                  flush=True)
    label = "configuration" + (f" with {changes}" if changes else " as shipped")
    summary = ", ".join(f"{name} {np.mean([f[key] for f in figures]):.4f} ± {np.std([f[key] for f in figures]):.4f}"
                        for name, key in (("model", "test_r2"), ("own trees", "baseline_trees_test_r2"),
                                          ("GBDT", "baseline_gbdt_test_r2")) if key in figures[0])
    print(f"{label}, fit on {fit_on}, test split over {seeds} seeds: R² {summary}")


def cross_validation(prepared, changes: dict, folds: int, fit_on: str) -> None:
    import numpy as np
    from sklearn.model_selection import GroupKFold

    from caspar import evaluate
    from caspar.train import Fitted, fit, release, rows

    splits = ("train", "val")  # the test split stays out
    x = np.concatenate([prepared.splits[name][0] for name in splits])
    y = np.concatenate([prepared.splits[name][1] for name in splits])
    games = np.concatenate([prepared.files[name] for name in splits])
    hp = dataclasses.replace(DEFAULTS, **changes)
    pairs = {"model − own trees": [], "model − GBDT": [], "model − before refit": []}
    scores = []
    for fold, (rest, held_out) in enumerate(GroupKFold(folds).split(x, groups=games)):
        rng = np.random.default_rng(hp.seed + fold)
        rest_games = np.unique(games[rest])
        stopping_games = rng.choice(rest_games, max(1, len(rest_games) // 9), replace=False)
        stopping = np.isin(games[rest], stopping_games)
        fold_splits = {"train": (x[rest[~stopping]], y[rest[~stopping]]), "val": (x[rest[stopping]], y[rest[stopping]]),
                       "test": (x[held_out], y[held_out])}
        normalizer = Normalizer.fit(fold_splits["train"][0])
        model, history = fit(hp, normalizer.transform(fold_splits["train"][0]), fold_splits["train"][1],
                             normalizer.transform(fold_splits["val"][0]), fold_splits["val"][1])
        chosen = Fitted(model, normalizer, ("train",))
        scored, _ = release(hp, fold_splits, chosen, history, fit_on if fit_on != "all" else "train+val")
        card = evaluate.scorecard(scored.model, scored.normalizer, *rows(fold_splits, scored.splits), x[held_out], y[held_out],
                                  seed=hp.seed)
        before = evaluate.scorecard(model, normalizer, *fold_splits["train"], x[held_out], y[held_out], seed=hp.seed)
        scores.append(card["test_r2"])
        trees = card.get("baseline_trees_test_r2", np.nan)
        pairs["model − own trees"].append(card["test_r2"] - trees)
        pairs["model − GBDT"].append(card["test_r2"] - card["baseline_gbdt_test_r2"])
        pairs["model − before refit"].append(card["test_r2"] - before["test_r2"])
        print(f"fold {fold + 1}/{folds}: {len(np.unique(games[held_out]))} games, {len(held_out)} rows, best epoch "
              f"{history['best_epoch']}: model R² {card['test_r2']:.4f}, own trees {trees:.4f}, "
              f"GBDT {card['baseline_gbdt_test_r2']:.4f}, before refit {before['test_r2']:.4f}", flush=True)
    label = "configuration" + (f" with {changes}" if changes else " as shipped")
    differences = "; ".join(f"{name} {np.mean(values):+.4f} ± {np.std(values):.4f}" for name, values in pairs.items())
    print(f"{label}, fit on {fit_on}, {folds}-fold cross-validation by game (train and validation splits): model R² "
          f"{np.mean(scores):.4f} ± {np.std(scores):.4f}; {differences} (mean ± sd over folds)")


if __name__ == "__main__":
    main()

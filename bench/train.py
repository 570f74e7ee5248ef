"""Benchmark of training (printed figures, not a test).

    python bench/train.py --data data/prepared [--cv-folds 5] [--flaml] [--set '{"trees": 0}']
                          [--skip-throughput] [--test-split --seeds 3]

1. Throughput: samples per second of the seed architecture (4 x 354 sigmoid units, SGD with
   Nesterov momentum) at batch 34, and of the default configuration at its default batch size,
   timed over whole epochs after a warm-up epoch.
2. Quality, by cross-validation by game over the train and validation splits (the test split stays
   untouched, so defaults chosen this way never see it): each fold's games are scored by the model
   `jobs/train.py` would ship when trained on the other games (its trees fitted on all of them, its
   network early-stopped on a ninth of them), beside tree models a user could fit by hand on the
   same rows, its own trees alone and, with --flaml, FLAML's AutoML given the same time. Paired
   differences per fold, then their mean ± sd. --set tries other values (JSON of Hyperparameters
   fields).
3. Only with --test-split: runs of the configuration through `caspar.training.train.train` with --seeds
   seeds, scored on the test split (a throw-away MLflow store). Report these; choose nothing by them.
"""
import argparse
import dataclasses
import json
import os
import tempfile
import time

from caspar.config import FIT_ON, Hyperparameters, TrainConfig
from caspar.data.prepared import load_prepared

DEFAULTS = Hyperparameters()

SEED_ARCHITECTURE = {"hidden_layers": [354] * 4, "activation": "sigmoid", "optimizer": "sgd",
                     "learning_rate": 0.01, "dropout_rate": 0.06, "trees": 0, "ensemble_size": 1}


def throughput(config: dict, splits: dict, epochs: int = 3) -> float:
    """Training samples per second of the network alone (with trees, their prediction is an input
    computed once: an epoch costs the same)."""
    import keras

    from caspar.training.fit import fit, fit_stage

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            if epoch > 0:  # the first epoch builds the graph
                self.seconds.append(time.perf_counter() - self.started)

    timer = Timer()
    timer.seconds = []
    hp = dataclasses.replace(DEFAULTS, **{**config, "trees": 0}, epochs=epochs + 1, patience=epochs + 1)
    fit(hp, fit_stage(hp, splits, {}, "train"), splits, callbacks=[timer])
    return len(splits["train"][1]) * len(timer.seconds) / sum(timer.seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=TrainConfig.data)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--cv-folds", type=int, default=5, help="folds of the cross-validation by game (0: none)")
    parser.add_argument("--fit-on", default=TrainConfig.fit_on, choices=FIT_ON, help="as jobs/train.py --fit-on")
    parser.add_argument("--flaml", action="store_true", help="also FLAML (pip install flaml[automl]) in each fold, "
                        "with the time the model took there")
    parser.add_argument("--baselines", nargs="+", default=list(SINGLES), choices=list(SINGLES),
                        help="the single tree models fitted beside the model in each fold")
    parser.add_argument("--set", default="{}", help="JSON: Hyperparameters fields to change")
    parser.add_argument("--test-split", action="store_true", help="also score --seeds runs on the test split")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    changes = json.loads(args.set)
    prepared = load_prepared(args.data)
    if not args.skip_throughput:
        print_throughput(prepared.splits)
    if args.cv_folds:
        cross_validation(prepared, changes, args.cv_folds, args.flaml, args.baselines)
    if args.test_split:
        test_split_runs(args.data, prepared, changes, args.seeds, args.fit_on)


def print_throughput(splits) -> None:
    x, y = splits["train"]
    seed_rate = throughput({**SEED_ARCHITECTURE, "batch_size": 34}, splits)
    print(f"seed architecture (4 x 354, sigmoid, SGD), batch 34: {seed_rate:,.0f} samples/s", flush=True)
    default_rate = throughput({}, splits)
    print(f"default configuration, batch {DEFAULTS.batch_size}: {default_rate:,.0f} samples/s", flush=True)
    seed_default_batch = throughput({**SEED_ARCHITECTURE, "batch_size": DEFAULTS.batch_size}, splits)
    print(f"seed architecture, batch {DEFAULTS.batch_size}: {seed_default_batch:,.0f} samples/s", flush=True)


def test_split_runs(data: str, prepared, changes: dict, seeds: int, fit_on: str) -> None:
    import numpy as np

    from caspar.training import evaluate
    from caspar.training.train import train

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


# Tree models a user could fit by hand on the same rows: the recipe this project shipped before
# (600 scikit-learn trees, rate 0.03, leaves >= 10), each library's defaults, LightGBM tuned by hand.
SINGLES = {
    "old-recipe": ("sklearn", dict(max_iter=600, learning_rate=0.03, min_samples_leaf=10, early_stopping=False)),
    "sklearn-defaults": ("sklearn", dict(early_stopping=False)),
    "lightgbm-defaults": ("lightgbm", dict(verbose=-1)),
    "lightgbm-tuned": ("lightgbm", dict(n_estimators=1000, learning_rate=0.02, colsample_bytree=0.5, subsample=0.8,
                                        subsample_freq=1, verbose=-1)),  # 1000 trees, rate 0.02, features 0.5, rows 0.8
}


def single_model(kind: str, parameters: dict, seed: int):
    if kind == "sklearn":
        from sklearn.ensemble import HistGradientBoostingRegressor

        return HistGradientBoostingRegressor(**parameters, random_state=seed)
    import lightgbm

    return lightgbm.LGBMRegressor(**parameters, random_state=seed, deterministic=True, force_row_wise=True)


def flaml_r2(x_fit, y_fit, x_test, y_test, seconds: float, seed: int) -> float:
    """FLAML's AutoML (LightGBM, XGBoost, random forests, extra trees …) with a time budget, its
    own holdout inside the rows it is given; refitted on them all (FLAML's default)."""
    from flaml import AutoML
    from sklearn.metrics import r2_score

    automl = AutoML()
    automl.fit(x_fit, y_fit, task="regression", metric="r2", time_budget=seconds, seed=seed, verbose=0, n_jobs=2)
    return float(r2_score(y_test, automl.predict(x_test)))


def cross_validation(prepared, changes: dict, folds: int, with_flaml: bool, baselines=tuple(SINGLES)) -> None:
    """Per fold by game: the model jobs/train.py ships (trees fitted on every other game, the network
    early-stopped on a ninth of them), its own trees alone, each single tree model of SINGLES and
    GBDT/LightGBM defaults fitted on the same rows, and FLAML with the same time."""
    import numpy as np
    from sklearn.metrics import r2_score
    from sklearn.model_selection import GroupKFold

    from caspar.training import evaluate
    from caspar.training.fit import fit, fit_stage
    from caspar.training.train import release

    splits = ("train", "val")  # the test split stays out
    x = np.concatenate([prepared.splits[name][0] for name in splits])
    y = np.concatenate([prepared.splits[name][1] for name in splits])
    games = np.concatenate([prepared.files[name] for name in splits])
    hp = dataclasses.replace(DEFAULTS, **changes)
    table: dict[str, list[float]] = {}
    for fold, (rest, held_out) in enumerate(GroupKFold(folds).split(x, groups=games)):
        started = time.perf_counter()
        rng = np.random.default_rng(hp.seed + fold)
        rest_games = np.unique(games[rest])
        stopping_games = rng.choice(rest_games, max(1, len(rest_games) // 9), replace=False)
        stopping = np.isin(games[rest], stopping_games)
        fold_splits = {"train": (x[rest[~stopping]], y[rest[~stopping]]), "val": (x[rest[stopping]], y[rest[stopping]]),
                       "test": (x[held_out], y[held_out])}
        fold_files = {"train": games[rest[~stopping]], "val": games[rest[stopping]]}
        stage = fit_stage(hp, fold_splits, fold_files, "train+val")
        network, history = fit(hp, stage, fold_splits)
        released = release(hp, fold_splits, network, history, stage, "train+val")
        scored, history = released.scored, released.history
        seconds = time.perf_counter() - started
        n_fit, n_test = stage.normalizer.transform(x[rest]), stage.normalizer.transform(x[held_out])
        row = {"model": r2_score(y[held_out], evaluate.predict(scored.model, n_test))}
        trees = evaluate.own_trees(scored.model)
        if trees is not None:
            row["own trees alone"] = r2_score(y[held_out], np.clip(np.asarray(trees(n_test)).reshape(-1), 0, 1))
        if stage.layer is not None:  # what the gate kept out, or let in: the network of validation's best epoch
            row["network, ungated"] = (r2_score(y[held_out], evaluate.predict(network.model, n_test))
                                       if (history.network_best_epoch or 0) > 0 else row["own trees alone"])
        for name in baselines:
            kind, parameters = SINGLES[name]
            row[name] = r2_score(y[held_out], single_model(kind, parameters, hp.seed).fit(n_fit, y[rest]).predict(n_test))
        if with_flaml:
            row["FLAML, same time"] = flaml_r2(n_fit, y[rest], n_test, y[held_out], seconds, hp.seed)
        for name, value in row.items():
            table.setdefault(name, []).append(float(value))
        print(f"fold {fold + 1}/{folds}: {len(np.unique(games[held_out]))} games, {len(held_out)} rows, "
              f"{seconds:.0f} s, best epoch {history.best_epoch}: "
              + ", ".join(f"{name} {value:.4f}" for name, value in row.items()), flush=True)
    label = "configuration" + (f" with {changes}" if changes else " as shipped")
    print(f"{label}, {folds}-fold cross-validation by game over the train and validation splits; R² per model "
          "(mean ± sd over folds) and the model's paired difference with it (mean ± sd; folds where the model is ahead):")
    model = np.array(table["model"])
    singles = [name for name in table if name not in ("model", "own trees alone", "network, ungated")]
    best_single = max(singles, key=lambda name: np.mean(table[name]))
    for name, values in table.items():
        difference = model - np.array(values)
        print(f"  {name}: {np.mean(values):.4f} ± {np.std(values):.4f}; model − it {np.mean(difference):+.4f} ± "
              f"{np.std(difference):.4f} ({int(np.sum(difference > 0))}/{folds})"
              + ("  <- the best single tree model" if name == best_single else ""))


if __name__ == "__main__":
    main()

"""Benchmark of training (printed figures, not a test).

    python bench/train.py --data data/prepared [--seeds 3] [--skip-default-run] [--set '{"ensemble_size": 4}']
                          [--cv-folds 5]

1. Throughput: samples per second of the seed architecture (4 x 354 sigmoid units, SGD with
   Nesterov momentum) at batch 34, and of the default configuration at its default batch size,
   timed over whole epochs after a warm-up epoch.
2. Quality: runs of the default configuration (what `jobs/train.py` does with no flags) with
   --seeds different seeds, logged to a throw-away MLflow store: validation and test R² of each,
   their mean ± sd, and the GBDT baseline's test R² on the same split. Defaults are chosen on the
   validation figures only; --set tries other values (JSON of Hyperparameters fields).
3. With --cv-folds K, cross-validation by game over the train and validation splits (the test
   split stays untouched, so defaults chosen this way never see it): each fold's games are scored
   by the configuration trained on the other games (a ninth of those held out for early stopping),
   beside the GBDT baseline fitted on the same rows. A split of a dozen games cannot tell R²
   differences of a few thousandths apart; K folds over a hundred and more games can, and the
   scored games are never the ones early stopping watched.
"""
import argparse
import dataclasses
import json
import os
import tempfile
import time

from caspar.config import Hyperparameters, TrainConfig
from caspar.dataset import load_prepared
from caspar.model import Normalizer

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
    parser.add_argument("--skip-default-run", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--set", default="{}", help="JSON: Hyperparameters fields to change")
    parser.add_argument("--cv-folds", type=int, default=0, help="also cross-validate by game with this many folds")
    args = parser.parse_args()
    changes = json.loads(args.set)
    prepared = load_prepared(args.data)
    x, y = prepared.splits["train"]
    normalizer = Normalizer.fit(x)
    x = normalizer.transform(x)
    if not args.skip_throughput:
        print_throughput(x, y)
    if not args.skip_default_run:
        quality(args.data, prepared, normalizer, changes, args.seeds)
    if args.cv_folds:
        cross_validation(prepared, changes, args.cv_folds)


def print_throughput(x, y) -> None:
    seed_rate = throughput({**SEED_ARCHITECTURE, "batch_size": 34}, x, y)
    print(f"seed architecture (4 x 354, sigmoid, SGD), batch 34: {seed_rate:,.0f} samples/s", flush=True)
    default_rate = throughput({}, x, y)
    print(f"default configuration, batch {DEFAULTS.batch_size}: {default_rate:,.0f} samples/s", flush=True)
    seed_default_batch = throughput({**SEED_ARCHITECTURE, "batch_size": DEFAULTS.batch_size}, x, y)
    print(f"seed architecture, batch {DEFAULTS.batch_size}: {seed_default_batch:,.0f} samples/s", flush=True)


def quality(data: str, prepared, normalizer, changes: dict, seeds: int) -> None:
    import numpy as np
    from sklearn.metrics import r2_score

    from caspar import evaluate
    from caspar.train import train

    x_val, y_val = prepared.splits["val"]
    val, test = [], []
    with tempfile.TemporaryDirectory() as store:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}/mlflow.db"
        for seed in range(DEFAULTS.seed, DEFAULTS.seed + seeds):
            result = train(TrainConfig(data=data, experiment_name="bench", **changes, seed=seed), prepared)
            m = result.metrics
            val.append(r2_score(y_val, evaluate.predict(result.model, normalizer.transform(x_val))))
            test.append(m["test_r2"])
            print(f"seed {seed}: {result.epochs} epochs, {result.seconds:.0f} s; validation R² {val[-1]:.4f}, test R² "
                  f"{test[-1]:.4f}; GBDT baseline test R² {m['baseline_gbdt_test_r2']:.4f}", flush=True)
    label = "default configuration" + (f" with {changes}" if changes else "")
    print(f"{label}: validation R² {np.mean(val):.4f} ± {np.std(val):.4f}, test R² {np.mean(test):.4f} ± "
          f"{np.std(test):.4f} over {seeds} seeds; GBDT baseline test R² {m['baseline_gbdt_test_r2']:.4f}")


def cross_validation(prepared, changes: dict, folds: int) -> None:
    import numpy as np
    from sklearn.metrics import r2_score
    from sklearn.model_selection import GroupKFold

    from caspar import evaluate
    from caspar.train import fit

    splits = ("train", "val")  # the test split stays out
    x = np.concatenate([prepared.splits[name][0] for name in splits])
    y = np.concatenate([prepared.splits[name][1] for name in splits])
    games = np.concatenate([prepared.files[name] for name in splits])
    hp = dataclasses.replace(DEFAULTS, **changes)
    differences = []
    for fold, (rest, held_out) in enumerate(GroupKFold(folds).split(x, groups=games)):
        rng = np.random.default_rng(hp.seed + fold)
        rest_games = np.unique(games[rest])
        stopping_games = rng.choice(rest_games, max(1, len(rest_games) // 9), replace=False)
        stopping = np.isin(games[rest], stopping_games)
        val, train = rest[stopping], rest[~stopping]
        normalizer = Normalizer.fit(x[train])
        x_train, x_val, x_held_out = (normalizer.transform(x[rows]) for rows in (train, val, held_out))
        model, _ = fit(hp, x_train, y[train], x_val, y[val])
        network = r2_score(y[held_out], evaluate.predict(model, x_held_out))
        gbdt = evaluate.baselines(x_train, y[train], x_held_out, y[held_out], hp.seed)["baseline_gbdt_test_r2"]
        differences.append(network - gbdt)
        print(f"fold {fold + 1}/{folds}: {len(np.unique(games[held_out]))} games, {len(held_out)} rows: network R² {network:.4f}, "
              f"GBDT {gbdt:.4f}, difference {network - gbdt:+.4f}", flush=True)
    label = "default configuration" + (f" with {changes}" if changes else "")
    print(f"{label}, {folds}-fold cross-validation by game (train and validation splits): network minus GBDT R² "
          f"{np.mean(differences):+.4f} ± {np.std(differences):.4f} (mean ± sd over folds)")


if __name__ == "__main__":
    main()

"""Benchmark of training (printed figures, not a test).

    python bench/train.py --data data/prepared [--seeds 3] [--skip-default-run] [--set '{"ensemble_size": 4}']

1. Throughput: samples per second of the seed architecture (4 x 354 sigmoid units, SGD with
   Nesterov momentum) at batch 34, and of the default configuration at its default batch size,
   timed over whole epochs after a warm-up epoch.
2. Quality: runs of the default configuration (what `jobs/train.py` does with no flags) with
   --seeds different seeds, logged to a throw-away MLflow store: validation and test R² of each,
   their mean ± sd, and the GBDT baseline's test R² on the same split. Defaults are chosen on the
   validation figures only; --set tries other values (JSON of Hyperparameters fields).
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


if __name__ == "__main__":
    main()

"""Benchmark of training (printed figures, not a test).

    python bench/train.py --data data/prepared [--skip-default-run]

1. Throughput: samples per second of the seed architecture (4 x 354 sigmoid units, SGD with
   Nesterov momentum) at batch 34, and of the default configuration at its default batch size,
   timed over whole epochs after a warm-up epoch.
2. Quality: a run of the default configuration (what `jobs/train.py` does with no flags), logged to
   a throw-away MLflow store: test R² of the network and of the GBDT baseline on the same split.
"""
import argparse
import dataclasses
import os
import tempfile
import time

from caspar.config import Hyperparameters, TrainConfig
from caspar.dataset import load_prepared
from caspar.model import Normalizer

DEFAULTS = Hyperparameters()

SEED_ARCHITECTURE = {"hidden_layers": [354] * 4, "activation": "sigmoid", "optimizer": "sgd",
                     "learning_rate": 0.01, "dropout_rate": 0.06}


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
    args = parser.parse_args()
    prepared = load_prepared(args.data)
    x, y = prepared.splits["train"]
    x = Normalizer.fit(x).transform(x)
    seed_rate = throughput({**SEED_ARCHITECTURE, "batch_size": 34}, x, y)
    print(f"seed architecture (4 x 354, sigmoid, SGD), batch 34: {seed_rate:,.0f} samples/s", flush=True)
    default_rate = throughput({}, x, y)
    print(f"default configuration, batch {DEFAULTS.batch_size}: {default_rate:,.0f} samples/s", flush=True)
    seed_default_batch = throughput({**SEED_ARCHITECTURE, "batch_size": DEFAULTS.batch_size}, x, y)
    print(f"seed architecture, batch {DEFAULTS.batch_size}: {seed_default_batch:,.0f} samples/s", flush=True)
    if args.skip_default_run:
        return
    from caspar.train import train

    with tempfile.TemporaryDirectory() as store:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}/mlflow.db"
        result = train(TrainConfig(data=args.data, experiment_name="bench"), prepared)
    m = result.metrics
    print(f"default run: {result.epochs} epochs, {result.seconds:.0f} s; test R² {m['test_r2']:.4f}, "
          f"GBDT baseline test R² {m['baseline_gbdt_test_r2']:.4f}, mean baseline {m['baseline_mean_test_r2']:.4f}")


if __name__ == "__main__":
    main()

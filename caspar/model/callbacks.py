"""Keras callbacks of training: the best epoch (the untrained model counted as epoch 0), the
learning-rate schedules, and the per-epoch lines and MLflow metrics."""
import logging
import os
import time

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from caspar.progress import Every, since  # noqa: E402

log = logging.getLogger(__name__)  # the jobs' shell prints its INFO lines (caspar.cli)


class BestEpoch(keras.callbacks.Callback):
    """Keeps the weights of the epoch with the lowest val_loss. The model as it was before training
    counts as epoch 0 with `initial_loss`: a network that starts from its trees (a zero correction)
    never ends worse than them on validation. Stops after `patience` epochs without a better loss
    (None: never); restores the best weights at the end of fit() when `restore`. Its state lasts
    across fit() calls (a tune trial trains a few epochs per call)."""

    def __init__(self, initial_loss: float, patience: int | None = None, restore: bool = True):
        super().__init__()
        self.best, self.best_epoch, self.best_weights = float(initial_loss), 0, None
        self.patience, self.restore, self.waited = patience, restore, 0

    def on_train_begin(self, logs=None):
        if self.best_weights is None:
            self.best_weights = self.model.get_weights()

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("val_loss", np.inf)
        if loss < self.best:
            self.best, self.best_epoch, self.best_weights, self.waited = float(loss), epoch + 1, self.model.get_weights(), 0
            return
        self.waited += 1
        if self.patience is not None and self.waited >= self.patience:
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.restore:
            self.model.set_weights(self.best_weights)


class Plateau(keras.callbacks.ReduceLROnPlateau):
    """Halve the learning rate when val_loss stalls. Its state survives separate fit() calls (Keras
    resets it on every call). Logs each epoch's rate as `learning_rate`."""

    started = False

    def on_train_begin(self, logs=None):
        if not self.started:
            self.started = True
            super().on_train_begin(logs)


class StopAfterSeconds(keras.callbacks.Callback):
    """Ends fit() at the first epoch's end after `seconds` since `started()` returned."""

    def __init__(self, started, seconds: float):
        super().__init__()
        self.started, self.seconds = started, seconds

    def on_epoch_end(self, epoch, logs=None):
        if time.perf_counter() - self.started() > self.seconds:
            self.model.stop_training = True


class EpochPrinter(keras.callbacks.Callback):
    """Logs (caspar.model.callbacks, INFO) one line per epoch with the losses and an upper bound of
    the time the remaining epochs take (early stopping may end them sooner; what follows the epochs
    is not in it); within an epoch that runs long, a line now and then with the batches done."""

    def __init__(self, epochs: int, what: str = "epoch"):
        super().__init__()
        self.epochs, self.what = epochs, what

    def on_train_begin(self, logs=None):
        self.began = time.perf_counter()
        self.every = Every(log.info)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.epoch_began = epoch, time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        steps = self.params.get("steps")
        self.every(lambda: f"{self.what} {self.epoch + 1}/{self.epochs}: {batch + 1}"
                           f"{f'/{steps}' if steps else ''} batches ({since(self.epoch_began)})")

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        per_epoch = (time.perf_counter() - self.began) / (epoch + 1)
        left = per_epoch * (self.epochs - epoch - 1)
        losses = f"loss {logs.get('loss', float('nan')):.5f}"
        if "val_loss" in logs:
            losses += f", val_loss {logs['val_loss']:.5f}"
        log.info(f"{self.what} {epoch + 1}/{self.epochs}: {losses}, {per_epoch:.1f} s per epoch; "
                 f"the epochs left take at most {_duration(left)}")
        self.every.reset()


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


class MlflowEpochLogger(keras.callbacks.Callback):
    """Per-epoch metrics to the active MLflow run, under `prefix`."""

    def __init__(self, prefix: str = ""):
        super().__init__()
        self.prefix = prefix

    def on_epoch_end(self, epoch, logs=None):
        import mlflow

        logs = logs or {}
        mlflow.log_metrics({self.prefix + k: float(logs[k]) for k in ("loss", "val_loss", "val_mae") if k in logs},
                           step=epoch)

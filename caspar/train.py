"""Train one model on a prepared dataset and record everything about it in MLflow."""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from caspar import evaluate, tracking
from caspar.cli import UserError
from caspar.config import Hyperparameters, TrainConfig, check, hyperparameters
from caspar.dataset import Prepared, load_prepared
from caspar.export import TEST_INPUTS_FILE, write_test_inputs
from caspar.model import NORMALIZATION_FILE, Normalizer, build_mlp, fit_trees, make_optimizer

TEST_ROWS_KEPT = 256  # test rows logged with the model, for checking an export
STEPS_PER_EXECUTION = 32
PREFETCH_BATCHES = 2
WARMUP_SHARE = 0.05  # of all training steps, with the cosine schedule


def tf_datasets(x_train, y_train, x_val, y_val, batch_size: int, seed: int):
    """Batches through tf.data with prefetching: no Python loop per batch. tf.data's autotuning is
    off: with two training processes on two cores it left each process idle a fifth of the time
    (measured: 0.78 CPU-s per wall-s each, 0.99 without it), and batching arrays in memory has
    nothing to tune."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    train = (tf.data.Dataset.from_tensor_slices((x_train, y_train))
             .shuffle(len(x_train), seed=seed, reshuffle_each_iteration=True)
             .batch(batch_size).prefetch(PREFETCH_BATCHES).with_options(options))
    val = tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(4096).prefetch(PREFETCH_BATCHES).with_options(options)
    return train, val


def compiled_model(hp: Hyperparameters, x_train, y_train, trees=None):
    """The network for these hyperparameters, compiled, with its initial weights seeded. With
    hp.trees, the trees are fitted here unless given (a TreeEnsemble layer)."""
    import keras

    keras.utils.set_random_seed(hp.seed)
    if hp.trees and trees is None:
        trees = fit_trees(x_train, y_train, hp.trees, hp.seed)
    model = build_mlp(x_train.shape[1], hp.hidden_layers, hp.dropout_rate, hp.activation, hp.encoding_bins, x_train,
                      ensemble_size=hp.ensemble_size, trees=trees if hp.trees else None, seed=hp.seed,
                      periodic_frequencies=hp.periodic_frequencies, ensemble_kind=hp.ensemble_kind,
                      ensemble_loss=hp.ensemble_loss)
    # Several steps per call into TensorFlow: small batches are otherwise bound by per-step overhead.
    optimizer = make_optimizer(hp.optimizer, learning_rate(hp, len(x_train)), hp.weight_decay)
    model.compile(optimizer=optimizer, loss="mse", metrics=["mae"], steps_per_execution=STEPS_PER_EXECUTION)
    return model


def learning_rate(hp: Hyperparameters, train_rows: int):
    """The optimizer's learning rate: a number (the plateau schedule changes it from a callback),
    or with lr_schedule "cosine", a linear warm-up over the first WARMUP_SHARE of all steps, then
    a cosine decay to 0 at the last epoch."""
    import keras

    if hp.lr_schedule != "cosine":
        return hp.learning_rate
    steps = math.ceil(train_rows / hp.batch_size) * hp.epochs
    warmup = max(1, int(WARMUP_SHARE * steps))
    return keras.optimizers.schedules.CosineDecay(0.0, decay_steps=max(1, steps - warmup), warmup_target=hp.learning_rate,
                                                  warmup_steps=warmup)


def schedule_callbacks(hp: Hyperparameters) -> list:
    """The plateau schedule: halve the learning rate when val_loss stalls for a third of the
    patience. Its state survives separate fit() calls (a tune trial trains a few epochs per call;
    Keras resets it on every call). The cosine schedule is the optimizer's own: no callback."""
    import keras

    if hp.lr_schedule == "cosine":
        return []

    class Plateau(keras.callbacks.ReduceLROnPlateau):
        started = False

        def on_train_begin(self, logs=None):
            if not self.started:
                self.started = True
                super().on_train_begin(logs)

    return [Plateau(monitor="val_loss", factor=0.5, patience=max(2, hp.patience // 3), min_lr=hp.learning_rate / 100)]


def fit(hp: Hyperparameters, x_train, y_train, x_val, y_val, callbacks=()):
    """Build and train the MLP on normalised inputs; early stopping restores the best weights."""
    import keras

    model = compiled_model(hp, x_train, y_train)
    train, val = tf_datasets(x_train, y_train, x_val, y_val, hp.batch_size, hp.seed)
    stopping = keras.callbacks.EarlyStopping(monitor="val_loss", patience=hp.patience, restore_best_weights=True)
    history = model.fit(train, validation_data=val, epochs=hp.epochs, verbose=0, shuffle=False,
                        callbacks=[stopping, *schedule_callbacks(hp), keras.callbacks.TerminateOnNaN(), *callbacks])
    return model, history.history


def check_trained(history: dict) -> None:
    """A model whose loss is not a finite number did not train: it must not be logged or registered."""
    losses = history.get("val_loss") or []
    if not losses or not np.all(np.isfinite(losses)):
        raise UserError(f"training diverged (val_loss {losses[-1] if losses else 'never computed'}): "
                        "nothing registered; try a lower --learning-rate")


def epoch_printer(epochs: int):
    """Keras callback: one line per epoch with the losses and an upper bound of the time left."""
    import keras

    class EpochPrinter(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            per_epoch = (time.perf_counter() - self.started) / (epoch + 1)
            left = per_epoch * (epochs - epoch - 1)
            print(f"epoch {epoch + 1}/{epochs}: loss {logs.get('loss', float('nan')):.5f}, "
                  f"val_loss {logs.get('val_loss', float('nan')):.5f}, {per_epoch:.1f} s per epoch, "
                  f"at most {_duration(left)} left", flush=True)

    return EpochPrinter()


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def mlflow_epoch_logger():
    """Keras callback: per-epoch loss, val_loss, val_mae to the active MLflow run."""
    import keras
    import mlflow

    class EpochLogger(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            mlflow.log_metrics({k: float(logs[k]) for k in ("loss", "val_loss", "val_mae") if k in logs}, step=epoch)

    return EpochLogger()


@dataclass
class Result:
    run_id: str
    model_uri: str
    registered_version: str | None
    metrics: dict[str, float]
    epochs: int
    seconds: float
    tracking_uri: str
    model: object = field(repr=False, default=None)  # the trained Keras model

    def lines(self) -> list[str]:
        m = self.metrics
        return [
            f"trained {self.epochs} epochs in {self.seconds:.0f} s; run {self.run_id}",
            f"test R² {m['test_r2']:.4f} (MSE {m['test_mse']:.5f}, MAE {m['test_mae']:.4f}); "
            f"baselines: GBDT R² {m['baseline_gbdt_test_r2']:.4f}, train mean R² {m['baseline_mean_test_r2']:.4f}",
            f"model {self.model_uri}" + (f" (registered version {self.registered_version})" if self.registered_version else ""),
            tracking.ui_hint(self.tracking_uri),
        ]


def log_model_run(model, normalizer: Normalizer, prepared: Prepared, config: TrainConfig, history: dict
                  ) -> tuple[dict, str, str | None]:
    """Inside an active run: test metrics and baselines, artefacts, the model (registered as
    `config.model_name`, with `config.alias`). Returns (metrics, model URI, registered version)."""
    import mlflow
    from mlflow.models import infer_signature

    x_train, y_train = prepared.splits["train"]
    x_val, y_val = prepared.splits["val"]
    x_test, y_test = prepared.splits["test"]
    n_train, n_val, n_test = normalizer.transform(x_train), normalizer.transform(x_val), normalizer.transform(x_test)
    predictions = evaluate.predict(model, n_test)
    results = {**evaluate.metrics(y_test, predictions, "test"),
               **evaluate.baselines(n_train, y_train, n_test, y_test, seed=config.seed)}
    mlflow.log_metrics(results)
    groups = [(f["name"], f["width"]) for f in prepared.schema["features"]]
    importance = evaluate.group_importance(model, n_val, y_val, groups, seed=config.seed)
    with tempfile.TemporaryDirectory() as folder:
        def path(name):
            return os.path.join(folder, name)
        normalizer.write_csv(path(NORMALIZATION_FILE))
        with open(path("schema.json"), "w") as handle:
            json.dump(prepared.schema, handle, indent=1)
        with open(path("manifest.json"), "w") as handle:
            json.dump(prepared.manifest, handle, indent=1)
        write_test_inputs(path(TEST_INPUTS_FILE), x_test[:TEST_ROWS_KEPT], predictions[:TEST_ROWS_KEPT])
        with open(path("feature_group_importance.json"), "w") as handle:
            json.dump(importance, handle, indent=1)
        evaluate.plot_learning_curve(history, path("learning_curve.png"))
        evaluate.plot_predictions(y_test, predictions, path("predicted_vs_actual.png"))
        evaluate.plot_importance(importance, path("feature_group_importance.png"))
        mlflow.log_artifacts(folder)
    signature = infer_signature(n_test[:5], predictions[:5].reshape(-1, 1).astype(np.float32))
    info = mlflow.keras.log_model(model, name="model", signature=signature, registered_model_name=config.model_name,
                                  pip_requirements=_requirements())
    version = getattr(info, "registered_model_version", None)
    if version is not None and config.alias:
        mlflow.MlflowClient().set_registered_model_alias(config.model_name, config.alias, version)
    return results, info.model_uri, str(version) if version is not None else None


def _requirements() -> list[str]:
    """What the logged model needs, stated rather than inferred (inference loads the model again)."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("keras", "tensorflow")]


def run_tags(prepared: Prepared) -> dict[str, str]:
    tags = {"dataset_version": prepared.version, "schema_version": prepared.schema["version"], "data": prepared.uri}
    commit = tracking.git_commit()
    if commit:
        tags["git_commit"] = commit
    return tags


def train(config: TrainConfig, prepared: Prepared | None = None, show_progress: bool = False) -> Result:
    """One training run, tracked in MLflow; a run that fails is marked FAILED and registers nothing."""
    import mlflow

    check(config)
    started = time.perf_counter()
    uri = tracking.configure()
    prepared = prepared or load_prepared(config.data)
    normalizer = Normalizer.fit(prepared.splits["train"][0])
    x_val, y_val = prepared.splits["val"]
    x_train, y_train = prepared.splits["train"]
    experiment = tracking.experiment_id(config.experiment_name)
    with mlflow.start_run(experiment_id=experiment, run_name=config.run_name, tags=run_tags(prepared)) as run:
        mlflow.log_params(hyperparameters(config) | {"data": config.data, "rows_train": len(y_train),
                                                     "n_features": x_train.shape[1]})
        callbacks = [mlflow_epoch_logger()] + ([epoch_printer(config.epochs)] if show_progress else [])
        model, history = fit(config, normalizer.transform(x_train), y_train, normalizer.transform(x_val), y_val,
                             callbacks=callbacks)
        check_trained(history)
        results, model_uri, version = log_model_run(model, normalizer, prepared, config, history)
    return Result(run.info.run_id, model_uri, version, results, len(history["loss"]),
                  time.perf_counter() - started, uri, model)

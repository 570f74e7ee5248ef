"""Train one model on a prepared dataset and record everything about it in MLflow."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from caspar import evaluate, tracking
from caspar.cli import UserError
from caspar.config import Hyperparameters, TrainConfig, check
from caspar.export import TEST_INPUTS_FILE, write_test_inputs
from caspar.model import NORMALIZATION_FILE, Network, Normalizer, build_network, fit_trees, make_optimizer
from caspar.prepared import Prepared, load_prepared

TEST_ROWS_KEPT = 256  # test rows logged with the model, for checking an export
STEPS_PER_EXECUTION = 32
PREFETCH_BATCHES = 2


def tf_datasets(x_train, y_train, x_val, y_val, batch_size: int, seed: int):
    """Batches through tf.data with prefetching: no Python loop per batch. The inputs are arrays,
    or tuples of arrays (a Network.trainer's inputs). tf.data's autotuning is
    off: with two training processes on two cores it left each process idle a fifth of the time
    (measured: 0.78 CPU-s per wall-s each, 0.99 without it), and batching arrays in memory has
    nothing to tune."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    train = (tf.data.Dataset.from_tensor_slices((x_train, y_train))
             .shuffle(len(y_train), seed=seed, reshuffle_each_iteration=True)
             .batch(batch_size).prefetch(PREFETCH_BATCHES).with_options(options))
    val = tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(4096).prefetch(PREFETCH_BATCHES).with_options(options)
    return train, val


def compiled_network(hp: Hyperparameters, x_train, y_train, trees=None) -> Network:
    """The network for these hyperparameters, its trainer compiled, with its initial weights
    seeded. With hp.trees, the trees are fitted here unless given (a TreeEnsemble layer)."""
    import keras

    keras.utils.set_random_seed(hp.seed)
    if hp.trees and trees is None:
        trees = fit_trees(x_train, y_train, hp)
    network = build_network(hp, x_train, trees if hp.trees else None)
    # Several steps per call into TensorFlow: small batches are otherwise bound by per-step overhead.
    optimizer = make_optimizer(hp.optimizer, learning_rate(hp, len(x_train)), hp.weight_decay)
    trainer = network.trainer
    # The metric and the optimizer's variables are created here, not while Keras traces the first
    # training and evaluation steps: a variable created there makes TensorFlow trace the step twice.
    trainer.compile(optimizer=optimizer, loss="mse", metrics=[keras.metrics.MeanAbsoluteError(name="mae")],
                    steps_per_execution=STEPS_PER_EXECUTION)
    trainer.optimizer.build(trainer.trainable_variables)
    return network


def learning_rate(hp: Hyperparameters, train_rows: int):
    """The optimizer's learning rate: a number (the plateau schedule changes it from a callback),
    or with lr_schedule "cosine", a linear warm-up over the first hp.warmup_share of all steps, then
    a cosine decay to 0 at the last epoch."""
    import keras

    if hp.lr_schedule != "cosine":
        return hp.learning_rate
    steps = math.ceil(train_rows / hp.batch_size) * hp.epochs
    warmup = max(1, int(hp.warmup_share * steps))
    return keras.optimizers.schedules.CosineDecay(0.0, decay_steps=max(1, steps - warmup), warmup_target=hp.learning_rate,
                                                  warmup_steps=warmup)


def schedule_callbacks(hp: Hyperparameters) -> list:
    """The plateau schedule: cut the learning rate when val_loss stalls. The cosine schedule is the
    optimizer's own: no callback."""
    from caspar.callbacks import Plateau

    if hp.lr_schedule == "cosine":
        return []
    patience = hp.plateau_patience or max(2, hp.patience // 3)
    return [Plateau(monitor="val_loss", factor=hp.plateau_factor, patience=patience,
                    min_lr=hp.learning_rate * hp.plateau_floor)]


def validation_loss(trainer, val) -> float:
    """The loss of a network's trainer as it is on the validation batches (before training: its trees alone)."""
    return float(trainer.evaluate(val, verbose=0, return_dict=True)["loss"])


def fit(hp: Hyperparameters, x_train, y_train, x_val, y_val, callbacks=()):
    """Build and train the MLP on normalised inputs, keeping the epoch with the best validation
    loss, the untrained model (its trees) counted as epoch 0. history["best_epoch"] says which."""
    import keras

    from caspar.callbacks import BestEpoch

    network = compiled_network(hp, x_train, y_train)
    train, val = tf_datasets(network.inputs(x_train), y_train, network.inputs(x_val), y_val, hp.batch_size, hp.seed)
    best = BestEpoch(validation_loss(network.trainer, val), patience=hp.patience)
    history = network.trainer.fit(train, validation_data=val, epochs=hp.epochs, verbose=0, shuffle=False,
                                  callbacks=[*schedule_callbacks(hp), best, keras.callbacks.TerminateOnNaN(),
                                             *callbacks]).history
    return network.model, {**history, "best_epoch": best.best_epoch}


def refit(hp: Hyperparameters, x, y, epochs: int, rates: list[float] | None = None, callbacks=()):
    """The chosen configuration fitted again on other rows, trees included, for the `epochs` that
    validation chose, with the learning rate of each epoch as it was then (`rates`, for the plateau
    schedule; the cosine schedule follows the steps by itself). No rows are held out."""
    import keras

    from caspar.callbacks import ReplayRates

    network = compiled_network(hp, x, y)
    if epochs:
        train, _ = tf_datasets(network.inputs(x), y, network.inputs(x[:1]), y[:1], hp.batch_size, hp.seed)
        replay = [ReplayRates(rates)] if rates and hp.lr_schedule != "cosine" else []
        history = network.trainer.fit(train, epochs=epochs, verbose=0, shuffle=False,
                                      callbacks=[*replay, keras.callbacks.TerminateOnNaN(), *callbacks]).history
        if not np.all(np.isfinite(history["loss"])):
            raise UserError(f"the refit on {len(y)} rows diverged (loss {history['loss'][-1]}): nothing registered; "
                            "try a lower --learning-rate or --fit-on train")
    return network.model


def check_trained(history: dict) -> None:
    """A model whose loss is not a finite number did not train: it must not be logged or registered."""
    losses = history.get("val_loss") or []
    if not losses or not np.all(np.isfinite(losses)):
        raise UserError(f"training diverged (val_loss {losses[-1] if losses else 'never computed'}): "
                        "nothing registered; try a lower --learning-rate")


# --- The model that ships: fitted on more games once validation has chosen ---------------------------

FIT_ON = {"train": ("train",), "train+val": ("train", "val"), "all": ("train", "val", "test")}


@dataclass
class Fitted:
    model: object
    normalizer: Normalizer
    splits: tuple[str, ...]  # the rows it was fitted on


def rows(splits: dict, names) -> tuple[np.ndarray, np.ndarray]:
    """The (features, rewards) of the named splits of {name: (x, y)}, concatenated."""
    return np.concatenate([splits[n][0] for n in names]), np.concatenate([splits[n][1] for n in names])


def release(hp: Hyperparameters, splits: dict, chosen: Fitted, history: dict, fit_on: str,
            callbacks=()) -> tuple[Fitted, Fitted]:
    """(scored, shipped): the model the test split scores and the model that ships. `chosen` is the
    model early-stopped on validation, `history` its run. fit_on "train" ships it; "train+val"
    refits the configuration on train + validation for the chosen epochs, and ships and scores that;
    "all" also refits on every game and ships that, scored by the train + validation refit (the
    same recipe on games that exclude the test games)."""
    if fit_on == "train":
        return chosen, chosen
    rates = history.get("learning_rate")
    fitted = {}
    for name in ("train+val", "all") if fit_on == "all" else ("train+val",):
        x, y = rows(splits, FIT_ON[name])
        normalizer = Normalizer.fit(x)
        model = refit(hp, normalizer.transform(x), y, history["best_epoch"], rates, callbacks)
        fitted[name] = Fitted(model, normalizer, FIT_ON[name])
    return fitted["train+val"], fitted[fit_on]


@dataclass
class Result:
    run_id: str
    model_uri: str
    registered_version: str | None
    metrics: dict[str, float]
    epochs: int
    seconds: float
    tracking_uri: str
    verdict: evaluate.Verdict
    fit_on: str = "train"
    model_name: str = "CASPAR"
    model: object = field(repr=False, default=None)  # the model that ships

    def lines(self) -> list[str]:
        lines = [f"trained {self.epochs} epochs in {self.seconds:.0f} s; run {self.run_id}",
                 evaluate.summary_line(self.metrics, self.fit_on)]
        if self.registered_version:
            lines.append(f"model {self.model_uri} (registered version {self.registered_version}; "
                         f"export with --run models:/{self.model_name}/{self.registered_version})")
        if self.verdict.message:
            lines.append(f"warning: {self.verdict.message}")
        return lines + [tracking.ui_hint(self.tracking_uri)]


def log_model_run(chosen: Fitted, scored: Fitted, shipped: Fitted, prepared: Prepared, config: TrainConfig,
                  history: dict) -> tuple[dict, str, evaluate.Verdict]:
    """Inside an active run: the test split's scorecard of `scored` (the model and every baseline
    fitted on its rows), the artefacts of `shipped` (normalisation, test inputs with its outputs)
    and the model itself, not yet registered. Returns (metrics, model URI, verdict)."""
    import mlflow
    from mlflow.models import infer_signature

    x_test, y_test = prepared.splits["test"]
    results = evaluate.scorecard(scored.model, scored.normalizer, *rows(prepared.splits, scored.splits), x_test, y_test,
                                 seed=config.seed)
    verdict = evaluate.verdict(results)
    mlflow.log_metrics(results | {"best_epoch": history["best_epoch"]})
    mlflow.set_tags({"caspar.verdict": verdict.kind, "caspar.verdict_reason": verdict.message or "beats every baseline",
                     "caspar.fit_on": "+".join(shipped.splits)})
    x_val, y_val = prepared.splits["val"]
    groups = [(f["name"], f["width"]) for f in prepared.schema["features"]]
    importance = evaluate.group_importance(chosen.model, chosen.normalizer.transform(x_val), y_val, groups, seed=config.seed)
    n_test = shipped.normalizer.transform(x_test)
    shipped_predictions = evaluate.predict(shipped.model, n_test)
    with tempfile.TemporaryDirectory() as folder:
        def path(name):
            return os.path.join(folder, name)
        shipped.normalizer.write_csv(path(NORMALIZATION_FILE))
        with open(path("schema.json"), "w") as handle:
            json.dump(prepared.schema, handle, indent=1)
        with open(path("manifest.json"), "w") as handle:
            json.dump(prepared.manifest, handle, indent=1)
        write_test_inputs(path(TEST_INPUTS_FILE), x_test[:TEST_ROWS_KEPT], shipped_predictions[:TEST_ROWS_KEPT])
        with open(path("feature_group_importance.json"), "w") as handle:
            json.dump(importance, handle, indent=1)
        evaluate.plot_learning_curve(history, path("learning_curve.png"))
        evaluate.plot_predictions(y_test, evaluate.predict(scored.model, scored.normalizer.transform(x_test)),
                                  path("predicted_vs_actual.png"))
        evaluate.plot_importance(importance, path("feature_group_importance.png"))
        mlflow.log_artifacts(folder)
    signature = infer_signature(n_test[:5], shipped_predictions[:5].reshape(-1, 1).astype(np.float32))
    info = mlflow.keras.log_model(shipped.model, name="model", signature=signature, pip_requirements=_requirements())
    return results, info.model_uri, verdict


def register(model_uri: str, config: TrainConfig, metrics: dict, verdict: evaluate.Verdict) -> str | None:
    """Registers the logged model as `config.model_name` (with `config.alias`) unless the verdict
    refuses it; returns the version."""
    import mlflow

    if verdict.kind == evaluate.REFUSED:
        return None
    version = mlflow.register_model(model_uri, config.model_name).version
    client = mlflow.MlflowClient()
    client.update_model_version(config.model_name, version, evaluate.summary_line(metrics, config.fit_on))
    if config.alias:
        client.set_registered_model_alias(config.model_name, config.alias, version)
    return str(version)


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
    """One training run, tracked in MLflow: the configuration early-stopped on validation, then
    refitted on the games --fit-on names; registered only if it beats the mean baseline. A run that
    fails is marked FAILED and registers nothing."""
    import mlflow

    from caspar.callbacks import EpochPrinter, MlflowEpochLogger

    check(config)
    started = time.perf_counter()
    uri = tracking.configure()
    prepared = prepared or load_prepared(config.data)
    normalizer = Normalizer.fit(prepared.splits["train"][0])
    x_val, y_val = prepared.splits["val"]
    x_train, y_train = prepared.splits["train"]
    experiment = tracking.experiment_id(config.experiment_name)
    with mlflow.start_run(experiment_id=experiment, run_name=config.run_name, tags=run_tags(prepared)) as run:
        mlflow.log_params(dataclasses.asdict(config) | evaluate.baseline_parameters()
                          | {"rows_train": len(y_train), "n_features": x_train.shape[1]})
        progress = [EpochPrinter(config.epochs)] if show_progress else []
        model, history = fit(config, normalizer.transform(x_train), y_train, normalizer.transform(x_val), y_val,
                             callbacks=[MlflowEpochLogger(), *progress])
        check_trained(history)
        chosen = Fitted(model, normalizer, FIT_ON["train"])
        if show_progress and config.fit_on != "train":
            print(f"validation chose epoch {history['best_epoch']}; fitting again on {config.fit_on} "
                  f"(trees included)", flush=True)
        refit_progress = [EpochPrinter(history["best_epoch"], "refit epoch")] if show_progress else []
        scored, shipped = release(config, prepared.splits, chosen, history, config.fit_on,
                                  [MlflowEpochLogger("refit_"), *refit_progress])
        results, model_uri, verdict = log_model_run(chosen, scored, shipped, prepared, config, history)
        version = register(model_uri, config, results, verdict)
    if verdict.kind == evaluate.REFUSED:
        raise UserError(f"{verdict.message} (run {run.info.run_id}, tagged caspar.verdict=refused)")
    return Result(run.info.run_id, model_uri, version, results, len(history["loss"]), time.perf_counter() - started, uri,
                  verdict, config.fit_on, config.model_name, shipped.model)

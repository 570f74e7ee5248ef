"""Train one model on a prepared dataset and record everything about it in MLflow."""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from caspar import tracking
from caspar.artifacts import FEATURE_PROFILE_FILE, MANIFEST_FILE, NORMALIZATION_FILE, SCHEMA_FILE, TEST_INPUTS_FILE, write_test_inputs
from caspar.config import Hyperparameters, TrainConfig, check
from caspar.data.prepared import Prepared, load_prepared
from caspar.errors import UserError
from caspar.model.network import Network, Normalizer, build_network, make_optimizer, predict_trees, trees_model
from caspar.model.trees import CrossFitted, cross_fit, recipes
from caspar.training import evaluate
from caspar.training.drift import FeatureProfile

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


def compiled_network(hp: Hyperparameters, x_train, trees=None) -> Network:
    """The network for these hyperparameters, its trainer compiled, with its initial weights
    seeded; with hp.trees, correcting `trees` (a TreeEnsemble layer)."""
    import keras

    keras.utils.set_random_seed(hp.seed)
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
    from caspar.model.callbacks import Plateau

    if hp.lr_schedule == "cosine":
        return []
    patience = hp.plateau_patience or max(2, hp.patience // 3)
    return [Plateau(monitor="val_loss", factor=hp.plateau_factor, patience=patience,
                    min_lr=hp.learning_rate * hp.plateau_floor)]


def validation_loss(trainer, val) -> float:
    """The loss of a network's trainer as it is on the validation batches (before training: its trees alone)."""
    return float(trainer.evaluate(val, verbose=0, return_dict=True)["loss"])


@dataclass
class Stage:
    """What the networks of a run (or of a study's trials) are trained on: the normalisation, fitted
    on the rows the trees are fitted on, and the trees with their predictions on the train and
    validation rows, out of fold where the trees were fitted on those rows."""
    normalizer: Normalizer
    splits: tuple[str, ...]  # the rows the trees (and the normalisation) are fitted on
    crossed: CrossFitted | None = None
    layer: object = None  # the trees as a TreeEnsemble layer
    train_trees: np.ndarray | None = None  # [train rows, 1]
    val_trees: np.ndarray | None = None  # [validation rows, 1]
    val_games: np.ndarray | None = None  # the game of every validation row


def rows(splits: dict, names) -> tuple[np.ndarray, np.ndarray]:
    """The (features, rewards) of the named splits of {name: (x, y)}, concatenated."""
    return np.concatenate([splits[n][0] for n in names]), np.concatenate([splits[n][1] for n in names])


def fit_stage(hp: Hyperparameters, splits: dict, files: dict, fit_on: str, say=None, searched=(),
              deadline: float | None = None) -> Stage:
    """The normalisation and the trees for the shipped model's games (train, or train + validation
    with fit_on train+val or all; the test split never): hp's tree recipes, and any `searched`
    ones (a study's, left out once `deadline` passes), cross-fitted by game over those rows,
    weighted by ensemble selection on their out-of-fold predictions."""
    names = FIT_ON["train" if fit_on == "train" else "train+val"]
    x, y = rows(splits, names)
    normalizer = Normalizer.fit(x)
    if not hp.trees:
        return Stage(normalizer, names)
    groups = np.concatenate([files[n] for n in names])
    defaults = recipes(hp)
    crossed = cross_fit([*defaults, *searched], normalizer.transform(x), y, groups, hp.tree_folds, hp.seed, say,
                        deadline, required=len(defaults))
    layer = crossed.layer()
    n_train = len(splits["train"][1])
    val_trees = (crossed.prediction[n_train:] if "val" in names
                 else predict_trees(layer, normalizer.transform(splits["val"][0])))
    return Stage(normalizer, names, crossed, layer, crossed.prediction[:n_train], val_trees, files["val"])


def fit(hp: Hyperparameters, stage: Stage, splits: dict, callbacks=()) -> tuple[Network, dict]:
    """Build and train the network on the train split's normalised inputs (correcting the stage's
    trees, from their out-of-fold predictions), keeping the epoch with the best validation loss,
    the untrained network (the trees alone) counted as epoch 0. history["best_epoch"] says which."""
    import keras

    from caspar.model.callbacks import BestEpoch

    (x_train, y_train), (x_val, y_val) = splits["train"], splits["val"]
    x_train, x_val = stage.normalizer.transform(x_train), stage.normalizer.transform(x_val)
    network = compiled_network(hp, x_train, stage.layer)
    train, val = tf_datasets(network.inputs(x_train, stage.train_trees), y_train, network.inputs(x_val, stage.val_trees),
                             y_val, hp.batch_size, hp.seed)
    untrained = validation_loss(network.trainer, val)  # the trees alone, or an untrained network without trees
    best = BestEpoch(untrained, patience=hp.patience)
    history = network.trainer.fit(train, validation_data=val, epochs=hp.epochs, verbose=0, shuffle=False,
                                  callbacks=[*schedule_callbacks(hp), best, keras.callbacks.TerminateOnNaN(),
                                             *callbacks]).history
    return network, {**history, "best_epoch": best.best_epoch, "best_val_loss": best.best, "untrained_val_loss": untrained}


def check_trained(history: dict) -> None:
    """A model whose loss is not a finite number did not train: it must not be logged or registered."""
    losses = history.get("val_loss") or []
    if not losses or not np.all(np.isfinite(losses)):
        raise UserError(f"training diverged (val_loss {losses[-1] if losses else 'never computed'}): "
                        "nothing registered; try a lower --learning-rate")


# --- The model that ships: only weights chosen on games they were not fitted on ---------------------

def shipping_line(history: dict, stage: Stage) -> str:
    gain = history.get("network_gain")
    games = f"{gain['mean']:+.5f} ± {gain['standard_error']:.5f} MSE per game over {gain['games']} validation games" \
        if gain else ""
    if stage.layer is None:
        return f"validation chose epoch {history['best_epoch']}"
    if history["best_epoch"] == 0:
        return "the trees alone ship: " + (f"the network's best epoch gains {games}, within noise" if gain
                                             else "no epoch of the network beat them on validation")
    return f"the trees with the network of epoch {history['best_epoch']} ship: it gains {games}"


def network_gain(network: Network, stage: Stage, val: tuple) -> dict:
    """How much the network's correction lowers the squared error of the trees alone on the
    validation games, game by game: the mean of the games' differences, its standard error, and
    whether it is more than twice that (beyond_noise). Picking the best of many epochs on a few
    games favours a lucky epoch; a network ships only when the games agree it helps."""
    x_val, y_val = val
    inputs = network.inputs(stage.normalizer.transform(x_val), stage.val_trees)
    with_network = (np.asarray(network.trainer.predict_on_batch(inputs)).reshape(-1) - y_val) ** 2
    alone = (stage.val_trees.reshape(-1) - y_val) ** 2
    games = np.unique(stage.val_games)
    gains = np.array([np.mean(alone[stage.val_games == g] - with_network[stage.val_games == g]) for g in games])
    error = float(np.std(gains, ddof=1) / np.sqrt(len(gains))) if len(gains) > 1 else float("inf")
    return {"mean": float(np.mean(gains)), "standard_error": error, "games": len(games),
            "beyond_noise": bool(np.mean(gains) > 2 * error)}


FIT_ON = {"train": ("train",), "train+val": ("train", "val"), "all": ("train", "val", "test")}


@dataclass
class Fitted:
    model: object
    normalizer: Normalizer
    splits: tuple[str, ...]  # the rows its trees were fitted on


def release(hp: Hyperparameters, splits: dict, network: Network, history: dict, stage: Stage,
            fit_on: str, say=None) -> tuple[Fitted, Fitted]:
    """(scored, shipped): the model the test split scores and the model that ships. The network is
    never fitted again: its weights are those validation chose (none at all when validation chose
    epoch 0, the trees alone). fit_on "all" ships the same recipes and weights with the trees
    fitted on every game, scored by the model whose trees exclude the test games."""
    width = splits["train"][0].shape[1]
    if stage.layer is not None and history["best_epoch"] > 0:
        history["network_gain"] = network_gain(network, stage, splits["val"])
        history["network_best_epoch"] = history["best_epoch"]  # what validation chose, shipped or not
        if not history["network_gain"]["beyond_noise"]:
            history["best_epoch"] = 0  # the network's best epoch is within the noise of the validation games
            if "untrained_val_loss" in history:  # the loss of what ships: the trees alone
                history["best_val_loss"] = history["untrained_val_loss"]
            else:
                history.pop("best_val_loss", None)
    model = network.model if history["best_epoch"] > 0 or stage.layer is None else trees_model(stage.layer, width)
    scored = Fitted(model, stage.normalizer, stage.splits)
    if fit_on != "all" or stage.crossed is None:
        return scored, scored
    if say:
        say("trees: fitting the same recipes on every game (--fit-on all)")
    x, y = rows(splits, FIT_ON["all"])
    layer = stage.crossed.refitted(stage.normalizer.transform(x), y).layer()
    if history["best_epoch"] == 0:
        return scored, Fitted(trees_model(layer, width), stage.normalizer, FIT_ON["all"])
    rebuilt = build_network(hp, stage.normalizer.transform(splits["train"][0]), layer)
    rebuilt.trainer.set_weights(network.trainer.get_weights())  # the trainer holds every weight but the trees'
    return scored, Fitted(rebuilt.model, stage.normalizer, FIT_ON["all"])


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


def log_model_run(scored: Fitted, shipped: Fitted, prepared: Prepared, config: TrainConfig, history: dict,
                  stage: Stage) -> tuple[dict, str, evaluate.Verdict]:
    """Inside an active run: the test split's scorecard of `scored` (the model and every baseline
    fitted on its rows), the artefacts of `shipped` (normalisation, test inputs with its outputs)
    and the model itself, not yet registered. Returns (metrics, model URI, verdict)."""
    import mlflow
    from mlflow.models import infer_signature

    x_test, y_test = prepared.splits["test"]
    members = {} if stage.crossed is None else stage.crossed.members()
    results = evaluate.scorecard(scored.model, scored.normalizer, *rows(prepared.splits, scored.splits), x_test, y_test,
                                 seed=config.seed, members=members)
    verdict = evaluate.verdict(results)
    gain = history.get("network_gain") or {}
    mlflow.log_metrics(results | {"best_epoch": history["best_epoch"],
                                  "network_best_epoch": history.get("network_best_epoch", history["best_epoch"])}
                       | {f"network_gain_{k}": v for k, v in gain.items() if k in ("mean", "standard_error")})
    if "best_val_loss" in history:  # the headline figure: the validation loss of what ships, not of the last epoch
        mlflow.log_metric("best_val_loss", history["best_val_loss"])
    mlflow.set_tags({"caspar.verdict": verdict.kind, "caspar.verdict_reason": verdict.reason,
                     "mlflow.note.content": evaluate.summary_line(results, config.fit_on),  # the run's description
                     "caspar.fit_on": "+".join(shipped.splits)})
    groups = [(f["name"], f["width"]) for f in prepared.schema["features"]]
    # on the test games: the trees were fitted on the validation games (it chooses nothing; it explains)
    importance = evaluate.group_importance(scored.model, scored.normalizer.transform(x_test), y_test, groups,
                                           seed=config.seed)
    n_test = shipped.normalizer.transform(x_test)
    shipped_predictions = evaluate.predict(shipped.model, n_test)
    import pandas as pd

    from caspar.training.mlflow_model import log_model  # raw rows in, by feature name: the MLflow model normalises itself

    columns = [name for f in prepared.schema["features"] for name in f["columns"]]
    example = pd.DataFrame(x_test[:2].astype(np.float64), columns=columns)
    signature = infer_signature(example, shipped_predictions[:2].astype(np.float64))
    info = log_model(shipped.model, shipped.normalizer, signature, example, _requirements())
    with tempfile.TemporaryDirectory() as folder:  # after the model: these files say the run has one (caspar.artifacts)
        def path(name):
            return os.path.join(folder, name)
        shipped.normalizer.write_csv(path(NORMALIZATION_FILE))
        with open(path(SCHEMA_FILE), "w") as handle:
            json.dump(prepared.schema, handle, indent=1)
        with open(path(MANIFEST_FILE), "w") as handle:
            json.dump(prepared.manifest, handle, indent=1)
        write_test_inputs(path(TEST_INPUTS_FILE), x_test[:TEST_ROWS_KEPT], shipped_predictions[:TEST_ROWS_KEPT])
        with open(path(FEATURE_PROFILE_FILE), "w") as handle:  # what the shipped normalisation was fitted on
            handle.write(FeatureProfile.fit(rows(prepared.splits, shipped.splits)[0]).to_json())
        with open(path("feature_group_importance.json"), "w") as handle:
            json.dump(importance, handle, indent=1)
        evaluate.plot_learning_curve(history, path("learning_curve.png"))
        evaluate.plot_predictions(y_test, evaluate.predict(scored.model, scored.normalizer.transform(x_test)),
                                  path("predicted_vs_actual.png"))
        evaluate.plot_importance(importance, path("feature_group_importance.png"))
        mlflow.log_artifacts(folder)
    return results, info.model_uri, verdict


def register(model_uri: str, config: TrainConfig, metrics: dict, verdict: evaluate.Verdict) -> str | None:
    """Registers the logged model as `config.model_name` (with `config.alias`) unless the verdict
    refuses it; returns the version."""
    import mlflow

    if verdict.kind == evaluate.REFUSED:
        return None
    version = mlflow.register_model(model_uri, config.model_name).version
    client = mlflow.MlflowClient()
    try:
        client.update_model_version(config.model_name, version, evaluate.summary_line(metrics, config.fit_on))
        if config.alias:
            client.set_registered_model_alias(config.model_name, config.alias, version)
    except BaseException:  # a version half registered is removed: the run fails and nothing of it ships
        client.delete_model_version(config.model_name, version)
        raise
    return str(version)


def _requirements() -> list[str]:
    """What the logged model needs, stated rather than inferred (inference loads the model again)."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("keras", "tensorflow", "numpy", "pandas")]


def run_tags(prepared: Prepared) -> dict[str, str]:
    tags = {"dataset_version": prepared.version, "schema_version": prepared.schema["version"], "data": prepared.uri}
    commit = tracking.git_commit()
    if commit:
        tags["git_commit"] = commit
    return tags


def train(config: TrainConfig, prepared: Prepared | None = None, show_progress: bool = False) -> Result:
    """One training run, tracked in MLflow: the trees cross-fitted on the games --fit-on names, the
    network early-stopped on validation (or none, where it does not beat the trees beyond noise);
    registered only if it beats the mean baseline. A run that fails is marked FAILED and registers
    nothing."""
    import mlflow

    from caspar.model.callbacks import EpochPrinter, MlflowEpochLogger

    check(config)
    started = time.perf_counter()
    uri = tracking.configure()
    prepared = prepared or load_prepared(config.data)
    x_train, y_train = prepared.splits["train"]
    experiment = tracking.experiment_id(config.experiment_name)
    say = functools.partial(print, flush=True) if show_progress else None
    with mlflow.start_run(experiment_id=experiment, run_name=config.run_name, tags=run_tags(prepared)) as run:
        mlflow.log_params(dataclasses.asdict(config) | evaluate.baseline_parameters()
                          | {"rows_train": len(y_train), "n_features": x_train.shape[1]})
        stage = fit_stage(config, prepared.splits, prepared.files, config.fit_on, say)
        if stage.crossed is not None:
            mlflow.log_metrics(stage.crossed.describe(rows(prepared.splits, stage.splits)[1]))
        progress = [EpochPrinter(config.epochs)] if show_progress else []
        network, history = fit(config, stage, prepared.splits, callbacks=[MlflowEpochLogger(), *progress])
        check_trained(history)
        scored, shipped = release(config, prepared.splits, network, history, stage, config.fit_on, say)
        if say:
            say(shipping_line(history, stage))
        results, model_uri, verdict = log_model_run(scored, shipped, prepared, config, history, stage)
        version = register(model_uri, config, results, verdict)
    if verdict.kind == evaluate.REFUSED:
        raise UserError(f"{verdict.message} (run {run.info.run_id}, tagged caspar.verdict=refused)")
    return Result(run.info.run_id, model_uri, version, results, len(history["loss"]), time.perf_counter() - started, uri,
                  verdict, config.fit_on, config.model_name, shipped.model)

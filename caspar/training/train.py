"""Train one model on a prepared dataset and record everything about it in MLflow: the model that
ships (only weights chosen on games they were not fitted on), its scorecard, its files, its
registration. The fitting itself is caspar.training.fit, shared with the study's trials."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from caspar import tracking
from caspar.artifacts import FEATURE_PROFILE_FILE, MANIFEST_FILE, NORMALIZATION_FILE, SCHEMA_FILE, TEST_INPUTS_FILE, write_test_inputs
from caspar.config import FIT_ON, Hyperparameters, TrainConfig, check
from caspar.data.prepared import Prepared, load_prepared
from caspar.errors import UserError
from caspar.model.network import Network, Normalizer, build_network, trees_model
from caspar.progress import Every, since, ticking
from caspar.training import evaluate
from caspar.training.drift import FeatureProfile
from caspar.training.fit import History, Stage, check_trained, fit, fit_stage, rows  # noqa: F401  (fit: tests patch it here)

log = logging.getLogger(__name__)  # the jobs' shell prints its INFO lines (caspar.cli)

TEST_ROWS_KEPT = 256  # test rows logged with the model, for checking an export
# --- The model that ships: only weights chosen on games they were not fitted on ---------------------

# The settings of the network alone: logged as a run's parameters only when a network ships.
NETWORK_FIELDS = {f.name for f in dataclasses.fields(Hyperparameters) if f.metadata["trial"] == "network"} | {"epochs", "patience"}


def network_ships(history: History, stage: Stage) -> bool:
    """Whether a network ships.

    Args:
        history: the run's History, judged.
        stage: its Stage.

    Returns:
        True for a network alone or a network whose chosen epoch is past 0.
    """
    return stage.layer is None or history.best_epoch > 0


def model_description(history: History, stage: Stage) -> str:
    """What the model is, in one sentence.

    Args:
        history: the run's History, judged.
        stage: its Stage (the recipes and their weights).

    Returns:
        The tree recipes and their weights, and the network if one ships.
    """
    if stage.layer is None:
        return f"the model: a network alone, its weights of epoch {history.best_epoch}"
    weighted = [(r, w) for r, w in zip(stage.crossed.recipes, stage.crossed.weights) if w > 0]
    trees = (f"trees: {', '.join(f'{r.name} {w:.2f}' for r, w in weighted)} ({weighted[0][0].iterations} boosting "
             f"iterations each, weights chosen on their out-of-fold predictions)")
    if history.best_epoch > 0:
        return f"the model: {trees}, with the network of epoch {history.best_epoch} correcting them"
    return f"the model: {trees}; no network"


def shipping_line(history: History, stage: Stage) -> str:
    """Whether the network ships, and why, in one line.

    Args:
        history: the run's History, judged.
        stage: its Stage.

    Returns:
        The line.
    """
    gain = history.network_gain
    games = f"{gain['mean']:+.5f} ± {gain['standard_error']:.5f} MSE per game over {gain['games']} validation games" \
        if gain else ""
    if stage.layer is None:
        return f"validation chose epoch {history.best_epoch}"
    if history.best_epoch == 0:
        return "the trees alone ship: " + (f"the network's best epoch gains {games}, within noise" if gain
                                             else "no epoch of the network beat them on validation")
    return f"the trees with the network of epoch {history.best_epoch} ship: it gains {games}"


def network_gain(network: Network, stage: Stage, val: tuple) -> dict:
    """How much the network's correction lowers the squared error of the trees alone on the
    validation games, game by game.

    Args:
        network: the trained Network.
        stage: its Stage (normalisation, the trees' validation predictions and games).
        val: (x [rows, features] raw, y [rows]) of the validation split.

    Returns:
        caspar.training.evaluate.gain_by_game's figures.
    """
    x_val, y_val = val
    inputs = network.inputs(stage.normalizer.transform(x_val), stage.val_trees)
    with_network = np.asarray(network.trainer.predict_on_batch(inputs)).reshape(-1)
    return evaluate.gain_by_game(y_val, stage.val_trees.reshape(-1), with_network, stage.val_games)


@dataclass
class Fitted:
    """A model, the normalisation its inputs go through, and the splits its trees were fitted on."""
    model: object
    normalizer: Normalizer
    splits: tuple[str, ...]  # the rows its trees were fitted on


def judged(history: History, network: Network, stage: Stage, val: tuple) -> History:
    """The history with validation's choice checked against the noise of the validation games: a
    network that corrects trees ships only if its gain over them, game by game, is beyond that noise;
    otherwise best_epoch is 0 (the trees alone) and best_val_loss theirs.

    Args:
        history: the network's History.
        network: the trained Network.
        stage: its Stage.
        val: (x, y) of the validation split.

    Returns:
        The History, with network_gain and network_best_epoch where the gain was checked.
    """
    if stage.layer is None or history.best_epoch == 0:
        return history
    gain = network_gain(network, stage, val)
    history = dataclasses.replace(history, network_gain=gain, network_best_epoch=history.best_epoch)
    if gain["beyond_noise"]:
        return history
    return dataclasses.replace(history, best_epoch=0, best_val_loss=history.untrained_val_loss)


@dataclass
class Released:
    """What a network's training releases: `scored`, the model the test split scores; `shipped`, the
    model that ships (the same unless --fit-on all refits its trees on every game); `history`, judged."""
    scored: Fitted
    shipped: Fitted
    history: History


def release(hp: Hyperparameters, splits: dict, network: Network, history: History, stage: Stage,
            fit_on: str, say=None) -> Released:
    """The models to score and to ship, after `judged`. The network is never fitted again: its
    weights are those validation chose (none at all when validation chose epoch 0, the trees
    alone). fit_on "all" ships the same recipes and weights with the trees fitted on every game,
    scored by the model whose trees exclude the test games.

    Args:
        hp: the run's Hyperparameters (the network's, and cpus_per_fit).
        splits: {name: (x [rows, features] raw, y [rows])}.
        network: the trained Network.
        history: its History.
        stage: the Stage.
        fit_on: --fit-on.
        say: called with progress lines (or None).

    Returns:
        Released: the model scored, the model shipped, the judged History.
    """
    width = splits["train"][0].shape[1]
    history = judged(history, network, stage, splits["val"])
    model = network.model if history.best_epoch > 0 or stage.layer is None else trees_model(stage.layer, width)
    scored = Fitted(model, stage.normalizer, stage.splits)
    if fit_on != "all" or stage.crossed is None:
        return Released(scored, scored, history)
    if say:
        say("trees: fitting the same recipes on every game (--fit-on all)")
    x, y = rows(splits, FIT_ON["all"])
    layer = stage.crossed.refitted(stage.normalizer.transform(x), y, say, getattr(hp, "cpus_per_fit", 1)).layer()
    if history.best_epoch == 0:
        return Released(scored, Fitted(trees_model(layer, width), stage.normalizer, FIT_ON["all"]), history)
    rebuilt = build_network(hp, stage.normalizer.transform(splits["train"][0]), layer)
    rebuilt.trainer.set_weights(network.trainer.get_weights())  # the trainer holds every weight but the trees'
    return Released(scored, Fitted(rebuilt.model, stage.normalizer, FIT_ON["all"]), history)


@dataclass
class Result:
    """What a train run returns and prints: its run, model, figures and registered version."""
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
    experiment_id: str | None = None
    description: str = ""  # what the model is (model_description)
    alias: str | None = None

    def lines(self) -> list[str]:
        """Returns what the train job prints at its end."""
        lines = [f"trained in {self.seconds:.0f} s ({self.epochs} epochs of the network); run {self.run_id}",
                 self.description, evaluate.summary_line(self.metrics, self.fit_on), evaluate.in_words(self.verdict)]
        if self.registered_version:
            alias = f", alias {self.alias}" if self.alias else ""
            lines.append(f"registered as {self.model_name} version {self.registered_version}{alias}: export it with "
                         f"python jobs/export.py --run models:/{self.model_name}/{self.registered_version}")
        if self.verdict.message:
            lines.append(f"warning: {self.verdict.message}")
        return lines + [tracking.ui_hint(self.tracking_uri, self.experiment_id)]


def log_dataset_files(prepared: Prepared) -> None:
    """Inside an active run, first of its files: the feature set and the dataset's input files. An
    artefact store that refuses files then fails the run at once, not after its training.

    Args:
        prepared: the dataset (its schema and manifest).
    """
    import mlflow

    with tracking.first_files():
        mlflow.log_dict(prepared.schema, SCHEMA_FILE)
        mlflow.log_dict(prepared.manifest, MANIFEST_FILE)


def log_model_run(scored: Fitted, shipped: Fitted, prepared: Prepared, config: TrainConfig, history: History,
                  members: dict, say=None, description: str = "", explainer=None,
                  fitted_baselines: dict | None = None) -> tuple[dict, str, evaluate.Verdict]:
    """Inside an active run: the test split's scorecard of `scored` (the model and every baseline
    fitted on its rows, each of its tree models alone among them: `members`, {name: fitted model}),
    the artefacts of `shipped` (normalisation, test inputs with its outputs) and the model itself,
    not yet registered. `description`: what the model is, the first line of the run's description;
    `explainer`: what computes `scored`'s predictions for the permutation importance, if not its
    Keras model (evaluate.WeightedTrees for the trees alone).

    Args:
        scored: the model the test split scores.
        shipped: the model logged.
        prepared: the dataset.
        config: the run's options.
        history: the run's History.
        members: {name: fitted tree model}, each scored alone among the baselines.
        say: called with progress lines (or None).
        description: what the model is.
        explainer: computes `scored`'s predictions for the permutation importance, or None.
        fitted_baselines: the GBDT and LightGBM baselines, fitted on `scored`'s rows with its trees
            (CrossFitted.on_all_only), or None: fitted here.

    Returns:
        (metrics, model URI, verdict).
    """
    import mlflow
    from mlflow.models import infer_signature

    for split, (x, y) in prepared.splits.items():  # the run's inputs, as MLflow shows them (Datasets)
        with warnings.catch_warnings():  # MLflow registers its local-files source twice ("" and file:) and says so
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
            dataset = mlflow.data.from_numpy(x, targets=y, source=prepared.uri, name=f"{split} ({prepared.version})")
        mlflow.log_input(dataset, context="training" if split in shipped.splits else split)
    say = say or (lambda line: None)
    x_test, y_test = prepared.splits["test"]
    say("baselines: the train mean, GBDT and LightGBM with their defaults, the model's own trees, on the test games")
    started = time.perf_counter()
    doing = "scoring" if fitted_baselines else "fitting and scoring"
    with ticking(say, lambda: f"baselines: {doing} ({since(started)})"):
        results = evaluate.scorecard(scored.model, scored.normalizer, *rows(prepared.splits, scored.splits), x_test,
                                     y_test, seed=config.seed, members=members, fitted_baselines=fitted_baselines)
    verdict = evaluate.verdict(results)
    gain = history.network_gain or {}
    mlflow.log_metrics(results | {"best_epoch": history.best_epoch,
                                  "network_best_epoch": history.network_best_epoch if history.network_best_epoch is not None
                                  else history.best_epoch}
                       | {f"network_gain_{k}": v for k, v in gain.items() if k in ("mean", "standard_error")})
    if history.best_val_loss is not None:  # the headline figure: the validation loss of what ships, not of the last epoch
        mlflow.log_metric("best_val_loss", history.best_val_loss)
    mlflow.set_tags({"caspar.verdict": verdict.kind, "caspar.verdict_reason": verdict.reason,
                     "mlflow.note.content": described(description, results, config.fit_on),  # the run's description
                     "caspar.fit_on": "+".join(shipped.splits)})
    groups = [(f["name"], f["width"]) for f in prepared.schema["features"]]
    say(f"importance: each of the {len(groups)} feature groups permuted on the test games")
    # on the test games: the trees were fitted on the validation games (it chooses nothing; it explains)
    started, every = time.perf_counter(), Every(say)
    importance = evaluate.group_importance(
        explainer or scored.model, scored.normalizer.transform(x_test), y_test, groups, seed=config.seed,
        progress=lambda done: every(lambda: f"importance: {done}/{len(groups)} groups ({since(started)})"))
    n_test = shipped.normalizer.transform(x_test)
    shipped_predictions = evaluate.predict(shipped.model, n_test)
    import pandas as pd

    from caspar.training.mlflow_model import log_model  # raw rows in, by feature name: the MLflow model normalises itself

    columns = [name for f in prepared.schema["features"] for name in f["columns"]]
    example = pd.DataFrame(x_test[:2].astype(np.float64), columns=columns)
    signature = infer_signature(example, shipped_predictions[:2].astype(np.float64))
    say("logging the model and its files to MLflow")
    started = time.perf_counter()
    with ticking(say, lambda: f"logging: the model to MLflow ({since(started)})"):
        info = log_model(shipped.model, shipped.normalizer, signature, example, _requirements())
    with tempfile.TemporaryDirectory() as folder:  # after the model: these files say the run has one (caspar.artifacts)
        def path(name):
            return os.path.join(folder, name)
        shipped.normalizer.write_csv(path(NORMALIZATION_FILE))
        write_test_inputs(path(TEST_INPUTS_FILE), x_test[:TEST_ROWS_KEPT], shipped_predictions[:TEST_ROWS_KEPT], columns)
        with open(path(FEATURE_PROFILE_FILE), "w") as handle:  # what the shipped normalisation was fitted on
            games = np.concatenate([prepared.files[name] for name in shipped.splits])
            handle.write(FeatureProfile.fit(rows(prepared.splits, shipped.splits)[0], games, config.seed).to_json())
        with open(path("feature_group_importance.json"), "w") as handle:
            json.dump(importance, handle, indent=1)
        evaluate.plot_learning_curve(history.losses, path("learning_curve.png"))
        evaluate.plot_predictions(y_test, evaluate.predict(scored.model, scored.normalizer.transform(x_test)),
                                  path("predicted_vs_actual.png"))
        evaluate.plot_importance(importance, path("feature_group_importance.png"))
        mlflow.log_artifacts(folder)
    return results, info.model_uri, verdict


def described(description: str, metrics: dict, fit_on: str) -> str:
    """The run's and the registered version's description.

    Args:
        description: what the model is.
        metrics: the run's test figures.
        fit_on: --fit-on.

    Returns:
        What the model is, then its figures.
    """
    return "\n".join(filter(None, [description, evaluate.summary_line(metrics, fit_on)]))


def register(model_uri: str, config: TrainConfig, metrics: dict, verdict: evaluate.Verdict, description: str,
             run_id: str) -> str | None:
    """Registers the logged model of the FINISHED run `run_id` as `config.model_name`, then moves
    `config.alias` to it, unless the verdict refuses it; returns the version. Called after the run
    ended: a job killed at any moment leaves the registry on finished runs only (the version is
    created whole, its description with it; the alias moves last, from one finished version to
    another).

    Args:
        model_uri: the logged model.
        config: the run's options (model_name, alias, fit_on).
        metrics: its test figures (for the description).
        verdict: the gate's verdict.
        description: what the model is.
        run_id: the finished run.

    Returns:
        The version, or None where the verdict refused it.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    if verdict.kind == evaluate.REFUSED:
        return None
    client = mlflow.MlflowClient()
    try:
        client.create_registered_model(config.model_name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(config.model_name, model_uri, run_id=run_id,
                                          description=described(description, metrics, config.fit_on),
                                          model_id=model_uri.split("/")[-1] if model_uri.startswith("models:/m-") else None
                                          ).version
    try:
        if config.alias:
            client.set_registered_model_alias(config.model_name, config.alias, version)
    except BaseException:  # a version whose alias could not move is removed: the job fails and nothing of it ships
        client.delete_model_version(config.model_name, version)
        raise
    return str(version)


def _requirements() -> list[str]:
    """What the logged model needs, stated rather than inferred (inference loads the model again)."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("keras", "tensorflow", "numpy", "pandas")]


def run_tags(prepared: Prepared) -> dict[str, str]:
    """A run's tags: the dataset's version, its schema's, its URI, and the code's git commit.

    Args:
        prepared: the dataset.

    Returns:
        {tag: value}.
    """
    tags = {"dataset_version": prepared.version, "schema_version": prepared.schema["version"], "data": prepared.uri}
    commit = tracking.git_commit()
    if commit:
        tags["git_commit"] = commit
    return tags


def train(config: TrainConfig, prepared: Prepared | None = None) -> Result:
    """One training run, tracked in MLflow: the trees cross-fitted on the games --fit-on names, the
    network early-stopped on validation (or none, where it does not beat the trees beyond noise);
    registered only if it beats the mean baseline. A run that fails is marked FAILED and registers
    nothing.

    Args:
        config: the run's options.
        prepared: the dataset (loaded from config.data if None).

    Returns:
        The Result.

    Raises:
        UserError: an option refused, the training diverged, or the verdict refused the model.
    """
    import mlflow

    check(config)
    started = time.perf_counter()
    uri = tracking.configure()
    prepared = prepared or load_prepared(config.data)
    x_train, y_train = prepared.splits["train"]
    experiment = tracking.experiment_id(config.experiment_name)
    from caspar.model.callbacks import EpochPrinter, MlflowEpochLogger  # TensorFlow: once every name is checked

    say = log.info  # the jobs' shell prints caspar's INFO lines; a notebook sees them only if it asks
    say(f"train: dataset {prepared.version} ({', '.join(f'{n} {len(y):,}' for n, (_, y) in prepared.splits.items())} "
        f"rows); run {config.run_name or '(unnamed)'} in experiment {config.experiment_name}")
    with tracking.run(experiment_id=experiment, run_name=config.run_name, tags=run_tags(prepared)) as run:
        # the network's settings are logged once it is known to ship (below)
        mlflow.log_params({k: v for k, v in dataclasses.asdict(config).items() if k not in NETWORK_FIELDS}
                          | evaluate.baseline_parameters() | {"rows_train": len(y_train), "n_features": x_train.shape[1]})
        log_dataset_files(prepared)
        stage = fit_stage(config, prepared.splits, prepared.files, config.fit_on, say, config.cpus_per_fit, baselines=True)
        if stage.crossed is not None:
            mlflow.log_metrics(stage.crossed.describe(rows(prepared.splits, stage.splits)[1]))
        progress = [EpochPrinter(config.epochs)]
        network, history = fit(config, stage, prepared.splits, callbacks=[MlflowEpochLogger(), *progress])
        check_trained(history)
        released = release(config, prepared.splits, network, history, stage, config.fit_on, say)
        scored, shipped, history = released.scored, released.shipped, released.history
        say(shipping_line(history, stage))
        log_network_settings(config, network_ships(history, stage))
        description = model_description(history, stage)
        members = {} if stage.crossed is None else stage.crossed.members()
        explainer = (evaluate.WeightedTrees([(m, w) for m, w in zip(stage.crossed.models, stage.crossed.weights) if w > 0])
                     if not network_ships(history, stage) else None)
        results, model_uri, verdict = log_model_run(scored, shipped, prepared, config, history, members, say, description,
                                                    explainer, stage.crossed.on_all_only if stage.crossed else None)
    version = register(model_uri, config, results, verdict, description, run.info.run_id)  # the run has ended FINISHED
    if verdict.kind == evaluate.REFUSED:
        raise UserError(f"{verdict.message} (run {run.info.run_id}, tagged caspar.verdict=refused)")
    return Result(run.info.run_id, model_uri, version, results, history.epochs, time.perf_counter() - started, uri,
                  verdict, config.fit_on, config.model_name, shipped.model, experiment, description, config.alias)


def log_network_settings(config, ships: bool) -> None:
    """The network's settings: as the run's parameters when it ships; otherwise the parameter
    network says it did not, and the settings tried are a file of the run (network_not_shipped.json).

    Args:
        config: the run's options.
        ships: whether a network ships.
    """
    import mlflow

    settings = {k: v for k, v in dataclasses.asdict(config).items() if k in NETWORK_FIELDS}
    if ships:
        mlflow.log_params(settings)
    else:
        mlflow.log_param("network", "not shipped: the trees alone")
        mlflow.log_dict(settings, "network_not_shipped.json")

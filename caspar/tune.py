"""Hyperparameter search on Ray Tune: seeded TPE (Optuna) proposes, ASHA stops weak trials early.

The same model code and MLflow conventions as `caspar.train`: every trial is an MLflow run
(MLflowLoggerCallback, on the driver), nested under one "study" run; the best trial's model is
logged and registered like a train run, under the study's --run-name.
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from caspar import tracking
from caspar.config import TRAIN_DEFAULTS
from caspar.dataset import Prepared
from caspar.model import Normalizer

# The search space, in one readable place (OptunaSearch samples it with seeded TPE).
SEARCH_SPACE = {
    "n_layers": ("randint", 1, 5),  # 1 to 4 hidden layers
    "units": ("choice", [64, 128, 256, 354, 512]),
    "dropout_rate": ("uniform", 0.0, 0.4),
    "learning_rate": ("loguniform", 1e-4, 1e-2),
    "batch_size": ("choice", [32, 64, 128, 256]),
    "activation": ("choice", ["relu", "gelu", "swish", "sigmoid"]),
    "encoding_bins": ("choice", [0, 8, 16]),  # piecewise-linear input encoding (0: none)
}
TUNE_DEFAULTS = {
    "n_trials": 100,
    "n_jobs": -1,  # concurrent trials: -1 = as many as the cluster's CPUs allow
    "cpus_per_trial": 1,
    "epochs": 30,  # at most, per trial
    "grace_period": 3,  # epochs every trial gets before ASHA may stop it
    "time_budget": None,  # seconds
    "storage_path": None,  # local folder or s3://; required for several nodes
    "resume": False,
    "seed": 42,
    "max_failures": 2,  # retries of a trial whose worker died
    "keep_checkpoints": 2,
    "data": TRAIN_DEFAULTS["data"],
    "experiment_name": "caspar-tune",
    "run_name": "tuned",
    "model_name": TRAIN_DEFAULTS["model_name"],
}
METRIC, MODE = "val_loss", "min"
CHECKPOINT_FILE = "model.keras"


def search_space() -> dict:
    from ray import tune

    return {name: getattr(tune, kind)(*args) for name, (kind, *args) in SEARCH_SPACE.items()}


def trial_config(sampled: dict, settings: dict) -> dict:
    """A trial's sampled values as a train configuration."""
    return {**TRAIN_DEFAULTS, "hidden_layers": [sampled["units"]] * sampled["n_layers"],
            "dropout_rate": sampled["dropout_rate"], "learning_rate": sampled["learning_rate"],
            "batch_size": sampled["batch_size"], "activation": sampled["activation"],
            "encoding_bins": sampled.get("encoding_bins", TRAIN_DEFAULTS["encoding_bins"]),
            "epochs": settings["epochs"], "patience": settings["epochs"], "seed": settings["seed"]}


def report_to_tune(started: float, cpu_started: float):
    """Keras callback: every epoch, tune.report the metrics, with the model as a checkpoint
    (`model.keras`) when val_loss improved; Ray keeps only the best few (CheckpointConfig). Also
    reports the trial's CPU seconds and its start-up time (trial function entered -> first epoch)."""
    import keras
    import ray
    from ray import tune

    node = ray.get_runtime_context().get_node_id()

    class ReportToTune(keras.callbacks.Callback):
        startup = 0.0
        best = np.inf

        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 0:
                self.startup = time.perf_counter() - started

        def on_epoch_end(self, epoch, logs=None):
            metrics = {k: float(v) for k, v in (logs or {}).items() if k in ("loss", "val_loss", "val_mae")}
            metrics.update(cpu_seconds=time.process_time() - cpu_started, startup_seconds=self.startup)
            metrics["node_id"] = node  # which Ray node ran the trial (not an MLflow metric: not a number)
            if metrics.get(METRIC, np.inf) >= self.best:  # no better: no checkpoint to write
                tune.report(metrics)
                return
            self.best = metrics[METRIC]
            with tempfile.TemporaryDirectory() as folder:
                self.model.save(os.path.join(folder, CHECKPOINT_FILE))
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    return ReportToTune()


def train_trial(sampled: dict, data: dict, settings: dict) -> None:
    """One trial: fit on the shared (already normalised) arrays, reporting every epoch with a checkpoint."""
    started, cpu_started = time.perf_counter(), time.process_time()
    import tensorflow as tf

    from caspar.train import fit

    threads = max(1, int(settings["cpus_per_trial"]))
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    report = report_to_tune(started, cpu_started)
    fit(trial_config(sampled, settings), data["x_train"], data["y_train"], data["x_val"], data["y_val"],
        callbacks=[report])


@dataclass
class Study:
    best_config: dict
    best_val_loss: float
    metrics: dict
    trials: int
    stopped_early: int
    errored: int
    run_id: str
    registered_version: str | None
    seconds: float
    tracking_uri: str
    path: str
    core_utilisation: float  # CPU seconds in trials / (wall seconds of the search x cluster CPUs)
    mean_startup_seconds: float  # trial function entered -> first epoch

    def lines(self) -> list[str]:
        m = self.metrics
        config = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.best_config.items())
        return [
            f"{self.trials} trials in {self.seconds:.0f} s: {self.stopped_early} stopped early by ASHA, {self.errored} failed",
            f"core utilisation {self.core_utilisation:.2f}, trial start-up {self.mean_startup_seconds:.1f} s, "
            f"{3600 * self.trials / max(self.seconds, 1):.0f} trials per hour",
            f"best: {config}",
            f"best val_loss {self.best_val_loss:.5f}; test R² {m['test_r2']:.4f} "
            f"(GBDT baseline {m['baseline_gbdt_test_r2']:.4f}, mean baseline {m['baseline_mean_test_r2']:.4f})",
            f"best model: run {self.run_id}" + (f", registered version {self.registered_version}" if self.registered_version else ""),
            f"study stored in {self.path} (resume with --resume)",
            tracking.ui_hint(self.tracking_uri),
        ]


def concurrency(n_jobs: int, cpus_per_trial: float) -> int:
    import ray

    if n_jobs > 0:
        return n_jobs
    return max(1, int(ray.cluster_resources().get("CPU", 1) // cpus_per_trial))


def tune_study(settings: dict, prepared: Prepared) -> Study:
    import mlflow
    import ray
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    settings = {**TUNE_DEFAULTS, **settings}
    started = time.perf_counter()
    uri = tracking.configure()
    if not ray.is_initialized():
        ray.init(logging_level="WARNING")
    normalizer = Normalizer.fit(prepared.splits["train"][0])
    data = {"x_train": normalizer.transform(prepared.splits["train"][0]), "y_train": prepared.splits["train"][1],
            "x_val": normalizer.transform(prepared.splits["val"][0]), "y_val": prepared.splits["val"][1]}
    experiment = tracking.experiment_id(settings["experiment_name"])
    study_name = settings["run_name"]
    storage_path = settings["storage_path"] or os.path.abspath("ray_results")
    with mlflow.start_run(experiment_id=experiment, run_name=f"{study_name}-study",
                          tags={"study": study_name, "caspar.kind": "study"}) as parent:
        mlflow.log_dict({k: list(v) for k, v in SEARCH_SPACE.items()}, "search_space.json")
        mlflow.log_params({k: settings[k] for k in ("n_trials", "epochs", "grace_period", "seed", "cpus_per_trial")})
        trainable = tune.with_resources(tune.with_parameters(train_trial, data=data, settings=settings),
                                        {"cpu": settings["cpus_per_trial"]})
        callbacks = [MLflowLoggerCallback(tracking_uri=uri, experiment_name=settings["experiment_name"],
                                          tags={"study": study_name, "mlflow.parentRunId": parent.info.run_id})]
        run_config = tune.RunConfig(
            name=study_name, storage_path=storage_path, callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=settings["max_failures"]),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=settings["keep_checkpoints"],
                                                    checkpoint_score_attribute=METRIC, checkpoint_score_order=MODE))
        experiment_path = os.path.join(storage_path, study_name)
        if settings["resume"] and tune.Tuner.can_restore(experiment_path):
            tuner = tune.Tuner.restore(experiment_path, trainable=trainable, resume_errored=True, param_space=search_space())
        else:
            tuner = tune.Tuner(
                trainable, param_space=search_space(), run_config=run_config,
                tune_config=tune.TuneConfig(
                    metric=METRIC, mode=MODE, num_samples=settings["n_trials"],
                    max_concurrent_trials=concurrency(settings["n_jobs"], settings["cpus_per_trial"]),
                    search_alg=OptunaSearch(seed=settings["seed"]),
                    reuse_actors=True,  # a new trial reuses a finished one's process: no TensorFlow start-up
                    scheduler=ASHAScheduler(max_t=settings["epochs"], grace_period=min(settings["grace_period"], settings["epochs"]),
                                            reduction_factor=3),
                    time_budget_s=settings["time_budget"]))
        search_started = time.perf_counter()
        results = tuner.fit()
        search_seconds = time.perf_counter() - search_started
        best = results.get_best_result(metric=METRIC, mode=MODE, scope="all")
        stopped_early = int(sum(1 for r in results if r.metrics and not r.error
                                and r.metrics.get("training_iteration", 0) < settings["epochs"]))
        last = [r.metrics for r in results if r.metrics]
        utilisation = sum(m.get("cpu_seconds", 0.0) for m in last) / (search_seconds * ray.cluster_resources().get("CPU", 1))
        startup = sum(m.get("startup_seconds", 0.0) for m in last) / max(len(last), 1)
        mlflow.log_metrics({"core_utilisation": utilisation, "mean_trial_startup_seconds": startup})
        best_config = trial_config(best.config, settings)
        best_val = float(best.metrics_dataframe[METRIC].min())
        mlflow.log_dict({k: v for k, v in best.config.items()}, "best_config.json")
        mlflow.log_metrics({"best_val_loss": best_val, "trials": len(results), "stopped_early": stopped_early})
        _log_val_loss_plot(results)
    model = _best_model(best)
    metrics, run_id, version = _log_best(model, normalizer, prepared, best_config, best, settings, experiment, parent)
    return Study(best.config, best_val, metrics, len(results), stopped_early, len(results.errors), run_id, version,
                 time.perf_counter() - started, uri, experiment_path, utilisation, startup)


def _best_model(best):
    import keras

    import caspar.layers  # noqa: F401  (custom layers must be known before loading)

    checkpoint = best.get_best_checkpoint(METRIC, MODE) or best.checkpoint
    with checkpoint.as_directory() as folder:
        return keras.models.load_model(os.path.join(folder, CHECKPOINT_FILE))


def _log_best(model, normalizer, prepared, config, best, settings, experiment, parent):
    """The best trial's model as a run of its own, named --run-name, with a train run's artefacts."""
    import mlflow

    from caspar.train import log_model_run, run_tags
    history = {k: best.metrics_dataframe[k].tolist() for k in ("loss", "val_loss") if k in best.metrics_dataframe}
    tags = {**run_tags(prepared), "study": settings["run_name"], "mlflow.parentRunId": parent.info.run_id}
    with mlflow.start_run(experiment_id=experiment, run_name=settings["run_name"], tags=tags) as run:
        mlflow.log_params({k: config[k] for k in ("hidden_layers", "dropout_rate", "learning_rate", "batch_size",
                                                  "activation", "optimizer", "encoding_bins")}
                          | {"trial_id": best.path.split("/")[-1]})
        metrics, _, version = log_model_run(model, normalizer, prepared, config, history, settings["model_name"])
    return metrics, run.info.run_id, version


def _log_val_loss_plot(results) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    frames = [r.metrics_dataframe for r in results]
    frames = [f for f in frames if f is not None and METRIC in f and "timestamp" in f]
    start = min((f["timestamp"].min() for f in frames), default=0)
    figure, axis = plt.subplots(figsize=(7, 4))
    for frame in frames:
        axis.plot(frame["timestamp"] - start, frame[METRIC], linewidth=1, marker=".")
    axis.set(xlabel="seconds since the study started", ylabel=METRIC, yscale="log",
             title="Validation loss per trial over time")
    figure.tight_layout()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "val_loss_per_trial.png")
        figure.savefig(path, dpi=100)
        mlflow.log_artifact(path)
    plt.close(figure)


"""Hyperparameter search on Ray Tune: seeded TPE (Optuna) proposes, ASHA stops weak trials early.

The same model code and MLflow conventions as `caspar.train`: every trial is an MLflow run
(logged from the driver) nested under one "study" run; the best trial's model is logged and
registered like a train run, under the study's --run-name. Trials are configured by the fields of
`Hyperparameters`: the search space samples some of them by name, the study fixes the rest.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass

import numpy as np

from caspar import evaluate, storage, tracking
from caspar.cli import UserError, in_ray_job
from caspar.config import Hyperparameters, TrainConfig, TuneConfig, check, hyperparameters
from caspar.dataset import Prepared
from caspar.model import Normalizer

# The search space: fields of Hyperparameters, sampled with seeded TPE (Optuna).
SEARCH_SPACE = {
    "hidden_layers": ("choice", [[128], [256], [128, 128], [256, 256], [354, 354], [512, 512], [256, 256, 256],
                                 [354, 354, 354, 354]]),
    "dropout_rate": ("uniform", 0.0, 0.4),
    "learning_rate": ("loguniform", 1e-4, 1e-2),
    "batch_size": ("choice", [32, 64, 128, 256]),
    "activation": ("choice", ["relu", "gelu", "swish", "sigmoid"]),
    "encoding_bins": ("choice", [0, 8, 16]),
    "weight_decay": ("choice", [0.0, 1e-5, 1e-4, 1e-3]),
    "lr_schedule": ("choice", ["plateau", "cosine"]),
    "ensemble_size": ("choice", [1, 4]),
    "ensemble_kind": ("choice", ["mini", "full"]),
    "ensemble_loss": ("choice", ["average", "members"]),
    "periodic_frequencies": ("choice", [0, 16]),
    "trees": ("choice", [0, 600]),
}
METRIC, MODE = "val_loss", "min"
CHECKPOINT_FILE = "model.keras"
REDUCTION_FACTOR = 3  # of ASHA
STEP_SECONDS = 10.0  # a trial reports at least this often (at an epoch's end), so little is lost when a study's time is up
EPOCH_METRICS = ("loss", "val_loss", "val_mae", "learning_rate")  # per epoch, in MLflow
STEP_METRICS = ("best_val_loss", "cpu_seconds", "startup_seconds")  # per result, in MLflow
PER_EPOCH = "_per_epoch"  # a result's list of every epoch's value since the previous result


def param_space(settings: TuneConfig) -> dict:
    """Every Hyperparameters field: the study's fixed values, with the searched ones as domains."""
    from ray import tune

    fixed = dataclasses.asdict(settings.trial_hyperparameters())
    return fixed | {name: getattr(tune, kind)(*args) for name, (kind, *args) in SEARCH_SPACE.items()}


# --- One trial (runs in a Ray worker) ----------------------------------------------------------------

def milestones(settings: TuneConfig) -> set[int]:
    """The epochs after which ASHA may stop a trial (grace period x reduction factor^k), and the last."""
    rungs, epoch = {settings.epochs}, min(settings.grace_period, settings.epochs)
    while epoch < settings.epochs:
        rungs.add(epoch)
        epoch *= REDUCTION_FACTOR
    return rungs


def trial_class():
    """The Tune Trainable of a trial (defined here: Ray is imported only when tuning)."""
    from ray import tune

    class Trial(tune.Trainable):
        """One trial: each step() trains up to the next epoch at which ASHA may stop the trial (its
        milestones, and the last epoch), or for about STEP_SECONDS if that comes first, and reports
        every epoch's losses at once. ASHA decides exactly as with one result per epoch, since it
        acts only at those epochs, while the driver handles a few results per trial instead of one
        per epoch. The best model so far is the
        step's checkpoint. reset_config lets Tune run the next trial in this process (no TensorFlow
        start-up)."""

        def setup(self, config, data, cpus_per_trial, milestones):
            import ray
            import tensorflow as tf

            threads = max(1, int(cpus_per_trial))
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
            self.data, self.milestones = data, sorted(milestones)
            self.node = ray.get_runtime_context().get_node_id()
            self.start(config)

        def start(self, config):
            from caspar.callbacks import BestEpoch, StopAfterSeconds
            from caspar.train import compiled_model, schedule_callbacks, tf_datasets, validation_loss

            self.started, self.cpu_started, self.startup = time.perf_counter(), time.process_time(), None
            hp = Hyperparameters(**config)
            self.model = compiled_model(hp, self.data["x_train"], self.data["y_train"], trees=self.trees(hp))
            self.batches = tf_datasets(self.data["x_train"], self.data["y_train"], self.data["x_val"], self.data["y_val"],
                                       hp.batch_size, hp.seed)
            self.best = BestEpoch(validation_loss(self.model, self.batches[1]), restore=False)
            self.callbacks = [*schedule_callbacks(hp), self.best, StopAfterSeconds(lambda: self.step_started, STEP_SECONDS)]
            self.epoch = 0

        def trees(self, hp):
            """The study's trees (fitted once, on the driver) for a trial that has them."""
            from caspar.layers import TreeEnsemble

            arrays = self.data.get("trees", {}).get(hp.trees)
            return TreeEnsemble(**arrays) if arrays else None

        def step(self):
            if self.startup is None:
                self.startup = time.perf_counter() - self.started
            train, val = self.batches
            until = next(m for m in self.milestones if m > self.epoch)
            self.step_started = time.perf_counter()
            history = self.model.fit(train, validation_data=val, initial_epoch=self.epoch, epochs=until,
                                     verbose=0, shuffle=False, callbacks=self.callbacks).history
            self.epoch += len(history["loss"])
            per_epoch = {f"{k}{PER_EPOCH}": [float(v) for v in history[k]] for k in EPOCH_METRICS if k in history}
            return {**{k: float(history[k][-1]) for k in EPOCH_METRICS if k in history}, **per_epoch,
                    "epoch": self.epoch, "best_val_loss": self.best.best, "best_epoch": self.best.best_epoch,
                    "cpu_seconds": time.process_time() - self.cpu_started, "startup_seconds": self.startup,
                    "node_id": self.node,  # not a number, not in MLflow
                    "should_checkpoint": self.epoch in self.milestones}

        def save_checkpoint(self, checkpoint_dir):
            current = self.model.get_weights()
            self.model.set_weights(self.best.best_weights)
            self.model.save(os.path.join(checkpoint_dir, CHECKPOINT_FILE))
            self.model.set_weights(current)
            with open(os.path.join(checkpoint_dir, "epoch"), "w") as handle:
                handle.write(str(self.epoch))

        def load_checkpoint(self, checkpoint_dir):
            import keras

            import caspar.layers  # noqa: F401  (custom layers must be known before loading)

            self.model = keras.models.load_model(os.path.join(checkpoint_dir, CHECKPOINT_FILE))
            with open(os.path.join(checkpoint_dir, "epoch")) as handle:
                self.epoch = int(handle.read())

        def reset_config(self, new_config):
            self.start(new_config)
            return True

    return Trial


# --- The study (runs on the driver) -----------------------------------------------------------------

@dataclass
class Study:
    best_config: dict
    best_val_loss: float
    metrics: dict
    trials: int
    stopped_early: int
    unfinished: int  # cut off by the time budget or an interrupt
    errored: int
    run_id: str | None  # None: interrupted, nothing registered
    registered_version: str | None
    verdict: evaluate.Verdict
    fit_on: str
    seconds: float
    interrupted: bool
    tracking_uri: str
    path: str
    core_utilisation: float  # CPU seconds of trials in this session / (wall seconds of the search x cluster CPUs)
    driver_share: float  # the driver's CPU seconds, same denominator
    mean_startup_seconds: float  # trial function entered -> first epoch

    def lines(self) -> list[str]:
        config = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.best_config.items())
        return [
            f"{self.trials} trials in {self.seconds:.0f} s: {self.stopped_early} stopped early by ASHA, "
            f"{self.unfinished} unfinished (time budget or interrupt), {self.errored} failed",
            f"core utilisation {self.core_utilisation:.2f} (trials training; driver and bookkeeping {self.driver_share:.2f}, "
            f"other and idle {max(0.0, 1 - self.core_utilisation - self.driver_share):.2f}), "
            f"trial start-up {self.mean_startup_seconds:.1f} s, {3600 * self.trials / max(self.seconds, 1):.0f} trials per hour",
            f"best: {config}",
            *self.outcome_lines(),
            f"study stored in {self.path} (resume with --resume)",
            tracking.ui_hint(self.tracking_uri),
        ]

    def outcome_lines(self) -> list[str]:
        if self.run_id is None:
            return [f"interrupted after {self.trials} trials, best val_loss {self.best_val_loss:.5f}: nothing registered; "
                    "--resume continues the study (with --register-partial, an interrupted study registers its best)"]
        m = self.metrics
        registered = f", registered version {self.registered_version}" if self.registered_version else ""
        return [
            f"best val_loss {self.best_val_loss:.5f}; refitted on {self.fit_on}: {evaluate.summary_line(m, self.fit_on)}",
            f"best model: run {self.run_id}{registered}",
            *([f"warning: {self.verdict.message}"] if self.verdict.message else []),
        ]


def study_path(settings: TuneConfig) -> str:
    return os.path.join(settings.storage_path or default_storage(), settings.run_name)


def study_storage(settings: TuneConfig):
    """(filesystem, folder) of the study storage: a local folder, or s3:// through the same
    filesystem (endpoint, credentials) as the datasets."""
    if settings.storage_path and storage.is_s3(settings.storage_path):
        return storage.resolve(settings.storage_path)
    return None, settings.storage_path or default_storage()


def default_storage() -> str:
    """./ray_results; in a Ray job ~/ray_results, outside the job's temporary copy of --working-dir."""
    return os.path.expanduser("~/ray_results") if in_ray_job() else os.path.abspath("ray_results")


def check_cpus(settings: TuneConfig) -> None:
    """A trial needs one node with --cpus-per-trial CPUs: without one, Ray would wait for it forever."""
    import ray

    largest = max((node["Resources"].get("CPU", 0) for node in ray.nodes() if node.get("Alive")), default=0)
    if settings.cpus_per_trial > largest:
        raise UserError(f"--cpus-per-trial {settings.cpus_per_trial:g}: no node of this cluster has that many "
                        f"CPUs (the largest has {largest:g})")


def check_storage(settings: TuneConfig) -> None:
    """A study on several nodes needs storage that every node reaches: refuse to guess one."""
    import ray

    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    if settings.storage_path is None and nodes > 1:
        raise UserError(f"--storage-path: this cluster has {nodes} nodes; give storage every node reaches "
                        "(s3://BUCKET/prefix or a shared folder)")


def tune_study(settings: TuneConfig, prepared: Prepared, verbose: bool = False) -> Study:
    """Run the study; without `verbose`, one line per finished trial instead of Ray's tables and the
    trials' own output."""
    import mlflow
    import optuna
    import ray

    check(settings)
    started = time.perf_counter()
    uri = tracking.configure()
    experiment = tracking.experiment_id(settings.experiment_name)
    previous_run = find_study_run(settings, experiment) if settings.resume else None
    if not ray.is_initialized():
        ray.init(logging_level="WARNING", log_to_driver=verbose)
    check_storage(settings)
    check_cpus(settings)
    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)
    logging.getLogger("ray.tune").setLevel(logging.INFO if verbose else logging.ERROR)
    normalizer = Normalizer.fit(prepared.splits["train"][0])
    data = {"x_train": normalizer.transform(prepared.splits["train"][0]), "y_train": prepared.splits["train"][1],
            "x_val": normalizer.transform(prepared.splits["val"][0]), "y_val": prepared.splits["val"][1]}
    data["trees"] = study_trees(settings, data["x_train"], data["y_train"])
    with mlflow.start_run(run_id=previous_run, experiment_id=experiment, run_name=f"{settings.run_name}-study",
                          tags={"study": settings.run_name, "caspar.kind": "study"}) as parent:
        if previous_run is None:
            mlflow.log_dict({k: list(v) for k, v in SEARCH_SPACE.items()}, "search_space.json")
            mlflow.log_params({k: getattr(settings, k) for k in ("n_trials", "epochs", "grace_period", "seed",
                                                                 "cpus_per_trial")})
        tuner = build_tuner(settings, data, uri, parent.info.run_id, verbose)
        search_started, driver_cpu = time.time(), time.process_time()
        results, interrupted = fit_noting_interrupt(tuner)
        driver_cpu = time.process_time() - driver_cpu  # the driver's threads: Tune, Optuna, MLflow logging
        cpu_capacity = (time.time() - search_started) * ray.cluster_resources().get("CPU", 1)
        best = best_result(results)
        summary = summarise(results, best, settings, search_started, cpu_capacity)
        summary["driver_share"] = driver_cpu / max(cpu_capacity, 1e-9)
        log_study(results, best, summary)
        mlflow.set_tag("caspar.interrupted", str(interrupted).lower())
    counts = {"trials": len(results), "stopped_early": summary["stopped_early"], "unfinished": summary["unfinished"],
              "errored": len(results.errors), "tracking_uri": uri, "path": study_path(settings),
              "core_utilisation": summary["core_utilisation"], "driver_share": summary["driver_share"],
              "mean_startup_seconds": summary["mean_trial_startup_seconds"], "fit_on": settings.fit_on,
              "best_val_loss": summary["best_val_loss"], "best_config": {k: best.config[k] for k in SEARCH_SPACE}}
    if interrupted and not settings.register_partial:
        return Study(**counts, metrics={}, run_id=None, registered_version=None, verdict=evaluate.Verdict(""),
                     seconds=time.perf_counter() - started, interrupted=True)
    best_config = TrainConfig(**hyperparameters(best.config), data=settings.data, experiment_name=settings.experiment_name,
                              run_name=settings.run_name, model_name=settings.model_name, alias=settings.alias,
                              fit_on=settings.fit_on)
    metrics, run_id, version, verdict = log_best(best, normalizer, prepared, best_config, parent)
    if verdict.kind == evaluate.REFUSED:
        raise UserError(f"{verdict.message} (run {run_id}, tagged caspar.verdict=refused)")
    return Study(**counts, metrics=metrics, run_id=run_id, registered_version=version, verdict=verdict,
                 seconds=time.perf_counter() - started, interrupted=interrupted)


def fit_noting_interrupt(tuner):
    """(results, interrupted). Tune catches the first Ctrl-C itself: it ends the search, keeping its
    state for --resume, and puts back the SIGINT handler it found; without an interrupt its own
    handler stays. So the handler after the search says whether it was interrupted."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or os.environ.get("TUNE_DISABLE_SIGINT_HANDLER"):
        return tuner.fit(), False  # Tune does not catch Ctrl-C here
    before = signal.getsignal(signal.SIGINT)
    results = tuner.fit()
    interrupted = signal.getsignal(signal.SIGINT) is before
    signal.signal(signal.SIGINT, before)
    return results, interrupted


def study_trees(settings: TuneConfig, x_train, y_train) -> dict[int, dict]:
    """The trees of every tree count a trial may use, fitted once here: {count: TreeEnsemble arrays}."""
    from caspar.model import fit_trees

    counts = set(SEARCH_SPACE["trees"][1]) | {settings.trial_hyperparameters().trees}
    return {n: dict(fit_trees(x_train, y_train, n, settings.seed).arrays) for n in sorted(counts - {0})}  # not Keras's TrackedDict


def find_study_run(settings: TuneConfig, experiment: str) -> str:
    """The MLflow run of the study to resume; a UserError when there is nothing to resume."""
    import mlflow
    from ray import tune

    path = study_path(settings)
    runs = mlflow.search_runs([experiment], f"tags.study = '{settings.run_name}' and tags.`caspar.kind` = 'study'",
                              order_by=["attributes.start_time DESC"], max_results=1, output_format="list")
    filesystem, folder = study_storage(settings)
    if not runs or not tune.Tuner.can_restore(storage.join(folder, settings.run_name), storage_filesystem=filesystem):
        raise UserError(f"--resume: no study named {settings.run_name!r} to resume in {path} and experiment "
                        f"{settings.experiment_name!r}; start it without --resume")
    return runs[0].info.run_id


def build_tuner(settings: TuneConfig, data: dict, tracking_uri: str, parent_run_id: str, verbose: bool):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    warnings.filterwarnings("ignore", message="Choices for a categorical distribution")  # hidden_layers are lists
    trainable = tune.with_resources(
        tune.with_parameters(trial_class(), data=data, cpus_per_trial=settings.cpus_per_trial,
                             milestones=milestones(settings)), {"cpu": settings.cpus_per_trial})
    callbacks = [trial_runs(tracking_uri=tracking_uri, experiment_name=settings.experiment_name,
                            tags={"study": settings.run_name, "mlflow.parentRunId": parent_run_id})]
    if not verbose:
        callbacks.append(trial_printer(settings))
    filesystem, folder = study_storage(settings)
    if settings.resume:  # the callbacks come back from the stored study
        return tune.Tuner.restore(storage.join(folder, settings.run_name), trainable=trainable, resume_errored=True,
                                  param_space=param_space(settings), storage_filesystem=filesystem)
    run_config = tune.RunConfig(
        name=settings.run_name, storage_path=folder, storage_filesystem=filesystem, callbacks=callbacks,
        stop={"epoch": settings.epochs},
        verbose=2 if verbose else 0,
        failure_config=tune.FailureConfig(max_failures=settings.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=settings.keep_checkpoints,
                                                checkpoint_score_attribute="best_val_loss", checkpoint_score_order=MODE))
    return tune.Tuner(
        trainable, param_space=param_space(settings), run_config=run_config,
        tune_config=tune.TuneConfig(
            metric=METRIC, mode=MODE, num_samples=settings.n_trials,
            max_concurrent_trials=concurrency(settings.n_jobs, settings.cpus_per_trial),
            search_alg=OptunaSearch(seed=settings.seed),
            reuse_actors=True,  # a new trial reuses a finished one's process: no TensorFlow start-up
            scheduler=ASHAScheduler(time_attr="epoch", max_t=settings.epochs, grace_period=min(settings.grace_period, settings.epochs),
                                    reduction_factor=REDUCTION_FACTOR),
            time_budget_s=settings.time_budget))


def concurrency(n_jobs: int, cpus_per_trial: float) -> int:
    import ray

    if n_jobs > 0:
        return n_jobs
    return max(1, int(ray.cluster_resources().get("CPU", 1) // cpus_per_trial))


def trial_runs(**kwargs):
    """Ray's MLflowLoggerCallback (on the driver), made resume-safe."""
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    class TrialRuns(MLflowLoggerCallback):
        """One MLflow run per trial, also across --resume: a trial that already has a run in this
        study continues it instead of getting a second one. A result's metrics (every epoch since the
        last one) go in one batch: Ray's own callback writes every value separately, which held the
        driver (and so the trials waiting on it) for half a second per epoch. Synchronously: with
        MLflow's asynchronous logging, ending a run waits up to a second for its logging thread to
        stop, and the next trial waits with it (measured: 0.9 s idle per trial)."""

        def log_trial_result(self, iteration, trial, result):
            import mlflow
            from mlflow.entities import Metric

            now, last = int(time.time() * 1000), result["epoch"]
            metrics = [Metric(key, float(result[key]), now, last) for key in STEP_METRICS if key in result]
            for key in EPOCH_METRICS:
                values = result.get(key + PER_EPOCH, [])
                metrics += [Metric(key, value, now, last - len(values) + 1 + i) for i, value in enumerate(values)]
            mlflow.MlflowClient(self.tracking_uri).log_batch(self._trial_runs[trial], metrics=metrics)

        def log_trial_start(self, trial):
            if trial not in self._trial_runs:
                import mlflow

                existing = mlflow.MlflowClient(self.tracking_uri).search_runs(
                    [self.mlflow_util.experiment_id], f"tags.study = '{self.tags['study']}' and tags.trial_name = '{trial}'")
                if existing:
                    self._trial_runs[trial] = existing[0].info.run_id
            super().log_trial_start(trial)

    return TrialRuns(**kwargs)


def trial_printer(settings: TuneConfig):
    """One line per finished trial: its result and the best so far."""
    from ray import tune

    class TrialPrinter(tune.Callback):
        def __init__(self):
            self.finished, self.best = 0, np.inf

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.finished += 1
            epochs = (trial.last_result or {}).get("epoch", 0)
            loss = float(trial.metric_analysis.get(METRIC, {}).get("min", np.nan))
            self.best = min(self.best, loss)
            stopped = " (stopped by ASHA)" if epochs < settings.epochs else ""
            print(f"trial {self.finished}/{settings.n_trials} ({trial.trial_id}): best val_loss {loss:.5f} "
                  f"in {epochs} epochs{stopped}; best of the study {self.best:.5f}", flush=True)

    return TrialPrinter()


# --- After the search --------------------------------------------------------------------------------

def summarise(results, best, settings: TuneConfig, session_started: float, cpu_capacity: float) -> dict:
    """Figures of this session only (a resumed study's earlier sessions are not counted)."""
    cpu_seconds, startups = 0.0, []
    for result in results:
        frame = result.metrics_dataframe
        if frame is None or "cpu_seconds" not in frame:
            continue
        previous = 0.0
        for cpu, startup, timestamp in zip(frame["cpu_seconds"], frame["startup_seconds"], frame["timestamp"]):
            restarted = cpu < previous or previous == 0.0  # a new process ran the trial from here
            if timestamp >= int(session_started):
                cpu_seconds += cpu if restarted else cpu - previous
                if restarted:
                    startups.append(startup)
            previous = cpu
    return {
        "best_val_loss": float(best.metrics_dataframe["best_val_loss"].min()),
        "trials": len(results),
        # ASHA's stop marks the trial's last result done; the time budget and an interrupt do not
        "stopped_early": sum(1 for r in results if not r.error and (r.metrics or {}).get("done")
                             and r.metrics.get("epoch", 0) < settings.epochs),
        "unfinished": sum(1 for r in results if not r.error and not (r.metrics or {}).get("done")),
        "core_utilisation": cpu_seconds / max(cpu_capacity, 1e-9),
        "mean_trial_startup_seconds": float(np.mean(startups)) if startups else 0.0,
    }


def log_study(results, best, summary: dict) -> None:
    import mlflow

    mlflow.log_dict(dict(best.config), "best_config.json")
    mlflow.log_metrics(summary)
    _log_val_loss_plot(results)


def best_result(results):
    """The trial with the lowest validation loss among those that saved a checkpoint (a study's
    time budget can stop a trial before its first)."""
    with_checkpoint = [r for r in results if r.checkpoint is not None and r.metrics_dataframe is not None
                       and "best_val_loss" in r.metrics_dataframe]
    if not with_checkpoint:
        raise UserError("no trial got far enough to save a model: give the study more --time-budget "
                        "or a smaller --grace-period")
    return min(with_checkpoint, key=lambda r: float(r.metrics_dataframe["best_val_loss"].min()))


def load_best_model(best):
    import keras

    import caspar.layers  # noqa: F401  (custom layers must be known before loading)

    checkpoint = best.get_best_checkpoint("best_val_loss", MODE) or best.checkpoint
    with checkpoint.as_directory() as folder:
        return keras.models.load_model(os.path.join(folder, CHECKPOINT_FILE))


def best_history(best) -> dict:
    """The best trial's run as `caspar.train.fit` reports one: every epoch's losses and learning
    rate, and the epoch of its best validation loss (0: its untrained model, the trees alone)."""
    frame = best.metrics_dataframe
    history = {k: [v for values in frame[k + PER_EPOCH] for v in values] for k in EPOCH_METRICS if k + PER_EPOCH in frame}
    history["best_epoch"] = int(frame["best_epoch"].iloc[int(np.argmin(frame["best_val_loss"].to_numpy()))])
    return history


def log_best(best, normalizer, prepared, config: TrainConfig, parent):
    """The best trial's model as a run of its own, named --run-name, with a train run's artefacts
    and the same parameter names as a train run: refitted on the games of --fit-on for the epochs
    of its best validation loss, scored with every baseline, registered unless the verdict refuses."""
    import mlflow

    from caspar.train import Fitted, log_model_run, register, release, run_tags

    history = best_history(best)
    chosen = Fitted(load_best_model(best), normalizer, ("train",))
    tags = {**run_tags(prepared), "study": config.run_name, "mlflow.parentRunId": parent.info.run_id}
    with mlflow.start_run(experiment_id=parent.info.experiment_id, run_name=config.run_name, tags=tags) as run:
        mlflow.log_params(hyperparameters(config) | {"fit_on": config.fit_on, "data": config.data,
                                                     "trial_id": best.path.rstrip("/").split("/")[-1]})
        scored, shipped = release(config, prepared.splits, chosen, history, config.fit_on)
        metrics, model_uri, verdict = log_model_run(chosen, scored, shipped, prepared, config, history)
        version = register(model_uri, config, metrics, verdict)
    return metrics, run.info.run_id, version, verdict


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

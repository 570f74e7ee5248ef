"""What a study records and reports: one MLflow run per trial, a line per finished trial, and the
summary of the study (its figures, the best trial, the plot of every trial's validation loss)."""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field

import mlflow
import numpy as np
from mlflow.entities import Metric, Param, RunTag
from ray import tune

from caspar import tracking
from caspar.config import TuneConfig
from caspar.errors import UserError
from caspar.progress import Every, since
from caspar.training import evaluate
from caspar.tuning import cpu
from caspar.tuning.trial import EPOCH_METRICS, PER_EPOCH, PHASES, STEP_METRICS

# What ASHA ranks trials by at its milestones, what TPE minimises and what chooses the best checkpoint:
# a trial's best validation loss so far, the loss of the weights it would ship (its last epoch's
# loss would let one noisy epoch stop the study's best trial).
METRIC, MODE = "best_val_loss", "min"


# --- While the study runs (Tune callbacks, on the driver) ----------------------------------------------

class TrialRuns(tune.Callback):
    """One MLflow run per trial, nested under the study's run, also across --resume: a trial that
    already has a run in this study continues it. A result's metrics (every epoch since the last
    one) go in one synchronous batch, so that the trials waiting on the driver are not held."""

    def __init__(self, tracking_uri: str, experiment_id: str, study: str, parent_run_id: str):
        self.tracking_uri, self.experiment_id, self.study, self.parent_run_id = \
            tracking_uri, experiment_id, study, parent_run_id
        self.runs: dict[str, str] = {}  # trial id -> MLflow run id

    def client(self) -> mlflow.MlflowClient:
        return mlflow.MlflowClient(self.tracking_uri)

    def on_trial_start(self, iteration, trials, trial, **info):
        if trial.trial_id in self.runs:
            return
        client = self.client()
        earlier = client.search_runs([self.experiment_id], f"tags.study = {tracking.literal(self.study)} "
                                                           f"and tags.trial_name = {tracking.literal(str(trial))}")
        if earlier:
            self.runs[trial.trial_id] = earlier[0].info.run_id
            return
        tags = {"study": self.study, "trial_name": str(trial), "mlflow.parentRunId": self.parent_run_id}
        run = client.create_run(self.experiment_id, run_name=str(trial), tags=tags)
        client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in trial.config.items()])
        self.runs[trial.trial_id] = run.info.run_id

    def on_trial_result(self, iteration, trials, trial, result, **info):
        now, last = int(time.time() * 1000), result["epoch"]
        metrics = [Metric(key, float(result[key]), now, last) for key in STEP_METRICS if key in result]
        for key in EPOCH_METRICS:
            values = result.get(key + PER_EPOCH, [])
            metrics += [Metric(key, value, now, last - len(values) + 1 + i) for i, value in enumerate(values)]
        self.client().log_batch(self.runs[trial.trial_id], metrics=metrics)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.end(trial, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.end(trial, "FAILED")

    def end(self, trial, status: str) -> None:
        if trial.trial_id in self.runs:
            self.client().log_batch(self.runs[trial.trial_id], tags=[RunTag("trial_status", status.lower())])
            self.client().set_terminated(self.runs[trial.trial_id], status)


class TrialPrinter(tune.Callback):
    """One line per finished trial: its result and the best so far; between them, a line now and
    then with the trials running and their epochs (a trial may take minutes)."""

    def __init__(self, config: TuneConfig):
        self.trials, self.epochs = config.n_trials, config.epochs
        self.finished, self.best = 0, np.inf
        self.started, self.every = time.perf_counter(), Every(lambda line: print(line, flush=True))

    def on_step_end(self, iteration, trials, **info):
        def line() -> str:
            running = [t for t in trials if t.status == "RUNNING"]
            epochs = ", ".join(str((t.last_result or {}).get("epoch", 0)) for t in running)
            best = f"; best val_loss so far {self.best:.5f}" if np.isfinite(self.best) else ""
            return (f"search: {self.finished} of {self.trials} trials finished, {len(running)} running"
                    f"{f' (epochs done: {epochs})' if running else ''}{best} ({since(self.started)})")
        self.every(line)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.finished += 1
        epochs = (trial.last_result or {}).get("epoch", 0)
        loss = float(trial.metric_analysis.get(METRIC, {}).get("min", np.nan))
        self.best = min(self.best, loss)
        self.every.reset()
        stopped = " (stopped by ASHA)" if epochs < self.epochs else ""
        print(f"trial {self.finished}/{self.trials} ({trial.trial_id}): best val_loss {loss:.5f} "
              f"in {epochs} epochs{stopped}; best of the study {self.best:.5f}", flush=True)


# --- After the search -------------------------------------------------------------------------------

def best_checkpoint(results):
    """(result, checkpoint, its metrics) of the lowest validation loss any trial saved a
    checkpoint with: the figure is always that of the weights that load."""
    saved = [(result, checkpoint, metrics) for result in results
             for checkpoint, metrics in (result.best_checkpoints or []) if "best_val_loss" in metrics]
    if not saved:
        raise UserError("no trial got far enough to save a model: give the study more --time-budget "
                        "or a smaller --grace-period")
    return min(saved, key=lambda item: item[2]["best_val_loss"])


def prune_checkpoints(results, keep) -> int:
    """Deletes every trial's checkpoints but `keep` (the best model's) once a study has ended: a
    finished trial is never resumed. Returns how many were deleted."""
    deleted = 0
    for result in results:
        for checkpoint, _ in result.best_checkpoints or []:
            if checkpoint.path != keep.path:
                checkpoint.filesystem.delete_dir(checkpoint.path)
                deleted += 1
    return deleted


def best_history(result, checkpoint_metrics: dict) -> dict:
    """The best trial's run up to its checkpoint, as `caspar.training.train.fit` reports one: every epoch's
    losses and learning rate, and the epoch of its best validation loss (0: its untrained model,
    the trees alone)."""
    frame = result.metrics_dataframe
    frame = frame[frame["epoch"] <= checkpoint_metrics["epoch"]]
    history = {k: [v for values in frame[k + PER_EPOCH] for v in values] for k in EPOCH_METRICS if k + PER_EPOCH in frame}
    history["best_epoch"] = int(checkpoint_metrics["best_epoch"])
    history["best_val_loss"] = float(checkpoint_metrics["best_val_loss"])
    return history


@dataclass
class SearchSummary:
    """Figures of one session of the search (a resumed study's earlier sessions are not counted)."""
    trials: int
    stopped_early: int  # by ASHA
    unfinished: int  # cut off by the time budget or an interrupt
    mean_trial_startup_seconds: float  # trial function entered -> first epoch
    trial_phases: dict[str, float]  # the trials' CPU seconds per phase (caspar.tuning.trial.PHASES)
    worker_pids: set[int]  # the processes that ran them

    def metrics(self) -> dict[str, float]:
        return {"trials": self.trials, "stopped_early": self.stopped_early, "unfinished": self.unfinished,
                "mean_trial_startup_seconds": self.mean_trial_startup_seconds}


def summarise(results, config: TuneConfig, session_started: float) -> SearchSummary:
    phases: dict[str, float] = dict.fromkeys(PHASES, 0.0)
    by_process: dict[int, dict] = {}
    startups = []
    for result in results:
        frame = result.metrics_dataframe
        if frame is None or "cpu_training" not in frame:
            continue
        frame = frame[frame["timestamp"] >= int(session_started)]
        for row in frame.to_dict("records"):
            by_process[int(row["pid"])] = row  # the cumulative figures of a process: its last report
        startups += frame.drop_duplicates("trial_id")["startup_seconds"].tolist()
    for row in by_process.values():
        for phase in PHASES:
            phases[phase] += float(row.get(f"cpu_{phase}", 0.0))
    return SearchSummary(
        trials=len(results),
        # ASHA's stop marks the trial's last result done; the time budget and an interrupt do not
        stopped_early=sum(1 for r in results if not r.error and (r.metrics or {}).get("done")
                          and r.metrics.get("epoch", 0) < config.epochs),
        unfinished=sum(1 for r in results if not r.error and not (r.metrics or {}).get("done")),
        mean_trial_startup_seconds=float(np.mean(startups)) if startups else 0.0,
        trial_phases=phases, worker_pids=set(by_process))


def log_study(results, best_config: dict, summary: SearchSummary, best_val_loss: float, cpu_parts: dict[str, float]) -> None:
    mlflow.log_dict(best_config, "best_config.json")
    mlflow.log_metrics(summary.metrics() | {"best_val_loss": best_val_loss})
    mlflow.log_metrics({f"cpu_share_{name}": value for name, value in cpu.shares(cpu_parts).items()})
    log_val_loss_plot(results)


def log_val_loss_plot(results) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = [r.metrics_dataframe for r in results]
    frames = [f for f in frames if f is not None and METRIC in f and "timestamp" in f]
    start = min((f["timestamp"].min() for f in frames), default=0)
    figure, axis = plt.subplots(figsize=(7, 4))
    for frame in frames:
        axis.plot(frame["timestamp"] - start, frame[METRIC], linewidth=1, marker=".")
    axis.set(xlabel="seconds since the study started", ylabel=METRIC, yscale="log",
             title="Best validation loss per trial over time")
    figure.tight_layout()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "val_loss_per_trial.png")
        figure.savefig(path, dpi=100)
        mlflow.log_artifact(path)
    plt.close(figure)


@dataclass
class Study:
    """What the tune job prints at the end."""
    best_config: dict
    best_val_loss: float
    trials: int
    stopped_early: int
    unfinished: int  # cut off by the time budget or an interrupt
    errored: int
    fit_on: str
    interrupted: bool
    tracking_uri: str
    experiment_id: str
    path: str
    cpu_parts: dict  # CPU seconds of this machine over the study, per part (caspar.tuning.cpu)
    mean_startup_seconds: float  # trial function entered -> first epoch
    tree_seconds: float  # the tree search, before the trials
    search_seconds: float  # the trials (Ray Tune's search)
    seconds: float = 0.0  # the whole study
    # the best trial's model, once scored and logged (None: interrupted, nothing registered)
    metrics: dict = field(default_factory=dict)
    run_id: str | None = None
    registered_version: str | None = None
    verdict: evaluate.Verdict = field(default_factory=lambda: evaluate.Verdict(""))

    def lines(self) -> list[str]:
        config = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.best_config.items())
        return [
            f"{self.trials} trials in {self.search_seconds:.0f} s of search: {self.stopped_early} stopped early by ASHA, "
            f"{self.unfinished} unfinished (time budget or interrupt), {self.errored} failed; the trees "
            f"{self.tree_seconds:.0f} s before it; {self.seconds:.0f} s in all",
            cpu.line(self.cpu_parts),
            f"trial start-up {self.mean_startup_seconds:.1f} s, "
            f"{3600 * self.trials / max(self.search_seconds, 1):.0f} trials per hour of search",
            f"best: {config}",
            *self.outcome_lines(),
            f"study stored in {self.path}" + (" (continue it with --resume)" if self.interrupted else ""),
            tracking.ui_hint(self.tracking_uri, self.experiment_id),
        ]

    def outcome_lines(self) -> list[str]:
        if self.run_id is None:
            return [f"interrupted after {self.trials} trials, best val_loss {self.best_val_loss:.5f}: nothing registered; "
                    "--resume continues the study (with --register-partial, an interrupted study registers its best)"]
        registered = f", registered version {self.registered_version}" if self.registered_version else ""
        return [
            f"best val_loss {self.best_val_loss:.5f}; trees fitted on {self.fit_on}: "
            f"{evaluate.summary_line(self.metrics, self.fit_on)}",
            f"best model: run {self.run_id}{registered}",
            *([f"warning: {self.verdict.message}"] if self.verdict.message else []),
        ]

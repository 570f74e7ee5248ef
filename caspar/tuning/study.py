"""What a study records and reports: one MLflow run per trial, a line per finished trial, and the
summary of the study (its figures, the best trial, the plot of every trial's validation loss)."""
from __future__ import annotations

import logging
import math
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
from caspar.progress import Every, since
from caspar.training import evaluate
from caspar.training.fit import History
from caspar.tuning import cpu
from caspar.tuning.trial import EPOCH_METRICS, PER_EPOCH, PHASES, STEP_METRICS

log = logging.getLogger(__name__)  # the jobs' shell prints its INFO lines (caspar.cli)

# What ASHA ranks trials by at its milestones, what TPE minimises and what chooses the best checkpoint:
# a trial's best validation loss so far, the loss of the weights it would ship (its last epoch's
# loss would let one noisy epoch stop the study's best trial).
METRIC, MODE = "best_val_loss", "min"


# --- While the study runs (Tune callbacks, on the driver) ----------------------------------------------

RETRIES_TAG = "trial_retries"  # on a trial's run: how often its worker was lost and the trial started again


class TrialRuns(tune.Callback):
    """One MLflow run per trial, nested under the study's run, also across --resume: a trial that
    already has a run in this study continues it. A result's metrics (every epoch since the last
    one) go in one synchronous batch, so that the trials waiting on the driver are not held.

    Args:
        tracking_uri: the tracking store.
        experiment_id: the study's experiment.
        study: the study's name (--run-name).
        parent_run_id: the study's run.
    """

    def __init__(self, tracking_uri: str, experiment_id: str, study: str, parent_run_id: str):
        self.tracking_uri, self.experiment_id, self.study, self.parent_run_id = \
            tracking_uri, experiment_id, study, parent_run_id
        self.runs: dict[str, str] = {}  # trial id -> MLflow run id
        self.ended: set[str] = set()  # trials whose run has been ended

    def client(self) -> mlflow.MlflowClient:
        """Returns an MlflowClient of the study's tracking store."""
        return mlflow.MlflowClient(self.tracking_uri)

    def on_trial_start(self, iteration, trials, trial, **info):
        if trial.trial_id in self.runs:
            if trial.trial_id in self.__dict__.setdefault("ended", set()):  # a trial a resumed study continues
                self.ended.discard(trial.trial_id)
                self.client().update_run(self.runs[trial.trial_id], "RUNNING")
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
        now, last = int(time.time() * 1000), result.get("epoch", result.get("fold", 0))  # a network's epochs, a recipe's folds
        metrics = [Metric(key, float(result[key]), now, last) for key in STEP_METRICS if key in result]
        for key in EPOCH_METRICS:
            values = result.get(key + PER_EPOCH, [])
            metrics += [Metric(key, value, now, last - len(values) + 1 + i) for i, value in enumerate(values)]
        self.client().log_batch(self.runs[trial.trial_id], metrics=metrics)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.end(trial, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.end(trial, "FAILED")
        error = trial.get_error()
        last = [line for line in str(error or "").splitlines() if line.strip()][-1:] or ["no error recorded"]
        log.warning(f"trial {trial.trial_id} failed: {last[0].strip()[:300]} (the whole error: "
                    f"{trial.error_file or 'in the study folder'})")

    def on_trial_recover(self, iteration, trials, trial, **info):
        """A trial whose worker died (its process killed, its node lost) and that Tune starts again
        from its last checkpoint (or from the beginning, before its first): said once; its run counts
        it when it ends (tag trial_retries)."""
        where = "from its last checkpoint" if trial.checkpoint else "from the beginning (no checkpoint yet)"
        log.info(f"trial {trial.trial_id} lost its worker (the process or its node ended): started again {where} "
                 f"(retry {trial.num_failures} of {trial.max_failures})")

    def end(self, trial, status: str) -> None:
        """Ends a trial's run once, tagged with its status and how often it was started again.

        Args:
            trial: a Tune trial.
            status: MLflow's run status (FINISHED, FAILED, KILLED).
        """
        if trial.trial_id in self.runs and trial.trial_id not in self.__dict__.setdefault("ended", set()):
            retries = [RunTag(RETRIES_TAG, str(trial.num_failures))] if trial.num_failures else []
            self.client().log_batch(self.runs[trial.trial_id], tags=[RunTag("trial_status", status.lower()), *retries])
            self.client().set_terminated(self.runs[trial.trial_id], status)
            self.ended.add(trial.trial_id)

    def on_experiment_end(self, trials, **info):
        """No trial's run stays RUNNING: one cut off by the time budget or an interrupt, or lost with
        its node, ends KILLED (FAILED if it errored)."""
        for trial in trials:
            self.end(trial, "FAILED" if trial.status == "ERROR" else "KILLED")


def retried_trials(tracking_uri: str, experiment_id: str, study: str) -> int:
    """How many of a study's trials were started again after losing their worker, from their runs'
    tags (kept across --resume, where Tune's own callbacks are restored copies).

    Args:
        tracking_uri: the tracking store.
        experiment_id: the study's experiment.
        study: the study's name.

    Returns:
        The count.
    """
    runs = mlflow.MlflowClient(tracking_uri).search_runs(
        [experiment_id], f"tags.study = {tracking.literal(study)} and tags.{RETRIES_TAG} LIKE '%'")
    return len(runs)


class TrialPrinter(tune.Callback):
    """Logs (caspar.tuning.study, INFO) one line per finished trial: its kind, its result and the best so far of its kind; between
    them, a line now and then with the trials running and how far each is (a trial may take minutes).

    Args:
        config: the study's options (n_trials, epochs).
        folds: the game folds a recipe trial fits.
    """

    def __init__(self, config: TuneConfig, folds: int):
        self.trials, self.epochs, self.folds = config.n_trials, config.epochs, folds
        self.finished, self.best = 0, {}
        self.started, self.every = time.perf_counter(), Every(log.info)

    def on_step_end(self, iteration, trials, **info):
        def line() -> str:
            running = [t for t in trials if t.status == "RUNNING"]
            where = ", ".join(progress(t.last_result or {}) for t in running)
            return (f"search: {self.finished} of {self.trials} trials finished, {len(running)} running"
                    f"{f' ({where})' if running else ''} ({since(self.started)})")
        self.every(line)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.finished += 1
        kind = trial.config.get("kind", "network")
        result = trial.last_result or {}
        loss = float(trial.metric_analysis.get(METRIC, {}).get("min", np.nan))
        self.best[kind] = min(self.best.get(kind, np.inf), loss)
        self.every.reset()
        if kind == "trees":
            folds = result.get("fold", 0)
            what = (f"{trial.config.get('tree_learners')} recipe: the study's trees with it blended in, MSE on the "
                    f"validation games {loss:.5f} after {folds} of {self.folds} folds"
                    f"{' (stopped by ASHA)' if folds < self.folds else ''}")
        else:
            epochs = result.get("epoch", 0)
            base = "the study's trees with its correction" if trial.config.get("trees") else "alone"
            what = (f"network ({base}): best val_loss {loss:.5f} in {epochs} epochs"
                    f"{' (stopped by ASHA)' if epochs < self.epochs else ''}")
        log.info(f"trial {self.finished}/{self.trials} ({trial.trial_id}), {what}; best {kind} so far "
                 f"{self.best[kind]:.5f}")


def progress(result: dict) -> str:
    """How far a running trial is.

    Args:
        result: its last result.

    Returns:
        "fold 3" for a recipe, "epoch 7" for a network.
    """
    return f"fold {result['fold']}" if "fold" in result else f"epoch {result.get('epoch', 0)}"


# --- After the search -------------------------------------------------------------------------------

def prune_checkpoints(results, keep=None) -> int:
    """Deletes every trial's checkpoints but one once a study has ended and its model is logged: a
    finished trial is never resumed.

    Args:
        results: Ray Tune's ResultGrid.
        keep: the checkpoint kept (the shipped network's), or None.

    Returns:
        How many were deleted.
    """
    import pyarrow.fs as pafs

    deleted = 0
    for result in results:
        if result.filesystem is None or not result.path:
            continue
        for entry in result.filesystem.get_file_info(pafs.FileSelector(result.path, allow_not_found=True)):
            if entry.type == pafs.FileType.Directory and entry.base_name.startswith("checkpoint_") \
                    and (keep is None or entry.path.rstrip("/") != keep.path.rstrip("/")):
                result.filesystem.delete_dir(entry.path)
                deleted += 1
    return deleted


def trial_intervals(results, since: float, held: dict[str, tuple[float, float]] | None = None,
                    until: float | None = None) -> tuple[list[tuple[float, float]], set[tuple[str, str]]]:
    """When each trial of this session held its CPUs, and where.

    Args:
        results: Ray Tune's ResultGrid.
        since: the session's start (time.time()): earlier reports are a resumed study's.
        held: {trial id: (start, end)} of its MLflow run (trial_run_times): from its start on the
            driver to its end, which for a trial the time budget cut off mid-step is after its
            last report, and for one cut off before its first report the only record it ran.
        until: the time budget's end, if any: what trials do after it (Tune stopping them) is not
            search.

    Returns:
        (intervals, nodes): each trial's (start, end) in time.time() seconds (from its first report
        less that report's time and its set-up, or its run's start if earlier, to its last report
        or its run's end if later), and the (kind, node) pairs.
    """
    spans, nodes = dict(held or {}), set()
    for result in results:
        frame = result.metrics_dataframe
        if frame is None or "timestamp" not in frame or frame.empty:
            continue
        frame = frame[frame["timestamp"] >= int(since)]
        if frame.empty:
            continue
        first = frame.iloc[0]  # its first report, less that step's time and the trial's set-up before it
        set_up = float(first.get("startup_seconds", 0.0) or 0.0)
        start = float(first["timestamp"]) - float(first.get("time_this_iter_s", 0.0)) - set_up
        end = float(frame["timestamp"].iloc[-1])
        trial = str(frame["trial_id"].iloc[-1]) if "trial_id" in frame else str(id(result))
        run_start, run_end = spans.get(trial, (start, end))
        spans[trial] = (min(start, run_start), max(end, run_end))
        if "node_id" in frame:
            nodes |= {((result.config or {}).get("kind", "network"), node) for node in frame["node_id"].dropna()}
    until = math.inf if until is None else until
    clipped = [(max(start, since), min(end, until)) for start, end in spans.values()]
    intervals = [(start, end) for start, end in clipped if end > start]
    return intervals, nodes


def trial_run_times(tracking_uri: str, experiment_id: str, study: str) -> dict[str, tuple[float, float]]:
    """{trial id: (start, end)} in time.time() seconds of each ended trial run of a study (TrialRuns
    starts a trial's run as Tune starts the trial and ends it as Tune ends it).

    Args:
        tracking_uri: the tracking store.
        experiment_id: the study's experiment.
        study: the study's name.

    Returns:
        The runs' times by trial id (the end of its Tune trial name, Trial_<id>).
    """
    runs = mlflow.MlflowClient(tracking_uri).search_runs(
        [experiment_id], f"tags.study = {tracking.literal(study)} and tags.trial_name LIKE '%'", max_results=50000)
    return {run.data.tags["trial_name"].rsplit("_", 1)[-1]: (run.info.start_time / 1000, run.info.end_time / 1000)
            for run in runs if run.info.end_time}


def best_history(result, checkpoint_metrics: dict) -> History:
    """The best network trial's run up to its checkpoint, as `caspar.training.fit.fit` reports one.

    Args:
        result: the trial's Result.
        checkpoint_metrics: the metrics its checkpoint was saved with.

    Returns:
        Its History: every epoch's losses and learning rate, and the epoch of its best validation
        loss (0: its untrained model, the trees alone).
    """
    frame = result.metrics_dataframe
    frame = frame[frame["epoch"] <= checkpoint_metrics["epoch"]]
    losses = {k: [v for values in frame[k + PER_EPOCH] for v in values] for k in EPOCH_METRICS if k + PER_EPOCH in frame}
    return History(losses, int(checkpoint_metrics["best_epoch"]), float(checkpoint_metrics["best_val_loss"]))


@dataclass
class SearchSummary:
    """Figures of one session of the search (a resumed study's earlier sessions are not counted)."""
    trials: int
    stopped_early: int  # by ASHA
    unfinished: int  # cut off by the time budget or an interrupt
    mean_trial_startup_seconds: float  # trial function entered -> first epoch
    trial_phases: dict[str, float]  # the trials' CPU seconds per phase (caspar.tuning.trial.PHASES)
    worker_pids: set[int]  # the processes that ran them
    kinds: dict[str, int] = field(default_factory=dict)  # trials per kind (network, trees)

    def metrics(self) -> dict[str, float]:
        """Returns the summary as MLflow metrics."""
        return {"trials": self.trials, "stopped_early": self.stopped_early, "unfinished": self.unfinished,
                "mean_trial_startup_seconds": self.mean_trial_startup_seconds,
                **{f"trials_{kind}": count for kind, count in self.kinds.items()}}


def completed(result, config: TuneConfig) -> bool:
    """Whether a trial ran to its end.

    Args:
        result: the trial's Result.
        config: the study's options (epochs).

    Returns:
        True for a network that trained all its epochs, a recipe that fitted all its folds.
    """
    metrics = result.metrics or {}
    if (result.config or {}).get("kind") == "trees":
        return metrics.get("fold", 0) >= (result.config or {}).get("tree_folds", 0)
    return metrics.get("epoch", 0) >= config.epochs


def summarise(results, config: TuneConfig, session_started: float) -> SearchSummary:
    """Figures of this session of the search.

    Args:
        results: Ray Tune's ResultGrid.
        config: the study's options.
        session_started: when this session's search began (time.time()).

    Returns:
        The SearchSummary: trials, stopped early, unfinished, start-up, CPU per phase, their processes.
    """
    phases: dict[str, float] = dict.fromkeys(PHASES, 0.0)
    by_process: dict[int, dict] = {}
    startups = []
    kinds: dict[str, int] = {}
    for result in results:
        kind = (result.config or {}).get("kind", "network")
        kinds[kind] = kinds.get(kind, 0) + 1
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
        stopped_early=sum(1 for r in results if not r.error and (r.metrics or {}).get("done") and not completed(r, config)),
        unfinished=sum(1 for r in results if not r.error and not (r.metrics or {}).get("done")),
        mean_trial_startup_seconds=float(np.mean(startups)) if startups else 0.0,
        trial_phases=phases, worker_pids=set(by_process), kinds=kinds)


def log_study(results, cpu_parts: dict[str, float]) -> None:
    """Logs to the active (study) run where the CPU went and the trials' losses over time.

    Args:
        results: Ray Tune's ResultGrid.
        cpu_parts: CPU seconds per part (caspar.tuning.cpu).
    """
    mlflow.log_metrics({f"cpu_share_{name}": value for name, value in cpu.shares(cpu_parts).items()})
    log_val_loss_plot(results)


def log_val_loss_plot(results) -> None:
    """Logs a plot of every trial's loss over the study's time to the active run.

    Args:
        results: Ray Tune's ResultGrid.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = [r.metrics_dataframe for r in results]
    frames = [f for f in frames if f is not None and METRIC in f and "timestamp" in f]
    start = min((f["timestamp"].min() for f in frames), default=0)
    figure, axis = plt.subplots(figsize=(7, 4))
    for result in results:
        frame = result.metrics_dataframe
        if frame is None or METRIC not in frame or "timestamp" not in frame:
            continue
        tree = (result.config or {}).get("kind") == "trees"
        axis.plot(frame["timestamp"] - start, frame[METRIC], linewidth=1, marker="s" if tree else ".",
                  color="tab:green" if tree else "tab:blue")
    axis.set(xlabel="seconds since the study started", ylabel="validation loss (recipes: blended into the trees)",
             yscale="log", title="Trials over time: tree recipes (green), networks (blue)")
    figure.tight_layout()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "val_loss_per_trial.png")
        figure.savefig(path, dpi=100)
        mlflow.log_artifact(path)
    plt.close(figure)


@dataclass
class Study:
    """What the tune job prints at the end."""
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
    tree_seconds: float  # the study's own trees, before the trials
    search_seconds: float  # the trials (Ray Tune's search)
    kinds: dict = field(default_factory=dict)  # trials per kind
    seconds: float = 0.0  # the whole study
    # the study's model, once chosen, scored and logged (None: interrupted, nothing registered)
    metrics: dict = field(default_factory=dict)
    run_id: str | None = None
    registered_version: str | None = None
    verdict: evaluate.Verdict = field(default_factory=lambda: evaluate.Verdict(""))
    ensemble_lines: list[str] = field(default_factory=list)
    serial_share: float | None = None  # of the wall time, fewer fits running than the cluster holds
    capacity: int = 0  # fits the cluster holds at once
    nodes: dict = field(default_factory=dict)  # kind -> nodes its fits ran on
    model_name: str = "CASPAR"
    retried: int = 0  # trials started again after their worker was lost (a process killed, a node gone)

    def lines(self) -> list[str]:
        """Returns what the tune job prints at its end: the search's figures, what shipped, its scores."""
        kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(self.kinds.items()))
        lines = [
            f"{self.trials} trials ({kinds}) in {self.search_seconds:.0f} s of search: {self.stopped_early} stopped "
            f"early by ASHA, {self.unfinished} unfinished (time budget or interrupt), {self.errored} failed"
            f"{f', {self.retried} started again after losing their worker' if self.retried else ''}; the study's "
            f"trees {self.tree_seconds:.0f} s before it; {self.seconds:.0f} s in all",
            cpu.line(self.cpu_parts),
            f"trial start-up {self.mean_startup_seconds:.1f} s, "
            f"{3600 * self.trials / max(self.search_seconds, 1):.0f} trials per hour of search",
        ]
        if self.serial_share is not None:
            lines.append(f"fits ran on {self.nodes.get('trees', 0)} node(s) for trees, {self.nodes.get('network', 0)} for "
                         f"networks; fewer than the {self.capacity} fits the cluster holds ran during "
                         f"{100 * self.serial_share:.0f} % of the study (its serial share)")
        return [*lines, *self.outcome_lines(),
                f"study stored in {self.path}" + (" (continue it with --resume)" if self.interrupted else ""),
                tracking.ui_hint(self.tracking_uri, self.experiment_id)]

    def outcome_lines(self) -> list[str]:
        """Returns what the study registered (or why nothing), and where it is stored."""
        if self.run_id is None:
            return [f"interrupted after {self.trials} trials: nothing registered; --resume continues the study "
                    "(with --register-partial, an interrupted study registers its best)"]
        registered = (f"registered as {self.model_name} version {self.registered_version}: export it with python "
                      f"jobs/export.py --run models:/{self.model_name}/{self.registered_version}"
                      if self.registered_version else "not registered")
        return [
            *self.ensemble_lines,
            evaluate.summary_line(self.metrics, self.fit_on),
            evaluate.in_words(self.verdict),
            f"the model: run {self.run_id}, {registered}",
            *([f"warning: {self.verdict.message}"] if self.verdict.message else []),
        ]

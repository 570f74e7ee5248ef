"""Hyperparameter search on Ray Tune: seeded TPE (Optuna) proposes, ASHA stops weak trials early.

The same model code and MLflow conventions as `caspar.training.train`: every trial is an MLflow run
nested under one "study" run; the best trial's model is scored, logged and registered like a
train run, under the study's --run-name. Trials are configured by the fields of
`Hyperparameters`: the search space samples those with a search domain, the study fixes the rest.
The trial itself is `caspar.tuning.trial`; what the study records and prints, `caspar.tuning.study`.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
import warnings

import numpy as np

from caspar import storage, tracking
from caspar.config import Tracking, TrainConfig, TuneConfig, check
from caspar.data.prepared import Prepared
from caspar.errors import UserError
from caspar.runtime import start_ray
from caspar.training import evaluate
from caspar.training.fit import fit_stage
from caspar.tuning.checks import (
    check_cpus,
    check_new_study,
    check_storage,
    find_study_run,
    study_parameters,
    study_path,
    study_storage,
)
from caspar.tuning.cpu import CpuMeter, serial_share
from caspar.tuning.ensemble import Ensemble, NetworkCandidate, choose, members_of, network_share
from caspar.tuning.search import earlier_trials, scheduler, searcher
from caspar.tuning.study import (
    METRIC,
    MODE,
    Study,
    TrialPrinter,
    TrialRuns,
    best_history,
    log_study,
    prune_checkpoints,
    retried_trials,
    summarise,
    trial_intervals,
    trial_run_times,
)
from caspar.tuning.trial import StudyData, hyperparameters_of, load_best_model

log = logging.getLogger(__name__)  # the jobs' shell prints its INFO lines (caspar.cli)


def tune_study(config: TuneConfig, prepared: Prepared, verbose: bool = False) -> Study:
    """Runs a study: the study's own trees, the search, the ensemble, its model scored, logged and
    registered (caspar.tuning.tune's docstring).

    Args:
        config: the study's options.
        prepared: the dataset (caspar.data.prepared.load_prepared).
        verbose: Ray's tables and the trials' own output; without it, one line per finished trial.

    Returns:
        The Study: its figures, and its model's run, metrics and registered version (None where
        interrupted without --register-partial).

    Raises:
        UserError: an option or the storage refused, or the model's verdict refused.
    """
    import mlflow

    check(config)
    started, wall_started = time.perf_counter(), time.time()
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", STATE_SAVE_SECONDS)
    uri = tracking.configure()
    experiment = tracking.experiment_id(config.experiment_name)
    previous_run = find_study_run(config, experiment) if config.resume else None
    if not config.resume:
        check_new_study(config)
    # before Ray starts and the trees are fitted: a --warm-start naming nothing is one line at once
    earlier = earlier_trials(config, experiment) if config.warm_start and previous_run is None else ([], [])
    start_ray(log_to_driver=verbose)
    check_storage(config)
    check_cpus(config)
    quiet_libraries(verbose)
    say = log.info  # the jobs' shell prints caspar's INFO lines; a notebook sees them only if it asks
    hp = config.trial_hyperparameters()
    threads = max(1, int(config.cpus_per_trial))
    with tracking.run(run_id=previous_run, experiment_id=experiment, run_name=f"{config.run_name}-study",
                          tags={"study": config.run_name, "caspar.kind": "study"}) as parent:
        if previous_run is None:  # first of its files: an artefact store that refuses files fails the study now
            with tracking.first_files():
                mlflow.log_dict({k: list(v) for k, v in config.space.items()}, "search_space.json")
        with CpuMeter() as meter:  # the trees, the search and the driver's work
            # the study's own trees: its default recipes, cross-fitted as Ray tasks (every network corrects them)
            stage = fit_stage(hp, prepared.splits, prepared.files, config.fit_on, say, cpus_per_fit=threads,
                              baselines=True)
            busy = [(b.started, b.ended) for b in stage.crossed.busy]
            nodes = {("trees", b.node) for b in stage.crossed.busy}
            tree_seconds = time.perf_counter() - started
            data = StudyData.of(stage, prepared.splits, prepared.files, hp.tree_folds, hp.seed)
            if previous_run is None:
                mlflow.log_params(study_parameters(config))
                mlflow.log_metric("warm_start_trials", len(earlier[0]))
                if config.warm_start:
                    mlflow.set_tag("caspar.warm_start", config.warm_start)
            searching = config  # the trials get what the study's trees left of the time budget, less the final share
            if config.time_budget:
                left = config.time_budget * (1 - FINAL_SHARE) - (time.perf_counter() - started)
                searching = dataclasses.replace(config, time_budget=max(1.0, left))
            tuner = build_tuner(searching, data, uri, parent.info, verbose, earlier)
            left = f", {searching.time_budget:.0f} s left of --time-budget" if config.time_budget else ""
            say(f"search: up to {config.n_trials} trials on Ray (tree recipes and networks correcting the study's "
                f"trees){left}")
            search_started = time.time()
            results, interrupted = fit_noting_interrupt(tuner)
            search_seconds = time.time() - search_started
            why = "interrupted" if interrupted else "the time budget" if config.time_budget else "every trial run"
            say(f"search: ended after {search_seconds:.0f} s ({why}), {len(results)} trials; gathering their results")
            deadline = search_started + searching.time_budget if config.time_budget else None
            intervals, trial_nodes = trial_intervals(results, search_started,
                                                     trial_run_times(uri, experiment, config.run_name), deadline)
            busy += intervals
            nodes |= trial_nodes
        summary = summarise(results, config, search_started)
        cpu_parts = meter.breakdown(summary.trial_phases, summary.worker_pids)
        mlflow.log_metrics(summary.metrics())
        mlflow.set_tag("caspar.interrupted", str(interrupted).lower())
        study = Study(trials=len(results), stopped_early=summary.stopped_early, unfinished=summary.unfinished,
                      errored=len(results.errors), fit_on=config.fit_on, interrupted=interrupted, tracking_uri=uri,
                      experiment_id=experiment, path=study_path(config), cpu_parts=cpu_parts,
                      mean_startup_seconds=summary.mean_trial_startup_seconds, tree_seconds=tree_seconds,
                      search_seconds=search_seconds, kinds=summary.kinds,
                      retried=retried_trials(uri, experiment, config.run_name))
        mlflow.log_metric("trials_retried", study.retried)
        if interrupted and not config.register_partial:
            log_study(results, cpu_parts)
            mlflow.end_run("KILLED")  # stopped, not failed: --resume reopens it
            return dataclasses.replace(study, seconds=time.perf_counter() - started)
        say(f"ensemble: choosing from the {len(stage.crossed.recipes)} default recipes, "
            f"{summary.kinds.get('trees', 0)} tree trials and the best of {summary.kinds.get('network', 0)} network trials")
        ensemble = choose_ensemble(stage, results, data, prepared, threads, say, busy)
        capacity = concurrency(config.n_jobs, config.cpus_per_trial)
        shipped_hp = hyperparameters_of(ensemble.network.config) if ensemble.network_share else hp
        train_config = TrainConfig(**dataclasses.asdict(shipped_hp),
                                   data=config.data, experiment_name=config.experiment_name, run_name=config.run_name,
                                   model_name=config.model_name, alias=config.alias, fit_on=config.fit_on,
                                   cpus_per_fit=threads)
        metrics, run_id, version, verdict = log_best(ensemble, stage, data, prepared, train_config, parent.info, say, busy)
        ended = time.time()
        serial = serial_share(busy, capacity, wall_started, ended)
        mlflow.log_metrics({"serial_share": serial, "nodes_trees": len({n for k, n in nodes if k == "trees"}),
                            "nodes_networks": len({n for k, n in nodes if k == "network"})})
        log_study(results, cpu_parts)
        if not interrupted:
            prune_checkpoints(results, keep=ensemble.network.checkpoint if ensemble.network_share else None)
    if verdict.kind == evaluate.REFUSED:
        raise UserError(f"{verdict.message} (run {run_id}, tagged caspar.verdict=refused)")
    return dataclasses.replace(study, metrics=metrics, run_id=run_id, registered_version=version, verdict=verdict,
                               ensemble_lines=ensemble.lines(), serial_share=serial, capacity=capacity,
                               model_name=config.model_name,
                               nodes={kind: len({n for k, n in nodes if k == kind}) for kind in ("trees", "network")},
                               seconds=time.perf_counter() - started)


# The share of --time-budget kept for after the search: choosing the ensemble, fitting its recipes on
# every row, scoring and logging the model.
FINAL_SHARE = 0.1


def choose_ensemble(stage, results, data: StudyData, prepared: Prepared, threads: int, say, busy: list) -> Ensemble:
    """The study's ensemble from every finished trial (caspar.tuning.ensemble), its weighted tree
    recipes fitted on every --fit-on row as parallel Ray tasks.

    Args:
        stage: the study's Stage (its default recipes).
        results: Ray Tune's ResultGrid.
        data: the study's StudyData.
        prepared: the dataset.
        threads: CPUs of each fit.
        say: called with progress lines.
        busy: the study's fits' (start, end) intervals, extended with these fits'.

    Returns:
        The Ensemble.
    """
    from caspar.model.crossfit import fit_on_all

    members = members_of(stage, results, data.tree_rows.folds)
    tree_weights = choose(members, data.tree_rows.y)
    missing = [m for m, w in zip(members, tree_weights) if w > 0 and m.model is None]
    intervals: list = []
    for member, model in zip(missing, fit_on_all([m.recipe for m in missing], data.tree_rows.x, data.tree_rows.y,
                                                 threads, say, intervals)):
        member.model = model
    busy += [(b.started, b.ended) for b in intervals]
    n_train = len(data.y_train)
    if "val" in stage.splits:  # the validation rows are tree rows: their out-of-fold predictions
        trees_val = np.stack([m.out_of_fold[n_train:] for m in members], axis=1) @ tree_weights
    else:
        trees_val = sum(w * m.model.predict(data.x_val) for m, w in zip(members, tree_weights) if w > 0)
    candidate = best_network(results, data)
    if candidate is None:
        return Ensemble(members, tree_weights, val_loss=float(np.mean((trees_val - data.y_val) ** 2)))
    share, gain = network_share(trees_val, candidate, data.y_val, prepared.files["val"])
    shipped_val = (1 - share) * trees_val + share * candidate.val_prediction
    return Ensemble(members, tree_weights, candidate, share, gain, float(np.mean((shipped_val - data.y_val) ** 2)))


def best_network(results, data: StudyData) -> NetworkCandidate | None:
    """The network trial with the lowest validation loss any of its checkpoints saved.

    Args:
        results: Ray Tune's ResultGrid.
        data: the study's StudyData.

    Returns:
        Its NetworkCandidate with its predictions of the validation rows (the study's trees plus its
        correction), or None if no network trial saved a model.
    """
    saved = [(result, checkpoint, metrics) for result in results if (result.config or {}).get("kind") == "network"
             for checkpoint, metrics in (result.best_checkpoints or []) if "best_val_loss" in metrics]
    if not saved:
        return None
    result, checkpoint, metrics = min(saved, key=lambda item: item[2]["best_val_loss"])
    with checkpoint.as_directory() as folder:
        network = load_best_model(folder, result.config, data)
    inputs = network.inputs(data.x_val, data.base.val if data.base is not None else None)
    prediction = np.asarray(network.trainer.predict_on_batch(inputs)).reshape(-1)
    return NetworkCandidate(metrics.get("trial_id") or result.metrics.get("trial_id"), dict(result.config), checkpoint,
                            prediction, float(metrics["best_val_loss"]), best_history(result, metrics))


def quiet_libraries(verbose: bool) -> None:
    """Optuna's and Ray Tune's own lines, and Tune's trial tracebacks, only with --verbose.

    Args:
        verbose: the job's --verbose.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)
    logging.getLogger("ray.tune").setLevel(logging.INFO if verbose else logging.ERROR)
    # a failed or restarted trial is one line of ours (caspar.tuning.study.TrialRuns), not Tune's traceback
    os.environ["TUNE_PRINT_ALL_TRIAL_ERRORS"] = "1" if verbose else "0"
    warnings.filterwarnings("ignore", message="Choices for a categorical distribution")  # hidden_layers are lists


# How often Tune saves the study's state (its default: every 10 s or more). A trial finished longer
# ago than this is kept by --resume even after the driver was killed (SIGKILL); a save costs the
# driver a few milliseconds.
STATE_SAVE_SECONDS = "2"


def fit_noting_interrupt(tuner):
    """Runs the search. Tune catches the first Ctrl-C itself: it ends the search, keeping its
    state for --resume, and puts back the SIGINT handler it found; without an interrupt its own
    handler stays. So the handler after the search says whether it was interrupted.

    Args:
        tuner: Ray Tune's Tuner.

    Returns:
        (its ResultGrid, whether Ctrl-C ended it).
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or os.environ.get("TUNE_DISABLE_SIGINT_HANDLER"):
        return tuner.fit(), False  # Tune does not catch Ctrl-C here
    before = signal.getsignal(signal.SIGINT)
    results = tuner.fit()
    interrupted = signal.getsignal(signal.SIGINT) is before
    signal.signal(signal.SIGINT, before)
    return results, interrupted


def keep_secrets_out_of_trials() -> None:
    """Ray Tune copies the driver's AWS_* credentials into every trial's runtime environment, which
    Ray writes into its logs (runtime_env_agent.log). The trials need none: they reach S3 storage
    through the filesystem the study hands them (caspar.storage, credentials inside), and log
    through the driver. So the study tells Tune to copy no AWS credentials."""
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE = {name for name in class_cache.ENV_VARS_TO_PROPAGATE if not name.startswith("AWS_")}


def build_tuner(config: TuneConfig, data: StudyData, tracking_uri: str, parent, verbose: bool, earlier=([], [])):
    """The Tuner of a new study, or of the stored one with --resume.

    Args:
        config: the study's options (its time budget already less what the study's trees took).
        data: the study's StudyData, sent to the trials once.
        tracking_uri: the tracking store the trials' runs go to.
        parent: the study run's info.
        verbose: Ray's own output.
        earlier: (configurations, results) of an earlier study to seed the search with.

    Returns:
        Ray Tune's Tuner.
    """
    from ray import tune

    from caspar.tuning.trial import Trial, milestones

    keep_secrets_out_of_trials()
    trainable = tune.with_resources(
        tune.with_parameters(Trial, data=data, cpus_per_trial=config.cpus_per_trial, milestones=milestones(config),
                             report_seconds=config.report_seconds), {"cpu": config.cpus_per_trial})
    callbacks = [TrialRuns(tracking_uri, parent.experiment_id, config.run_name, parent.run_id)]
    if not verbose:
        callbacks.append(TrialPrinter(config, data.tree_rows.folds))
    filesystem, folder = study_storage(config)
    if config.resume:  # the search's and the scheduler's state come back from the stored study
        return tune.Tuner.restore(storage.join(folder, config.run_name), trainable=trainable, resume_errored=True,
                                  storage_filesystem=filesystem)
    run_config = tune.RunConfig(
        name=config.run_name, storage_path=folder, storage_filesystem=filesystem, callbacks=callbacks,
        verbose=2 if verbose else 0,
        failure_config=tune.FailureConfig(max_failures=config.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=config.keep_checkpoints,
                                                checkpoint_score_attribute="best_val_loss", checkpoint_score_order=MODE))
    return tune.Tuner(
        trainable, run_config=run_config,
        tune_config=tune.TuneConfig(
            metric=METRIC, mode=MODE, num_samples=config.n_trials,
            max_concurrent_trials=concurrency(config.n_jobs, config.cpus_per_trial),
            search_alg=searcher(config, earlier),
            reuse_actors=True,  # a new trial reuses a finished one's process: no TensorFlow start-up
            scheduler=scheduler(config, data.tree_rows.folds),
            time_budget_s=config.time_budget))


def concurrency(n_jobs: int, cpus_per_trial: float) -> int:
    """How many trials run at once.

    Args:
        n_jobs: --n-jobs (-1 or 0: as many as the cluster's CPUs allow).
        cpus_per_trial: --cpus-per-trial.

    Returns:
        The number of concurrent trials.
    """
    import ray

    if n_jobs > 0:
        return n_jobs
    return max(1, int(ray.cluster_resources().get("CPU", 1) // cpus_per_trial))


def log_best(ensemble: Ensemble, stage, data: StudyData, prepared: Prepared, config: TrainConfig, parent, say,
             busy: list):
    """The study's model as a run of its own, named --run-name, with a train run's artefacts: its
    ensemble (ensemble.json, each member's recipe or configuration and its weight), the trees
    fitted on --fit-on's games, scored with every baseline, registered unless the verdict refuses.

    Args:
        ensemble: what the study ships.
        stage: the study's Stage (its normalisation).
        data: the study's StudyData.
        prepared: the dataset.
        config: the shipped model's options as a train run's.
        parent: the study run's info.
        say: called with progress lines.
        busy: the study's fits' (start, end) intervals, extended with the refits'.

    Returns:
        (metrics, run id, registered version or None, verdict).
    """
    import mlflow

    from caspar.config import FIT_ON
    from caspar.model.crossfit import fit_on_all, tree_layer
    from caspar.model.network import scale_correction, trees_model
    from caspar.training.fit import rows
    from caspar.training.train import Fitted, log_dataset_files, log_model_run, register, run_tags

    width = data.x_train.shape[1]
    shipped_members = ensemble.shipped()

    def model_of(models: list) -> object:
        layer = tree_layer([(model, weight) for model, (_, weight) in zip(models, shipped_members)])
        if not ensemble.network_share:
            return trees_model(layer, width)
        with ensemble.network.checkpoint.as_directory() as folder:
            network = load_best_model(folder, ensemble.network.config, data, trees=layer)
        scale_correction(network, ensemble.network_share)
        return network.model

    scored = shipped = Fitted(model_of([m.model for m, _ in shipped_members]), stage.normalizer, stage.splits)
    if config.fit_on == "all":
        say("trees: fitting the ensemble's recipes on every game (--fit-on all)")
        x, y = rows(prepared.splits, FIT_ON["all"])
        intervals: list = []
        models = fit_on_all([m.recipe for m, _ in shipped_members], stage.normalizer.transform(x), y,
                            config.cpus_per_fit, say, intervals)
        busy += [(b.started, b.ended) for b in intervals]
        shipped = Fitted(model_of(models), stage.normalizer, FIT_ON["all"])
    history = ensemble.history()
    network = ensemble.network_share > 0
    tracking_fields = {f.name for f in dataclasses.fields(Tracking)} | {"cpus_per_fit", "tree_folds", "seed"}
    parameters = {k: v for k, v in dataclasses.asdict(config).items() if network or k in tracking_fields}
    tags = {**run_tags(prepared), "study": config.run_name, "mlflow.parentRunId": parent.run_id}
    with tracking.run(experiment_id=parent.experiment_id, run_name=config.run_name, tags=tags, nested=True) as run:
        mlflow.log_params(parameters | evaluate.baseline_parameters()
                          | {"ensemble_recipes": len(shipped_members),
                             "network": f"trial {ensemble.network.trial_id}, share {ensemble.network_share:.2f}"
                             if network else "not shipped: the trees alone"})
        log_dataset_files(prepared)
        mlflow.log_dict(ensemble.description(), "ensemble.json")
        mlflow.log_metrics({f"weight_{m.name}": w for m, w in shipped_members} | {"network_share": ensemble.network_share})
        members = {m.name: m.model for m, _ in shipped_members}
        description = "\n".join(ensemble.lines())
        explainer = None if network else evaluate.WeightedTrees([(m.model, w) for m, w in shipped_members])
        metrics, model_uri, verdict = log_model_run(scored, shipped, prepared, config, history, members, say, description,
                                                    explainer, stage.crossed.on_all_only if stage.crossed else None)
    version = register(model_uri, config, metrics, verdict, description, run.info.run_id)  # the run has ended FINISHED
    return metrics, run.info.run_id, version, verdict

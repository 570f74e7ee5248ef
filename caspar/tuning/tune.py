"""Hyperparameter search on Ray Tune: seeded TPE (Optuna) proposes, ASHA stops weak trials early.

The same model code and MLflow conventions as `caspar.training.train`: every trial is an MLflow run
nested under one "study" run; the best trial's model is scored, logged and registered like a
train run, under the study's --run-name. Trials are configured by the fields of
`Hyperparameters`: the search space samples those with a search domain, the study fixes the rest.
The trial itself is `caspar.tuning.trial`; what the study records and prints, `caspar.tuning.study`.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
import warnings

from caspar import storage, tracking
from caspar.runtime import start_ray
from caspar.config import TrainConfig, TuneConfig, check, hyperparameters, search_space
from caspar.data.prepared import Prepared
from caspar.errors import UserError
from caspar.training import evaluate
from caspar.tuning.checks import (
    check_cpus,
    check_new_study,
    check_storage,
    find_study_run,
    study_parameters,
    study_path,
    study_storage,
)
from caspar.tuning.cpu import CpuMeter
from caspar.tuning.search import earlier_trials, searcher
from caspar.tuning.study import (
    METRIC,
    MODE,
    Study,
    TrialPrinter,
    TrialRuns,
    best_checkpoint,
    best_history,
    log_study,
    prune_checkpoints,
    summarise,
)
from caspar.tuning.trial import StudyData, load_best_model


def tune_study(config: TuneConfig, prepared: Prepared, verbose: bool = False) -> Study:
    """Run the study; without `verbose`, one line per finished trial instead of Ray's tables and the
    trials' own output."""
    import mlflow

    check(config)
    started = time.perf_counter()
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
    with mlflow.start_run(run_id=previous_run, experiment_id=experiment, run_name=f"{config.run_name}-study",
                          tags={"study": config.run_name, "caspar.kind": "study"}) as parent:
        if previous_run is None:  # first of its files: an artefact store that refuses files fails the study now
            with tracking.first_files():
                mlflow.log_dict({k: list(v) for k, v in search_space(config.search).items()}, "search_space.json")
        with CpuMeter() as meter:  # the trees, the search and the driver's work
            # A resumed study cross-fits exactly the recipes its first session fitted (its trials
            # learnt against those trees), whatever time is left now.
            fitted_before = (int(parent.data.metrics["tree_recipes_fitted"])
                             if previous_run and "tree_recipes_fitted" in parent.data.metrics else None)
            trees_started = time.perf_counter()
            stages = fit_study_stages(config, prepared, fitted_before)
            tree_seconds = time.perf_counter() - trees_started
            recipes_fitted = max((len(s.crossed.recipes) for s in stages.values() if s.crossed), default=0)
            mlflow.log_metric("tree_recipes_fitted", recipes_fitted)
            data = StudyData.of(stages, prepared.splits)
            if previous_run is None:
                mlflow.log_params(study_parameters(config))
                mlflow.log_metric("warm_start_trials", len(earlier[0]))
                if config.warm_start:
                    mlflow.set_tag("caspar.warm_start", config.warm_start)
            searching = config  # the trials get what the tree search left of the time budget
            if config.time_budget:
                searching = dataclasses.replace(config, time_budget=max(1.0, config.time_budget
                                                                       - (time.perf_counter() - started)))
            tuner = build_tuner(searching, data, uri, parent.info, verbose, earlier)
            left = f", {searching.time_budget:.0f} s left of --time-budget" if config.time_budget else ""
            print(f"search: up to {config.n_trials} trials on Ray{left}", flush=True)
            search_started = time.time()
            results, interrupted = fit_noting_interrupt(tuner)
            search_seconds = time.time() - search_started
        best, checkpoint, checkpoint_metrics = best_checkpoint(results)
        summary = summarise(results, config, search_started)
        cpu_parts = meter.breakdown(summary.trial_phases, summary.worker_pids)
        best_val_loss = float(checkpoint_metrics["best_val_loss"])
        log_study(results, dict(best.config), summary, best_val_loss, cpu_parts)
        mlflow.set_tag("caspar.interrupted", str(interrupted).lower())
    study = Study(best_config={k: best.config[k] for k in search_space(config.search)}, best_val_loss=best_val_loss,
                  trials=len(results), stopped_early=summary.stopped_early, unfinished=summary.unfinished,
                  errored=len(results.errors), fit_on=config.fit_on, interrupted=interrupted, tracking_uri=uri,
                  experiment_id=experiment, path=study_path(config), cpu_parts=cpu_parts,
                  mean_startup_seconds=summary.mean_trial_startup_seconds,
                  tree_seconds=tree_seconds, search_seconds=search_seconds)
    if interrupted and not config.register_partial:
        return dataclasses.replace(study, seconds=time.perf_counter() - started)
    train_config = TrainConfig(**hyperparameters(best.config), data=config.data, experiment_name=config.experiment_name,
                               run_name=config.run_name, model_name=config.model_name, alias=config.alias,
                               fit_on=config.fit_on)
    with checkpoint.as_directory() as folder:
        network = load_best_model(folder, best.config, data)
    if not interrupted:
        prune_checkpoints(results, keep=checkpoint)
    history = best_history(best, checkpoint_metrics)
    stage = stages[best.config["trees"]]
    metrics, run_id, version, verdict = log_best(network, history, best, stage, prepared, train_config, parent.info)
    if verdict.kind == evaluate.REFUSED:
        raise UserError(f"{verdict.message} (run {run_id}, tagged caspar.verdict=refused)")
    return dataclasses.replace(study, metrics=metrics, run_id=run_id, registered_version=version, verdict=verdict,
                               seconds=time.perf_counter() - started)


def quiet_libraries(verbose: bool) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)
    logging.getLogger("ray.tune").setLevel(logging.INFO if verbose else logging.ERROR)
    warnings.filterwarnings("ignore", message="Choices for a categorical distribution")  # hidden_layers are lists


# How often Tune saves the study's state (its default: every 10 s or more). A trial finished longer
# ago than this is kept by --resume even after the driver was killed (SIGKILL); a save costs the
# driver a few milliseconds.
STATE_SAVE_SECONDS = "2"


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


def fit_study_stages(config: TuneConfig, prepared: Prepared, fitted_before: int | None = None) -> dict:
    """The normalisation and the trees of every tree count a trial may use (0: none), cross-fitted
    once here (caspar.training.train.fit_stage), with their out-of-fold predictions on the train and
    validation rows: {count: Stage}. The trees are searched here, not in the trials: the default
    recipes and --tree-recipes more drawn from caspar.model.trees.SEARCH, weighted together by ensemble
    selection; with --time-budget, at most TREE_SEARCH_SHARE of it goes to recipes beyond the defaults."""
    from caspar.model.trees import recipes, sampled_recipes
    from caspar.training.fit import fit_stage

    fixed = config.trial_hyperparameters()
    counts = search_space(config.search).get("trees", ("choice", [fixed.trees]))[1]
    say = functools.partial(print, flush=True)
    deadline = time.perf_counter() + TREE_SEARCH_SHARE * config.time_budget if config.time_budget else None
    if fitted_before is not None:  # --resume: the recipes of the first session, no deadline
        deadline = None
    stages = {}
    for n in sorted(set(counts) | {0}):
        hp = dataclasses.replace(fixed, trees=n)
        searched = sampled_recipes(config.tree_recipes, config.seed, recipes(hp)) if n else []
        if fitted_before is not None:
            searched = searched[:max(0, fitted_before - len(recipes(hp)))]
        stages[n] = fit_stage(hp, prepared.splits, prepared.files, config.fit_on, say, searched, deadline)
    return stages


# A study's tree search takes at most this share of --time-budget (the default recipes always run).
TREE_SEARCH_SHARE = 0.3


def keep_secrets_out_of_trials() -> None:
    """Ray Tune copies the driver's AWS_* credentials into every trial's runtime environment, which
    Ray writes into its logs (runtime_env_agent.log). The trials need none: they reach S3 storage
    through the filesystem the study hands them (caspar.storage, credentials inside), and log
    through the driver. So the study tells Tune to copy no AWS credentials."""
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE = {name for name in class_cache.ENV_VARS_TO_PROPAGATE if not name.startswith("AWS_")}


def build_tuner(config: TuneConfig, data: StudyData, tracking_uri: str, parent, verbose: bool, earlier=([], [])):
    """The Tuner of a new study, or of the stored one with --resume. `parent`: the study run's info;
    `earlier`: trials of an earlier study to seed the search with."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from caspar.tuning.trial import Trial, milestones

    keep_secrets_out_of_trials()
    trainable = tune.with_resources(
        tune.with_parameters(Trial, data=data, cpus_per_trial=config.cpus_per_trial, milestones=milestones(config),
                             report_seconds=config.report_seconds), {"cpu": config.cpus_per_trial})
    callbacks = [TrialRuns(tracking_uri, parent.experiment_id, config.run_name, parent.run_id)]
    if not verbose:
        callbacks.append(TrialPrinter(config))
    filesystem, folder = study_storage(config)
    search_alg, param_space = searcher(config, earlier)
    if config.resume:  # the callbacks and the search's state come back from the stored study
        return tune.Tuner.restore(storage.join(folder, config.run_name), trainable=trainable, resume_errored=True,
                                  param_space=param_space, storage_filesystem=filesystem)
    run_config = tune.RunConfig(
        name=config.run_name, storage_path=folder, storage_filesystem=filesystem, callbacks=callbacks,
        stop={"epoch": config.epochs},
        verbose=2 if verbose else 0,
        failure_config=tune.FailureConfig(max_failures=config.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=config.keep_checkpoints,
                                                checkpoint_score_attribute="best_val_loss", checkpoint_score_order=MODE))
    return tune.Tuner(
        trainable, param_space=param_space, run_config=run_config,
        tune_config=tune.TuneConfig(
            metric=METRIC, mode=MODE, num_samples=config.n_trials,
            max_concurrent_trials=concurrency(config.n_jobs, config.cpus_per_trial),
            search_alg=search_alg,
            reuse_actors=True,  # a new trial reuses a finished one's process: no TensorFlow start-up
            scheduler=ASHAScheduler(time_attr="epoch", max_t=config.epochs, grace_period=min(config.grace_period, config.epochs),
                                    reduction_factor=config.reduction_factor),
            time_budget_s=config.time_budget))


def concurrency(n_jobs: int, cpus_per_trial: float) -> int:
    import ray

    if n_jobs > 0:
        return n_jobs
    return max(1, int(ray.cluster_resources().get("CPU", 1) // cpus_per_trial))


def log_best(network, history: dict, best, stage, prepared, config: TrainConfig, parent):
    """The best trial's model as a run of its own, named --run-name, with a train run's artefacts
    and parameters: its network as validation chose it (with its trees fitted on every game for
    --fit-on all), scored with every baseline, registered unless the verdict refuses. `parent`: the
    study run's info."""
    import mlflow

    from caspar.training.train import log_dataset_files, log_model_run, register, release, run_tags

    tags = {**run_tags(prepared), "study": config.run_name, "mlflow.parentRunId": parent.run_id}
    with mlflow.start_run(experiment_id=parent.experiment_id, run_name=config.run_name, tags=tags) as run:
        mlflow.log_params(dataclasses.asdict(config) | evaluate.baseline_parameters()
                          | {"trial_id": best.path.rstrip("/").split("/")[-1]})
        log_dataset_files(prepared)
        say = functools.partial(print, flush=True)  # the study's last phase: the best trial's model, scored and logged
        scored, shipped = release(config, prepared.splits, network, history, stage, config.fit_on, say)
        metrics, model_uri, verdict = log_model_run(scored, shipped, prepared, config, history, stage, say)
        version = register(model_uri, config, metrics, verdict)
    return metrics, run.info.run_id, version, verdict

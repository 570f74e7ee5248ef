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
from caspar.cli import in_ray_job, start_ray
from caspar.config import TrainConfig, TuneConfig, check, hyperparameters, search_space
from caspar.data.prepared import Prepared
from caspar.errors import UserError
from caspar.training import evaluate
from caspar.tuning.cpu import CpuMeter
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
from caspar.tuning.trial import load_best_model

WARM_START_TRIALS = 20  # the best trials of an earlier study that seed a new one


def searcher(config: TuneConfig, earlier: tuple[list[dict], list[float]] = ([], [])):
    """(search algorithm, Tune's param space): seeded TPE (Optuna) over the searched fields of
    Hyperparameters, the study's values for the others. `earlier`: configurations of an earlier
    study and their results, which TPE is told before it proposes (--warm-start)."""
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    domains = {name: getattr(tune, kind)(*args) for name, (kind, *args) in search_space(config.search).items()}
    fixed = {k: v for k, v in dataclasses.asdict(config.trial_hyperparameters()).items() if k not in domains}
    points, results = earlier
    if not config.warm_start:
        return OptunaSearch(seed=config.seed), fixed | domains
    # Optuna takes results of earlier trials only with the space given to it, not through Tune's.
    return OptunaSearch(space=OptunaSearch.convert_search_space(domains), metric=METRIC, mode=MODE, seed=config.seed,
                        points_to_evaluate=points or None, evaluated_rewards=results or None), fixed


def earlier_trials(config: TuneConfig, experiment: str) -> tuple[list[dict], list[float]]:
    """The best finished trials of the study --warm-start names whose configuration this search
    space holds: (configurations of the searched fields, their best validation losses)."""
    import mlflow

    from caspar.config import Hyperparameters, parse_logged

    runs = mlflow.MlflowClient().search_runs([experiment], f"tags.study = {tracking.literal(config.warm_start)}", max_results=5000)
    trials = [r for r in runs if "trial_name" in r.data.tags and "best_val_loss" in r.data.metrics]
    if not trials:
        raise UserError(f"--warm-start {config.warm_start}: no study of that name with finished trials in experiment "
                        f"{config.experiment_name!r}")
    space = search_space(config.search)
    seeds = []
    for run in sorted(trials, key=lambda r: r.data.metrics["best_val_loss"]):
        point = {name: parse_logged(Hyperparameters, name, run.data.params.get(name)) for name in space}
        if all(in_domain(point[name], domain) for name, domain in space.items()):
            seeds.append((point, run.data.metrics["best_val_loss"]))
    seeds = seeds[:WARM_START_TRIALS]
    return [point for point, _ in seeds], [loss for _, loss in seeds]


def in_domain(value, domain: tuple) -> bool:
    kind, *args = domain
    if value is None:
        return False
    return value in args[0] if kind == "choice" else args[0] <= value <= args[1]


def study_path(config: TuneConfig) -> str:
    return os.path.join(config.storage_path or default_storage(), config.run_name)


def study_storage(config: TuneConfig):
    """(filesystem, folder) of the study storage: a local folder, or s3:// through the same
    filesystem (endpoint, credentials) as the datasets."""
    if config.storage_path and storage.is_s3(config.storage_path):
        return storage.resolve(config.storage_path)
    return None, config.storage_path or default_storage()


def default_storage() -> str:
    """./ray_results; in a Ray job ~/ray_results, outside the job's temporary copy of --working-dir."""
    return os.path.expanduser("~/ray_results") if in_ray_job() else os.path.abspath("ray_results")


def check_cpus(config: TuneConfig) -> None:
    """A trial needs one node with --cpus-per-trial CPUs: without one, Ray would wait for it forever."""
    import ray

    largest = max((node["Resources"].get("CPU", 0) for node in ray.nodes() if node.get("Alive")), default=0)
    if config.cpus_per_trial > largest:
        raise UserError(f"--cpus-per-trial {config.cpus_per_trial:g}: no node of this cluster has that many "
                        f"CPUs (the largest has {largest:g})")


def check_new_study(config: TuneConfig) -> None:
    """A new study does not write into an earlier study's folder (it would replace its state), unless
    --replace says to remove that study first."""
    import pyarrow.fs as pafs

    filesystem, folder = study_storage(config)
    filesystem = filesystem or pafs.LocalFileSystem()
    path = storage.join(folder, config.run_name)
    if filesystem.get_file_info(path).type == pafs.FileType.NotFound:
        return
    if config.replace:
        filesystem.delete_dir(path)
    else:
        raise UserError(f"--run-name {config.run_name}: a study of that name is stored in {study_path(config)}; "
                        "continue it with --resume, start it anew with --replace, or choose another --run-name")


def check_storage(config: TuneConfig) -> None:
    """A study on several nodes needs storage that every node reaches: refuse to guess one."""
    import ray

    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    if config.storage_path is None and nodes > 1:
        raise UserError(f"--storage-path: this cluster has {nodes} nodes; give storage every node reaches "
                        "(s3://BUCKET/prefix or a shared folder)")


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
            normalizer = next(iter(stages.values())).normalizer  # the same for every tree count
            data = {"x_train": normalizer.transform(prepared.splits["train"][0]), "y_train": prepared.splits["train"][1],
                    "x_val": normalizer.transform(prepared.splits["val"][0]), "y_val": prepared.splits["val"][1],
                    "trees": {count: {"arrays": dict(stage.layer.arrays),  # not Keras's TrackedDict
                                      "train": stage.train_trees, "val": stage.val_trees}
                              for count, stage in stages.items() if count}}
            if previous_run is None:
                mlflow.log_dict({k: list(v) for k, v in search_space(config.search).items()}, "search_space.json")
                mlflow.log_params(study_parameters(config))
                mlflow.log_metric("warm_start_trials", len(earlier[0]))
                if config.warm_start:
                    mlflow.set_tag("caspar.warm_start", config.warm_start)
            searching = config  # the trials get what the tree search left of the time budget
            if config.time_budget:
                searching = dataclasses.replace(config, time_budget=max(1.0, config.time_budget
                                                                       - (time.perf_counter() - started)))
            tuner = build_tuner(searching, data, uri, parent.info, verbose, earlier)
            search_started = time.time()
            results, interrupted = fit_noting_interrupt(tuner)
            search_seconds = time.time() - search_started
        best, checkpoint, checkpoint_metrics = best_checkpoint(results)
        summary = summarise(results, config, search_started)
        cpu_parts = meter.breakdown(summary.pop("trial_phases"), summary.pop("worker_pids"))
        summary["best_val_loss"] = float(checkpoint_metrics["best_val_loss"])
        log_study(results, dict(best.config), summary, cpu_parts)
        mlflow.set_tag("caspar.interrupted", str(interrupted).lower())
    counts = {"trials": len(results), "stopped_early": summary["stopped_early"], "unfinished": summary["unfinished"],
              "errored": len(results.errors), "tracking_uri": uri, "path": study_path(config), "cpu_parts": cpu_parts,
              "mean_startup_seconds": summary["mean_trial_startup_seconds"], "fit_on": config.fit_on,
              "best_val_loss": summary["best_val_loss"], "tree_seconds": tree_seconds, "search_seconds": search_seconds,
              "best_config": {k: best.config[k] for k in search_space(config.search)}}
    if interrupted and not config.register_partial:
        return Study(**counts, metrics={}, run_id=None, registered_version=None, verdict=evaluate.Verdict(""),
                     seconds=time.perf_counter() - started, interrupted=True)
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
    return Study(**counts, metrics=metrics, run_id=run_id, registered_version=version, verdict=verdict,
                 seconds=time.perf_counter() - started, interrupted=interrupted)


def quiet_libraries(verbose: bool) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)
    logging.getLogger("ray.tune").setLevel(logging.INFO if verbose else logging.ERROR)
    warnings.filterwarnings("ignore", message="Choices for a categorical distribution")  # hidden_layers are lists


# How often Tune saves the study's state (its default: every 10 s or more). A trial finished longer
# ago than this is kept by --resume even after the driver was killed (SIGKILL); a save costs the
# driver a few milliseconds.
STATE_SAVE_SECONDS = "2"

# What defines a study: --resume refuses to continue one with other values (the rest may change).
STUDY_DEFINING = ("data", "n_trials", "epochs", "grace_period", "seed", "cpus_per_trial", "reduction_factor", "tree_recipes",
                  "report_seconds", "search", "warm_start")


def study_parameters(config: TuneConfig) -> dict:
    return dataclasses.asdict(config) | {f"trial_{k}": v for k, v in dataclasses.asdict(config.trial_hyperparameters()).items()
                                         if k not in search_space(config.search)}


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


def find_study_run(config: TuneConfig, experiment: str) -> str:
    """The MLflow run of the study to resume; a UserError when there is nothing to resume."""
    import mlflow
    from ray import tune

    path = study_path(config)
    runs = mlflow.search_runs([experiment], f"tags.study = {tracking.literal(config.run_name)} and tags.`caspar.kind` = 'study'",
                              order_by=["attributes.start_time DESC"], max_results=1, output_format="list")
    filesystem, folder = study_storage(config)
    if not runs or not tune.Tuner.can_restore(storage.join(folder, config.run_name), storage_filesystem=filesystem):
        raise UserError(f"--resume: no study named {config.run_name!r} to resume in {path} and experiment "
                        f"{config.experiment_name!r}; start it without --resume")
    check_same_study(config, runs[0].data.params)
    return runs[0].info.run_id


def check_same_study(config: TuneConfig, logged: dict[str, str]) -> None:
    """A resumed study keeps the options that define it; another value is refused, not ignored."""
    for name in STUDY_DEFINING:
        value = getattr(config, name)
        if name in logged and logged[name] != str(value):
            raise UserError(f"--resume: --{name.replace('_', '-')} {value} differs from the study's {logged[name]}; "
                            "resume with the study's value or start a new --run-name")


def keep_secrets_out_of_trials() -> None:
    """Ray Tune copies the driver's AWS_* credentials into every trial's runtime environment, which
    Ray writes into its logs (runtime_env_agent.log). The trials need none: they reach S3 storage
    through the filesystem the study hands them (caspar.storage, credentials inside), and log
    through the driver. So the study tells Tune to copy no AWS credentials."""
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE = {name for name in class_cache.ENV_VARS_TO_PROPAGATE if not name.startswith("AWS_")}


def build_tuner(config: TuneConfig, data: dict, tracking_uri: str, parent, verbose: bool, earlier=([], [])):
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

    from caspar.training.train import log_model_run, register, release, run_tags

    tags = {**run_tags(prepared), "study": config.run_name, "mlflow.parentRunId": parent.run_id}
    with mlflow.start_run(experiment_id=parent.experiment_id, run_name=config.run_name, tags=tags) as run:
        mlflow.log_params(dataclasses.asdict(config) | evaluate.baseline_parameters()
                          | {"trial_id": best.path.rstrip("/").split("/")[-1]})
        say = functools.partial(print, flush=True)  # the study's last phase: the best trial's model, scored and logged
        scored, shipped = release(config, prepared.splits, network, history, stage, config.fit_on, say)
        metrics, model_uri, verdict = log_model_run(scored, shipped, prepared, config, history, stage, say)
        version = register(model_uri, config, metrics, verdict)
    return metrics, run.info.run_id, version, verdict

"""What a study checks before any work, and where it is stored: its storage (every node must reach
it), its name (a new study never writes into an earlier one's folder), the CPUs a trial needs, and a
resumed study's defining options."""
from __future__ import annotations

import dataclasses
import os

from caspar import storage, tracking
from caspar.config import TuneConfig
from caspar.errors import UserError
from caspar.runtime import in_ray_job


def study_path(config: TuneConfig) -> str:
    """Where a study is stored, as the user reads it.

    Args:
        config: the study's options (storage_path, run_name).

    Returns:
        --storage-path (or ./ray_results) joined with --run-name.
    """
    return os.path.join(config.storage_path or default_storage(), config.run_name)


def study_storage(config: TuneConfig):
    """The study storage: a local folder, or s3:// through the same filesystem (endpoint,
    credentials) as the datasets.

    Args:
        config: the study's options (storage_path).

    Returns:
        (filesystem, folder): a pyarrow filesystem and the path in it; (None, folder) for a local folder.
    """
    if config.storage_path and storage.is_s3(config.storage_path):
        return storage.resolve(config.storage_path)
    return None, config.storage_path or default_storage()


def default_storage() -> str:
    """./ray_results; in a Ray job ~/ray_results, outside the job's temporary copy of --working-dir."""
    return os.path.expanduser("~/ray_results") if in_ray_job() else os.path.abspath("ray_results")


def check_cpus(config: TuneConfig) -> None:
    """A trial needs one node with --cpus-per-trial CPUs: without one, Ray would wait for it forever.

    Args:
        config: the study's options (cpus_per_trial).

    Raises:
        UserError: no live node has that many CPUs.
    """
    import ray

    largest = max((node["Resources"].get("CPU", 0) for node in ray.nodes() if node.get("Alive")), default=0)
    if config.cpus_per_trial > largest:
        raise UserError(f"--cpus-per-trial {config.cpus_per_trial:g}: no node of this cluster has that many "
                        f"CPUs (the largest has {largest:g})")


def check_new_study(config: TuneConfig) -> None:
    """A new study does not write into an earlier study's folder (it would replace its state), unless
    --replace says to remove that study first.

    Args:
        config: the study's options (storage_path, run_name, replace).

    Raises:
        UserError: a study of that name is stored and --replace was not given.
    """
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
    """A study on several nodes needs storage that every node reaches: refuse to guess one.

    Args:
        config: the study's options (storage_path).

    Raises:
        UserError: several nodes and no --storage-path.
    """
    import ray

    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    if config.storage_path is None and nodes > 1:
        raise UserError(f"--storage-path: this cluster has {nodes} nodes; give storage every node reaches "
                        "(s3://BUCKET/prefix or a shared folder)")


# What defines a study: --resume refuses to continue one with other values (the rest may change).
STUDY_DEFINING = ("data", "n_trials", "epochs", "grace_period", "seed", "cpus_per_trial", "reduction_factor", "trees",
                  "fit_on", "report_seconds", "search", "warm_start")


def study_parameters(config: TuneConfig) -> dict:
    """What the study run logs as its parameters.

    Args:
        config: the study's options.

    Returns:
        Every option, and as trial_<field> each trial setting the search space does not sample.
    """
    return dataclasses.asdict(config) | {f"trial_{k}": v for k, v in dataclasses.asdict(config.trial_hyperparameters()).items()
                                         if k not in config.space}


def find_study_run(config: TuneConfig, experiment: str) -> str:
    """The MLflow run of the study to resume.

    Args:
        config: the study's options (run_name, storage, its defining options).
        experiment: the experiment's id.

    Returns:
        The study run's id.

    Raises:
        UserError: no such study stored, or one defined by other options (check_same_study).
    """
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
    """A resumed study keeps the options that define it; another value is refused, not ignored.

    Args:
        config: the resumed study's options.
        logged: the study run's logged parameters.

    Raises:
        UserError: an option of STUDY_DEFINING differs from the logged one.
    """
    for name in STUDY_DEFINING:
        value = getattr(config, name)
        if name in logged and logged[name] != str(value):
            raise UserError(f"--resume: --{name.replace('_', '-')} {value} differs from the study's {logged[name]}; "
                            "resume with the study's value or start a new --run-name")

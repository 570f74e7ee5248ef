"""Where the work runs: Ray (joined or started locally), and the threads each fit may use.

Nothing happens on import: `start_ray` starts or joins Ray when called, `fit_threads` bounds a
fit's threads. OpenMP (scikit-learn's and LightGBM's) spins while its threads wait; beside other
CPU-bound work a default train ran about 15x slower than alone. So every fit uses exactly the
threads it holds (the CPUs of its Ray task), and OpenMP waits passively (set before the library
that loads OpenMP is imported: `passive_waits`).
"""
from __future__ import annotations

import contextlib
import logging
import os
import re

log = logging.getLogger(__name__)  # the jobs' shell prints its lines (caspar.cli)

# The libraries' own output that the jobs (and the notebook functions of caspar) do without.
QUIET_ENVIRONMENT = {
    "TF_CPP_MIN_LOG_LEVEL": "3", "MLFLOW_LOGGING_LEVEL": "CRITICAL", "RAY_DATA_LOG_LEVEL": "WARNING",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",  # Ray Data's own progress lines: the jobs say their progress themselves
    "RAY_AIR_NEW_OUTPUT": "0",  # Tune's classic reporter, silent at RunConfig(verbose=0)
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "PYTHONWARNINGS": "ignore::DeprecationWarning,ignore::FutureWarning",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # two "View run" lines per run (per trial of a study)
}


def quiet_defaults() -> None:
    """QUIET_ENVIRONMENT in this process and those it starts, where the user set nothing else."""
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)


# Nothing phones home or writes usage state into HOME unless the user asks for it (set these to
# "false" / "1" to share MLflow's telemetry or Ray's usage statistics).
PRIVATE_ENVIRONMENT = {"MLFLOW_DISABLE_TELEMETRY": "true", "RAY_USAGE_STATS_ENABLED": "0"}


def private_defaults() -> None:
    """MLflow's telemetry and Ray's usage statistics off in this process and those it starts,
    unless the user set them."""
    for name, value in PRIVATE_ENVIRONMENT.items():
        os.environ.setdefault(name, value)


# OpenMP's threads wait for work without spinning (the libraries read it as they load OpenMP).
PASSIVE_WAITS = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}


def passive_waits() -> None:
    """OpenMP threads that sleep while they wait, in this process and every process it starts
    (a local Ray's workers inherit it), unless the user set otherwise."""
    for name, value in PASSIVE_WAITS.items():
        os.environ.setdefault(name, value)


def in_ray_job() -> bool:
    """Returns True when this process is the entrypoint of `ray job submit` (it runs on the cluster,
    in a copy of --working-dir without its git-ignored folders)."""
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


def start_ray(log_to_driver: bool = False) -> None:
    """Connect to the Ray cluster of RAY_ADDRESS (a Ray job's own), or start a local one, without a
    dashboard. A local Ray gets a token of this process's own (Ray's token authentication is on by
    default, and would otherwise write one into ~/.ray of the user's home), and its workers keep
    this process's priority and inherit passive OpenMP waits; on a cluster, every fit sets them
    before it loads its library. Nothing happens if Ray is already initialised.

    Args:
        log_to_driver: whether the workers' output reaches this process's.
    """
    import secrets

    import ray

    if ray.is_initialized():
        return
    passive_waits()
    local = {}
    if not os.environ.get("RAY_ADDRESS"):
        if not os.environ.get("RAY_AUTH_MODE") and not os.environ.get("RAY_AUTH_TOKEN"):
            os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
        # Ray lowers its workers' priority by 15 by default: beside any other busy program, the job's
        # fits (Ray tasks) would wait while its driver did not. They keep the job's own priority
        # instead (the setting is an increment; `nice python jobs/train.py` lowers all of the job).
        os.environ.setdefault("RAY_worker_niceness", "0")
        # no metrics: a local Ray has no dashboard to show them, and Ray's metrics port answers
        # anyone on the network without a token
        os.environ.setdefault("RAY_enable_metrics_collection", "0")
        # no dashboard: 3 s of every start; a local Ray lives as long as its job, reached from this machine only
        local = {"include_dashboard": False, "_node_ip_address": "127.0.0.1"}
    ray.init(logging_level="WARNING", log_to_driver=log_to_driver, **local)
    if not log_to_driver:
        one_line_cluster_errors()


# The longest line a cluster error becomes (Ray's messages run to a paragraph before their dumps).
CLUSTER_ERROR_CHARACTERS = 300


def one_line_cluster_errors() -> None:
    """Ray prints every error a node publishes to the driver straight to its standard output,
    whatever log_to_driver says: a raylet's death with the last 20 lines of its log (its state
    dump), a node marked dead, a worker killed for memory. Each becomes its first line instead, a
    warning of this module's logger (the jobs print it; the node's own logs keep the rest). Ray
    prints them from a thread of the driver (ray._private.worker.listen_error_messages) through its
    module function print_to_stdstream, which this wraps once; the workers' own output (with
    --verbose) goes through Ray's original function, unchanged. A message said once is not said again
    (a dying node's raylet and its agent both publish its death)."""
    import ray._private.worker as ray_worker

    original = ray_worker.print_to_stdstream
    if getattr(original, "one_line", False):
        return

    said: set[str] = set()

    def print_to_stdstream(data: dict, ignore_prefix: bool) -> None:
        if data.get("pid") != "raylet":  # only the published errors come as the "raylet"'s
            original(data, ignore_prefix)
            return
        for message in data.get("lines", []):
            line = first_sentences(str(message))
            if line not in said:
                said.add(line)
                log.warning(f"ray: {line}")

    print_to_stdstream.one_line = True
    ray_worker.print_to_stdstream = print_to_stdstream


def first_sentences(message: str, at_least: int = 40) -> str:
    """The start of a cluster error, as one line.

    Args:
        message: Ray's message (a paragraph, often followed by a log's last lines).
        at_least: sentences are taken until the text is this long.

    Returns:
        Its first sentences of its first line, at most CLUSTER_ERROR_CHARACTERS long.
    """
    first = (message.strip().splitlines() or [""])[0]
    text = ""
    for sentence in re.split(r"(?<=\.)\s+", first):
        text = f"{text} {sentence}".strip()
        if len(text) >= at_least:
            break
    return text[:CLUSTER_ERROR_CHARACTERS]


def cluster_cpus() -> int:
    """Returns the CPUs of the Ray cluster this process is connected to (1 at least)."""
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


@contextlib.contextmanager
def fit_threads(threads: int):
    """A context in which the OpenMP and BLAS libraries loaded in this process use at most `threads`
    threads (threadpoolctl, as scikit-learn's own tools do).

    Args:
        threads: the most threads a library may use (1 at least).

    Yields:
        Nothing: the block runs inside the limit.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=max(1, int(threads))):
        yield

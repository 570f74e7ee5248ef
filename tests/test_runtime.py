"""caspar.runtime: how a job starts its local Ray."""
import os
import subprocess
import sys

import pytest
from conftest import ROOT

TASK_PRIORITY = """
import os, ray
from caspar.runtime import start_ray

start_ray()

@ray.remote
def niceness():
    return os.nice(0)

@ray.remote
def metrics_collection():
    return os.environ.get("RAY_enable_metrics_collection")

print(os.nice(0), *sorted(set(ray.get([niceness.remote() for _ in range(4)]))))
print("metrics", ray.get(metrics_collection.remote()))
"""


@pytest.mark.slow
def test_a_jobs_ray_tasks_run_at_the_jobs_own_priority():
    """Ray lowers its workers' priority by 15 unless told otherwise: beside any busy program a job's
    fits (Ray tasks) would wait while its driver did not. Started with `nice -n 3`, the job and its
    tasks run at the same priority."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    result = subprocess.run(["nice", "-n", "3", sys.executable, "-c", TASK_PRIORITY], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    priorities, metrics = result.stdout.splitlines()[-2:]
    driver, *tasks = priorities.split()
    assert int(driver) == os.nice(0) + 3 and tasks == [driver], result.stdout
    # and no metrics: its port would answer anyone on the network without a token
    assert metrics == "metrics 0", result.stdout


NODE_DIES = """
import logging, sys, threading
import ray
from ray._private import ray_constants
from ray._private.utils import publish_error_to_driver
from caspar.runtime import start_ray

seen = threading.Event()
class Seen(logging.Handler):
    def emit(self, record):
        print(record.getMessage(), flush=True)
        seen.set()
logging.getLogger("caspar").addHandler(Seen())  # as the jobs' shell prints caspar's lines

start_ray()
# what a dying node's agent publishes to the driver (ray._private.process_watcher.report_raylet_error_logs)
dump = ("Raylet is terminated. Termination is unexpected. Possible reasons include: (1) SIGKILL by the user or system "
        "OOM killer, (3) Other termination signals. Last 20 lines of the Raylet logs:\\n"
        "    [state-dump] NodeManager: ...\\n    [state-dump] DebugString() time ms: 0\\n")
publish_error_to_driver(ray_constants.RAYLET_DIED_ERROR, dump, gcs_client=ray._private.worker.global_worker.gcs_client)
publish_error_to_driver(ray_constants.RAYLET_DIED_ERROR, dump, gcs_client=ray._private.worker.global_worker.gcs_client)
print("published twice", flush=True)
print("seen" if seen.wait(60) else "not seen", flush=True)
"""


@pytest.mark.slow
def test_a_node_that_dies_is_one_line_not_rays_state_dump():
    """Ray prints every error a node publishes to the driver (a raylet's death, with the last 20
    lines of its log) on the job's output whatever log_to_driver says; a job without --verbose
    prints its first line instead. The error goes through Ray's real path: published to the GCS,
    printed by the driver's listening thread. Said once, though published twice (as a dying node's
    raylet and its agent both do)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    result = subprocess.run([sys.executable, "-c", NODE_DIES], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[-1] == "seen", result.stdout
    said = [line for line in lines if "Raylet is terminated" in line]
    assert said == ["ray: Raylet is terminated. Termination is unexpected."], result.stdout  # once
    assert "state-dump" not in result.stdout + result.stderr

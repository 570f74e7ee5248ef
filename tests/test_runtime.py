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

print(os.nice(0), *sorted(set(ray.get([niceness.remote() for _ in range(4)]))))
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
    driver, *tasks = result.stdout.split()
    assert int(driver) == os.nice(0) + 3 and tasks == [driver], result.stdout

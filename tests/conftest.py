import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
GAMELOGS = SHARED / "gamelogs"
sys.path.insert(0, str(ROOT))


def needs_shared_logs():
    return pytest.mark.skipif(not GAMELOGS.is_dir(), reason="../shared/gamelogs not present")


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray node for the session: loopback only, its own temp dir."""
    import ray

    os.environ["RAY_AUTH_MODE"] = "disabled"
    temp_dir = tempfile.mkdtemp(prefix="rt-", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", _temp_dir=temp_dir,
             logging_level="WARNING", log_to_driver=False)
    yield ray
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)

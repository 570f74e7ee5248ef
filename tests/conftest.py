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


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 server (SeaweedFS) for the session, with the client environment pointing at it."""
    from services import S3_KEY, S3_SECRET, seaweedfs

    with seaweedfs() as endpoint:
        saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
        os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID=S3_KEY, AWS_SECRET_ACCESS_KEY=S3_SECRET)
        yield endpoint
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

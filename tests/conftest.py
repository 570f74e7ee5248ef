import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"  # the developers' copy of the corpus and its reference vectors, beside the project
GAMELOGS = Path(os.environ.get("CASPAR_GAMELOGS", SHARED / "gamelogs"))


def needs_shared_logs():
    return pytest.mark.skipif(not GAMELOGS.is_dir(), reason="no real corpus (CASPAR_GAMELOGS)")


# What a test needs, read off the fixtures it uses (pytest.ini declares the markers; `make test-fast`
# runs the tests that need none of them). Tests that start a cluster or a job process are marked by hand.
MARKER_OF_FIXTURE = {"tracking_server": "server", "mlflow_url": "server", "s3_endpoint": "server", "stack": "server",
                     "ray_local": "ray", "corpus_dataset": "corpus", "classes": "jdk"}


def pytest_collection_modifyitems(items):
    for item in items:
        for fixture, marker in MARKER_OF_FIXTURE.items():
            if fixture in item.fixturenames:
                item.add_marker(marker)
        if any(mark.name == "skipif" and "CASPAR_GAMELOGS" in str(mark.kwargs.get("reason", ""))
               for mark in item.iter_markers()):
            item.add_marker("corpus")


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray node for the session: loopback only, its own temp dir, its workers at the
    test process's priority (as caspar.runtime.start_ray starts a job's)."""
    import ray

    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ["RAY_worker_niceness"] = "0"  # noqa: SIM112  (Ray reads its settings by their own case)
    temp_dir = tempfile.mkdtemp(prefix="rt-", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", _temp_dir=temp_dir,
             logging_level="WARNING", log_to_driver=False)
    ray.test_temp_dir = temp_dir  # tests that kill this node's workers find them by it (pytest-xdist runs other nodes)
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


@pytest.fixture(scope="session")
def mlflow_url():
    from services import mlflow_server

    with mlflow_server() as url:
        yield url


@pytest.fixture
def tracking_server(mlflow_url, monkeypatch):
    """MLFLOW_TRACKING_URI pointing at the session's real MLflow server."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_url)
    yield mlflow_url
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


@pytest.fixture(scope="session")
def sample_dataset(tmp_path_factory):
    """A small prepared dataset built from synthetic logs by the real prepare job (in this process:
    30 games)."""
    from caspar.config import PrepareConfig
    from caspar.data import dataset
    from caspar.data.samples import write_samples

    folder = tmp_path_factory.mktemp("samples")
    write_samples(folder / "raw", count=30, seed=11)
    dataset.prepare(PrepareConfig(input=str(folder / "raw"), output=str(folder / "prepared"), test_size=0.2,
                                  validation_size=0.2, seed=1))
    return str(folder / "prepared")


@pytest.fixture(scope="session")
def corpus_dataset(ray_local, tmp_path_factory):
    """The shared corpus of real logs, prepared once by the real prepare job: (folder, summary)."""
    from caspar.config import PrepareConfig
    from caspar.data import dataset

    if not GAMELOGS.is_dir():
        pytest.skip("no real corpus (CASPAR_GAMELOGS)")
    folder = tmp_path_factory.mktemp("corpus") / "prepared"
    summary = dataset.prepare(PrepareConfig(input=str(GAMELOGS), output=str(folder)))
    return str(folder), summary


@pytest.fixture(scope="session")
def classes(tmp_path_factory):
    """The Java package compiled once with javac --release 17 -Xlint:all -Werror (a warning fails it)."""
    from caspar.export import javamodel

    if not javamodel.java_available():
        pytest.skip("no JDK (javac, java)")
    folder = tmp_path_factory.mktemp("classes")
    javamodel.compiled(str(folder))
    return str(folder)

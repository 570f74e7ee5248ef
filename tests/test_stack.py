"""The shared stack of compose.yaml, checked statically, and its MLflow command run for real
against local PostgreSQL and an S3 server (no Docker engine runs here); the end-to-end pipeline."""
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager

import pytest
import yaml
from conftest import GAMELOGS, ROOT, needs_shared_logs
from services import (
    S3_KEY,
    S3_SECRET,
    _postgres_bin,
    compose_mlflow_command,
    compose_mlflow_environment,
    free_port,
    postgres,
    running_mlflow,
    s3_client,
    seaweedfs,
)

COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SCHEMA = ROOT / "tests" / ".cache" / "compose-spec.json"
STACK_ENV = {"MINIO_ROOT_USER": S3_KEY, "MINIO_ROOT_PASSWORD": S3_SECRET, "MLFLOW_BUCKET": "mlflow",
             "POSTGRES_USER": "mlflow", "POSTGRES_PASSWORD": "stack-test", "POSTGRES_DB": "mlflow",
             "MLFLOW_ADMIN_PASSWORD": "admin-secret-for-tests", "MLFLOW_SECRET_KEY": "session-secret-for-tests",
             "RAY_AUTH_TOKEN": "ray-token-for-tests",
             # a teammate's name for this machine, as a team's .env adds it (any port: the test's is free)
             "MLFLOW_ALLOWED_HOSTS": "mlflow:5000,localhost:5000,127.0.0.1:5000,caspar-team-host:*"}
SIGNED_IN = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": STACK_ENV["MLFLOW_ADMIN_PASSWORD"]}


def test_compose_file_follows_the_compose_specification():
    import jsonschema

    assert SCHEMA.is_file(), "the Compose schema is fetched by `make test` (tests/.cache)"
    jsonschema.validate(COMPOSE, json.loads(SCHEMA.read_text()))


def test_services_start_in_order_and_say_when_they_are_ready():
    """Properties, not the file restated: every dependency exists and the order has no cycle; what a
    service waits to be healthy has a health check, and so has everything that publishes a port.
    (The MLflow command itself runs for real in the stack tests below.)"""
    import graphlib

    services = COMPOSE["services"]
    graphlib.TopologicalSorter({name: set(s.get("depends_on", {})) for name, s in services.items()}).static_order()
    for name, service in services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if rule.get("condition") == "service_healthy":
                assert services[dependency].get("healthcheck", {}).get("test"), f"{name} waits on {dependency}'s health"
        if service.get("ports"):
            assert service.get("healthcheck", {}).get("test"), f"{name} publishes a port without a health check"
    # the Ray nodes reach the stack's MLflow and S3 by service name: jobs find them in their environment
    for name in ("ray-head", "ray-worker"):
        environment = services[name]["environment"]
        for variable in ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL"):
            host = environment[variable].split("//")[1].split(":")[0]
            assert host in services, (name, variable)
    # the image runs the MLflow of requirements.txt (the client and the server must agree)
    dockerfile = (ROOT / services["mlflow"]["build"]["dockerfile"]).read_text()
    pinned = next(line for line in (ROOT / "requirements.txt").read_text().splitlines() if line.startswith("mlflow=="))
    assert f'"{pinned.replace("mlflow==", "mlflow[auth]==")}"' in dockerfile


def signed_in(monkeypatch):
    """The MLflow client of a test signs in too."""
    for name, value in SIGNED_IN.items():
        monkeypatch.setenv(name, value)


def test_only_loopback_by_default_and_every_secret_from_env():
    """Every published port binds to BIND_ADDRESS (default 127.0.0.1); every password, secret key
    and token is a required variable of .env with no default; what accepts writes asks for them."""
    import re

    services = COMPOSE["services"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.startswith("${BIND_ADDRESS:-127.0.0.1}:"), (name, port)
        for variable, value in service.get("environment", {}).items():
            if re.search("PASSWORD|SECRET|TOKEN", variable) and variable != "RAY_AUTH_MODE":
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]*\}", str(value)), (name, variable, value)
    assert "9001" not in str(services["minio"].get("ports"))  # MinIO's console is not published
    command = services["mlflow"]["command"]
    assert command[command.index("--app-name") + 1] == "basic-auth"
    for name in ("ray-head", "ray-worker"):
        assert services[name]["environment"]["RAY_AUTH_MODE"] == "token"
    settings = (ROOT / "docker" / "basic_auth.ini").read_text()
    assert "password" not in settings.split("[mlflow]")[1].lower().replace("pgpassword", "")


def test_no_credentials_outside_env_files():
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    example = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    for secret in ("MINIO_ROOT_PASSWORD", "POSTGRES_PASSWORD", "MLFLOW_ADMIN_PASSWORD", "MLFLOW_SECRET_KEY", "RAY_AUTH_TOKEN"):
        assert example[secret] == "", secret
    text = (ROOT / "compose.yaml").read_text()
    for variable in ("MINIO_ROOT_PASSWORD", "POSTGRES_PASSWORD", "MINIO_ROOT_USER"):
        assert f"${{{variable}" in text  # only ever interpolated from .env
    for name, service in COMPOSE["services"].items():  # ps and docker inspect show command lines
        command = service.get("command", [])
        command = command if isinstance(command, list) else [command]
        assert not any(secret in str(part) for part in command
                       for secret in ("PASSWORD", "SECRET", "TOKEN")), (name, command)


@contextmanager
def compose_mlflow(s3_endpoint: str, postgres_port: int, **server_env):
    """compose.yaml's own `mlflow` command, with hosts and ports substituted, on local services
    (`server_env`: more of the server's environment)."""
    import tempfile
    from pathlib import Path

    port = free_port()
    command = compose_mlflow_command(COMPOSE, STACK_ENV, port, postgres_port)
    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, **compose_mlflow_environment(COMPOSE, STACK_ENV, s3_endpoint, postgres_port, Path(folder)),
               **server_env}
        with running_mlflow(command, port, ROOT / "tests" / ".cache" / "mlflow-stack.log", env) as url:
            yield url


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    (ROOT / "tests" / ".cache").mkdir(exist_ok=True)
    with seaweedfs() as endpoint, postgres(STACK_ENV["POSTGRES_USER"], STACK_ENV["POSTGRES_PASSWORD"],
                                           STACK_ENV["POSTGRES_DB"]) as pg_port:
        client = s3_client(endpoint)
        client.create_bucket(Bucket=STACK_ENV["MLFLOW_BUCKET"])  # what minio-init does
        with compose_mlflow(endpoint, pg_port) as url:
            yield {"s3": endpoint, "postgres_port": pg_port, "mlflow": url}


def test_the_stack_answers_a_teammate_by_the_name_the_team_set_and_no_other(stack):
    """A team reaches the server by the machine's own name: MLflow answers it (here: asks for the
    password), and refuses a name nobody set with 403."""
    import urllib.error
    import urllib.request

    port = stack["mlflow"].rsplit(":", 1)[1]

    def status(host: str) -> int:
        request = urllib.request.Request(f"{stack['mlflow']}/api/2.0/mlflow/experiments/search?max_results=1",
                                         headers={"Host": f"{host}:{port}"})
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status
        except urllib.error.HTTPError as error:
            return error.code

    assert status("caspar-team-host") == 401  # reached, and asks who is there
    assert status("stranger-host") == 403


def job(name, *args, env, timeout=900):
    started = time.monotonic()
    result = subprocess.run([sys.executable, str(ROOT / "jobs" / f"{name}.py"), *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=timeout)
    return result, time.monotonic() - started


def without_s3_credentials(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_S3"))}
    env.update(RAY_AUTH_MODE="disabled", **extra)
    env.pop("RAY_ADDRESS", None)
    return env


@needs_shared_logs()
def test_end_to_end_on_the_stack(stack, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    client = s3_client(stack["s3"])
    client.create_bucket(Bucket="games")
    logs = sorted(GAMELOGS.rglob("*.tsv"))[:12]
    for path in logs:
        client.upload_file(str(path), "games", f"raw/{path.name}")
    reader_env = {**without_s3_credentials(), "AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET,
                  "AWS_ENDPOINT_URL": stack["s3"]}  # prepare reads the logs' bucket with its own credentials
    prepared, _ = job("prepare", "--input", "s3://games/raw", "--output", str(tmp_path / "prepared"),
                      "--test-size", "0.2", "--validation-size", "0.2", env=reader_env)
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    env = without_s3_credentials(MLFLOW_TRACKING_URI=stack["mlflow"], **SIGNED_IN)  # artefacts go through the server
    trained, _ = job("train", "--data", str(tmp_path / "prepared"), "--epochs", "2", "--hidden-layers", "16", "--trees", "50",
                     "--tree-folds", "2", "--experiment-name", "stack", "--run-name", "stack-model",
                     "--model-name", "CASPAR-stack", env=env)
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-2000:]
    exported, _ = job("export", "--run", "stack-model", "--output", str(tmp_path / "exports"), env=env)
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert "verified" in exported.stdout
    assert (tmp_path / "exports" / "stack-model" / "stack-model.tflite").is_file()
    assert (tmp_path / "exports" / "stack-model" / "saved_model.pb").is_file()
    # runs and metrics are in the server's PostgreSQL store
    signed_in(monkeypatch)
    tracking = MlflowClient(stack["mlflow"], registry_uri=stack["mlflow"])
    experiment = tracking.get_experiment_by_name("stack")
    runs = tracking.search_runs([experiment.experiment_id])
    best = next(r for r in runs if r.info.run_name == "stack-model")
    assert "test_r2" in best.data.metrics and tracking.search_model_versions("name = 'CASPAR-stack'")
    query = f"select count(*) from runs where experiment_id = {experiment.experiment_id}"
    count = subprocess.run([_postgres_bin("psql"), "-h", "127.0.0.1", "-p", str(stack["postgres_port"]), "-U", "postgres", "-d",
                            "mlflow", "-tAc", query], capture_output=True, text=True)
    assert int(count.stdout.strip()) == len(runs)
    # artefacts are objects in the private bucket
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket="mlflow")
            for o in page.get("Contents", [])]
    assert any(k.endswith("min_max_feature_normalization.csv") for k in keys)
    assert any(k.endswith("stack-model.tflite") for k in keys)


def test_the_artefact_bucket_refuses_anonymous_reads(stack):
    client = s3_client(stack["s3"])
    client.put_object(Bucket="mlflow", Key="artifacts/probe.txt", Body=b"secret")
    for url in (f"{stack['s3']}/mlflow/artifacts/probe.txt", f"{stack['s3']}/mlflow?list-type=2"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=10)
        assert refused.value.code in (401, 403)


@pytest.mark.parametrize("name, args", [
    ("train", ["--epochs", "1"]),
    ("tune", ["--n-trials", "1"]),
    ("export", ["--run", "anything"]),
])
def test_jobs_fail_fast_when_the_server_is_down(sample_dataset, name, args):
    env = without_s3_credentials(MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}")
    data = ["--data", sample_dataset] if name != "export" else []
    result, _ = job(name, *data, *args, env=env, timeout=120)  # the job's own wait is at most 5 s
    assert result.returncode == 2 and "does not answer" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_s3_down_while_logging_leaves_no_good_looking_model(stack, sample_dataset, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    signed_in(monkeypatch)
    # a second server of the stack's database whose S3 is down
    dead_endpoint = f"http://127.0.0.1:{free_port()}"
    with compose_mlflow(dead_endpoint, stack["postgres_port"], AWS_MAX_ATTEMPTS="1") as url:  # its S3 calls fail at once
        env = without_s3_credentials(MLFLOW_TRACKING_URI=url, AWS_MAX_ATTEMPTS="1", **SIGNED_IN)  # no retries
        result, _ = job("train", "--data", sample_dataset, "--epochs", "1", "--trees", "20", "--tree-folds", "2",
                        "--run-name", "half",
                        "--model-name", "CASPAR-half", env=env, timeout=300)
        assert result.returncode != 0
        assert "train: error: the run's files cannot be stored" in result.stderr and "Traceback" not in result.stderr
        tracking = MlflowClient(url, registry_uri=url)
        assert not tracking.search_model_versions("name = 'CASPAR-half'")
        runs = tracking.search_runs([e.experiment_id for e in tracking.search_experiments()],
                                    "attributes.run_name = 'half'")
        assert runs and all(r.info.status == "FAILED" for r in runs)
        assert not runs[0].data.metrics  # it failed at its first file, before any training
        # a study too: at its first file, before its trees and trials
        result, _ = job("tune", "--data", sample_dataset, "--n-trials", "1", "--run-name", "half-study",
                        "--storage-path", str(tmp_path / "ray"), env=env, timeout=300)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert "tune: error: the run's files cannot be stored" in result.stderr and "trees:" not in result.stdout


def test_the_server_lets_nobody_in_without_credentials(stack):
    api = f"{stack['mlflow']}/api/2.0/mlflow/experiments/search?max_results=5"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(api, timeout=10)
    assert refused.value.code == 401
    request = urllib.request.Request(f"{stack['mlflow']}/api/2.0/mlflow/experiments/create", method="POST",
                                     data=b'{"name": "intruder"}', headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401
    import base64

    wrong = base64.b64encode(b"admin:guess").decode()
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(api, headers={"Authorization": f"Basic {wrong}"}), timeout=10)
    assert refused.value.code == 401
    right = base64.b64encode(f"admin:{STACK_ENV['MLFLOW_ADMIN_PASSWORD']}".encode()).decode()
    with urllib.request.urlopen(urllib.request.Request(api, headers={"Authorization": f"Basic {right}"}), timeout=10) as ok:
        assert ok.status == 200 and "experiments" in json.loads(ok.read())


@pytest.mark.parametrize("credentials, message", [
    ({}, "requires signing in (401): set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"),
    ({"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "guess"}, "rejected user 'admin' (401)"),
])
def test_a_job_without_valid_credentials_is_one_line(stack, sample_dataset, credentials, message):
    env = without_s3_credentials(MLFLOW_TRACKING_URI=stack["mlflow"], **credentials)
    result, _ = job("train", "--data", sample_dataset, "--epochs", "1", env=env, timeout=120)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert message in result.stderr

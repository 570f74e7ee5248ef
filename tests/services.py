"""Real servers for tests, on 127.0.0.1 and free ports, stopped by whoever started them."""
from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

S3_KEY, S3_SECRET = "caspar-test", "caspar-test-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(process: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL after `timeout` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def wait_for_port(port: int, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def weed_binary() -> str:
    return shutil.which("weed") or str(Path(sys.executable).with_name("weed"))


@contextmanager
def seaweedfs():
    """A SeaweedFS server with its S3 API; yields the endpoint URL. Credentials: S3_KEY/S3_SECRET."""
    folder = tempfile.mkdtemp(prefix="caspar-weed-")
    config = Path(folder, "s3.json")
    config.write_text(json.dumps({"identities": [{
        "name": "test", "credentials": [{"accessKey": S3_KEY, "secretKey": S3_SECRET}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    s3_port = free_port()
    ports = {name: free_port() for name in (
        "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
        "filer.port.grpc", "s3.port.grpc", "metricsPort")}
    data = Path(folder, "data")
    data.mkdir()
    command = [weed_binary(), "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3",
               f"-s3.port={s3_port}", f"-s3.config={config}", "-s3.port.iceberg=0", "-s3.port.lance=0",
               "-master.volumeSizeLimitMB=64", "-volume.max=20"]
    command += [f"-{name}={port}" for name, port in ports.items()]
    log = open(Path(folder, "weed.log"), "wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(s3_port, 60, process)
        endpoint = f"http://127.0.0.1:{s3_port}"
        _wait_for_s3(endpoint)
        yield endpoint
    finally:
        # Its filer waits 15 s for the S3 gateway's open stream before it stops; the data is thrown away.
        stop(process, timeout=3)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


def s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=S3_KEY,
                        aws_secret_access_key=S3_SECRET, region_name="us-east-1")


def _wait_for_s3(endpoint: str, timeout: float = 60) -> None:
    client = s3_client(endpoint)
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.list_buckets()
            bucket = f"probe-{os.getpid()}"
            client.create_bucket(Bucket=bucket)
            client.put_object(Bucket=bucket, Key="probe", Body=b"ok")
            client.delete_object(Bucket=bucket, Key="probe")
            client.delete_bucket(Bucket=bucket)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@contextmanager
def running_mlflow(command: list[str], port: int, log_path, env: dict | None = None):
    """Run an `mlflow server` command that listens on 127.0.0.1:`port`; yields its URL once
    /health answers, and stops its whole process group afterwards."""
    log = open(log_path, "wb")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port(port, 90, process)
        url = f"http://127.0.0.1:{port}"
        _wait_for_health(url)
        yield url
    finally:
        _stop_group(process)
        log.close()


@contextmanager
def mlflow_server(extra_args: list[str] | None = None):
    """A real `mlflow server` (SQLite backend, proxied artefacts in a temp folder); yields its URL."""
    folder = tempfile.mkdtemp(prefix="caspar-mlflow-")
    port = free_port()
    command = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", f"sqlite:///{folder}/mlflow.db", "--artifacts-destination", f"{folder}/artifacts",
               "--serve-artifacts", "--workers", "1", *(extra_args or [])]
    try:
        # without MLflow's job runner, as the stack's server (compose.yaml): four processes fewer
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with running_mlflow(command, port, Path(folder, "server.log"), env) as url:
            yield url
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _wait_for_health(url: str, timeout: float = 60) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.read().strip() == b"OK":
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url}/health did not answer OK")
        time.sleep(0.3)


def _stop_group(process: subprocess.Popen, timeout: float = 10, stop_signal: int = signal.SIGTERM) -> None:
    """The server forks workers: signal its whole process group."""
    if process.poll() is None:
        os.killpg(process.pid, stop_signal)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


class RayCluster(NamedTuple):
    """Where a test cluster answers, and where its nodes keep their files."""

    dashboard: str  # job submission and the state API: http://127.0.0.1:PORT
    gcs: str  # what a driver's RAY_ADDRESS names: 127.0.0.1:PORT
    temp_dir: str  # the head's; node N's is temp_dir/node-N, in every command line of its processes


@contextmanager
def ray_cluster(nodes: int = 2, cpus_per_node: int = 1, token: str | None = None, env: dict | None = None):
    """A real Ray cluster on this host: a head and `nodes - 1` more raylets, all on 127.0.0.1 with
    their own ports and temp dir; with `token`, Ray's token authentication; `env`: more variables
    of the nodes' environment (as cluster.yaml's start commands set). Yields a RayCluster."""
    ray = str(Path(sys.executable).with_name("ray"))
    temp_dir = tempfile.mkdtemp(prefix="rc-", dir="/tmp")
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token} if token else {"RAY_AUTH_MODE": "disabled"}
    env = {**os.environ, **(env or {}), **auth, "RAY_USAGE_STATS_ENABLED": "0",
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}  # as if the venv were active
    gcs, dashboard = free_port(), free_port()

    def node_ports():
        low = free_port()
        return [f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
                f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
                # below the ephemeral range (32768+), where free_port() finds the other ports
                f"--min-worker-port={20000 + low % 12000}", f"--max-worker-port={20000 + low % 12000 + 200}"]

    common = ["--block", "--node-ip-address=127.0.0.1", f"--num-cpus={cpus_per_node}", "--disable-usage-stats"]
    head = [ray, "start", "--head", *common, f"--port={gcs}", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}", f"--ray-client-server-port={free_port()}", f"--temp-dir={temp_dir}",
            "--include-dashboard=true", *node_ports()]
    log = open(Path(temp_dir, "nodes.log"), "wb")
    processes = [subprocess.Popen(head, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)]
    address = f"http://127.0.0.1:{dashboard}"
    try:
        try:
            wait_for_port(dashboard, 120, processes[0])
        except RuntimeError as error:
            log.flush()
            raise RuntimeError(f"Ray head: {error}; nodes.log ends: {Path(temp_dir, 'nodes.log').read_text()[-3000:]}") from None

        def start_workers():
            for number in range(1, nodes):
                # a temp dir of its own, as on a machine of its own: where it unpacks a job's working dir
                node_dir = Path(temp_dir, f"node-{number}")
                node_dir.mkdir(exist_ok=True)
                worker = [ray, "start", *common, f"--address=127.0.0.1:{gcs}", f"--temp-dir={node_dir}", *node_ports()]
                processes.append(subprocess.Popen(worker, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                  start_new_session=True))

        start_workers()
        try:
            _wait_for_nodes(address, nodes, token)
        except TimeoutError:  # seen rarely on a loaded 2-core machine: start the extra raylets once more
            for process in processes[1:]:
                _stop_group(process, timeout=30)
            del processes[1:]
            start_workers()
            try:
                _wait_for_nodes(address, nodes, token)
            except TimeoutError as error:
                log.flush()
                raise TimeoutError(f"{error}; nodes.log ends: {Path(temp_dir, 'nodes.log').read_text()[-3000:]}") from None
        yield RayCluster(address, f"127.0.0.1:{gcs}", temp_dir)
    finally:
        # Every node at once, then whatever lingers killed: a head's GCS stays 30 s after SIGTERM, and
        # a test cluster's state is thrown away with its temp dir.
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            _stop_group(process, timeout=1)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_nodes(address: str, count: int, token: str | None, timeout: float = 120) -> None:
    import urllib.request

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    deadline = time.monotonic() + timeout
    while True:
        try:
            request = urllib.request.Request(f"{address}/nodes?view=summary", headers=headers)
            with urllib.request.urlopen(request, timeout=5) as response:
                summary = json.loads(response.read())["data"]["summary"]
                if sum(1 for node in summary if node["raylet"]["state"] == "ALIVE") >= count:
                    return
        except (OSError, KeyError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{count} Ray nodes did not come up at {address}")
        time.sleep(1)


def _postgres_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not candidates:
        raise RuntimeError(f"PostgreSQL's {name} not found (apt-get install postgresql)")
    return candidates[-1]


@contextmanager
def postgres(user: str, password: str, database: str):
    """A PostgreSQL server (the Debian package) on 127.0.0.1 and a free port, with one database.
    Yields the port. As root, the server runs as the `postgres` system user."""
    folder = tempfile.mkdtemp(prefix="caspar-pg-")
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(folder, "postgres", "postgres")
    data, port = os.path.join(folder, "data"), free_port()
    subprocess.run([*as_user, _postgres_bin("initdb"), "-D", data, "-U", "postgres", "--auth=trust"],
                   check=True, capture_output=True)
    log = open(os.path.join(folder, "server.log"), "wb")
    process = subprocess.Popen([*as_user, _postgres_bin("postgres"), "-D", data, "-p", str(port), "-k", folder,
                                "-c", "listen_addresses=127.0.0.1"], stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        wait_for_port(port, 60, process)
        psql = [_postgres_bin("psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-c"]
        for _ in range(50):  # the port opens slightly before the server accepts sessions
            if subprocess.run([*psql, "select 1"], capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
        subprocess.run([*psql, f"create user {user} with password '{password}'"], check=True, capture_output=True)
        subprocess.run([*psql, f"create database {database} owner {user}"], check=True, capture_output=True)
        yield port
    finally:
        _stop_group(process, timeout=20, stop_signal=signal.SIGQUIT)  # immediate: its data is thrown away
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


def substitute(text: str, env: dict) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?message} interpolation."""
    import re

    def value(match):
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if op == ":-":
            return arg
        raise KeyError(f"{name} is not set ({arg})")
    return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", value, text)


def compose_mlflow_environment(compose: dict, env: dict, s3_endpoint: str, postgres_port: int, folder: Path) -> dict:
    """The `mlflow` service's environment from compose.yaml, interpolated from `env`, with the
    image's basic-auth settings (docker/basic_auth.ini) pointed at local PostgreSQL and S3."""
    environment = {name: substitute(str(value), env) for name, value in compose["services"]["mlflow"]["environment"].items()}
    settings = (Path(__file__).resolve().parents[1] / "docker" / "basic_auth.ini").read_text()
    (folder / "basic_auth.ini").write_text(settings.replace("postgres:5432", f"127.0.0.1:{postgres_port}"))
    environment.update(MLFLOW_AUTH_CONFIG_PATH=str(folder / "basic_auth.ini"), MLFLOW_S3_ENDPOINT_URL=s3_endpoint)
    return environment


def compose_mlflow_command(compose: dict, env: dict, port: int, postgres_port: int) -> list[str]:
    """The `mlflow` service's command from compose.yaml, pointed at local services: interpolated
    from `env`, bound to 127.0.0.1:`port`, PostgreSQL at 127.0.0.1:`postgres_port`."""
    command = [substitute(str(part), env) for part in compose["services"]["mlflow"]["command"]]
    command = [part.replace("@postgres:5432/", f"@127.0.0.1:{postgres_port}/") for part in command]
    command[command.index("--host") + 1] = "127.0.0.1"
    command[command.index("--port") + 1] = str(port)
    hosts = command.index("--allowed-hosts") + 1
    command[hosts] += f",127.0.0.1:{port}"
    command[0] = str(Path(sys.executable).with_name(command[0]))
    return command

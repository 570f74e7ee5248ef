"""MLflow set-up shared by the jobs: which tracking store, and failing fast when it is not there.

`MLFLOW_TRACKING_URI` set -> that server (or store). Unset -> an embedded store in the project
folder: `mlflow.db` (SQLite) with artefacts under `mlartifacts/` beside it; no server needed.
"""
from __future__ import annotations

import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from caspar.cli import UserError

PROJECT = Path(__file__).resolve().parents[1]
HEALTH_TIMEOUT_S = 5


class TrackingError(UserError):
    """The tracking server cannot be used; the message is one line for the user."""


def configure() -> str:
    """Point MLflow at the tracking store and check that it answers. Returns the URI."""
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        uri = f"sqlite:///{PROJECT / 'mlflow.db'}"
    elif uri.startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        check_server(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def check_server(uri: str) -> None:
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=HEALTH_TIMEOUT_S) as response:
            if response.status == 200:
                return
            raise TrackingError(f"MLflow server {uri} answered {response.status} on /health")
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise TrackingError(f"MLflow server {uri} does not answer ({reason})") from None


def experiment_id(name: str) -> str:
    """The experiment's id, created if new (embedded store: artefacts in the project folder)."""
    import mlflow

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///"):  # an embedded store keeps its artefacts beside its database
        database = uri[len("sqlite:///"):].split("?")[0].removeprefix("file:")
        location = (Path(database).resolve().parent / "mlartifacts").as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


def ui_hint(uri: str) -> str:
    if uri.startswith("sqlite:"):
        return f"open the MLflow UI: mlflow ui --backend-store-uri {uri}  (then http://127.0.0.1:5000)"
    return f"runs are in {uri}"


def git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None

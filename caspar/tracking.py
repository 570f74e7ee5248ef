"""MLflow set-up shared by the jobs: which tracking store, and failing fast when it is not there.

`MLFLOW_TRACKING_URI` set -> that server (or store). Unset -> an embedded store in the project
folder: `mlflow.db` (SQLite) with artefacts under `mlartifacts/` beside it; no server needed.
"""
from __future__ import annotations

import base64
import contextlib
import os
import re
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from caspar.errors import UserError
from caspar.runtime import in_ray_job

PROJECT = Path(__file__).resolve().parents[1]
HEALTH_TIMEOUT_S = 10  # a server that accepts the connection but does not answer (a refused one fails at once)


class TrackingError(UserError):
    """The tracking server cannot be used; the message is one line for the user."""


def mlflow_message(error: Exception) -> str:
    """The cause of an MLflow error in one line.

    Args:
        error: an MLflow (or SQLAlchemy) exception.

    Returns:
        A database's own message where there is one (the first line is often only SQLAlchemy's
        context), else the error's first line.
    """
    text = str(getattr(error, "message", error)).strip()
    cause = re.search(r"\((?:sqlite3|psycopg2?)\.\w+\) ([^\n\[]+)", text)
    if cause:
        return f"tracking store: {cause.group(1).strip()}"
    return text.splitlines()[0] if text else type(error).__name__


def configure() -> str:
    """Point MLflow at the tracking store (MLFLOW_TRACKING_URI, else the project's mlflow.db) and
    check that it answers.

    Returns:
        The tracking URI, without credentials (moved to MLFLOW_TRACKING_USERNAME/PASSWORD).

    Raises:
        TrackingError: the store does not answer, refuses the credentials or cannot be used.
    """
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri and in_ray_job():
        raise TrackingError("no MLFLOW_TRACKING_URI in this Ray job: an embedded store would stay on a cluster node and "
                            "be lost; pass your server with --runtime-env-json "
                            "'{\"env_vars\": {\"MLFLOW_TRACKING_URI\": \"http://HOST:5000\"}}'")
    if not uri:
        uri = f"sqlite:///{PROJECT / 'mlflow.db'}"
    if uri.startswith("sqlite:///"):
        create_sqlite_store(uri)
    elif uri.startswith(("http://", "https://")):
        uri = credentials_out_of(uri)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        check_server(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


@contextlib.contextmanager
def first_files():
    """A context around a run's first files, stored as it starts: an artefact store that refuses
    them (the server's S3 down, say) is one line, before any training, instead of an error after it.

    Yields:
        Nothing.

    Raises:
        TrackingError: MLflow could not store the files.
    """
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as error:
        raise TrackingError(f"the run's files cannot be stored (the tracking server's artefact store may be down "
                            f"or refuse them): {mlflow_message(error)[:300]}") from error


def credentials_out_of(uri: str) -> str:
    """Moves the credentials of http://USER:PASSWORD@HOST/… to MLFLOW_TRACKING_USERNAME /
    MLFLOW_TRACKING_PASSWORD (unless those are set): MLflow sends them from there, and the URI can
    then be printed and logged without a secret.

    Args:
        uri: a tracking URI.

    Returns:
        The URI without credentials (also set as MLFLOW_TRACKING_URI when it had some).
    """
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    os.environ.setdefault("MLFLOW_TRACKING_USERNAME", unquote(parts.username or ""))
    os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", unquote(parts.password or ""))
    bare = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    os.environ["MLFLOW_TRACKING_URI"] = bare
    return bare


def shown(uri: str) -> str:
    """A URI as it may be printed.

    Args:
        uri: any URI.

    Returns:
        The URI with any credentials in it masked (***@HOST).
    """
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


def create_sqlite_store(uri: str) -> None:
    """Creates (or migrates) an SQLite store one job at a time: jobs started together on a new
    store would otherwise each run MLflow's migrations on it, and leave it half-migrated.

    Args:
        uri: a sqlite:/// tracking URI.

    Raises:
        TrackingError: its folder is missing, or the file is not a store this MLflow can use.
    """
    import mlflow

    from caspar.storage import exclusive_lock

    database = Path(sqlite_path(uri))
    if not database.parent.is_dir():
        raise TrackingError(f"MLFLOW_TRACKING_URI {uri}: no folder {database.parent}")
    with exclusive_lock(str(database.parent / f".{database.name}.lock")):
        try:
            client = mlflow.MlflowClient(uri, registry_uri=uri)
            client.search_experiments(max_results=1)
            client.search_registered_models(max_results=1)
        except Exception as error:  # SQLAlchemy's or MLflow's: the file is not a store this MLflow can use
            raise TrackingError(f"MLFLOW_TRACKING_URI {uri}: not an MLflow store this version can use "
                                f"({mlflow_message(error)})") from None


def sqlite_path(uri: str) -> str:
    """The database file of a SQLite tracking URI.

    Args:
        uri: sqlite:///PATH, also in SQLite's URI form (sqlite:///file:PATH?mode=ro).

    Returns:
        PATH.
    """
    return uri[len("sqlite:///"):].split("?")[0].removeprefix("file:")


def check_server(uri: str) -> None:
    """Checks that the server answers and lets these credentials in (a server with basic auth
    answers 401 to anyone without MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD).

    Args:
        uri: the server's http(s) URI, without credentials.

    Raises:
        TrackingError: it does not answer, or refuses the credentials, in one line.
    """
    base = uri.rstrip("/")
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=HEALTH_TIMEOUT_S) as response:
            if response.status != 200:
                raise TrackingError(f"MLflow server {uri} answered {response.status} on /health")
        probe = urllib.request.Request(f"{base}/api/2.0/mlflow/experiments/search?max_results=1", headers=_auth_header())
        urllib.request.urlopen(probe, timeout=HEALTH_TIMEOUT_S).close()
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            raise TrackingError(_credentials_message(uri, error.code)) from None
        raise TrackingError(f"MLflow server {uri} answered {error.code} ({error.reason})") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise TrackingError(f"MLflow server {uri} does not answer ({reason})") from None


def _auth_header() -> dict[str, str]:
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return {"Authorization": f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"}
    return {}


def _credentials_message(uri: str, code: int) -> str:
    if code == 403:
        return f"MLflow server {uri} refused user {os.environ.get('MLFLOW_TRACKING_USERNAME')!r} (403: no permission)"
    if os.environ.get("MLFLOW_TRACKING_USERNAME"):
        return (f"MLflow server {uri} rejected user {os.environ['MLFLOW_TRACKING_USERNAME']!r} (401): "
                "check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
    return f"MLflow server {uri} requires signing in (401): set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"


# MLflow 3's UI opens an experiment of this kind on its training runs (without it, on a GenAI overview).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(name: str) -> str:
    """The experiment's id, created if new (an embedded store keeps its artefacts beside its database).

    Args:
        name: the experiment's name.

    Returns:
        Its id.

    Raises:
        TrackingError: the experiment is deleted.
    """
    import mlflow

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None and experiment.lifecycle_stage == "deleted":
        raise TrackingError(f"--experiment-name {name}: that experiment is deleted; restore it (mlflow experiments "
                            f"restore --experiment-id {experiment.experiment_id}) or choose another name")
    if experiment is not None:
        if not set(EXPERIMENT_KIND) & set(experiment.tags):
            mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, *next(iter(EXPERIMENT_KIND.items())))
        return experiment.experiment_id
    location = None
    uri = mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///"):  # an embedded store keeps its artefacts beside its database
        location = (Path(sqlite_path(uri)).resolve().parent / "mlartifacts").as_uri()
    return mlflow.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND)


def ui_hint(uri: str, experiment_id: str | None = None) -> str:
    """Where the user sees the runs.

    Args:
        uri: the tracking URI.
        experiment_id: the experiment to open (None: the UI's start).

    Returns:
        A line: the command that opens the UI of an embedded store, or the server's page of the
        experiment's runs.
    """
    if uri.startswith("sqlite:"):
        return f"open the MLflow UI: mlflow ui --backend-store-uri {uri}, then {runs_page('http://127.0.0.1:5000', experiment_id)}"
    if uri.startswith(("http://", "https://")):
        return f"runs: {runs_page(shown(uri), experiment_id)}"
    return f"runs are in {shown(uri)}"


def runs_page(server: str, experiment_id: str | None) -> str:
    """The UI page of an experiment's training runs. MLflow 3's UI opens an experiment on its GenAI
    overview (traces, token usage) whatever the experiment's kind, unless the link names the runs
    page and the model-training view (the view's switch is kept in the browser: mlflow/mlflow#24498).

    Args:
        server: the UI's base URL.
        experiment_id: the experiment (None: the base URL).

    Returns:
        The page's URL.
    """
    if experiment_id is None:
        return server
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def git_commit() -> str | None:
    """Returns the project's git commit, or None outside a git checkout."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None


def literal(text: str) -> str:
    """A string as a literal of an MLflow filter, e.g. f"attributes.run_name = {literal(name)}".
    MLflow's filter strings have no escapes: a name with a single quote is double-quoted.

    Args:
        text: a name.

    Returns:
        The quoted literal.

    Raises:
        UserError: the name holds both kinds of quote (refused up front by caspar.config).
    """
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    raise UserError(f"{text!r}: a name with both ' and \" cannot be looked up in MLflow")


@contextlib.contextmanager
def run(**kwargs):
    """mlflow.start_run(**kwargs), ended KILLED (not FAILED) when the job is interrupted (Ctrl-C, or
    SIGTERM, which the jobs' shell turns into the same interrupt): the run did not fail, it was stopped.

    Args:
        **kwargs: mlflow.start_run's.

    Yields:
        The active run.
    """
    import mlflow

    with mlflow.start_run(**kwargs) as active:
        try:
            yield active
        except KeyboardInterrupt:
            mlflow.end_run("KILLED")  # start_run's own exit then finds no active run to mark FAILED
            raise

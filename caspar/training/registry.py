"""Finding a trained model in MLflow: by run name (the newest FINISHED run with a model), run id,
registry URI (models:/NAME/VERSION, models:/NAME@ALIAS) or the logged-model URI a job printed."""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from caspar import tracking
from caspar.artifacts import has_model
from caspar.errors import UserError

RUN_ID = re.compile(r"^[0-9a-f]{32}$")
LOGGED_MODEL = re.compile(r"^models:/m-[0-9a-f]+$")


class ExportError(UserError):
    """The export cannot be done; the message is one line for the user."""


@dataclass
class Source:
    """The run an export is made from: its id, the export's file stem, the model's URI, and a note
    for the user (e.g. that a name matched several runs)."""
    run_id: str
    name: str  # file stem of the export
    model_uri: str
    note: str = ""  # e.g. that a name matched several runs


def find_model(ref: str, experiment_name: str | None = None) -> Source:
    """The model a reference names, if it may be exported.

    Args:
        ref: a run name, a run id, models:/NAME/VERSION, models:/NAME@ALIAS or a logged model's models:/m-… URI.
        experiment_name: where to look a run name up (None: every experiment).

    Returns:
        Its Source.

    Raises:
        ExportError: nothing to export, naming what is wrong (no such run, a run that did not finish
            or whose model was refused).
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    if LOGGED_MODEL.match(ref):  # what train and tune print: the model as logged in its run
        return _logged_model(client, ref)
    if ref.startswith("models:/"):
        return _registered_model(client, ref)
    if RUN_ID.match(ref):
        source = _run_by_id(client, ref)
        if source is not None:
            return source
    return _newest_run_named(client, ref, experiment_name)


def _logged_model(client, ref: str) -> Source:
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(client.get_logged_model(ref[len("models:/"):]).source_run_id)
    except MlflowException:
        raise ExportError(f"no logged model {ref}") from None
    _check_shippable(run)
    return Source(run.info.run_id, safe_name(run.info.run_name or ref[len("models:/"):]), ref)


def _registered_model(client, ref: str) -> Source:
    from mlflow.exceptions import MlflowException

    name, _, rest = ref[len("models:/"):].partition("/")
    name, _, alias = name.partition("@")
    try:
        version = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, rest)
    except MlflowException:
        raise ExportError(f"no registered model {ref}") from None
    run = client.get_run(version.run_id)
    _check_shippable(run)
    return Source(version.run_id, safe_name(run.info.run_name or f"{name}-v{version.version}"), ref)


def _run_by_id(client, ref: str) -> Source | None:
    """The run with this id; None if there is none (the text may be a run's name)."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(ref)
    except MlflowException:
        return None
    _check_shippable(run)
    if not has_model(client, ref):
        raise ExportError(f"run {ref} has no model (it failed or is still running)")
    return Source(ref, safe_name(run.info.run_name or ref), f"runs:/{ref}/model")


def _newest_run_named(client, ref: str, experiment_name: str | None) -> Source:
    experiments = [e.experiment_id for e in _experiments(client, experiment_name)]
    runs = client.search_runs(experiments, f"attributes.run_name = {tracking.literal(ref)}", order_by=["attributes.start_time DESC"])
    with_model = [r for r in runs if r.info.status == "FINISHED" and has_model(client, r.info.run_id)]
    where = f" in experiment {experiment_name}" if experiment_name else ""
    if runs and not with_model:
        raise ExportError(f"{len(runs)} runs are named {ref!r}{where} but none finished with a model "
                          "(they failed or are still running)")
    if not with_model:
        names = {r.info.run_name for r in client.search_runs(experiments, max_results=1000)}
        close = difflib.get_close_matches(ref, sorted(n for n in names if n and n != ref), n=5, cutoff=0.4)
        hint = f"; closest names: {', '.join(close)}" if close else ""
        raise ExportError(f"no run named {ref!r}{where}{hint}")
    newest = with_model[0]
    _check_shippable(newest)
    note = ""
    if len(with_model) > 1:  # say which, and how to name another: a name is not a model
        others = ", ".join(f"{r.info.run_id} (test R² {r.data.metrics.get('test_r2', float('nan')):.4f})"
                           for r in with_model[1:4])
        newest_r2 = newest.data.metrics.get("test_r2", float("nan"))
        note = (f"{len(with_model)} finished runs are named {ref!r}; exporting the newest, {newest.info.run_id} "
                f"(test R² {newest_r2:.4f}); the others: {others}{' …' if len(with_model) > 4 else ''}; "
                "--run RUN_ID or models:/NAME/VERSION exports another")
    return Source(newest.info.run_id, safe_name(ref), f"runs:/{newest.info.run_id}/model", note)


def _check_shippable(run) -> None:
    """Only a run that finished is exported, by any reference: a FAILED, killed or running run is
    not, nor a run whose model does not beat the mean baseline (it was not registered either)."""
    if run.info.status != "FINISHED":
        raise ExportError(f"run {run.info.run_id} ({run.info.run_name}) is {run.info.status}, not FINISHED: "
                          "its model is not exported")
    if run.data.tags.get("caspar.verdict") == "refused":
        raise ExportError(f"run {run.info.run_id} ({run.info.run_name}) is not exported: "
                          f"{run.data.tags.get('caspar.verdict_reason', 'its model did not beat the mean baseline')}")


def _experiments(client, name: str | None):
    if name is None:
        return client.search_experiments()
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        raise ExportError(f"no experiment named {name!r}")
    return [experiment]


def safe_name(name: str) -> str:
    """A file name for the export folder.

    Args:
        name: a run's name.

    Returns:
        It with letters, digits, '.', '_' and '-' only (others become '_'), at most 100 of them;
        "model" if nothing is left.
    """
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:100] or "model"

"""What every job does around its work: one line for a problem the user can fix, the summary
lines on success."""
from __future__ import annotations

import sys
from typing import Callable


class UserError(Exception):
    """A problem the user can fix (bad input, a server that does not answer); one-line message."""


def run(job: str, work: Callable[[], list[str]]) -> int:
    """Run `work`; print its lines (exit 0), or one `job: error: ...` line (exit 2 for a UserError,
    1 when MLflow failed while logging)."""
    try:
        lines = work()
    except UserError as error:
        print(f"{job}: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        mlflow_errors = sys.modules.get("mlflow.exceptions")  # only jobs that track import MLflow
        if mlflow_errors is None or not isinstance(error, mlflow_errors.MlflowException):
            raise
        # e.g. the artefact store failed while a run was logged
        print(f"{job}: error: MLflow: {str(error).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    for line in lines:
        print(line)
    return 0

"""caspar-trainer: the model behind MegaMek's CASPAR bot, from game logs to an exported model.

From a notebook or another program, the jobs' work as functions (nothing heavy loads on import)::

    import caspar

    summary = caspar.prepare(input="data/raw", output="data/prepared")
    result = caspar.train(data="data/prepared", run_name="model-v1")
    study = caspar.tune(data="data/prepared", n_trials=20, run_name="study-v1")
    exported = caspar.export_model("model-v1", output="exports")

Each function takes as keyword arguments the options of its job (`--run-name` is `run_name`), checks
them before any heavy work (a bad one raises caspar.errors.UserError, with the job's one-line
message), and returns a typed result; its `.lines()` are what the job prints at its end. Nothing is
printed: progress goes to the `caspar` loggers (`logging.basicConfig(level=logging.INFO)` shows it).
`export_model` is not `export`: that name is the package caspar.export.
"""
from __future__ import annotations

__all__ = ["prepare", "train", "tune", "export_model"]


def _defaults() -> None:
    """As a job does: no telemetry, and the libraries' own output quiet, unless the user set otherwise."""
    from caspar.runtime import private_defaults, quiet_defaults

    private_defaults()
    quiet_defaults()


def prepare(**options):
    """Read game logs and write the feature dataset, as `jobs/prepare.py` does.

    Args:
        **options: PrepareConfig's fields (`input`, `output`, `test_size`, ...).

    Returns:
        caspar.data.dataset.Summary: the games and rows written per split, and the problems found.
    """
    from caspar.config import PrepareConfig
    from caspar.data import dataset

    _defaults()
    return dataset.prepare(PrepareConfig(**options))


def train(**options):
    """Train one model, tracked and registered in MLflow, as `jobs/train.py` does.

    Args:
        **options: TrainConfig's fields (`data`, `run_name`, `epochs`, `trees`, ...).

    Returns:
        caspar.training.train.Result: the run id, the test metrics, the registered version and the
        model's URI.
    """
    from caspar.config import TrainConfig
    from caspar.training.train import train as train_model

    _defaults()
    return train_model(TrainConfig(**options))


def tune(**options):
    """Run a study on Ray Tune (started locally, or the cluster of RAY_ADDRESS), as `jobs/tune.py` does.

    Args:
        **options: TuneConfig's fields (`data`, `n_trials`, `time_budget`, `run_name`, ...).

    Returns:
        caspar.tuning.study.Study: the trials, what shipped (the ensemble), its run and metrics.
    """
    from caspar.config import TuneConfig
    from caspar.data.prepared import load_prepared
    from caspar.tuning.tune import tune_study

    _defaults()
    config = TuneConfig(**options)
    return tune_study(config, load_prepared(config.data))


def export_model(ref: str, output: str = "exports", experiment_name: str | None = None):
    """Write a trained model in every format the game reads, verified, as `jobs/export.py` does.

    Args:
        ref: a run name, a run id, models:/NAME/VERSION, models:/NAME@ALIAS or a logged model's URI.
        output: the folder the export goes into (as output/<run name>/).
        experiment_name: where to look a run name up (every experiment when None).

    Returns:
        caspar.export.formats.Exported: the folder, the files, their sizes, latencies and the
        largest difference from the outputs training recorded.
    """
    from caspar.export import formats

    _defaults()
    return formats.export(ref, output, experiment_name)

"""Hyperparameter search on Ray Tune (Optuna TPE + ASHA), tracked in MLflow.

    python jobs/tune.py --n-trials 100 --run-name model-v1
    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/tune.py --storage-path s3://bucket/ray
"""
import sys

from caspar import cli
from caspar.config import TuneConfig


def main(argv=None) -> int:
    config, verbose = cli.parse(TuneConfig, __doc__, argv)
    return cli.run("tune", lambda: tune_job(config, verbose), verbose)


def tune_job(config: TuneConfig, verbose: bool) -> list[str]:
    from caspar import tracking
    from caspar.data.prepared import load_prepared

    prepared = load_prepared(config.data)  # the dataset, then the server, are checked before Ray and TensorFlow start
    tracking.configure()
    from caspar.tuning.tune import tune_study

    study = tune_study(config, prepared, verbose)
    if study.interrupted and study.run_id is None:
        raise cli.Interrupted(study.lines())
    return study.lines()


if __name__ == "__main__":
    sys.exit(main())

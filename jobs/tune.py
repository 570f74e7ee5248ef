"""Hyperparameter search on Ray Tune (Optuna TPE + ASHA), tracked in MLflow.

    python jobs/tune.py --n-trials 100 --run-name model-v1
    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/tune.py --storage-path s3://bucket/ray
"""
import sys

from caspar import cli, config


def main(argv=None) -> int:
    tune_config, verbose = config.parse(config.TuneConfig, __doc__, argv)
    return cli.run("tune", lambda: tune_job(tune_config, verbose), verbose)


def tune_job(tune_config: config.TuneConfig, verbose: bool) -> list[str]:
    from caspar import tracking
    from caspar.prepared import load_prepared

    tracking.configure()  # the server and the dataset are checked before Ray and TensorFlow start
    prepared = load_prepared(tune_config.data)
    from caspar.tune import tune_study

    study = tune_study(tune_config, prepared, verbose)
    if study.interrupted and study.run_id is None:
        raise cli.Interrupted(study.lines())
    return study.lines()


if __name__ == "__main__":
    sys.exit(main())

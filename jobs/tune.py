"""Hyperparameter search on Ray Tune (Optuna TPE + ASHA), tracked in MLflow.

    python jobs/tune.py --n-trials 100 --run-name model-v1
    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/tune.py --storage-path s3://bucket/ray
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout or a Ray working dir

from caspar import cli, dataset, tracking  # noqa: E402
from caspar.tune import TUNE_DEFAULTS as DEFAULTS  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DEFAULTS["data"], help="prepared dataset (folder or s3://)")
    parser.add_argument("--n-trials", type=int, default=DEFAULTS["n_trials"])
    parser.add_argument("--n-jobs", type=int, default=DEFAULTS["n_jobs"], help="concurrent trials; -1: as many as the CPUs allow")
    parser.add_argument("--cpus-per-trial", type=float, default=DEFAULTS["cpus_per_trial"])
    parser.add_argument("--epochs", type=int, default=DEFAULTS["epochs"], help="max epochs per trial")
    parser.add_argument("--grace-period", type=int, default=DEFAULTS["grace_period"], help="epochs before ASHA may stop a trial")
    parser.add_argument("--time-budget", type=float, default=DEFAULTS["time_budget"], help="seconds for the whole study")
    parser.add_argument("--storage-path", default=DEFAULTS["storage_path"], help="study storage (folder or s3://); needed for several nodes")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted study of this --run-name")
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    parser.add_argument("--experiment-name", default=DEFAULTS["experiment_name"])
    parser.add_argument("--run-name", default=DEFAULTS["run_name"], help="the study's name; the best model's run name")
    parser.add_argument("--model-name", default=DEFAULTS["model_name"], help="registered model name")
    args = parser.parse_args(argv)
    return cli.run("tune", lambda: tune_job(args))


def tune_job(args) -> list[str]:
    tracking.configure()  # the inputs are checked before Ray and TensorFlow start
    prepared = dataset.load_prepared(args.data)
    from caspar.tune import tune_study

    return tune_study(vars(args), prepared).lines()


if __name__ == "__main__":
    sys.exit(main())

"""Train one model on the prepared dataset, tracked in MLflow.

    python jobs/train.py --hidden-layers 354 354 --dropout-rate 0.06 --learning-rate 0.01 --epochs 50 \\
        --experiment-name final-model --run-name model-v1
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout or a Ray working dir

from caspar import cli, dataset, tracking  # noqa: E402
from caspar.config import ACTIVATIONS, OPTIMIZERS, TRAIN_DEFAULTS as DEFAULTS  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DEFAULTS["data"], help="prepared dataset (folder or s3://)")
    parser.add_argument("--hidden-layers", type=int, nargs="+", default=DEFAULTS["hidden_layers"], help="units per hidden layer")
    parser.add_argument("--dropout-rate", type=float, default=DEFAULTS["dropout_rate"])
    parser.add_argument("--learning-rate", type=float, default=DEFAULTS["learning_rate"])
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    parser.add_argument("--epochs", type=int, default=DEFAULTS["epochs"], help="at most; early stopping ends sooner")
    parser.add_argument("--patience", type=int, default=DEFAULTS["patience"], help="epochs without improvement before stopping")
    parser.add_argument("--activation", choices=ACTIVATIONS, default=DEFAULTS["activation"])
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default=DEFAULTS["optimizer"])
    parser.add_argument("--encoding-bins", type=int, default=DEFAULTS["encoding_bins"],
                        help="piecewise-linear encoding bins per input; 0 feeds inputs as they are")
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    parser.add_argument("--experiment-name", default=DEFAULTS["experiment_name"])
    parser.add_argument("--run-name", default=DEFAULTS["run_name"], help="the name jobs/export.py finds the run by")
    parser.add_argument("--model-name", default=DEFAULTS["model_name"], help="registered model name")
    args = parser.parse_args(argv)
    return cli.run("train", lambda: train_job(args))


def train_job(args) -> list[str]:
    tracking.configure()  # the inputs are checked before TensorFlow loads
    prepared = dataset.load_prepared(args.data)
    from caspar.train import train

    return train(vars(args), prepared).lines()


if __name__ == "__main__":
    sys.exit(main())

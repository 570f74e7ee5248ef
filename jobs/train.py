"""Train one model on the prepared dataset, tracked in MLflow.

    python jobs/train.py --hidden-layers 354 354 --dropout-rate 0.06 --learning-rate 0.01 --epochs 50 \\
        --experiment-name final-model --run-name model-v1
"""
import sys

from caspar import cli
from caspar.config import TrainConfig


def main(argv=None) -> int:
    config, verbose = cli.parse(TrainConfig, __doc__, argv)
    return cli.run("train", lambda: train_job(config), verbose)


def train_job(config: TrainConfig) -> list[str]:
    from caspar import tracking
    from caspar.data.prepared import load_prepared

    prepared = load_prepared(config.data)  # the dataset, then the server, are checked before TensorFlow loads
    tracking.configure()
    from caspar.training.train import train

    return train(config, prepared).lines()


if __name__ == "__main__":
    sys.exit(main())

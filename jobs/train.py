"""Train one model on the prepared dataset, tracked in MLflow.

    python jobs/train.py --hidden-layers 354 354 --dropout-rate 0.06 --learning-rate 0.01 --epochs 50 \\
        --experiment-name final-model --run-name model-v1
"""
import sys

from caspar import cli, config


def main(argv=None) -> int:
    settings, verbose = config.parse(config.TrainConfig, __doc__, argv)
    return cli.run("train", lambda: train_job(settings), verbose)


def train_job(settings: config.TrainConfig) -> list[str]:
    from caspar import tracking
    from caspar.prepared import load_prepared

    tracking.configure()  # the server and the dataset are checked before TensorFlow loads
    prepared = load_prepared(settings.data)
    from caspar.train import train

    return train(settings, prepared, show_progress=True).lines()


if __name__ == "__main__":
    sys.exit(main())

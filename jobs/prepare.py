"""Build the feature dataset from MegaMek game logs.

    python jobs/prepare.py --input data/raw --output data/prepared
    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/prepare.py --input s3://logs/
"""
import sys

from caspar import cli, config


def main(argv=None) -> int:
    settings, verbose = config.parse(config.PrepareConfig, __doc__, argv)
    return cli.run("prepare", lambda: prepare_job(settings), verbose)


def prepare_job(settings: config.PrepareConfig) -> list[str]:
    from caspar import dataset

    return dataset.prepare(settings).lines()


if __name__ == "__main__":
    sys.exit(main())

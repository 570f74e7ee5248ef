"""Build the feature dataset from MegaMek game logs.

    python jobs/prepare.py --input data/raw --output data/prepared
    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/prepare.py --input s3://logs/
"""
import sys

from caspar import cli
from caspar.config import PrepareConfig


def main(argv=None) -> int:
    config, verbose = cli.parse(PrepareConfig, __doc__, argv)
    return cli.run("prepare", lambda: prepare_job(config), verbose)


def prepare_job(config: PrepareConfig) -> list[str]:
    from caspar.data import dataset

    return dataset.prepare(config, say=lambda line: print(line, flush=True)).lines()


if __name__ == "__main__":
    sys.exit(main())

"""Check new game logs against what a model was trained on: per feature, the share of new rows
outside the training range and the population stability index; the flagged features in one table,
logged to MLflow (experiment caspar-drift).

    python jobs/prepare.py --input new_logs/ --output data/new
    python jobs/drift.py --run models:/CASPAR@champion --data data/new
"""
import sys

from caspar import cli
from caspar.config import DriftConfig


def main(argv=None) -> int:
    config, verbose = cli.parse(DriftConfig, __doc__, argv)
    return cli.run("drift", lambda: drift_job(config), verbose)


def drift_job(config: DriftConfig) -> list[str]:
    from caspar import tracking

    tracking.configure()
    from caspar.training.drift import check

    return check(config)


if __name__ == "__main__":
    sys.exit(main())

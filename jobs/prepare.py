"""Build the feature dataset from MegaMek game logs.

    python jobs/prepare.py --input data/raw --output data/prepared
    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/prepare.py --input s3://logs/
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout or a Ray working dir

from caspar import cli, dataset  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", default="data/raw", help="folder (searched recursively), .zip or s3://bucket/prefix of *.tsv logs")
    parser.add_argument("--output", default="data/prepared", help="dataset folder or s3://bucket/prefix (replaced)")
    parser.add_argument("--test-size", type=float, default=0.1, help="share of games in the test split")
    parser.add_argument("--validation-size", type=float, default=0.1, help="share of games in the validation split")
    parser.add_argument("--seed", type=int, default=42, help="seed of the split by game")
    parser.add_argument("--mekfile", default=None, help="MegaMek unit table (TSV) for units' full armour/internal points")
    parser.add_argument("--include-bots", action="store_true", help="also the bot's moves (column is_bot)")
    args = parser.parse_args(argv)
    return cli.run("prepare", lambda: dataset.prepare(
        args.input, args.output, test_size=args.test_size, validation_size=args.validation_size,
        seed=args.seed, mekfile=args.mekfile, include_bots=args.include_bots).lines())


if __name__ == "__main__":
    sys.exit(main())

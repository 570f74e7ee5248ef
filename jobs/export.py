"""Export a trained model for MegaMek: TFLite file and SavedModel folder, verified.

    python jobs/export.py --run model-v1 [--output exports/]
    python jobs/export.py --run models:/CASPAR@champion
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout or a Ray working dir

from caspar import cli, tracking  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="run name, run id, or models:/NAME/VERSION or models:/NAME@ALIAS")
    parser.add_argument("--output", default="exports", help="folder for NAME.tflite and NAME/")
    parser.add_argument("--experiment-name", default=None, help="look for the run name in this experiment only")
    args = parser.parse_args(argv)
    return cli.run("export", lambda: export_job(args))


def export_job(args) -> list[str]:
    tracking.configure()  # the server is checked before TensorFlow loads
    from caspar.export import export

    return export(args.run, args.output, args.experiment_name).lines()


if __name__ == "__main__":
    sys.exit(main())

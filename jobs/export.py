"""Export a trained model for MegaMek: TFLite file and SavedModel folder, verified.

    python jobs/export.py --run model-v1 [--output exports/]
    python jobs/export.py --run models:/CASPAR@champion
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout or a Ray working dir

from caspar import tracking  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="run name, run id, or models:/NAME/VERSION or models:/NAME@ALIAS")
    parser.add_argument("--output", default="exports", help="folder for NAME.tflite and NAME/")
    parser.add_argument("--experiment-name", default=None, help="look for the run name in this experiment only")
    args = parser.parse_args(argv)
    try:
        tracking.configure()
        from caspar.export import ExportError, export
    except tracking.TrackingError as error:
        print(f"export: error: {error}", file=sys.stderr)
        return 2
    from mlflow.exceptions import MlflowException

    try:
        result = export(args.run, args.output, args.experiment_name)
    except ExportError as error:
        print(f"export: error: {error}", file=sys.stderr)
        return 2
    except MlflowException as error:
        print(f"export: error: MLflow: {str(error).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    for line in result.lines():
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

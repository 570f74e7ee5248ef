"""Export a trained model for MegaMek: TFLite file and SavedModel folder, verified.

    python jobs/export.py --run model-v1 [--output exports/]
    python jobs/export.py --run models:/CASPAR@champion
"""
import sys

from caspar import cli
from caspar.config import ExportConfig


def main(argv=None) -> int:
    config, verbose = cli.parse(ExportConfig, __doc__, argv)
    return cli.run("export", lambda: export_job(config), verbose)


def export_job(config: ExportConfig) -> list[str]:
    from caspar import tracking

    tracking.configure()  # the server is checked before TensorFlow loads
    from caspar.export.formats import export

    return export(config.run, config.output, config.experiment_name, say=lambda line: print(line, flush=True)).lines()


if __name__ == "__main__":
    sys.exit(main())

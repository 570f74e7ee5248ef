"""Benchmark of the Java features and model (printed figures, not a test).

    python bench/java.py --logs PATH/TO/gamelogs [--export exports/model-v1]

Computes the features of every row of the logs in Java (java/src/caspar/CasparFeatures.java) from
the logger's records and compares them with the Python features: rows compared, rows with a value
more than 1e-6 away, the largest difference. With --export: the median milliseconds per candidate
path at batch 1 on one thread (real moves of the logs, after a warm-up) of the features alone, the
model alone and both together, and the size of model.caspar.
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from caspar.data.features import load_unit_points  # noqa: E402
from caspar.data.gamelog.reader import read_game  # noqa: E402
from caspar.data.logfiles import find_logs  # noqa: E402
from caspar.export import javafeatures, javamodel  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logs", required=True, help="a folder of game logs")
    parser.add_argument("--export", help="an export folder (jobs/export.py) to time with the features")
    args = parser.parse_args()
    if not javamodel.java_available():
        sys.exit("bench/java.py: needs a JDK (javac, java)")
    started = time.perf_counter()
    inputs = find_logs(args.logs)
    logs = [read_game({os.path.basename(p): Path(p).read_bytes() for p in paths}, name)
            for name, paths in sorted(inputs.games.items())]
    print(f"{len(logs)} games read in {time.perf_counter() - started:.1f} s", flush=True)
    with tempfile.TemporaryDirectory(prefix="caspar-bench-java-") as folder, javamodel.classes() as classes:
        decisions = os.path.join(folder, "decisions.tsv")
        expected = javafeatures.write_decisions_file(logs, decisions, load_unit_points())
        keys = javafeatures.decision_keys(decisions)
        started = time.perf_counter()
        java = javafeatures.features_in_java(decisions, os.path.join(folder, "features.f32"), classes)
        print(f"features of {len(keys)} decisions in Java: {time.perf_counter() - started:.1f} s (one JVM, start included)")
        compared = [(java[i].astype(np.float64), expected[k].astype(np.float32)) for i, k in enumerate(keys) if k in expected]
        worst = np.array([np.max(np.abs(j - p)) for j, p in compared])
        print(f"parity: {len(compared)} rows compared, {int((worst > 1e-6).sum())} with a value more than 1e-6 away, "
              f"largest difference {worst.max():.3g}")
        if args.export:
            figures = javamodel.latency(args.export, classes, decisions)
            size = os.path.getsize(os.path.join(args.export, javamodel.MODEL_FILE)) / 2**20
            print(f"Java, one thread, batch 1, median ms per candidate path: features {figures['java_features_ms']:.4f}, "
                  f"model {figures['java_batch1_ms']:.4f}, features and model {figures['java_features_and_model_ms']:.4f}; "
                  f"model.caspar {size:.2f} MB")


if __name__ == "__main__":
    main()

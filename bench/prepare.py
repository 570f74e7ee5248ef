"""Benchmark of the prepare job (printed figures, not a test).

    python bench/prepare.py --logs PATH/TO/gamelogs [--repeat 10]
    python bench/prepare.py --logs PATH/TO/gamelogs --formats [--repeat 3]

Runs the job on the corpus as it is and on the corpus repeated N times (file copies under new
names), each in a fresh Python process so that Ray's start is part of the wall time. Prints files,
human moves, wall seconds, CPU ms per human move for reading and featurising (summed over workers,
Ray start excluded) and peak memory per worker (its own anonymous pages, sampled after
each file; the object store's shared pages are not the worker's).

With --formats: the corpus (repeated N times) rewritten in each layout MegaMek writes today
(caspar.data.gamelog.writer), prepared in each; the same figures per layout, and how many games give
rows equal to the original's (within 1e-6, outside the features whose information differs).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def repeated_corpus(logs: Path, times: int, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for k in range(times):
        for path in sorted(logs.rglob("*.tsv")):
            target = folder / f"copy{k:02d}_{path.name}"
            try:
                os.link(path, target)
            except OSError:
                shutil.copyfile(path, target)
    return folder


def run(logs: Path, output: Path) -> dict:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, str(ROOT / "jobs" / "prepare.py"), "--input", str(logs),
                             "--output", str(output)], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(result.stderr)
    manifest = json.loads((output / "manifest.json").read_text())
    files = manifest["files"]
    workers: dict[int, float] = {}
    for entry in files:
        cost = entry["cost"]
        workers[cost["worker_pid"]] = max(workers.get(cost["worker_pid"], 0), cost["worker_memory_mb"])
    human = sum(e["human_moves"] for e in files)
    cpu_ms = sum(e["cost"]["cpu_ms"] for e in files)
    ray_start = next(float(line.split("(")[1].split(" s")[0]) for line in result.stdout.splitlines() if "starting Ray" in line)
    return {"files": len(files), "human_moves": human, "rows": sum(manifest["rows"].values()),
            "wall_s": round(wall, 1), "ray_start_s": ray_start, "cpu_ms_per_human_move": round(cpu_ms / human, 3),
            "workers": len(workers), "peak_private_mb_per_worker": round(max(workers.values()), 1)}


def rewritten_corpus(logs: Path, times: int, layout: str | None, folder: Path) -> Path:
    from caspar.data.gamelog.writer import rewrite

    folder.mkdir(parents=True)
    for number, path in enumerate(sorted(logs.rglob("*.tsv")) * times):
        stamp = f"2025{1 + number // 86400 % 12:02d}01_{number // 3600 % 24:02d}{number // 60 % 60:02d}{number % 60:02d}"
        files = {path.name: path.read_bytes()} if layout is None else rewrite(path.read_bytes(), layout, timestamp=stamp)
        for name, content in files.items():
            (folder / (f"copy{number:05d}_{name}" if layout is None else name)).write_bytes(content)
    return folder


def equal_games(logs: Path, layout: str) -> tuple[int, int]:
    import numpy as np

    from caspar.data.features import feature_names, featurize, load_unit_points
    from caspar.data.gamelog import read_game, read_log
    from caspar.data.gamelog.writer import FORMAT_DEPENDENT_FEATURES, rewrite

    same = np.array([name not in FORMAT_DEPENDENT_FEATURES for name in feature_names()])
    points, equal, paths = load_unit_points(), 0, sorted(logs.rglob("*.tsv"))
    for path in paths:
        data = path.read_bytes()
        a, b = featurize(read_log(data, path.name), points), featurize(read_game(rewrite(data, layout)), points)
        equal += len(a) == len(b) and bool(np.allclose(a.features[:, same], b.features[:, same], atol=1e-6, rtol=0)
                                           and np.allclose(a.reward, b.reward, atol=1e-6, rtol=0))
    return equal, len(paths)


def compare_formats(logs: Path, times: int, tmp: Path) -> None:
    from caspar.data.gamelog.writer import LAYOUTS

    for layout in [None, *LAYOUTS]:
        folder = rewritten_corpus(logs, times, layout, tmp / f"logs-{layout}")
        figures = run(folder, tmp / f"prepared-{layout}")
        if layout:
            figures["games_equal_to_original"] = "{}/{}".format(*equal_games(logs, layout))
        print(f"{layout or '2025-03':>9} ({times}x): " + ", ".join(f"{k} {v}" for k, v in figures.items()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logs", required=True, help="a folder of game logs")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--formats", action="store_true", help="compare the layouts MegaMek writes today")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="caspar-bench-") as tmp:
        tmp = Path(tmp)
        if args.formats:
            compare_formats(Path(args.logs), args.repeat, tmp)
            return
        for label, logs in [("1x", Path(args.logs)),
                            (f"{args.repeat}x", repeated_corpus(Path(args.logs), args.repeat, tmp / "repeated"))]:
            figures = run(logs, tmp / f"prepared-{label}")
            print(f"{label:>4}: " + ", ".join(f"{k} {v}" for k, v in figures.items()), flush=True)


if __name__ == "__main__":
    main()

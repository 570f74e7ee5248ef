"""Benchmark: a study against a default train run, FLAML and AutoGluon given the same time on the
same cores, per game fold of a corpus (printed figures, not a test).

    python bench/study.py --data data/corpus --seconds 300 [--folds 5] [--autogluon /tmp/ag/bin/python]
        [--only 4 5] [--contenders train study flaml autogluon]

Each fold prints a JSON line, so folds run apart (--only) can be put together.

Per fold of a 5-fold split by game of the train and validation splits (the test split stays
untouched): the held-out games score every model; the other games are split into train and
validation (a ninth of the games, seeded), as a prepared dataset's are. On those rows:

- the model a default `jobs/train.py` run ships (caspar.training: the same fit, not logged);
- a study, `jobs/tune.py --time-budget SECONDS` (caspar.tuning.tune.tune_study, a throw-away MLflow
  store and study folder), its model scored on the held-out games;
- FLAML's AutoML and AutoGluon (`best_quality`, bagged folds grouped by game), each given the wall
  seconds the study took (not the nominal budget: the study's final phase can pass it), with
  every CPU of this machine.

AutoGluon is a benchmark-only dependency in a venv of its own (its pins differ from this project's):
    python3.11 -m venv /tmp/ag && /tmp/ag/bin/pip install "autogluon.tabular[lightgbm,catboost,xgboost]" pyarrow \
        "ray[default]>=2.43,<2.59"
(with Ray, AutoGluon fits its bagged folds as Ray tasks side by side; without, one after another).
FLAML: `pip install flaml[automl]` into the project's venv. A tool that is not installed is left out
and the table says so.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

AUTOGLUON_SCRIPT = """
import sys, time, pandas as pd
from autogluon.tabular import TabularPredictor
from sklearn.metrics import r2_score
train, test = pd.read_parquet(sys.argv[1]), pd.read_parquet(sys.argv[2])
seconds, cpus, folder = float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
predictor = TabularPredictor(label="reward", eval_metric="r2", groups="fold", path=folder, verbosity=0).fit(
    train, time_limit=seconds, presets="best_quality", num_cpus=cpus)
print("R2", r2_score(test["reward"], predictor.predict(test.drop(columns=["reward", "fold"]))))
"""


def fold_prepared(prepared, x, y, games, rest, held_out, seed: int):
    """A Prepared of one fold: the other games split into train and a ninth for validation, the
    held-out games as its test split."""
    from caspar.data.prepared import Prepared, Split

    rng = np.random.default_rng(seed)
    rest_games = np.unique(games[rest])
    stopping = np.isin(games[rest], rng.choice(rest_games, max(2, len(rest_games) // 9), replace=False))
    train, val = rest[~stopping], rest[stopping]
    splits = {"train": Split(x[train], y[train]), "val": Split(x[val], y[val]), "test": Split(x[held_out], y[held_out])}
    files = {"train": games[train], "val": games[val], "test": games[held_out]}
    return Prepared(prepared.uri, splits, prepared.schema, prepared.manifest, files)


def default_train_r2(fold) -> tuple[float, float]:
    """(test R², seconds) of the model a default train run ships."""
    from sklearn.metrics import r2_score

    from caspar.config import Hyperparameters
    from caspar.training import evaluate
    from caspar.training.fit import fit, fit_stage
    from caspar.training.train import release

    started = time.perf_counter()
    hp = Hyperparameters()
    stage = fit_stage(hp, fold.splits, fold.files, "train+val")
    network, history = fit(hp, stage, fold.splits)
    released = release(hp, fold.splits, network, history, stage, "train+val")
    scored = released.scored
    x_test, y_test = fold.splits["test"]
    return (float(r2_score(y_test, evaluate.predict(scored.model, stage.normalizer.transform(x_test)))),
            time.perf_counter() - started)


def study_r2(fold, k: int, seconds: float, folder: str) -> tuple[float, float, list[str]]:
    """(test R², wall seconds, what shipped) of a study with --time-budget `seconds`."""
    from caspar.config import TuneConfig
    from caspar.tuning.tune import tune_study

    started = time.perf_counter()
    config = TuneConfig(data=f"fold {k}", time_budget=seconds, run_name=f"fold{k}", experiment_name="bench-study",
                        model_name="CASPAR-bench", storage_path=os.path.join(folder, "ray"))
    study = tune_study(config, fold)
    for line in study.lines():
        print(f"  study: {line}", flush=True)
    return float(study.metrics["test_r2"]), time.perf_counter() - started, study.ensemble_lines


def flaml_r2(fold, seconds: float, seed: int) -> float:
    from flaml import AutoML
    from sklearn.metrics import r2_score

    x = np.concatenate([fold.splits["train"][0], fold.splits["val"][0]])
    y = np.concatenate([fold.splits["train"][1], fold.splits["val"][1]])
    automl = AutoML()
    automl.fit(x, y, task="regression", metric="r2", time_budget=seconds, seed=seed, verbose=0, n_jobs=os.cpu_count())
    return float(r2_score(fold.splits["test"][1], automl.predict(fold.splits["test"][0])))


def autogluon_r2(python: str, fold, seconds: float, folder: str) -> float:
    import pandas as pd

    from caspar.model.crossfit import game_folds

    def frame(names):
        x = np.concatenate([fold.splits[n][0] for n in names])
        table = pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])])
        table["reward"] = np.concatenate([fold.splits[n][1] for n in names])
        # AutoGluon bags one model per value of `groups`: 8 folds of whole games (best_quality's 8
        # bagging folds), not one per game (200 games: 200 models per bagged model, none done in time)
        table["fold"] = game_folds(np.concatenate([fold.files[n] for n in names]), 8, 0)
        return table

    train, test = os.path.join(folder, "ag_train.parquet"), os.path.join(folder, "ag_test.parquet")
    frame(["train", "val"]).to_parquet(train)
    frame(["test"]).to_parquet(test)
    own_ray = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # not this process's Ray settings
    done = subprocess.run([python, "-c", AUTOGLUON_SCRIPT, train, test, str(seconds), str(os.cpu_count()),
                           os.path.join(folder, "ag")], capture_output=True, text=True, env=own_ray)
    line = [row for row in done.stdout.splitlines() if row.startswith("R2 ")]
    if done.returncode != 0 or not line:
        raise RuntimeError(f"AutoGluon failed: {done.stderr[-2000:]}")
    return float(line[-1].split()[1])


def main() -> None:
    from caspar.data.prepared import load_prepared
    from caspar.runtime import start_ray

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/prepared")
    parser.add_argument("--seconds", type=float, default=300, help="the study's --time-budget")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--only", type=int, nargs="*", help="run these folds only (1-based)")
    parser.add_argument("--autogluon", help="the Python of a venv with autogluon.tabular (see the docstring)")
    parser.add_argument("--contenders", nargs="+", default=["train", "study", "flaml", "autogluon"],
                        choices=["train", "study", "flaml", "autogluon"],
                        help="which to run (without the study, the others get --seconds)")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    from sklearn.model_selection import GroupKFold

    prepared = load_prepared(args.data)
    names = ("train", "val")
    x = np.concatenate([prepared.splits[n][0] for n in names])
    y = np.concatenate([prepared.splits[n][1] for n in names])
    games = np.concatenate([prepared.files[n] for n in names])
    with tempfile.TemporaryDirectory() as folder:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder}/mlflow.db"
        start_ray()
        table: dict[str, list[float]] = {}
        for k, (rest, held_out) in enumerate(GroupKFold(args.folds).split(x, groups=games)):
            if args.only and k + 1 not in args.only:
                continue
            fold = fold_prepared(prepared, x, y, games, rest, held_out, args.seed + k)
            row = {}
            train_seconds, seconds = 0.0, args.seconds
            if "train" in args.contenders:
                row["default train"], train_seconds = default_train_r2(fold)
            if "study" in args.contenders:
                row["study"], seconds, shipped = study_r2(fold, k, args.seconds, folder)
            try:
                if "flaml" in args.contenders:
                    row["FLAML, same time"] = flaml_r2(fold, seconds, args.seed)
            except ImportError:
                print("  FLAML not installed: left out", flush=True)
            if args.autogluon and "autogluon" in args.contenders:
                try:
                    row["AutoGluon best_quality, same time"] = autogluon_r2(args.autogluon, fold, seconds, folder)
                except RuntimeError as error:
                    print(f"  {error}", flush=True)
            for name, value in row.items():
                table.setdefault(name, []).append(value)
            print(f"fold {k + 1}/{args.folds}: {len(np.unique(games[held_out]))} held-out games, {len(held_out)} rows; "
                  f"default train {train_seconds:.0f} s, study {seconds:.0f} s: "
                  + ", ".join(f"{name} {value:.4f}" for name, value in row.items()), flush=True)
            print(json.dumps({"fold": k + 1, "study_seconds": seconds, "train_seconds": train_seconds, **row}), flush=True)
    if "study" not in table:
        return
    study = np.array(table["study"])
    print(f"{len(study)} folds, study budget {args.seconds:.0f} s: R² mean ± sd over folds, and the study's paired "
          "difference with each (mean ± sd; folds where the study is ahead):")
    for name, values in table.items():
        difference = study - np.array(values)
        print(f"  {name}: {np.mean(values):.4f} ± {np.std(values):.4f}; study − it {np.mean(difference):+.4f} ± "
              f"{np.std(difference):.4f} ({int(np.sum(difference > 0))}/{len(study)})")


if __name__ == "__main__":
    sys.exit(main())

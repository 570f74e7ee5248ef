"""Faults and bad values: one clear line, exit 2, and nothing good lost."""
import dataclasses
import fcntl
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import ROOT

from caspar.config import TrainConfig
from caspar.data import prepared
from caspar.data import rows as game_rows
from caspar.data.features import featurize, load_unit_points
from caspar.data.gamelog import read_log
from caspar.data.samples import write_samples
from caspar.errors import InputError, UserError


def job(name, *args, env=None, timeout=300):
    """A job run as a user runs it, in a folder of its own (whatever it writes beside it stays there)."""
    environment = {**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})}
    environment.pop("RAY_ADDRESS", None)
    with tempfile.TemporaryDirectory() as folder:
        return subprocess.run([sys.executable, str(ROOT / "jobs" / f"{name}.py"), *args], capture_output=True, text=True,
                              timeout=timeout, env=environment, cwd=folder)


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(result, job_name):
    lines = [line for line in result.stderr.strip().splitlines() if line]
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith(f"{job_name}: error: "), result.stderr[-2000:]
    return lines[0]


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """Sample logs and a good dataset prepared from them (by the real job)."""
    folder = tmp_path_factory.mktemp("good")
    write_samples(folder / "raw", count=12, seed=3)
    result = job("prepare", "--input", str(folder / "raw"), "--output", str(folder / "prepared"), "--seed", "6")
    assert result.returncode == 0, result.stderr
    return folder


@pytest.fixture
def existing(good, tmp_path):
    """A copy of the good dataset that a test may try to replace."""
    import shutil

    shutil.copytree(good / "prepared", tmp_path / "prepared")
    return tmp_path / "prepared"


# --- Prepare never replaces a good dataset with a useless one ---------------------------------------

def test_unreadable_logs_do_not_replace_a_good_dataset(existing, tmp_path):
    (tmp_path / "junk").mkdir()
    for i in range(3):
        (tmp_path / "junk" / f"junk{i}.tsv").write_bytes(b"\x00\xffnot a log\n" * 50)
    before = snapshot(existing)
    error = one_error_line(job("prepare", "--input", str(tmp_path / "junk"), "--output", str(existing)), "prepare")
    assert "no rows from 3 files" in error and "junk0.tsv:" in error and "left as it was" in error
    assert snapshot(existing) == before


def test_an_empty_split_is_refused(good, existing):
    before = snapshot(existing)
    error = one_error_line(job("prepare", "--input", str(good / "raw"), "--output", str(existing),
                               "--test-size", "0.001", "--validation-size", "0.001"), "prepare")
    assert "a split would be empty (train " in error and "val 0" in error
    assert snapshot(existing) == before


def test_problems_per_file_are_capped_in_the_manifest(good, tmp_path):
    raw = tmp_path / "raw"
    write_samples(raw, count=12, seed=3)
    lines = (raw / sorted(os.listdir(raw))[0]).read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("PLAYER_ID\tENTITY_ID"))
    lines[header + 1:header + 1] = ["1\t2\tjunk"] * 500  # 500 rows with too few fields
    (raw / sorted(os.listdir(raw))[0]).write_text("\n".join(lines) + "\n")
    result = job("prepare", "--input", str(raw), "--output", str(tmp_path / "out"), "--seed", "6")
    assert result.returncode == 0, result.stderr
    assert "1 files had problems" in result.stdout and "manifest.json" in result.stdout
    entry = next(f for f in json.loads((tmp_path / "out" / "manifest.json").read_text())["files"] if f["problems"])
    assert len(entry["problems"]) == game_rows.PROBLEMS_KEPT and entry["more_problems"] == 500 - game_rows.PROBLEMS_KEPT


# --- Non-finite numbers ------------------------------------------------------------------------------

def test_non_finite_numbers_are_problems_never_feature_values(tmp_path):
    write_samples(tmp_path, count=1, seed=1)
    path = next(tmp_path.glob("*.tsv"))
    lines = path.read_text().splitlines()
    moves = [i for i, line in enumerate(lines) if line.startswith("PLAYER_ID\tENTITY_ID")]
    first_move = moves[0] + 1
    fields = lines[first_move].split("\t")
    fields[13] = "inf"  # MP_P
    lines[first_move] = "\t".join(fields)
    states = [i for i, line in enumerate(lines) if line.startswith("ROUND\tPHASE\tPLAYER_ID")]
    state_row = states[1] + 1
    fields = lines[state_row].split("\t")
    fields[8] = "NaN"  # X of a unit: missing where features need it
    lines[state_row] = "\t".join(fields)
    log = read_log(("\n".join(lines) + "\n").encode(), path.name)
    assert any(p.line == first_move + 1 and "MP_P is not a finite number" in p.reason for p in log.problems)
    rows = featurize(log, load_unit_points())
    assert len(rows) > 0 and np.isfinite(rows.features).all() and np.isfinite(rows.reward).all()
    original = featurize(read_log(path.read_bytes(), path.name), load_unit_points())
    skipped = len(original) - len(rows)
    assert rows.dropped.get("moves with a missing value", 0) == skipped
    assert sum("move skipped" in p.reason for p in log.problems) == skipped


# --- Atomic replacement ------------------------------------------------------------------------------

KILLER = """
import os, signal
from caspar import storage

def exchange(source, target, _exchange=storage.exchange):
    if os.environ["CASPAR_KILL_AT"] == "before-swap":
        os.kill(os.getpid(), signal.SIGKILL)
    _exchange(source, target)
    os.kill(os.getpid(), signal.SIGKILL)

storage.exchange = exchange
"""


def killed_at(point, folder):
    """The environment of a job that kills itself (SIGKILL) just before or after it swaps its new
    output in: a sitecustomize module, loaded at start-up, wraps the swap."""
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(KILLER)
    return {"CASPAR_KILL_AT": point, "PYTHONPATH": os.pathsep.join([str(folder), str(ROOT)])}


@pytest.mark.parametrize("kill_at, expect_new", [("before-swap", False), ("after-swap", True)])
def test_a_killed_prepare_leaves_a_whole_dataset(good, existing, kill_at, expect_new, tmp_path):
    before = snapshot(existing)
    result = job("prepare", "--input", str(good / "raw"), "--output", str(existing), "--seed", "7",
                 env=killed_at(kill_at, tmp_path / "killer"))
    assert result.returncode == -9
    after = snapshot(existing)
    assert set(after) >= {"manifest.json", "schema.json"} and any(k.startswith("rows/") for k in after)
    manifest = json.loads(after["manifest.json"])
    assert manifest["settings"]["seed"] == (7 if expect_new else 6)
    if not expect_new:
        assert after == before
    leftovers = [p for p in existing.parent.iterdir() if ".staging-" in p.name]
    assert leftovers  # what the killed run left behind ...
    if expect_new:
        return
    rerun = job("prepare", "--input", str(good / "raw"), "--output", str(existing), "--seed", "6")
    assert rerun.returncode == 0, rerun.stderr
    assert not [p for p in existing.parent.iterdir() if ".staging-" in p.name]  # ... the next run removes


def test_a_second_writer_is_refused(good, existing):
    before = snapshot(existing)
    with open(existing.parent / f".{existing.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running prepare holds it
        error = one_error_line(job("prepare", "--input", str(good / "raw"), "--output", str(existing)), "prepare")
    assert "another job is writing the dataset" in error
    assert snapshot(existing) == before


# --- Reading a dataset -------------------------------------------------------------------------------

def damage_truncated_parquet(folder):
    part = next((folder / "rows").glob("*.parquet"))
    part.write_bytes(part.read_bytes()[:200])
    return part.name


def damage_missing_schema(folder):
    (folder / "schema.json").unlink()
    return "schema.json: missing"


def damage_other_feature_set(folder):
    schema = json.loads((folder / "schema.json").read_text())
    schema.update(version="v0-old", width=300)
    (folder / "schema.json").write_text(json.dumps(schema))
    return "feature set v0-old (300 values)"


def damage_no_rows(folder):
    for part in (folder / "rows").glob("*.parquet"):
        part.unlink()
    return "missing, though manifest.json names it"


def damage_wrong_width(folder):
    part = next((folder / "rows").glob("*.parquet"))
    table = pq.read_table(part)
    import pyarrow as pa

    narrow = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(table.num_rows * 3, np.float32)), 3)
    pq.write_table(table.set_column(table.schema.get_field_index("features"), "features", narrow), part)
    return "expected 354 float32 values"


def damage_reward_type(folder):
    import pyarrow as pa

    part = next((folder / "rows").glob("*.parquet"))
    table = pq.read_table(part)
    pq.write_table(table.set_column(table.schema.get_field_index("reward"), "reward", table["reward"].cast(pa.float64())), part)
    return f"{part.name}: column reward is double, expected float32"


def damage_not_finite(folder):
    import pyarrow as pa

    part = next((folder / "rows").glob("*.parquet"))
    table = pq.read_table(part)
    reward = table["reward"].to_numpy().copy()
    reward[0] = np.nan
    pq.write_table(table.set_column(table.schema.get_field_index("reward"), "reward", pa.array(reward)), part)
    return f"{part.name}: 1 reward values are NaN or infinite"


def damage_schema_a_list(folder):
    (folder / "schema.json").write_text("[]")
    return "schema.json: not a dataset's schema.json"


def damage_schema_without_features(folder):
    (folder / "schema.json").write_text(json.dumps({"version": "x"}))
    return "schema.json: not a dataset's schema.json"


@pytest.mark.parametrize("damage", [damage_truncated_parquet, damage_missing_schema, damage_other_feature_set,
                                    damage_no_rows, damage_wrong_width, damage_reward_type, damage_not_finite,
                                    damage_schema_a_list, damage_schema_without_features])
def test_a_damaged_dataset_is_one_line_naming_the_file(existing, damage):
    named = damage(existing)
    with pytest.raises(InputError) as error:
        prepared.load_prepared(str(existing))
    assert named in str(error.value) and "\n" not in str(error.value)


def test_the_train_job_reports_a_damaged_dataset_in_one_line(existing, tmp_path):
    named = damage_truncated_parquet(existing)
    error = one_error_line(job("train", "--data", str(existing), env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db"}),
                           "train")
    assert named in error and "unreadable Parquet" in error


# --- Never register a model that did not train ------------------------------------------------------

def test_a_diverged_run_is_failed_and_registers_nothing(good, tmp_path, monkeypatch, ray_local):
    import mlflow

    from caspar.training import train as training

    real_fit = training.fit

    def diverging_fit(hp, *args, **kwargs):
        model, history = real_fit(hp, *args, **kwargs)
        losses = {**history.losses, "val_loss": history.losses["val_loss"][:-1] + [float("nan")]}
        return model, dataclasses.replace(history, losses=losses)

    monkeypatch.setattr(training, "fit", diverging_fit)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/m.db")
    with pytest.raises(training.UserError, match="training diverged"):
        training.train(TrainConfig(data=str(good / "prepared"), hidden_layers=[8], epochs=1, trees=20, tree_folds=2,
                                   run_name="diverged", model_name="CASPAR-diverged"))
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/m.db")
    (run,) = client.search_runs([client.get_experiment_by_name("caspar").experiment_id])
    assert run.info.status == "FAILED" and run.info.run_name == "diverged"
    assert client.search_model_versions("name = 'CASPAR-diverged'") == []
    assert not any(a.path == "model" for a in client.list_artifacts(run.info.run_id))
    mlflow.set_tracking_uri(None)


def test_a_model_no_better_than_the_mean_is_neither_registered_nor_exported(good, tmp_path, monkeypatch, ray_local):
    """The registration gate: a run whose model does not beat always predicting the train mean stays,
    FINISHED and tagged with the reason, registers nothing, and the export job refuses it in one line."""
    import mlflow

    from caspar.training import evaluate
    from caspar.training import train as training

    scorecard = evaluate.scorecard

    def no_better_than_the_mean(*args, **kwargs):  # the real scorecard, its model made as good as the mean
        card = scorecard(*args, **kwargs)
        return card | {"test_r2": card["baseline_mean_test_r2"]}

    monkeypatch.setattr(evaluate, "scorecard", no_better_than_the_mean)
    store = f"sqlite:///{tmp_path}/m.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    with pytest.raises(training.UserError, match="does not beat always predicting the train mean"):
        training.train(TrainConfig(data=str(good / "prepared"), hidden_layers=[8], epochs=1, trees=20, tree_folds=2,
                                   run_name="useless", model_name="CASPAR-useless"))
    client = mlflow.MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("caspar").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["caspar.verdict"] == "refused"
    assert "train mean" in run.data.tags["caspar.verdict_reason"]
    assert client.search_model_versions("name = 'CASPAR-useless'") == []
    mlflow.set_tracking_uri(None)
    for reference in ("useless", run.info.run_id):
        error = one_error_line(job("export", "--run", reference, "--output", str(tmp_path / "exports"),
                                   env={"MLFLOW_TRACKING_URI": store}), "export")
        assert "is not exported" in error and "train mean" in error
    assert not (tmp_path / "exports").exists()


def test_the_registry_only_ever_points_at_finished_runs(good, tmp_path, monkeypatch, ray_local):
    """A job killed at any moment (kill -9, the OOM killer) must not leave a version or an alias on a
    run that never finished: the run ends FINISHED before its version is created (whole, with its
    description), and the alias moves last. An alias that cannot move removes the version again."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from caspar.training import train as training

    store = f"sqlite:///{tmp_path}/m.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    seen = []
    create, move = mlflow.MlflowClient.create_model_version, mlflow.MlflowClient.set_registered_model_alias

    def created(self, name, source, run_id=None, **kwargs):
        seen.append(("version", self.get_run(run_id).info.status, bool(kwargs.get("description"))))
        return create(self, name, source, run_id=run_id, **kwargs)

    def moved(self, name, alias, version):
        seen.append(("alias", self.get_run(self.get_model_version(name, version).run_id).info.status))
        if alias == "unlucky":
            raise MlflowException("the server went away")
        return move(self, name, alias, version)

    monkeypatch.setattr(mlflow.MlflowClient, "create_model_version", created)
    monkeypatch.setattr(mlflow.MlflowClient, "set_registered_model_alias", moved)
    common = {"data": str(good / "prepared"), "hidden_layers": [8], "epochs": 1, "trees": 20, "tree_folds": 2,
              "model_name": "CASPAR-order"}
    training.train(TrainConfig(**common, alias="champion"))
    assert seen == [("version", "FINISHED", True), ("alias", "FINISHED")]
    with pytest.raises(MlflowException, match="went away"):
        training.train(TrainConfig(**common, alias="unlucky"))
    client = mlflow.MlflowClient(store)
    assert [str(v.version) for v in client.search_model_versions("name = 'CASPAR-order'")] == ["1"]  # the second removed
    assert str(client.get_model_version_by_alias("CASPAR-order", "champion").version) == "1"
    mlflow.set_tracking_uri(None)


def test_a_reserved_alias_is_refused_before_training(good, tmp_path):
    error = one_error_line(job("train", "--data", str(good / "prepared"), "--alias", "v2",
                               env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db"}), "train")
    assert "--alias v2" in error and not (tmp_path / "m.db").exists()


# --- Tracking store and resume -----------------------------------------------------------------------

def test_a_read_only_tracking_store_names_the_cause(good, tmp_path):
    import mlflow

    store = tmp_path / "m.db"
    mlflow.MlflowClient(f"sqlite:///{store}").create_experiment("caspar")  # a store that has the experiment
    result = job("train", "--data", str(good / "prepared"), "--epochs", "1", "--trees", "20", "--tree-folds", "2",
                 env={"MLFLOW_TRACKING_URI": f"sqlite:///file:{store}?mode=ro&uri=true"})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr[-3000:]
    assert "readonly database" in lines[0]


def test_resume_without_a_study_is_one_line(good, tmp_path):
    error = one_error_line(job("tune", "--data", str(good / "prepared"), "--resume", "--run-name", "never-ran",
                               "--storage-path", str(tmp_path / "ray"),
                               env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db"}), "tune")
    assert "--resume: no study named 'never-ran'" in error
    error = one_error_line(job("tune", "--data", str(good / "prepared"), "--warm-start", "it's gone", "--run-name", "new",
                               "--storage-path", str(tmp_path / "ray"),
                               env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db"}), "tune")
    assert "--warm-start it's gone: no study of that name" in error  # before Ray or any tree: nothing stored
    assert not (tmp_path / "ray").exists()


def test_resume_refuses_a_changed_study_option_and_the_study_logs_every_option():
    import dataclasses

    from caspar.config import TuneConfig
    from caspar.tuning.checks import check_same_study, study_parameters

    logged = {k: str(v) for k, v in study_parameters(TuneConfig(epochs=30)).items()}
    assert {f.name for f in dataclasses.fields(TuneConfig)} <= set(logged)
    check_same_study(TuneConfig(epochs=30, time_budget=60), logged)  # a new session's budget may change
    with pytest.raises(UserError, match="--epochs 8 differs from the study's 30"):
        check_same_study(TuneConfig(epochs=8), logged)


def test_native_error_lines_reach_the_user_and_the_cpu_only_noise_does_not():
    from caspar.cli import NATIVE_NOISE

    noise = [b"I0000 00:00:1795942570.116074    3617 cudart_stub.cc:31] Could not find cuda drivers on your machine\n",
             b"W0000 00:00:1795942570.116074    3617 some_file.cc:12] a warning\n",
             b"E0000 00:00:1795944738.429014   29779 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\n",
             b"2026-11-29 08:55:46,897\tWARNING authentication_token_setup.py:85 -- Token authentication is enabled for "
             b"this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out.\n"]
    errors = [b"E0000 00:00:1795944738.429014   29779 saved_model_loader.cc:99] Could not open the model file\n",
              b"F0000 00:00:1795944738.429014   29779 check.cc:1] Check failed: index < size\n"]
    assert all(NATIVE_NOISE.match(line) for line in noise)
    assert not any(NATIVE_NOISE.match(line) for line in errors)


def test_a_trial_no_node_can_hold_is_refused_at_once(ray_local, sample_dataset, tmp_path, monkeypatch):
    """The session's Ray node has 2 CPUs: a trial of 3 would wait forever."""
    from caspar.config import TuneConfig
    from caspar.data.prepared import load_prepared
    from caspar.tuning.tune import tune_study

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/m.db")
    refused = r"--cpus-per-trial 3: no node of this cluster has that many CPUs \(the largest has 2\)"
    with pytest.raises(UserError, match=refused):
        tune_study(TuneConfig(data=sample_dataset, cpus_per_trial=3, storage_path=str(tmp_path / "ray")),
                   load_prepared(sample_dataset))


def test_jobs_started_together_on_a_new_sqlite_store_all_work(tmp_path):
    """MLflow migrates a new SQLite store on first use; jobs that start together take turns."""
    code = "import sys; from caspar import tracking; tracking.configure(); print(tracking.experiment_id(sys.argv[1]))"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db"}
    starts = [subprocess.Popen([sys.executable, "-c", code, f"e{i}"], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for i in range(3)]
    outcomes = [process.communicate(timeout=120) + (process.returncode,) for process in starts]
    assert all(code == 0 for *_, code in outcomes), [err[-500:] for _, err, _ in outcomes]
    later = subprocess.run([sys.executable, "-c", code, "e3"], env=env, cwd=tmp_path, capture_output=True, text=True,
                           timeout=120)
    assert later.returncode == 0, later.stderr[-500:]
    assert not list(tmp_path.glob(".*.lock"))


def test_a_damaged_store_and_a_deleted_experiment_are_one_line(good, tmp_path):
    import mlflow

    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(b"not a database " * 100)
    error = one_error_line(job("export", "--run", "x", env={"MLFLOW_TRACKING_URI": f"sqlite:///{damaged}"}), "export")
    assert "not an MLflow store this version can use (tracking store: file is not a database)" in error
    store = f"sqlite:///{tmp_path}/m.db"
    client = mlflow.MlflowClient(store)
    client.delete_experiment(client.create_experiment("gone"))
    error = one_error_line(job("train", "--data", str(good / "prepared"), "--experiment-name", "gone",
                               env={"MLFLOW_TRACKING_URI": store}), "train")
    assert "--experiment-name gone: that experiment is deleted; restore it" in error


def test_an_output_that_cannot_be_written_is_one_line(good):
    # /sys refuses new folders to everyone, root included: as a read-only disk or a folder without permission would
    error = one_error_line(job("prepare", "--input", str(good / "raw"), "--output", "/sys/caspar-test/prepared"), "prepare")
    assert error == "prepare: error: /sys/caspar-test: Operation not permitted"


def test_a_run_that_did_not_finish_is_exported_by_no_reference_and_export_keeps_its_status(good, tmp_path, monkeypatch, ray_local):
    """A run marked FAILED after its model was logged and registered: no run name, run id, registry
    URI or logged-model URI exports it, and trying leaves it FAILED (export used to reopen the run,
    which ended it FINISHED)."""
    import mlflow

    from caspar.training import train as training

    store = f"sqlite:///{tmp_path}/m.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    result = training.train(TrainConfig(data=str(good / "prepared"), hidden_layers=[8], epochs=1, trees=20, tree_folds=2,
                                        run_name="n8", model_name="CASPAR-n8"))
    client = mlflow.MlflowClient(store)
    client.set_terminated(result.run_id, "FAILED")
    mlflow.set_tracking_uri(None)
    for reference in ("n8", result.run_id, f"models:/CASPAR-n8/{result.registered_version}", result.model_uri):
        error = one_error_line(job("export", "--run", reference, "--output", str(tmp_path / "exports"),
                                   env={"MLFLOW_TRACKING_URI": store}), "export")
        assert "FAILED" in error or "none finished" in error, error
    assert client.get_run(result.run_id).info.status == "FAILED"
    assert not (tmp_path / "exports").exists()


PLANTED = {"AWS_SECRET_ACCESS_KEY": "planted-aws-3c9e1b", "MLFLOW_TRACKING_PASSWORD": "planted-mlflow-77d0aa"}


def test_jobs_write_no_telemetry_ray_state_or_secret(good, tmp_path):
    """MLflow's telemetry and Ray's usage statistics are off unless asked for: a fresh HOME after
    prepare, train and export jobs holds no MLflow telemetry state and nothing of Ray's (library
    caches may appear). Secrets planted in their environment appear in no file they write (dataset,
    tracking store, artefacts, export, HOME) and in nothing they print."""
    home = tmp_path / "home"
    home.mkdir()
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db", "HOME": str(home), **PLANTED}
    write_samples(tmp_path / "raw", count=12, seed=5)
    results = [job("prepare", "--input", str(tmp_path / "raw"), "--output", str(tmp_path / "prepared"), "--test-size", "0.34",
                   "--validation-size", "0.33", env=env)]  # every split has a game of these 12
    results.append(job("train", "--data", str(good / "prepared"), "--epochs", "1", "--trees", "20", "--tree-folds", "2",
                       "--hidden-layers", "8", "--run-name", "planted", env=env))
    results.append(job("export", "--run", "planted", "--output", str(tmp_path / "exports"), env=env))
    for result in results:
        assert result.returncode == 0, result.stderr[-2000:]
    written = {str(p.relative_to(home)) for p in home.rglob("*")}
    assert not {p for p in written if p.startswith((".config/mlflow", ".ray", ".mlflow"))}, written
    printed = "".join(r.stdout + r.stderr for r in results)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert (tmp_path / "exports" / "planted" / "model.caspar").is_file()  # the export, and the run's artefacts:
    assert {"feature_profile.json", "MLmodel", "m.db", "manifest.json"} <= {p.name for p in files}
    for secret in PLANTED.values():
        assert secret not in printed
        assert not [p for p in files if secret.encode() in p.read_bytes()], secret


class RayTaskError(Exception):
    """Shaped as Ray's: the worker's own error as `cause`, a traceback of many lines as the message."""
    def __init__(self, cause):
        super().__init__("ray::featurize_game()\n  File ...\n" * 40)
        self.cause = cause


class ResourceExhaustedError(Exception):
    """Named as TensorFlow's (tensorflow.python.framework.errors_impl)."""


@pytest.mark.parametrize("raised, words", [
    (RayTaskError(OSError(28, "No space left on device", "/data/rows/part-0.parquet")),
     "no space left on the device writing /data/rows/part-0.parquet"),
    (ResourceExhaustedError("/tmp/x/variables/variables.data; No space left on device"), "no space left on the device"),
    (ResourceExhaustedError("OOM when allocating tensor with shape[100000000,354]\n more lines"),
     "out of memory (OOM when allocating tensor with shape[100000000,354])"),
    (RuntimeError("training failed").with_traceback(None), None),
])
def test_a_full_disk_or_memory_is_one_line_wherever_it_happens(raised, words, capsys):
    from caspar import cli

    def work():
        try:
            raise raised
        except Exception as error:
            raise RuntimeError("the job's own wrapper") from error

    if words is None:
        with pytest.raises(RuntimeError):
            cli.run("prepare", work)
        return
    assert cli.run("prepare", work) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"prepare: error: {words}") and "\n" not in err, err


def test_a_file_error_that_names_no_file_says_where_it_was_raised(tmp_path, monkeypatch, capsys):
    """A FileNotFoundError without a filename (e.g. the current folder deleted under the job) is one
    line that still names something: where it was raised."""
    import os

    from caspar import cli

    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    assert cli.run("tune", lambda: [os.getcwd()]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tune: error: No such file or directory (raised in ") and "\n" not in err, err
    assert "test_faults.py" in err or "<lambda>" in err


def test_a_log_beyond_the_size_limit_is_a_reported_problem_not_a_memory_blowup(good, tmp_path, monkeypatch):
    """One file of a single endless line beside real logs: not read (its size is checked before, and
    no more than the limit is ever read), reported with its file, and the other games prepared."""
    import json
    import shutil

    from caspar.config import PrepareConfig
    from caspar.data import dataset

    monkeypatch.setattr(dataset, "MAX_LOG_BYTES", 1 << 20)
    shutil.copytree(good / "raw", tmp_path / "raw")
    (tmp_path / "raw" / "endless.tsv").write_bytes(b"ROUND\tPHASE" + b"\tx" * (1 << 20))  # 2 MB, no line end
    summary = dataset.prepare(PrepareConfig(input=str(tmp_path / "raw"), output=str(tmp_path / "out"), seed=6))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    [endless] = [f for f in manifest["files"] if f["file"].endswith("endless.tsv")]
    assert endless["rows"] == 0 and "more than the 1 MB a game's log may be" in endless["problems"][0]["reason"]
    assert sum(summary.rows.values()) > 0 and summary.files_with_problems >= 1

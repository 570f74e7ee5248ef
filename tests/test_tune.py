"""The tune job on real Ray: a two-node cluster through `ray job submit`, resume, a killed worker."""
import glob
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest
from conftest import ROOT
from services import ray_cluster

FINISHED_LINE = re.compile(r"^trial \d+/\d+ \((\w+)\):", re.MULTILINE)
# --seed 2: the one recipe the tree search draws is small (LightGBM, 300 iterations; seed 42 draws 1,000 of scikit-learn's)
TINY = ["--n-trials", "6", "--epochs", "4", "--grace-period", "1", "--cpus-per-trial", "1", "--search", "trees=0,25",
        "--tree-recipes", "1", "--seed", "2"]


def trial_results(study_path) -> dict[str, list[dict]]:
    """Per trial folder: the results it reported (one line per epoch)."""
    results = {}
    for path in glob.glob(os.path.join(study_path, "*", "result.json")):
        with open(path) as handle:
            results[Path(path).parent.name] = [json.loads(line) for line in handle if line.strip()]
    return results


def trial_worker_nodes(address: str) -> dict[str, set[str]]:
    """{class name: nodes} of the actors Ray placed (its record of every actor, ended ones included)."""
    from ray.util.state import list_actors

    placed: dict[str, set[str]] = {}
    for actor in list_actors(address=address, detail=True, limit=1000, raise_on_missing_output=False):
        if actor.node_id:
            placed.setdefault(actor.class_name, set()).add(actor.node_id)
    return placed


@pytest.mark.cluster
def test_tune_job_on_a_two_node_cluster(mlflow_url, sample_dataset, tmp_path):
    from mlflow.tracking import MlflowClient

    storage = tmp_path / "ray_results"
    runtime_env = json.dumps({"env_vars": {"MLFLOW_TRACKING_URI": mlflow_url}})
    with ray_cluster(nodes=2, cpus_per_node=1) as address:
        job = subprocess.run(
            # Two raylets on one host share a session dir, where unpacking an uploaded working dir
            # collides; local:// makes every node use the checkout in place.
            [str(Path(sys.executable).with_name("ray")), "job", "submit", "--address", address,
             "--working-dir", f"local://{ROOT}",
             "--runtime-env-json", runtime_env, "--", "python", "jobs/tune.py", "--data", sample_dataset, *TINY,
             "--n-jobs", "2", "--storage-path", str(storage), "--experiment-name", "cluster-test",
             "--run-name", "cluster-study", "--model-name", "CASPAR-cluster"],
            cwd=ROOT, capture_output=True, text=True, timeout=900)
        trial_workers = trial_worker_nodes(address)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    # Each node has one CPU and a trial needs one: two concurrent trials need a worker on each node.
    # Which trials each worker then runs is Ray's choice (a worker that starts first may run them
    # all, legitimately), so the spread is proven by where Tune placed its trial workers.
    assert len(set().union(*(nodes for name, nodes in trial_workers.items() if "Trainable" in name))) == 2, trial_workers
    assert "stopped early by ASHA" in job.stdout
    results = trial_results(storage / "cluster-study")
    assert len(results) == 6
    stopped = [rows for rows in results.values() if rows[-1]["epoch"] < 4]
    assert stopped and all(rows[-1]["epoch"] in (1, 3) for rows in stopped)  # ASHA stopped some, at its milestones
    pids = [rows[0]["pid"] for rows in results.values()]
    assert len(set(pids)) < len(pids)  # later trials ran in an earlier trial's process
    client = MlflowClient(mlflow_url, registry_uri=mlflow_url)
    experiment = client.get_experiment_by_name("cluster-test")
    runs = client.search_runs([experiment.experiment_id], "tags.study = 'cluster-study'")
    trials = [r for r in runs if "trial_name" in r.data.tags]
    assert len(trials) == 6
    for trial in trials:
        assert len(client.get_metric_history(trial.info.run_id, "val_loss")) >= 1
    study = [r for r in runs if r.data.tags.get("caspar.kind") == "study"]
    assert len(study) == 1 and "best_val_loss" in study[0].data.metrics
    versions = client.search_model_versions("name = 'CASPAR-cluster'")
    assert len(versions) == 1
    assert client.get_run(versions[0].run_id).info.run_name == "cluster-study"


def run_tune(args, env, **kwargs):
    return subprocess.Popen([sys.executable, str(ROOT / "jobs" / "tune.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


@pytest.mark.slow
def test_resume_does_not_repeat_finished_trials(sample_dataset, tmp_path):
    storage = tmp_path / "ray_results"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    # Trials long enough (12 epochs each) that the interrupt lands while the third one runs.
    args = ["--data", sample_dataset, "--n-trials", "4", "--epochs", "12", "--grace-period", "12", "--n-jobs", "1",
            "--search", "trees=0,25", "--tree-recipes", "0",
            "--storage-path", str(storage), "--run-name", "resumable", "--experiment-name", "resume-test"]
    first = run_tune(args, env, start_new_session=True)
    printed, two_finished = [], threading.Event()

    def read_first_output():  # the job prints a line per trial once Tune has recorded it as finished
        for line in first.stdout:
            printed.append(line)
            if sum(1 for seen in printed if FINISHED_LINE.match(seen)) >= 2:
                two_finished.set()

    reader = threading.Thread(target=read_first_output, daemon=True)
    reader.start()
    assert two_finished.wait(timeout=300), "".join(printed)[-3000:]
    os.killpg(first.pid, signal.SIGINT)  # as Ctrl-C does: the whole process group
    first.wait(timeout=120)
    reader.join(timeout=10)
    output = "".join(printed)
    assert first.returncode == 130 and "nothing registered" in output, output[-3000:]  # an interrupted study ships nothing
    from mlflow.tracking import MlflowClient

    store = env["MLFLOW_TRACKING_URI"]  # the registry too: an earlier test may have set this process's default
    assert MlflowClient(store, registry_uri=store).search_model_versions("name = 'CASPAR'") == []
    finished_ids = set(FINISHED_LINE.findall(output))
    trials, unfinished = map(int, re.search(r"(\d+) trials in .* (\d+) unfinished", output).groups())
    assert unfinished + len(finished_ids) == trials  # an interrupted trial is not "stopped by ASHA"
    before = {rows[-1]["trial_id"]: rows for rows in trial_results(storage / "resumable").values() if rows}
    assert 2 <= len(finished_ids) < 4 and all(before[trial][-1]["done"] for trial in finished_ids)
    second = run_tune(args + ["--resume"], env)
    output, _ = second.communicate(timeout=600)
    assert second.returncode == 0, output[-3000:]
    after = trial_results(storage / "resumable")
    assert len(after) == 4 and all(rows[-1].get("done") for rows in after.values())
    after_by_id = {rows[-1]["trial_id"]: rows for rows in after.values()}
    for trial in finished_ids:  # the trials the first session reported finished were not run again
        assert after_by_id[trial] == before[trial]
    # one MLflow run per trial, one study run (closed), figures of the resumed session only
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("resume-test").experiment_id], "tags.study = 'resumable'")
    trials = [r.data.tags["trial_name"] for r in runs if "trial_name" in r.data.tags]
    assert len(trials) == len(set(trials)) == 4
    studies = [r for r in runs if r.data.tags.get("caspar.kind") == "study"]
    assert len(studies) == 1 and studies[0].info.status == "FINISHED"
    assert all(r.info.status == "FINISHED" for r in runs)
    assert 0 < float(re.search(r"training steps ([\d.]+)", output).group(1)) <= 1.0


def test_a_trial_whose_worker_dies_is_retried(ray_local, sample_dataset, tmp_path, monkeypatch):
    from caspar.config import TuneConfig
    from caspar.data.prepared import load_prepared
    from caspar.tuning.tune import tune_study

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    storage = tmp_path / "ray_results"
    killed = []

    def kill_one_trial_worker():
        import psutil

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            # the trial actor's process, once it has trained for a moment (Ray titles it after the class)
            titles = ("ray::Trial", "ray::ResourceTrainable")  # Ray titles a trial actor after its class (and wrapper)
            actors = [p for p in psutil.process_iter(["cmdline"]) if " ".join(p.info["cmdline"] or []).startswith(titles)
                      and ray_local.test_temp_dir in " ".join(_parent_cmdline(p))]  # this test's node only
            before = {p.pid: p.cpu_times().user for p in actors}
            time.sleep(0.3)
            running = [p for p in actors if p.cpu_times().user - before[p.pid] > 0.1]  # training, not idle
            if running:
                os.kill(running[0].pid, signal.SIGKILL)
                killed.append(running[0].pid)
                return

    killer = threading.Thread(target=kill_one_trial_worker, daemon=True)
    killer.start()
    study = tune_study(TuneConfig(data=sample_dataset, n_trials=2, n_jobs=1, epochs=30, grace_period=30, search=["trees=0,25"],
                                  tree_recipes=0, storage_path=str(storage), run_name="killed", experiment_name="kill-test",
                                  model_name="CASPAR-kill-test"), load_prepared(sample_dataset))
    killer.join(timeout=5)
    assert killed, "no trial worker was found to kill"
    assert study.trials == 2 and study.errored == 0
    results = trial_results(storage / "killed")
    assert all(rows[-1]["epoch"] == 30 for rows in results.values())
    assert len(glob.glob(str(storage / "killed" / "*" / "checkpoint_*"))) == 1  # the study ended: the best model's only
    state = "".join(open(p).read() for p in glob.glob(str(storage / "killed" / "experiment_state-*.json")))
    assert re.search(r'num_failures\\*": 1', state)


def _parent_cmdline(process) -> list[str]:
    import psutil

    try:
        return process.parent().cmdline()
    except (psutil.Error, AttributeError):
        return []


def readme_block(after_heading: str) -> list[str]:
    """The first ```bash block after a README heading, as commands (continuation lines joined)."""
    text = (ROOT / "README.md").read_text()
    block = text[text.index(after_heading):].split("```bash\n", 1)[1].split("```", 1)[0]
    return [command.strip() for command in block.replace("\\\n", " ").splitlines() if command.strip()]


@pytest.mark.cluster
def test_the_readme_cluster_commands_work_as_written(mlflow_url, s3_endpoint, tmp_path):
    """A fresh local Ray head with token authentication (it refuses jobs without the token), then the README's cluster block verbatim
    (HEAD_IP and BUCKET filled in, cluster.env filled in as a user would; `ray up` is the head this
    test starts with cluster.env in its environment, as cluster.yaml's start command does), from a
    copy of the checkout, and the export on the submitting machine."""

    import shutil

    from services import S3_KEY, S3_SECRET, s3_client

    from caspar.data.samples import write_samples

    commands = readme_block("## A Ray cluster")
    assert commands[0].startswith("cp cluster.env.example cluster.env")
    assert commands[1].startswith("ray get-auth-token --generate") and commands[2].startswith("ray up cluster.yaml")
    assert not [c for c in commands if "SECRET" in c or "runtime-env" in c]  # no secret on a command line
    checkout = tmp_path / "checkout"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, checkout / name)
    write_samples(checkout / "data" / "raw", count=40)
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_", "AWS_"))}
    env.update(HOME=str(home), PATH=f"{Path(sys.executable).parent}:{env['PATH']}", RAY_USAGE_STATS_ENABLED="0")

    def shell(command, address=None):
        command = command.replace("BUCKET", "cluster-test")
        if address:
            command = command.replace("http://HEAD_IP:8265", address)
        return subprocess.run(["bash", "-c", command], cwd=checkout, env=env, capture_output=True, text=True, timeout=900)

    assert shell(commands[0]).returncode == 0
    filled = {"MLFLOW_TRACKING_URI": mlflow_url, "AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": S3_KEY,
              "AWS_SECRET_ACCESS_KEY": S3_SECRET}  # what the user writes into cluster.env
    settings = "".join(f"{line.split('=')[0]}={filled[line.split('=')[0]]}\n" if line.split("=")[0] in filled else line + "\n"
                       for line in (checkout / "cluster.env").read_text().splitlines())
    (checkout / "cluster.env").write_text(settings)
    assert shell(commands[1]).returncode == 0
    token = (home / ".ray" / "auth_token").read_text().strip()
    with ray_cluster(nodes=1, cpus_per_node=2, token=token, env=filled) as address:
        # The head refuses a job without the token or with another one; the README's jobs present it.
        submit = f"ray job submit --address {address} -- python -c 'print(6 * 7)'"
        anonymous = shell(f"RAY_AUTH_MODE=disabled {submit}")
        wrong = shell(f"RAY_AUTH_MODE=token RAY_AUTH_TOKEN=guess {submit}")
        result = shell("set -e\n" + "\n".join(commands[3:]), address)
    assert anonymous.returncode != 0 and "Missing authentication token" in anonymous.stdout + anonymous.stderr
    assert wrong.returncode != 0 and "invalid or incorrect" in wrong.stdout + wrong.stderr
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    trained = re.search(r"best model: run ([0-9a-f]{32})", result.stdout).group(1)  # printed by the job
    exported = re.search(r"exported run ([0-9a-f]{32})", result.stdout).group(1)  # printed by export, here
    assert trained == exported
    assert (checkout / "exports" / "model-v1" / "model-v1.tflite").is_file()
    assert "cluster-test" in [b["Name"] for b in s3_client(s3_endpoint).list_buckets()["Buckets"]]  # created by prepare


def test_the_summary_tells_trials_stopped_by_asha_from_trials_cut_off():
    from types import SimpleNamespace

    import pandas as pd

    from caspar.config import TuneConfig
    from caspar.tuning.study import summarise

    def trial(epoch, done, error=None, pid=1):
        frame = pd.DataFrame({"best_val_loss": [0.1], "cpu_training": [float(epoch)], "cpu_setup": [1.0], "pid": [pid],
                              "trial_id": [f"t{epoch}{done}{pid}"], "startup_seconds": [0.2], "timestamp": [100]})
        return SimpleNamespace(metrics={"epoch": epoch, "done": done}, error=error, metrics_dataframe=frame)

    results = [trial(30, True), trial(10, True), trial(20, False, pid=2), trial(10, False), trial(10, False, error=RuntimeError())]
    summary = summarise(results, TuneConfig(data="unused", epochs=30), session_started=0)
    assert (summary.stopped_early, summary.unfinished) == (1, 2)
    # per process, its last cumulative report: process 1 reported 10 last, process 2 20
    assert summary.trial_phases["training"] == 30.0 and summary.worker_pids == {1, 2}


def local_trial(data, config: dict, milestones: list[int]):
    """A trial as a Ray worker runs it, in this process: Tune's set-up without the worker (whose
    thread settings TensorFlow refuses once it has started here)."""
    from caspar.tuning.trial import Trial

    trial = object.__new__(Trial)
    trial.attach(data, milestones, report_seconds=60.0, node="local")
    trial.start(config)
    return trial


def test_a_restored_trial_is_the_trial_it_checkpointed(tmp_path):
    """A trial restored from its checkpoint (after its worker died) has its epoch, its best epoch,
    that epoch's loss and weights, and its current model; the best weights load with the figure
    the trial reported for them. With trees: the checkpoint holds none, the study's are used again."""
    import numpy as np

    from caspar.config import TuneConfig
    from caspar.tuning.trial import OPTIMIZER_FILE, StudyData, load_best_model
    from caspar.tuning.tune import fit_study_stages

    rng = np.random.default_rng(0)
    x = rng.random((400, 8)).astype("float32")
    y = (0.6 * x[:, 0] + 0.3 * x[:, 1] * x[:, 2]).astype("float32")
    games = np.repeat([f"game{i}" for i in range(10)], 40)
    prepared = types.SimpleNamespace(splits={"train": (x[:300], y[:300]), "val": (x[300:], y[300:])},
                                     files={"train": games[:300], "val": games[300:]})
    study = TuneConfig(epochs=6, search=["trees=20"], tree_recipes=0)
    data = StudyData.of(fit_study_stages(study, prepared), prepared.splits)
    config = dict(vars(study.trial_hyperparameters()), hidden_layers=[16], trees=20, ensemble_size=1,
                  encoding_bins=0, batch_size=32, learning_rate=0.01)

    first = local_trial(data, config, milestones=[2, 4, 6])
    result = first.step()
    first.save_checkpoint(str(tmp_path))
    restored = local_trial(data, config, milestones=[2, 4, 6])
    restored.load_checkpoint(str(tmp_path))
    assert restored.epoch == first.epoch == result["epoch"] == 2
    assert (restored.best.best, restored.best.best_epoch) == (result["best_val_loss"], result["best_epoch"])
    for mine, theirs in zip(restored.model.get_weights(), first.model.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, theirs)
    for mine, theirs in zip(restored.model.optimizer.variables, first.model.optimizer.variables, strict=True):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    assert int(restored.model.optimizer.iterations.numpy()) > 0
    assert os.path.getsize(tmp_path / OPTIMIZER_FILE) > 0 and not any("tree" in f.name for f in tmp_path.iterdir())
    best = load_best_model(str(tmp_path), config, data)
    assert [t.name for t in best.model.inputs] == ["features"]  # what the game runs: features in, the trees inside
    # the trial's figure: the network on the trees' out-of-fold predictions of the validation rows
    inputs = best.inputs(data.x_val, data.trees[20].val)
    loss = float(np.mean((best.trainer.predict(inputs, verbose=0).ravel() - data.y_val) ** 2))
    assert abs(loss - result["best_val_loss"]) < 1e-6
    assert restored.step()["epoch"] == 4  # and it goes on from there


def test_a_trial_traces_its_training_step_in_set_up_and_then_trains_as_without(monkeypatch):
    """The training step is traced in the trial's set-up, with every variable put back afterwards:
    fit() uses that graph as it is, and trains to the very weights of a trial that did not trace."""
    import keras
    import numpy as np

    from caspar.config import Hyperparameters
    from caspar.tuning import trial as trial_module
    from caspar.tuning.trial import StudyData

    rng = np.random.default_rng(1)
    x = rng.random((300, 6)).astype("float32")
    y = (0.5 * x[:, 0] + 0.4 * x[:, 1] * x[:, 2]).astype("float32")
    data = StudyData(x[:200], y[:200], x[200:], y[200:])
    # dropout, batch norm, an ensemble and the encoding: every kind of state training changes
    config = dict(vars(Hyperparameters()), hidden_layers=[16], trees=0, ensemble_size=2, encoding_bins=4,
                  batch_size=32, dropout_rate=0.3, epochs=2)

    traced = []  # Keras's train_step runs in Python only while TensorFlow traces it
    keras_train_step = keras.Model.train_step
    monkeypatch.setattr(keras.Model, "train_step", lambda model, batch: traced.append(1) or keras_train_step(model, batch))

    def trained():
        made = local_trial(data, config, milestones=[2])
        traces_in_set_up = len(traced)
        made.step()
        return made.model, traces_in_set_up, len(traced) - traces_in_set_up

    model, in_set_up, in_fit = trained()
    assert (in_set_up, in_fit) == (1, 0)  # traced once, in set-up; fit() traced nothing more
    monkeypatch.setattr(trial_module, "trace_training", lambda trainer, batches: None)
    traced.clear()
    untraced_model, in_set_up, in_fit = trained()
    assert (in_set_up, in_fit) == (0, 1)
    for mine, theirs in zip(model.variables, untraced_model.variables, strict=True):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())


def test_a_study_starts_from_the_best_trials_of_an_earlier_one(ray_local, sample_dataset, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from caspar.config import TuneConfig
    from caspar.data.prepared import load_prepared
    from caspar.tuning.search import earlier_trials
    from caspar.tuning.tune import tune_study

    store = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    common = {"data": sample_dataset, "epochs": 1, "grace_period": 1, "n_jobs": 1, "experiment_name": "warm", "tree_recipes": 0,
              "model_name": "CASPAR-warm", "storage_path": str(tmp_path / "ray"), "search": ["trees=25"]}
    prepared = load_prepared(sample_dataset)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "planted-secret-7f3a")  # must reach no trial and no log
    first = tune_study(TuneConfig(**common, n_trials=2, run_name="first"), prepared)
    written = [os.path.join(ray_local.test_temp_dir, "**", "*"), os.path.join(tmp_path, "**", "*")]  # Ray's, MLflow's, the study's
    for path in (path for pattern in written for path in glob.glob(pattern, recursive=True)):
        if os.path.isfile(path):
            with open(path, "rb") as handle:
                assert b"planted-secret-7f3a" not in handle.read(), path
    # Where the machine's CPU went adds up to the wall time x its CPUs within 5%, and what the
    # processes were measured to spend does not exceed what the machine counted busy
    parts = first.cpu_parts
    accounted = sum(v for k, v in parts.items() if k not in ("capacity", "machine_busy"))
    assert abs(accounted - parts["capacity"]) <= 0.05 * parts["capacity"], parts
    measured = accounted - parts["idle"] - parts["other"]
    assert measured <= parts["machine_busy"] + 0.05 * parts["capacity"], parts
    assert parts["trial_training"] > 0 and parts["trial_setup"] > 0 and parts["driver"] > 0, parts
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("warm").experiment_id
    points, losses = earlier_trials(TuneConfig(**common, warm_start="first"), experiment)
    assert len(points) == 2 and losses == sorted(losses) and set(points[0]) == {
        "hidden_layers", "dropout_rate", "learning_rate", "batch_size", "activation", "encoding_bins", "weight_decay",
        "lr_schedule", "ensemble_size", "ensemble_kind", "ensemble_loss", "periodic_frequencies", "trees"}
    narrow = TuneConfig(**{**common, "search": ["trees=25", "batch_size=7"]}, warm_start="first")
    assert earlier_trials(narrow, experiment) == ([], [])  # no earlier configuration lies in this space
    study = tune_study(TuneConfig(**common, n_trials=1, run_name="second", warm_start="first"), prepared)
    assert study.trials == 1 and study.errored == 0
    [run] = client.search_runs([experiment], "tags.study = 'second' and tags.`caspar.kind` = 'study'")
    assert run.data.tags["caspar.warm_start"] == "first" and run.data.metrics["warm_start_trials"] == 2

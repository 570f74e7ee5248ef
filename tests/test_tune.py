"""The tune job on real Ray: a two-node cluster through `ray job submit`, resume, a lost node."""
import contextlib
import glob
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from services import ray_cluster

FINISHED_LINE = re.compile(r"^trial \d+/\d+ \((\w+)\),", re.MULTILINE)
def trial_results(study_path) -> dict[str, list[dict]]:
    """Per trial folder: the results it reported (one line per epoch)."""
    results = {}
    for path in glob.glob(os.path.join(study_path, "*", "result.json")):
        with open(path) as handle:
            results[Path(path).parent.name] = [json.loads(line) for line in handle if line.strip()]
    return results


def trial_worker_nodes(address: str, token: str | None = None) -> dict[str, set[str]]:
    """{class name: nodes} of the actors Ray placed (its record of every actor, ended ones included),
    from the dashboard's state API (with the cluster's token, if it has one)."""
    import urllib.request

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"{address}/api/v0/actors?limit=1000&detail=1", headers=headers)
    with urllib.request.urlopen(request, timeout=30) as answer:
        actors = json.loads(answer.read())["data"]["result"]["result"]
    placed: dict[str, set[str]] = {}
    for actor in actors:
        if actor.get("node_id"):
            placed.setdefault(actor["class_name"], set()).add(actor["node_id"])
    return placed


def run_tune(args, env, **kwargs):
    return subprocess.Popen([sys.executable, str(ROOT / "jobs" / "tune.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def shipped_ensemble(store: str, experiment: str, study: str) -> tuple[list, float]:
    """(each shipped tree recipe and its weight, test R²) of a study's model run, trial ids aside."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)
    [run] = client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                               f"tags.study = '{study}' and attributes.run_name = '{study}'")
    ensemble = json.loads(Path(client.download_artifacts(run.info.run_id, "ensemble.json")).read_text())
    recipes = [({k: v for k, v in m["recipe"].items() if k != "label"}, m["weight"]) for m in ensemble["trees"]]
    return recipes, run.data.metrics["test_r2"]


@pytest.mark.slow
def test_resume_does_not_repeat_finished_trials_and_ships_the_model_of_an_uninterrupted_study(sample_dataset, tmp_path,
                                                                                             request):
    storage = tmp_path / "ray_results"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    # Tree recipes only, each long enough (5 folds and a fit of 100 iterations) that the interrupt lands while the third runs.
    args = ["--data", sample_dataset, "--n-trials", "4", "--n-jobs", "1", "--trees", "25",
            "--search", "kind=trees", "trees=100", "--storage-path", str(storage), "--experiment-name", "resume-test"]
    # the same trials uninterrupted, beside it (a local Ray of its own): what the resumed study must ship
    straight = run_tune([*args, "--run-name", "straight", "--model-name", "CASPAR-straight"], env, start_new_session=True)
    request.addfinalizer(lambda: straight.poll() is None and os.killpg(straight.pid, signal.SIGKILL))
    first = run_tune([*args, "--run-name", "resumable"], env, start_new_session=True)
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
    stopped = MlflowClient(store).search_runs([MlflowClient(store).get_experiment_by_name("resume-test").experiment_id],
                                              "tags.`caspar.kind` = 'study' and tags.study = 'resumable'")
    assert [r.info.status for r in stopped] == ["KILLED"]  # stopped, not failed; --resume reopens it
    finished_ids = set(FINISHED_LINE.findall(output))
    trials, unfinished = map(int, re.search(r"(\d+) trials \(.*?\) in .* (\d+) unfinished", output).groups())
    assert unfinished + len(finished_ids) == trials  # an interrupted trial is not "stopped by ASHA"
    before = {rows[-1]["trial_id"]: rows for rows in trial_results(storage / "resumable").values() if rows}
    assert 2 <= len(finished_ids) < 4 and all(before[trial][-1]["done"] for trial in finished_ids)
    second = run_tune([*args, "--run-name", "resumable", "--resume"], env)
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
    # the same trials uninterrupted: the same recipes, the same weights, the same model
    output, _ = straight.communicate(timeout=600)
    assert straight.returncode == 0, output[-3000:]
    # ASHA stopped some recipes at its milestones (game folds 1 and 3 of 5, then the fit on every row:
    # 6 steps), and Tune ran later trials in an earlier trial's process
    uninterrupted = list(trial_results(storage / "straight").values())
    stopped = [rows for rows in uninterrupted if rows[-1]["tree_step"] < 6]
    assert stopped and all(rows[-1]["tree_step"] in (1, 3) for rows in stopped), uninterrupted
    assert int(re.search(r"(\d+) stopped early by ASHA", output).group(1)) == len(stopped)
    pids = [rows[0]["pid"] for rows in uninterrupted]
    assert len(set(pids)) < len(pids)
    resumed = shipped_ensemble(store, "resume-test", "resumable")
    assert resumed == shipped_ensemble(store, "resume-test", "straight") and len(resumed[0]) >= 1


@pytest.mark.cluster
def test_a_trial_lost_with_its_node_is_started_again_and_said_in_one_line(sample_dataset, tmp_path):
    """A node lost mid-study, as a machine that loses power: every process of the second of two
    one-CPU nodes killed while a trial trains there. The trial starts again on the node left, from
    its last checkpoint, and finishes; the job says so in one line, counts it, prints no Ray state
    dump or traceback, ends every trial's MLflow run (none left RUNNING) and registers its model."""
    import psutil
    from mlflow.tracking import MlflowClient

    storage, store = tmp_path / "ray_results", f"sqlite:///{tmp_path}/mlflow.db"
    killed = []
    with ray_cluster(nodes=2, cpus_per_node=1) as cluster:
        node = os.path.join(cluster.temp_dir, "node-1")  # in the command line of every process of the second node
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
        env.update(RAY_ADDRESS=cluster.gcs, RAY_AUTH_MODE="disabled", MLFLOW_TRACKING_URI=store)
        # one step of 100 epochs per trial (grace period = epochs: no ASHA rung before the end), so a
        # trial trains on the second node for seconds, longer than a trial's start-up: Tune gives the
        # second trial to the second node's new worker, not to the first's (actor reuse)
        job = run_tune(["--data", sample_dataset, "--n-trials", "2", "--n-jobs", "2", "--search", "kind=network",
                        "--epochs", "100", "--grace-period", "100", "--trees", "25", "--storage-path", str(storage),
                        "--run-name", "node-lost", "--experiment-name", "node-loss", "--model-name", "CASPAR-node-loss"],
                       env)

        def of_the_node(process) -> bool:
            try:
                return node in " ".join(process.cmdline()) or node in " ".join(process.parent().cmdline())
            except (psutil.Error, AttributeError):
                return False

        def kill_the_node_while_a_trial_trains_there():
            # Ray titles an actor's process after the method it runs: Tune's train() is a trial's
            # epoch, after its set-up (a worker lost before its trial starts is no trial's failure)
            training = ("ray::Trial.train", "ray::ResourceTrainable.train")
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and job.poll() is None:
                with contextlib.suppress(psutil.Error):
                    if any(" ".join(p.info["cmdline"] or []).startswith(training) and of_the_node(p)
                           for p in psutil.process_iter(["cmdline"])):
                        for process in [p for p in psutil.process_iter() if of_the_node(p)]:
                            with contextlib.suppress(psutil.Error):
                                process.kill()
                                killed.append(process.pid)
                        return
                time.sleep(0.05)

        killer = threading.Thread(target=kill_the_node_while_a_trial_trains_there, daemon=True)
        killer.start()
        output, _ = job.communicate(timeout=600)
        killer.join(timeout=5)
    assert killed, "no trial was found training on the second node: " + output[-3000:]
    assert job.returncode == 0, output[-4000:]
    assert "state-dump" not in output and "Traceback" not in output, output[-4000:]
    said = [line for line in output.splitlines() if "lost its worker" in line]
    # its one step (100 epochs) was under way: no checkpoint yet
    assert len(said) == 1 and "started again from the beginning (no checkpoint yet) (retry 1 of 2)" in said[0], said
    assert re.search(r"0 failed, 1 started again after losing their worker", output), output[-3000:]
    client = MlflowClient(store, registry_uri=store)
    runs = client.search_runs([client.get_experiment_by_name("node-loss").experiment_id], "tags.study = 'node-lost'")
    trial_runs = [r for r in runs if "trial_name" in r.data.tags]
    assert sorted(r.data.tags.get("trial_retries", "") for r in trial_runs) == ["", "1"]
    assert all(r.info.status == "FINISHED" for r in runs)  # every trial's run and the study's: none RUNNING
    assert client.search_model_versions("name = 'CASPAR-node-loss'")
    results = trial_results(storage / "node-lost")
    assert len(results) == 2 and all(rows[-1]["epoch"] == 100 for rows in results.values())  # the lost one finished
    shipped = int(bool(re.search(r"^  and [\d.]+ of network trial", output, re.MULTILINE)))
    # the study ended: no checkpoint kept but the shipped network's
    assert len(glob.glob(str(storage / "node-lost" / "*" / "checkpoint_*"))) == shipped
    state = "".join(open(p).read() for p in glob.glob(str(storage / "node-lost" / "experiment_state-*.json")))
    assert re.search(r'num_failures\\*": 1', state)


def readme_block(after_heading: str) -> list[str]:
    """The first ```bash block after a README heading, as commands (continuation lines joined)."""
    text = (ROOT / "README.md").read_text()
    block = text[text.index(after_heading):].split("```bash\n", 1)[1].split("```", 1)[0]
    return [command.strip() for command in block.replace("\\\n", " ").splitlines() if command.strip()]


@pytest.mark.cluster
def test_the_readme_cluster_commands_work_as_written(mlflow_url, s3_endpoint, tmp_path):
    """A fresh local Ray cluster of two one-CPU nodes with token authentication (it refuses jobs
    without the token), then the README's cluster block verbatim (HEAD_IP and BUCKET filled in,
    cluster.env filled in as a user would; `ray up` is the cluster this test starts with cluster.env
    in its environment, as cluster.yaml's start commands do), from a copy of the checkout, and the
    export on the submitting machine. The study's fits and trials ran on both nodes."""
    import shutil

    from mlflow.tracking import MlflowClient
    from services import S3_KEY, S3_SECRET, s3_client

    from caspar.data.samples import write_samples

    commands = readme_block("## A Ray cluster")
    assert commands[0].startswith("install -m 600 cluster.env.example cluster.env")
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
    # the keys and the token: readable by their owner alone, as the README's commands leave them
    assert (checkout / "cluster.env").stat().st_mode & 0o777 == 0o600
    assert (home / ".ray" / "auth_token").stat().st_mode & 0o777 == 0o600
    with ray_cluster(nodes=2, cpus_per_node=1, token=token, env=filled) as cluster:
        address = cluster.dashboard
        # The head refuses a job without the token or with another one; the README's jobs present it.
        submit = f"ray job submit --address {address} -- python -c 'print(6 * 7)'"
        anonymous = shell(f"RAY_AUTH_MODE=disabled {submit}")
        wrong = shell(f"RAY_AUTH_MODE=token RAY_AUTH_TOKEN=guess {submit}")
        result = shell("set -e\n" + "\n".join(commands[3:]), address)
        trial_workers = trial_worker_nodes(address, token)
    assert anonymous.returncode != 0 and "Missing authentication token" in anonymous.stdout + anonymous.stderr
    assert wrong.returncode != 0 and "invalid or incorrect" in wrong.stdout + wrong.stderr
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    # Each node has one CPU and a trial needs one: the two trials at once need a worker on each node.
    # Which trials each worker then runs is Ray's choice, so the spread is proven by where Tune
    # placed its trial workers.
    assert len(set().union(*(nodes for name, nodes in trial_workers.items() if "Trainable" in name))) == 2, trial_workers
    client = MlflowClient(mlflow_url, registry_uri=mlflow_url)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.study = 'cluster-check'")
    trials = [r for r in runs if "trial_name" in r.data.tags]
    assert sorted(t.data.params["kind"] for t in trials) == ["network", "trees"]  # the kinds take turns in TPE's first trials
    for trial in trials:  # a network's losses per epoch; a recipe's out-of-fold error per fold
        metric = "val_loss" if trial.data.params["kind"] == "network" else "best_val_loss"
        assert len(client.get_metric_history(trial.info.run_id, metric)) >= 1
    [study] = [r for r in runs if r.data.tags.get("caspar.kind") == "study"]
    assert 0 <= study.data.metrics["serial_share"] <= 1
    # the study's own trees (twelve fits at once as Ray tasks) and the trials ran on both one-CPU nodes
    assert study.data.metrics["nodes_trees"] == 2 and study.data.metrics["nodes_networks"] == 1
    [version] = client.search_model_versions("name = 'CASPAR-check'")
    assert client.get_run(version.run_id).info.run_name == "cluster-check"
    trained = re.search(r"the model: run ([0-9a-f]{32})", result.stdout).group(1)  # printed by the job
    exported = re.search(r"exported run ([0-9a-f]{32})", result.stdout).group(1)  # printed by export, here
    assert trained == exported
    assert (checkout / "exports" / "cluster-check" / "cluster-check.tflite").is_file()
    assert "cluster-test" in [b["Name"] for b in s3_client(s3_endpoint).list_buckets()["Buckets"]]  # created by prepare


def test_a_recipe_is_ranked_by_what_it_adds_to_the_studys_trees():
    """A recipe's loss for ASHA (every row predicted so far) and TPE (the validation rows) is the
    study's trees with it blended in at its best weight: a copy of the trees adds nothing, the truth
    makes it 0, and a recipe never makes the trees worse than they are alone."""
    from types import SimpleNamespace

    from caspar.tuning.trial import Trial

    rng = np.random.default_rng(0)
    n = 200
    y = rng.random(n)
    val = np.arange(n) >= 120
    trees = y + rng.normal(0, 0.1, n)  # the study's trees, out of fold
    trial = Trial.__new__(Trial)
    trial.data = SimpleNamespace(tree_rows=SimpleNamespace(y=y, val=val, trees=trees))
    predicted = np.ones(n, bool)
    predicted[150:190] = False  # rows of a fold not fitted yet
    for on in (predicted, predicted & val):
        trees_alone = float(np.mean((trees[on] - y[on]) ** 2))
        for recipe, expected in ((trees.copy(), trees_alone), (y.copy(), 0.0)):
            trial.out_of_fold = np.where(predicted, recipe, np.nan)
            assert trial.blended_loss(on) == pytest.approx(expected, abs=1e-12)
        for seed in range(5):
            trial.out_of_fold = np.where(predicted, y + np.random.default_rng(seed).normal(0, 0.3, n), np.nan)
            blended = trial.blended_loss(on)
            alone = float(np.mean((trial.out_of_fold[on] - y[on]) ** 2))
            assert blended <= min(trees_alone, alone) + 1e-12
            assert blended < alone  # a noisy recipe is worth less than its error alone says
    trial.data = SimpleNamespace(tree_rows=SimpleNamespace(y=y, val=val, trees=None))  # no trees of the study's own
    assert trial.blended_loss(predicted) == pytest.approx(float(np.mean((trial.out_of_fold[predicted] - y[predicted]) ** 2)))


def test_the_summary_tells_trials_stopped_by_asha_from_trials_cut_off():
    from types import SimpleNamespace

    import pandas as pd

    from caspar.config import TuneConfig
    from caspar.tuning.study import summarise

    def trial(epoch, done, error=None, pid=1, fold=None):
        frame = pd.DataFrame({"best_val_loss": [0.1], "cpu_training": [float(epoch)], "cpu_setup": [1.0], "pid": [pid],
                              "trial_id": [f"t{epoch}{done}{pid}{fold}"], "startup_seconds": [0.2], "timestamp": [100]})
        if fold is not None:  # a tree recipe: its clock is its game folds
            return SimpleNamespace(metrics={"fold": fold, "done": done}, error=error, metrics_dataframe=frame,
                                   config={"kind": "trees", "tree_folds": 5})
        return SimpleNamespace(metrics={"epoch": epoch, "done": done}, error=error, metrics_dataframe=frame,
                               config={"kind": "network"})

    results = [trial(30, True), trial(10, True), trial(20, False, pid=2), trial(10, False), trial(10, False, error=RuntimeError()),
               trial(0, True, pid=3, fold=5), trial(0, True, pid=3, fold=1), trial(0, False, pid=3, fold=2)]
    summary = summarise(results, TuneConfig(data="unused", epochs=30), session_started=0)
    assert (summary.stopped_early, summary.unfinished) == (2, 3) and summary.kinds == {"network": 5, "trees": 3}
    # per process, its last cumulative report: process 1 reported 10 last, process 2 20
    assert summary.trial_phases["training"] == 30.0 and summary.worker_pids == {1, 2, 3}


def local_trial(data, config: dict, milestones: list[int]):
    """A trial as a Ray worker runs it, in this process: Tune's set-up without the worker (whose
    thread settings TensorFlow refuses once it has started here)."""
    from caspar.tuning.trial import Trial

    trial = object.__new__(Trial)
    trial.attach(data, milestones, report_seconds=60.0, node="local")
    trial.start(config)
    return trial


def test_a_restored_trial_is_the_trial_it_checkpointed(tmp_path, ray_local):
    """A trial restored from its checkpoint (after its worker died) has its epoch, its best epoch,
    that epoch's loss and weights, and its current model; the best weights load with the figure
    the trial reported for them. With trees: the checkpoint holds none, the study's are used again.
    A tree trial restored after two folds ends with the predictions of one never interrupted."""
    import numpy as np

    from caspar.config import TuneConfig
    from caspar.training.fit import fit_stage
    from caspar.tuning.trial import OPTIMIZER_FILE, StudyData, load_best_model

    rng = np.random.default_rng(0)
    x = rng.random((400, 8)).astype("float32")
    y = (0.6 * x[:, 0] + 0.3 * x[:, 1] * x[:, 2]).astype("float32")
    games = np.repeat([f"game{i}" for i in range(10)], 40)
    splits, files = {"train": (x[:300], y[:300]), "val": (x[300:], y[300:])}, {"train": games[:300], "val": games[300:]}
    study = TuneConfig(epochs=6, trees=20)
    hp = study.trial_hyperparameters()
    data = StudyData.of(fit_stage(hp, splits, files, "train+val"), splits, files, hp.tree_folds, hp.seed)
    config = dict(vars(hp), hidden_layers=[16], ensemble_size=1, encoding_bins=0, batch_size=32, learning_rate=0.01)

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
    inputs = best.inputs(data.x_val, data.base.val)
    loss = float(np.mean((best.trainer.predict(inputs, verbose=0).ravel() - data.y_val) ** 2))
    assert abs(loss - result["best_val_loss"]) < 1e-6
    assert restored.step()["epoch"] == 4  # and it goes on from there

    recipe = {**config, "kind": "trees", "tree_learners": "lightgbm", "trees": 15}
    whole = local_trial(data, recipe, milestones=[2, 4, 6])
    results = [whole.step() for _ in range(6)]  # five game folds, then the fit on every row
    assert [r["fold"] for r in results] == [1, 2, 3, 4, 5, 5] and [r["tree_step"] for r in results] == [1, 2, 3, 4, 5, 6]
    assert [r["done"] for r in results] == [False] * 5 + [True] and whole.fitted is not None
    halted = local_trial(data, recipe, milestones=[2, 4, 6])
    halted.step(), halted.step()
    (tmp_path / "trees").mkdir()
    halted.save_checkpoint(str(tmp_path / "trees"))
    resumed = local_trial(data, recipe, milestones=[2, 4, 6])
    resumed.load_checkpoint(str(tmp_path / "trees"))
    last = [resumed.step() for _ in range(4)][-1]
    np.testing.assert_array_equal(resumed.out_of_fold, whole.out_of_fold)
    assert last["best_val_loss"] == results[-1]["best_val_loss"] and not np.isnan(whole.out_of_fold).any()
    # the shipped model of the recipe: its fit on every row, the same after the interruption
    np.testing.assert_array_equal(resumed.fitted.predict(data.x_val), whole.fitted.predict(data.x_val))
    (tmp_path / "fitted").mkdir()
    resumed.save_checkpoint(str(tmp_path / "fitted"))
    again = local_trial(data, recipe, milestones=[2, 4, 6])
    again.load_checkpoint(str(tmp_path / "fitted"))
    np.testing.assert_array_equal(again.fitted.predict(data.x_val), whole.fitted.predict(data.x_val))


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
    common = {"data": sample_dataset, "epochs": 1, "grace_period": 1, "n_jobs": 1, "experiment_name": "warm", "trees": 25,
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
    # processes were measured to spend is what the machine counted busy, within what its tick
    # sampling misses under load (a double count, a trial's time counted twice, would be ~30%)
    parts = first.cpu_parts
    shown = json.dumps({k: round(v, 2) for k, v in parts.items()})
    accounted = sum(v for k, v in parts.items() if k not in ("capacity", "machine_busy"))
    assert abs(accounted - parts["capacity"]) <= 0.05 * parts["capacity"], shown
    measured = accounted - parts["idle"] - parts["other"]
    assert measured <= parts["machine_busy"] + 0.10 * parts["capacity"], shown
    assert parts["trial_training"] > 0 and parts["trial_setup"] > 0 and parts["driver"] > 0, parts
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("warm").experiment_id
    points, losses = earlier_trials(TuneConfig(**common, warm_start="first"), experiment)
    assert len(points) == 2 and losses == sorted(losses) and {p["kind"] for p in points} == {"trees", "network"}
    for point in points:  # each its kind and the fields of that kind it sampled
        network = {"hidden_layers", "dropout_rate", "learning_rate", "batch_size", "activation", "encoding_bins",
                   "weight_decay", "lr_schedule", "ensemble_size", "ensemble_kind", "ensemble_loss", "periodic_frequencies"}
        recipe = {"trees", "tree_learners", "tree_learning_rate", "tree_leaves", "tree_min_leaf", "tree_l2",
                  "tree_feature_fraction"} | ({"tree_row_fraction"} if point.get("tree_learners") == "lightgbm" else set())
        assert set(point) == {"kind"} | (network if point["kind"] == "network" else recipe), point
    narrow = TuneConfig(**{**common, "search": ["trees=25", "batch_size=7", "tree_leaves=7"]}, warm_start="first")
    assert earlier_trials(narrow, experiment) == ([], [])  # no earlier configuration lies in this space
    study = tune_study(TuneConfig(**common, n_trials=1, run_name="second", warm_start="first"), prepared)
    assert study.trials == 1 and study.errored == 0
    [run] = client.search_runs([experiment], "tags.study = 'second' and tags.`caspar.kind` = 'study'")
    assert run.data.tags["caspar.warm_start"] == "first" and run.data.metrics["warm_start_trials"] == 2


def test_a_trial_holds_its_cpus_from_its_start_to_its_end_reported_or_not():
    """The serial share counts a trial as running while Tune ran it: from its set-up to the end of
    its MLflow run, also after its last report (a step the time budget cut off) and without any
    report at all (a trial cut off in its first step); a resumed study's earlier reports do not count."""
    from types import SimpleNamespace

    import pandas as pd

    from caspar.tuning.cpu import serial_share
    from caspar.tuning.study import trial_intervals

    def result(trial_id, times, startup=2.0, step=5.0):
        frame = pd.DataFrame({"timestamp": times, "time_this_iter_s": step, "startup_seconds": startup,
                              "trial_id": trial_id, "node_id": "n1"})
        return SimpleNamespace(metrics_dataframe=frame, config={"kind": "trees"})

    since = 1000.0
    results = [result("a", [1010.0, 1020.0, 1030.0]),  # ran 1003-1030, then its last step cut off at 1060
               result("b", [990.0, 1040.0]),  # reported in an earlier session too
               SimpleNamespace(metrics_dataframe=None, config={})]  # "c": no report at all
    held = {"a": (1004.0, 1060.0), "c": (1031.0, 1061.0), "old": (900.0, 950.0)}
    intervals, nodes = trial_intervals(results, since, held)
    assert sorted(intervals) == [(1003.0, 1060.0), (1031.0, 1061.0), (1033.0, 1040.0)]
    assert nodes == {("trees", "n1")}
    assert serial_share(intervals, 2, since, 1061.0) == pytest.approx((3 + 28 + 1) / 61)  # fewer than 2 before 1031 and after 1060
    # by its reports alone, "a" and "c" would seem to stop at 1030 and never run
    reported, _ = trial_intervals(results, since)
    assert sorted(reported) == [(1003.0, 1030.0), (1033.0, 1040.0)]
    # after the time budget's end, Tune stopping the trials is not search
    capped, _ = trial_intervals(results, since, held, until=1050.0)
    assert sorted(capped) == [(1003.0, 1050.0), (1031.0, 1050.0), (1033.0, 1040.0)]

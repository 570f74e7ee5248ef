"""The train job against a real MLflow server and a real prepared dataset."""
import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT

from caspar.artifacts import NORMALIZATION_FILE
from caspar.config import OPTIMIZERS, Hyperparameters, TrainConfig
from caspar.data.features import feature_names
from caspar.data.prepared import load_prepared
from caspar.errors import InputError
from caspar.model.network import Normalizer
from caspar.training import evaluate
from caspar.training import train as training
from caspar.training.train import train

SMALL = {"hidden_layers": [32, 16], "epochs": 3, "batch_size": 64, "patience": 5, "trees": 25, "tree_folds": 2}


def test_normalizer_constant_feature_and_clamping():
    x = np.array([[0.0, 5.0, 1.0], [2.0, 5.0, 3.0]], np.float32)
    n = Normalizer.fit(x)
    assert n.maximum.tolist() == [2.0, 5.0, 3.0]  # the constant feature keeps max = min ...
    assert n.transform(np.array([[1.0, 5.0, 9.0], [-1.0, 7.0, 2.0]])).tolist() == [[0.5, 0.0, 1.0], [0.0, 0.0, 0.5]]
    # ... and is 0 whatever its value: what never varied in training cannot move a prediction


def test_training_run_is_fully_tracked(tracking_server, sample_dataset, ray_local):
    import mlflow
    from mlflow.tracking import MlflowClient

    result = train(TrainConfig(**SMALL, data=sample_dataset, experiment_name="test-train", run_name="tracked",
                               model_name="CASPAR-test"))
    client = MlflowClient(tracking_server, registry_uri=tracking_server)
    run = client.get_run(result.run_id)
    assert run.info.run_name == "tracked"
    # every setting by name; the network's only where it ships, else marked as not shipped with what was tried
    shipped_network = run.data.metrics["best_epoch"] > 0
    network = training.NETWORK_FIELDS
    assert {f.name for f in dataclasses.fields(TrainConfig)} - network <= set(run.data.params)
    if shipped_network:
        assert run.data.params["hidden_layers"] == "[32, 16]" and run.data.params["batch_size"] == "64"
    else:
        assert not network & set(run.data.params) and run.data.params["network"].startswith("not shipped")
        tried = json.loads(Path(client.download_artifacts(result.run_id, "network_not_shipped.json")).read_text())
        assert tried["hidden_layers"] == [32, 16] and tried["batch_size"] == 64
    assert run.data.params["tree_learning_rate"] == str(TrainConfig().tree_learning_rate)
    assert "HistGradientBoostingRegressor" in run.data.params["baseline_gbdt"]
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on training runs
    for key in ("loss", "val_loss", "val_mae"):
        assert len(client.get_metric_history(result.run_id, key)) == result.epochs
    for key in ("test_mse", "test_mae", "test_r2", "baseline_mean_test_r2", "baseline_gbdt_test_r2",
                "baseline_gbdt_test_mse", "baseline_mean_test_mae", "baseline_trees_test_r2", "best_epoch"):
        assert key in run.data.metrics
    assert run.data.metrics["test_r2"] == pytest.approx(result.metrics["test_r2"])
    # the UI's headline: the run's description is its summary line; the validation loss of what ships
    assert run.data.tags["mlflow.note.content"] == f"{result.description}\n{evaluate.summary_line(result.metrics, 'train+val')}"
    assert result.description.startswith("the model: trees: ") and ("no network" in result.description) != shipped_network
    assert any(line.startswith("on the test games, test R²") and "better than" in line for line in result.lines())
    val_losses = [m.value for m in client.get_metric_history(result.run_id, "val_loss")]
    best_epoch = int(run.data.metrics["best_epoch"])
    assert run.data.metrics["best_val_loss"] <= min(val_losses) + 1e-7 or best_epoch == 0
    if best_epoch:
        assert run.data.metrics["best_val_loss"] == pytest.approx(val_losses[best_epoch - 1])
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {NORMALIZATION_FILE, "schema.json", "manifest.json", "learning_curve.png", "predicted_vs_actual.png",
            "feature_group_importance.png"} <= artifacts
    prepared = load_prepared(sample_dataset)
    assert run.data.tags["dataset_version"] == prepared.version
    inputs = {i.dataset.name: {t.value for t in i.tags} for i in run.inputs.dataset_inputs}  # the UI's "Datasets"
    assert inputs == {f"{split} ({prepared.version})": {"training" if split != "test" else "test"}
                      for split in ("train", "val", "test")}, inputs
    assert run.data.tags.get("git_commit")
    # the registered model loads back and predicts what the trained model predicted
    assert result.registered_version is not None
    loaded = mlflow.pyfunc.load_model(f"models:/CASPAR-test/{result.registered_version}")  # raw rows in
    # shipped: fitted on train + validation, normalised by those rows
    normalizer = Normalizer.fit(np.concatenate([prepared.splits["train"][0], prepared.splits["val"][0]]))
    raw = prepared.splits["test"][0]
    np.testing.assert_allclose(loaded.predict(pd.DataFrame(raw.astype(np.float64), columns=feature_names())),
                               result.model.predict(normalizer.transform(raw), verbose=0).reshape(-1), atol=1e-6)
    assert run.data.tags["caspar.fit_on"] == "train+val" and run.data.params["fit_on"] == "train+val"


def test_the_same_data_options_and_seed_give_the_same_model(tracking_server, sample_dataset, ray_local):
    """Trees cross-fitted by game, their ensemble weights, the network and the choice between them:
    two runs with the same seed ship the same model, byte for byte in its predictions."""
    config = TrainConfig(**SMALL, data=sample_dataset, experiment_name="test-train", model_name="CASPAR-test")
    first, second = train(config), train(config)
    x = load_prepared(sample_dataset).splits["test"][0]
    assert first.metrics == second.metrics
    predictions = [result.model.predict(x, verbose=0) for result in (first, second)]
    assert np.ptp(predictions[0]) > 0 and np.array_equal(*predictions)


@pytest.mark.parametrize("network_helps", [True, False])
def test_fit_on_all_ships_the_validated_network_on_trees_fitted_on_every_game(sample_dataset, monkeypatch, network_helps, ray_local):
    """--fit-on all: the same recipes and weights, the trees fitted on every game; the network is not
    fitted again (its weights are those validation chose), or absent when it does not beat the trees."""
    from caspar.training import evaluate
    from caspar.training import train as training

    prepared = load_prepared(sample_dataset)
    hp = Hyperparameters(**{**SMALL, "epochs": 2})
    stage = training.fit_stage(hp, prepared.splits, prepared.files, "all")
    network, history = training.fit(hp, stage, prepared.splits)
    history = dataclasses.replace(history, best_epoch=max(1, history.best_epoch))
    gain = {"mean": 1.0 if network_helps else 0.0, "standard_error": 0.1, "games": 3, "beyond_noise": network_helps}
    monkeypatch.setattr(training, "network_gain", lambda *args: gain)
    released = training.release(hp, prepared.splits, network, history, stage, "all")
    scored, shipped = released.scored, released.shipped
    assert scored.splits == ("train", "val") and shipped.splits == ("train", "val", "test")
    x = stage.normalizer.transform(prepared.splits["test"][0])
    scored_trees, shipped_trees = evaluate.own_trees(scored.model), evaluate.own_trees(shipped.model)
    assert not np.allclose(np.asarray(scored_trees(x)), np.asarray(shipped_trees(x)))  # fitted on other games

    def network_weights(model):
        return [w for layer in model.layers if layer is not evaluate.own_trees(model) for w in layer.get_weights()]

    assert len(network_weights(shipped.model)) == (len(network.trainer.get_weights()) if network_helps else 0)
    for mine, validated in zip(network_weights(shipped.model), network_weights(scored.model), strict=True):
        np.testing.assert_array_equal(mine, validated)


def readme_code(after: str, language: str) -> str:
    """The first ```language block of the README after the text `after`."""
    text = (ROOT / "README.md").read_text()
    return text[text.index(after):].split(f"```{language}\n", 1)[1].split("```", 1)[0]


@pytest.fixture(scope="module")
def one_epoch_run(mlflow_url, sample_dataset):
    """A run of one epoch on the sample dataset, logged to the session's MLflow server under the
    names of the README's quick start (`--run-name model-v1 --alias champion`: models:/CASPAR@champion),
    so that the README's commands after it run as written."""
    import mlflow

    assert "python jobs/train.py --run-name model-v1 --alias champion" in readme_code("Then the real thing", "bash")
    mlflow.set_tracking_uri(mlflow_url)
    try:
        yield train(TrainConfig(**{**SMALL, "epochs": 1}, data=sample_dataset, experiment_name="test-train",
                                run_name="model-v1", alias="champion"))
    finally:
        mlflow.set_tracking_uri(None)


def test_normalization_csv_is_the_games_transform(tracking_server, one_epoch_run, sample_dataset, tmp_path):
    import mlflow

    result = one_epoch_run
    path = mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path=NORMALIZATION_FILE, dst_path=str(tmp_path))
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["feature", "min", "max"]
    index = [int(r[0]) for r in rows[1:]]
    low = np.array([float(r[1]) for r in rows[1:]])
    high = np.array([float(r[2]) for r in rows[1:]])
    prepared = load_prepared(sample_dataset)
    assert index == list(range(prepared.schema["width"]))
    raw = prepared.splits["test"][0].astype(np.float64)
    varies = high > low
    as_the_game_does = np.where(varies, np.clip((raw - low) / np.where(varies, high - low, 1), 0, 1), 0).astype(np.float32)
    shipped_rows = np.concatenate([prepared.splits["train"][0], prepared.splits["val"][0]])  # --fit-on train+val
    model_input = Normalizer.fit(shipped_rows).transform(prepared.splits["test"][0])
    assert np.array_equal(as_the_game_does, model_input)


def test_the_drift_check_flags_what_a_newer_logger_writes(tracking_server, one_epoch_run, tmp_path):
    """New logs as today's MegaMek writes them (CHANCE_OF_FAILURE 1.00 for a path without a roll,
    per-arc armour), through the README's two commands as written (after its quick start): the
    features that read them are flagged, those that did not change are not, and the check is logged
    to MLflow."""
    import json

    from mlflow.tracking import MlflowClient

    from caspar.data.gamelog.writer import rewrite
    from caspar.data.samples import game_log

    logs = tmp_path / "new_logs"
    logs.mkdir()
    for seed in range(40, 70):
        for name, data in rewrite(game_log(seed).encode(), "versioned", timestamp=f"20250601_0000{seed}").items():
            (logs / name).write_bytes(data)
    commands = readme_code("**New logs against a model**", "bash").replace("python jobs/", f"{sys.executable} {ROOT}/jobs/")
    assert "--run models:/CASPAR@champion --data data/new" in commands
    result = subprocess.run(["bash", "-c", "set -e\n" + commands], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    out = result.stdout
    assert result.returncode == 0, result.stderr[-3000:]
    with pytest.raises(InputError, match="prepared for jobs/drift.py"):  # one split: not a dataset to train on
        load_prepared(str(tmp_path / "data" / "new"))
    assert "`chance_of_failure` | 100.0% |" in out and "`hexes_moved`" not in out, out
    runs = MlflowClient().search_runs([MlflowClient().get_experiment_by_name("caspar-drift").experiment_id])
    logged = runs[0]
    assert logged.data.params["model_run_id"] == one_epoch_run.run_id and logged.data.metrics["drift_flagged_features"] >= 1
    shifts = json.loads(open(MlflowClient().download_artifacts(logged.info.run_id, "drift.json", str(tmp_path))).read())
    assert {s["feature"] for s in shifts if s["constant_in_training"]} >= {"chance_of_failure", "ecm_coverage"}


def run_train(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, str(ROOT / "jobs" / "train.py"), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_cosine_schedule_warms_up_then_decays_to_zero_at_the_last_epoch(sample_dataset, ray_local):
    import keras

    from caspar.config import Hyperparameters
    from caspar.training.fit import fit, fit_stage, learning_rate

    prepared = load_prepared(sample_dataset)
    hp = Hyperparameters(**{**SMALL, "epochs": 4, "trees": 0}, learning_rate=0.01, lr_schedule="cosine")
    schedule = learning_rate(hp, len(prepared.splits["train"][1]))
    assert float(schedule(0)) == 0.0 and float(schedule(schedule.warmup_steps)) == pytest.approx(0.01)

    class Rates(keras.callbacks.Callback):
        rates = []

        def on_epoch_end(self, epoch, logs=None):
            self.rates.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))

    _, history = fit(hp, fit_stage(hp, prepared.splits, prepared.files, "train"), prepared.splits, callbacks=[Rates()])
    assert history.epochs == 4 and np.isfinite(history.losses["val_loss"]).all()
    assert Rates.rates[0] > Rates.rates[1] > Rates.rates[2] > Rates.rates[3]
    assert Rates.rates[-1] == pytest.approx(0.0, abs=1e-7)  # no plateau callback changed it


def test_ensemble_trains_each_member_on_its_own_loss():
    """With member_losses (TabM's), the loss is the mean of the members' losses, not the loss of
    their mean: the heads add the members' spread while training, and only then."""
    from caspar.model.layers import EnsembleHeads

    rng = np.random.default_rng(0)
    hidden, y = rng.normal(size=(32, 4, 8)).astype("float32"), rng.normal(size=(32, 1)).astype("float32")
    average_only = EnsembleHeads()
    average_only(hidden, training=True)
    assert not average_only.losses
    heads = EnsembleHeads(member_losses=True)
    mean = np.asarray(heads(hidden, training=True))
    members = np.einsum("bkd,kd->bk", hidden, np.asarray(heads.kernel)) + np.asarray(heads.bias)
    members_loss = np.mean((y - members) ** 2)
    assert np.mean((y - mean) ** 2) + float(heads.losses[0]) == pytest.approx(members_loss, rel=1e-5)
    assert np.mean((y - mean) ** 2) < members_loss
    heads(hidden, training=False)
    assert not heads.losses


def test_trees_are_saved_as_weights(tmp_path):
    """A saved TreeEnsemble keeps its arrays in the weights file, not in the JSON config, and loads
    back into the same trees."""
    import keras

    from caspar.model.network import fit_trees

    rng = np.random.default_rng(0)
    x = rng.random((300, 12)).astype("float32")
    y = 0.3 * (x[:, 0] > 0.5) + 0.2 * x[:, 3]
    trees = fit_trees(x, y, Hyperparameters(trees=30, tree_learners="sklearn", seed=0))
    inputs = keras.Input((12,))
    model = keras.Model(inputs, trees(inputs))
    expected = model.predict(x, verbose=0)
    assert np.abs(expected).max() > 0.1
    model.save(tmp_path / "trees.keras")
    config = trees.get_config()
    assert not set(trees.arrays) & set(config) and (config["trees"], config["leaves"]) == (30, trees.arrays["values"].shape[1])
    loaded = keras.models.load_model(tmp_path / "trees.keras")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)


def test_the_encodings_bins_are_saved_as_weights(tmp_path):
    import keras

    from caspar.model.layers import PiecewiseLinearEncoding

    x = np.random.default_rng(0).random((300, 12)).astype("float32")
    x[:, 3] = np.round(x[:, 3])  # binary: one bin
    encoding = PiecewiseLinearEncoding.from_inputs(x, 8)
    assert encoding.bins_per_input == [8, 8, 8, 1] + [8] * 8
    inputs = keras.Input((12,))
    model = keras.Model(inputs, encoding(inputs))
    expected = model.predict(x, verbose=0)
    np.testing.assert_array_equal(expected[:, 24], x[:, 3])  # the binary input's one bin is the input itself
    model.save(tmp_path / "encoding.keras")
    config = encoding.get_config()
    assert config["bins_per_input"] == encoding.bins_per_input and "lower" not in config
    np.testing.assert_array_equal(keras.models.load_model(tmp_path / "encoding.keras").predict(x, verbose=0), expected)


def test_missing_dataset_says_to_prepare_first(tmp_path):
    result = run_train("--data", str(tmp_path / "nothing"), env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db"})
    assert result.returncode == 2 and "run jobs/prepare.py first" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


README_EXAMPLE = {"hidden_layers": [354, 354], "dropout_rate": 0.06, "learning_rate": 0.01}  # jobs/train.py's usage


def test_readme_example_on_the_real_corpus_is_at_least_its_own_trees(corpus_dataset, tracking_server, ray_local):
    """The README's example (few epochs) trains into a registered model that is no worse than its own
    trees alone on the test games (it once trained into a constant that every check let through);
    the trees and GBDT baselines are scored on the rows the model was fitted on."""
    import mlflow

    # smaller trees than the defaults: the README's network is the subject
    result = train(TrainConfig(**README_EXAMPLE, epochs=2, trees=100, tree_folds=2, data=corpus_dataset[0],
                               experiment_name="test-corpus", model_name="CASPAR-corpus-test"))
    m = result.metrics
    assert m["test_r2"] >= m["baseline_trees_test_r2"] - 0.003, m
    assert m["baseline_trees_test_r2"] > m["baseline_mean_test_r2"] + 0.5 and m["baseline_gbdt_test_r2"] > 0.85
    assert result.registered_version is not None and result.verdict.kind != "refused"
    shipped_normalizer = Normalizer.read_csv(mlflow.artifacts.download_artifacts(run_id=result.run_id,
                                                                                 artifact_path=NORMALIZATION_FILE))
    predictions = result.model.predict(shipped_normalizer.transform(load_prepared(corpus_dataset[0]).splits["test"][0]),
                                       verbose=0)
    assert np.ptp(predictions) > 0.5  # not a constant


def test_trees_layer_computes_what_scikit_learn_predicts_on_the_real_corpus(corpus_dataset):
    """TreeEnsemble reads scikit-learn's fitted trees (private attributes): on every row of the real
    corpus it must give scikit-learn's own predictions."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    from caspar.model.layers import TreeEnsemble

    prepared = load_prepared(corpus_dataset[0])
    normalizer = Normalizer.fit(prepared.splits["train"][0])
    x_train = normalizer.transform(prepared.splits["train"][0])
    x_all = normalizer.transform(np.concatenate([prepared.splits[s][0] for s in ("train", "val", "test")]))
    hp = Hyperparameters()
    trees = HistGradientBoostingRegressor(max_iter=60, learning_rate=hp.tree_learning_rate, early_stopping=False,
                                          min_samples_leaf=hp.tree_min_leaf, random_state=0)
    trees.fit(x_train, prepared.splits["train"][1])
    layer = TreeEnsemble.from_sklearn(trees)
    ours = np.asarray(layer(x_all)).reshape(-1)
    np.testing.assert_allclose(ours, trees.predict(x_all), atol=1e-5, rtol=0)


def test_the_output_keeps_a_gradient_when_every_prediction_is_out_of_range(tmp_path):
    """A model whose predictions all lie above 1 still gets a gradient from the loss (a clip would
    give none, and the model would stay a constant); at inference its output is clipped to [0, 1]."""
    import keras
    import tensorflow as tf

    from caspar.model.network import build_network, fit_trees

    rng = np.random.default_rng(0)
    x = rng.random((200, 6)).astype("float32")
    y = (0.5 * x[:, 0] + 0.2).astype("float32")
    hp = Hyperparameters(hidden_layers=[8], dropout_rate=0.0, encoding_bins=0, ensemble_size=1, trees=5, seed=0)
    model = build_network(hp, x, fit_trees(x, y, hp)).model
    index, bias = next((i, w) for i, w in enumerate(model.trainable_variables)
                       if w.path.endswith("bias") and tuple(w.shape) == (1,))
    bias.assign([5.0])
    assert float(np.min(model.predict(x, verbose=0))) == 1.0  # clipped for the game
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(keras.losses.mean_squared_error(y[:, None], model(x, training=True)))
    gradient = tape.gradient(loss, model.trainable_variables)[index]
    assert float(gradient[0]) > 1.0


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_with_its_defaults_takes_a_step(optimizer):
    import keras

    from caspar.model.network import make_optimizer

    weight = keras.Variable(np.ones(3, np.float32))
    step = make_optimizer(optimizer, 0.1, Hyperparameters().weight_decay)
    step.apply([keras.ops.ones(3)], [weight])
    assert float(np.max(keras.ops.convert_to_numpy(weight))) < 1.0


@pytest.mark.slow
def test_cross_validation_benchmark_holds_out_every_game_once(sample_dataset):
    """bench/train.py --cv-folds: every log file of the train and validation splits is scored in
    exactly one fold, and the summary's figures are the means of the folds'."""
    import re

    prepared = load_prepared(sample_dataset)
    games = set(prepared.files["train"]) | set(prepared.files["val"])  # the test split stays out
    small = '{"epochs": 2, "hidden_layers": [8], "trees": 10, "ensemble_size": 1, "tree_folds": 2}'
    result = subprocess.run([sys.executable, "bench/train.py", "--data", sample_dataset, "--skip-throughput",
                             "--cv-folds", "3", "--set", small, "--baselines", "lightgbm-defaults"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    folds = re.findall(r"fold \d/3: (\d+) games, \d+ rows, \d+ s, best epoch \d+: model (\S+), own trees alone (\S+), "
                       r"network, ungated (\S+), lightgbm-defaults (\S+)$", result.stdout, re.MULTILINE)
    assert len(folds) == 3 and sum(int(fold[0]) for fold in folds) == len(games)
    model, trees, ungated, light = (np.array([float(fold[i].rstrip(",")) for fold in folds]) for i in (1, 2, 3, 4))
    for name, values in (("own trees alone", trees), ("network, ungated", ungated), ("lightgbm-defaults", light)):
        line = re.search(name + r": (\S+) ± \S+; model − it (\S+) ± \S+ \((\d)/3\)", result.stdout)
        assert float(line.group(1)) == pytest.approx(values.mean(), abs=2e-4)
        assert float(line.group(2)) == pytest.approx((model - values).mean(), abs=2e-4)
        assert int(line.group(3)) == int(np.sum(model - values > 0))


def mlflow_pyfunc_load(uri: str):
    import mlflow

    return mlflow.pyfunc.load_model(uri)


def test_the_registered_model_is_a_complete_mlflow_model(tracking_server, one_epoch_run, sample_dataset, tmp_path):
    """The registered model loads with mlflow.pyfunc in a process that cannot import the project, takes
    raw feature rows by name, and answers as the trained model does; `mlflow models serve` answers the same
    over REST."""
    import json
    import socket
    import urllib.request

    result = one_epoch_run
    uri = f"models:/{result.model_name}/{result.registered_version}"
    prepared = load_prepared(sample_dataset)
    raw = prepared.splits["test"][0][:50]
    columns = [name for f in prepared.schema["features"] for name in f["columns"]]
    pd.DataFrame(raw, columns=columns).to_csv(tmp_path / "rows.csv", index=False)
    expected = result.model.predict(Normalizer.fit(np.concatenate([prepared.splits["train"][0], prepared.splits["val"][0]]))
                                    .transform(raw), verbose=0).reshape(-1)
    # the README's lines, as written (models:/CASPAR@champion is the quick start's model, here one_epoch_run's)
    readme = readme_code("**The model in MLflow**", "python")
    assert f"models:/{result.model_name}@{result.alias}" in readme
    script = f"""
import json, sys
sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]  # the installed project: gone
sys.path = [p for p in sys.path if p.rstrip("/") != {str(ROOT)!r} and p not in ("", ".")]
try:
    import caspar  # noqa
    sys.exit("the project is still importable")
except ImportError:
    pass
{readme}
print(json.dumps(rewards.tolist()))
"""
    loaded = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    np.testing.assert_allclose(json.loads(loaded.stdout.strip().splitlines()[-1]), expected, atol=1e-5)
    # the run's test_inputs.csv (what an export carries) is such rows: its columns are the schema's names
    from mlflow.tracking import MlflowClient

    inputs = pd.read_csv(MlflowClient().download_artifacts(result.run_id, "test_inputs.csv", str(tmp_path)))
    assert list(inputs.columns) == [*columns, "expected"]
    in_process = mlflow_pyfunc_load(uri)
    np.testing.assert_allclose(in_process.predict(inputs.drop(columns=["expected"])), inputs["expected"], atol=1e-5)
    assert len(in_process.predict(inputs.drop(columns=["expected"]).iloc[:0])) == 0

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = open(tmp_path / "serve.log", "wb")  # a file, not a pipe: a full pipe would stall the server
    text = (ROOT / "README.md").read_text()
    serve = text[text.index("`mlflow models serve -m"):].split("`")[1]  # the README's command, as written
    assert serve == "mlflow models serve -m models:/CASPAR@champion --env-manager local -p 5001"
    # on this machine's loopback and a free port; "with the venv activated": its bin first on the PATH
    server = subprocess.Popen(["bash", "-c", f"exec {serve.replace('-p 5001', f'-h 127.0.0.1 -p {port}')}"],
                              stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True,
                              env={**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"})
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                assert time.monotonic() < deadline, "mlflow models serve did not answer /ping"
                time.sleep(0.5)
        body = json.dumps({"dataframe_split": {"columns": columns, "data": raw.tolist()}}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as answer:
            served = json.loads(answer.read())["predictions"]
        np.testing.assert_allclose(served, expected, atol=1e-5)

        def invoke(data):
            body = json.dumps({"dataframe_split": {"columns": columns, "data": data}}).encode()
            request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=60) as answer:
                    return answer.status, answer.read().decode()
            except urllib.error.HTTPError as error:
                return error.code, error.read().decode()

        status, text = invoke([])  # no rows: an empty answer
        assert status == 200 and json.loads(text)["predictions"] == [], text
        damaged = raw[:2].tolist()
        damaged[1][5] = None  # a value missing from the row
        status, text = invoke(damaged)
        assert status == 400 and f"row 1: {columns[5]} is nan" in text and "Traceback" not in text, text
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its uvicorn workers
        server.wait(timeout=30)
        log.close()


def test_a_job_stopped_with_sigterm_or_ctrl_c_ends_its_run_killed(sample_dataset, tmp_path):
    """A stopped run did not fail: MLflow shows it KILLED, whether a user pressed Ctrl-C or a
    scheduler sent SIGTERM; the job exits 130 or 143."""
    import signal

    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "RAY_AUTH_MODE": "disabled"}
    for stop, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        job = subprocess.Popen([sys.executable, str(ROOT / "jobs" / "train.py"), "--data", sample_dataset, "--trees", "0",
                                "--epochs", "100000", "--patience", "100000", "--hidden-layers", "8",
                                "--experiment-name", "stopped", "--run-name", f"stopped-{code}"],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            for line in job.stdout:  # training has started: the run is open
                if line.startswith("epoch 1/"):
                    break
            job.send_signal(stop)
            rest, _ = job.communicate(timeout=120)
        finally:
            job.kill()  # never left running: it would train for 100,000 epochs
        assert job.returncode == code, rest[-2000:]
        client = MlflowClient(store)
        [run] = client.search_runs([client.get_experiment_by_name("stopped").experiment_id],
                                   f"attributes.run_name = 'stopped-{code}'")
        assert run.info.status == "KILLED"


def test_drift_flags_a_shift_beyond_what_as_many_training_games_show_by_chance():
    """Rows of one game are alike: five new games of the training distribution move a feature whose
    values depend on the game by a PSI far above 0.2, by chance; the check flags only what also
    exceeds what five training games reach, and a real shift still."""
    from caspar.training.drift import FeatureProfile, shifts

    rng = np.random.default_rng(0)

    def games(count, shift=0.0):
        rows, names = [], []
        for g in range(count):
            level = rng.random()  # the game's own level of feature 0 (a map, a force): its rows cluster there
            part = np.stack([np.clip(level + 0.05 * rng.normal(size=40), 0, 1), rng.random(40),
                             np.clip(rng.random(40) * 0.5 + shift, 0, 1)], axis=1)
            rows.append(part)
            names += [f"g{count}-{g}"] * 40
        return np.concatenate(rows), np.array(names)

    training, names = games(120)
    profile = FeatureProfile.fit(training, names, seed=1)
    assert FeatureProfile.from_json(profile.to_json()).noise_for(5).shape == (3,)
    new, _ = games(5, shift=0.4)  # feature 2 moved for a reason; 0 and 1 drawn as in training
    by_chance = {s.feature: s for s in shifts(profile, new, ["by_game", "uniform", "moved"], games=5)}
    assert by_chance["by_game"].psi > 0.2 and not by_chance["by_game"].flagged  # game-to-game variation, not drift
    assert by_chance["moved"].flagged and not by_chance["uniform"].flagged
    naive = {s.feature: s for s in shifts(profile, new, ["by_game", "uniform", "moved"])}
    assert naive["by_game"].flagged  # without the games' noise it would have been


@pytest.mark.slow
def test_the_readme_notebook_block_runs_and_prints_only_what_it_prints(tmp_path):
    """README's "From a notebook" block, verbatim, in a fresh process: prepare, train and export as
    functions; the only lines on standard output are the block's own prints, and none of the
    library's progress lines reach standard error either."""
    from caspar.data.samples import write_samples

    text = (ROOT / "README.md").read_text()
    block = text[text.index("### From a notebook"):].split("```python\n", 1)[1].split("```", 1)[0]
    write_samples(tmp_path / "data" / "demo" / "raw", count=30, seed=11)  # what `make demo` writes there
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    result = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = result.stdout.splitlines()
    assert len(printed) == 2 and printed[0].startswith("test R² ") and printed[1] == "exports/notebook-model", result.stdout
    assert (tmp_path / "exports" / "notebook-model" / "model.caspar").is_file()
    progress = ("train:", "trees:", "epoch ", "baselines:", "importance:", "logging the model", "export:")
    assert not [line for line in result.stderr.splitlines() if line.startswith(progress)], result.stderr[-3000:]

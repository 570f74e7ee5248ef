"""The export job against a real MLflow server: by run name, run id and registry URI."""
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

from caspar.config import TrainConfig
from caspar.errors import UserError
from caspar.export import formats as export
from caspar.training.registry import ExportError
from caspar.training.train import train


@pytest.fixture(scope="module")
def trained(mlflow_url, sample_dataset):
    """A small model trained into the session's MLflow server, registered as CASPAR-export-test."""
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = mlflow_url
    result = train(TrainConfig(hidden_layers=[24, 12], epochs=2, trees=50, tree_folds=2, data=sample_dataset,
                               experiment_name="test-export", run_name="export-me", model_name="CASPAR-export-test",
                               alias="champion"))
    yield result
    if saved is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = saved


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """The trained model exported once by its run name; tests that only read an export, or need an
    earlier one, use (a copy of) it."""
    return export.export("export-me", str(tmp_path_factory.mktemp("exported")))


def earlier_export(exported, output) -> str:
    """A copy of the shared export in `output`, as an earlier export run would have left it."""
    import shutil

    return shutil.copytree(exported.folder, os.path.join(output, os.path.basename(exported.folder)), symlinks=True)


def check_export(result, output):
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    assert result.max_difference <= export.TOLERANCE
    folder = result.folder
    assert os.path.isfile(result.tflite) and os.path.isfile(os.path.join(folder, "saved_model.pb"))
    for name in ("min_max_feature_normalization.csv", "test_inputs.csv", "schema.json", "README.md"):
        assert os.path.isfile(os.path.join(folder, name)), name
    # the SavedModel replays test_inputs.csv: game normalisation, then its last column
    raw, expected = export.read_test_inputs(os.path.join(folder, "test_inputs.csv"))
    normalizer = export.Normalizer.read_csv(os.path.join(folder, "min_max_feature_normalization.csv"))
    serving = tf.saved_model.load(folder).signatures["serving_default"]
    (output_tensor,) = serving(tf.constant(normalizer.transform(raw))).values()
    np.testing.assert_allclose(output_tensor.numpy().reshape(-1), expected, atol=1e-5)
    interpreter = Interpreter(model_path=result.tflite)
    assert interpreter.get_input_details()[0]["dtype"] == np.float32
    assert interpreter.get_input_details()[0]["shape"][-1] == result.width == 354


def test_export_by_run_name(trained, exported):
    result = exported
    assert result.source.run_id == trained.run_id
    assert result.tflite == os.path.join(os.path.dirname(result.folder), "export-me", "export-me.tflite")
    check_export(result, os.path.dirname(result.folder))
    from mlflow.tracking import MlflowClient
    logged = {a.path for a in MlflowClient().list_artifacts(trained.run_id, "export/export-me")}
    assert {"export/export-me/export-me.tflite", "export/export-me/saved_model.pb"} <= logged


def test_export_by_run_id_and_registry_uri(trained, tmp_path):
    from caspar.training.registry import find_model

    by_uri = export.export(f"models:/CASPAR-export-test/{trained.registered_version}", str(tmp_path / "uri"))
    assert by_uri.source.run_id == trained.run_id
    check_export(by_uri, tmp_path / "uri")
    # every way of naming the model finds the same run (what follows is the same export)
    by_id = find_model(trained.run_id)
    assert (by_id.run_id, by_id.name) == (by_uri.source.run_id, by_uri.source.name)
    assert find_model("models:/CASPAR-export-test@champion").run_id == trained.run_id  # train's --alias


def test_saved_model_signature(exported):
    import tensorflow as tf

    result = exported
    signature = tf.saved_model.load(result.folder).signatures["serving_default"]
    inputs = signature.structured_input_signature[1]
    assert len(inputs) == 1
    (spec,) = inputs.values()
    assert spec.dtype == tf.float32 and spec.shape.as_list() == [None, 354]
    (output,) = signature.structured_outputs.values()
    assert output.shape.as_list() == [None, 1]


def test_unknown_run_is_one_line_and_writes_nothing(trained, mlflow_url, tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "jobs" / "export.py"), "--run", "export-mee", "--output",
                             str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_url})
    assert result.returncode == 2
    error = [line for line in result.stderr.strip().splitlines() if line.startswith("export:")]
    assert len(error) == 1 and "no run named 'export-mee'" in error[0] and "export-me" in error[0].split("closest")[1]
    assert not (tmp_path / "out").exists()


def test_failed_verification_keeps_the_earlier_export(exported, tmp_path, monkeypatch):
    earlier = earlier_export(exported, tmp_path)
    files = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    monkeypatch.setattr(export, "TOLERANCE", -1.0)  # nothing can pass
    with pytest.raises(ExportError, match="verification failed"):
        export.export("export-me", str(tmp_path))
    assert {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == files
    assert sorted(p.name for p in tmp_path.iterdir()) == [os.path.basename(earlier)]  # no staging or lock left


def test_a_run_left_running_does_not_hide_the_finished_one(trained, tmp_path):
    """A train killed after logging its artefacts but before its model stays RUNNING under the same
    name; export by name takes the newest FINISHED run with a model."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment = client.get_run(trained.run_id).info.experiment_id
    killed = client.create_run(experiment, run_name="export-me").info.run_id  # newer, never ended
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "min_max_feature_normalization.csv").write_text("feature,min,max\n0,0.0,1.0\n")
    client.log_artifact(killed, str(tmp_path / "in" / "min_max_feature_normalization.csv"))
    from caspar.training.registry import find_model

    assert find_model("export-me").run_id == trained.run_id  # the model export would then write
    client.delete_run(killed)


def test_export_never_replaces_a_folder_it_did_not_write(trained, tmp_path):
    (tmp_path / "export-me").mkdir()
    (tmp_path / "export-me" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"is not an export \(it holds notes.txt\)"):
        export.export("export-me", str(tmp_path))
    assert [p.name for p in (tmp_path / "export-me").iterdir()] == ["notes.txt"]


def test_export_keeps_a_users_files_whatever_their_names(exported, tmp_path):
    """A folder of a README.md and java/NOTES.txt is not an old export; nor is a file a user put into one."""
    (tmp_path / "export-me" / "java").mkdir(parents=True)
    (tmp_path / "export-me" / "README.md").write_text("mine")
    (tmp_path / "export-me" / "java" / "NOTES.txt").write_text("mine too")
    with pytest.raises(UserError, match=r"is not an export \(it holds README.md, java/NOTES.txt"):
        export.export("export-me", str(tmp_path))
    assert (tmp_path / "export-me" / "java" / "NOTES.txt").read_text() == "mine too"
    first = earlier_export(exported, tmp_path / "ours")
    (tmp_path / "ours" / "export-me" / "java" / "NOTES.txt").write_text("added by the user")
    with pytest.raises(UserError, match=r"\(it holds java/NOTES.txt"):
        export.export("export-me", str(tmp_path / "ours"))
    assert os.path.exists(os.path.join(first, "java", "NOTES.txt"))


def test_a_linked_export_folder_stays_a_link_to_the_new_export(exported, tmp_path):
    """MegaMek's data/ai/brains/NAME may be a link to the export: the link stays, its target is replaced."""
    first = earlier_export(exported, tmp_path / "real")
    (tmp_path / "brains").mkdir()
    (tmp_path / "brains" / "export-me").symlink_to(first)
    export.export("export-me", str(tmp_path / "brains"))
    assert (tmp_path / "brains" / "export-me").is_symlink()
    assert (tmp_path / "real" / "export-me" / "model.caspar").is_file()
    assert not [p for p in (tmp_path / "brains").iterdir() if p.name != "export-me"]


def test_the_model_uri_train_prints_is_exportable(trained):
    from caspar.training.registry import find_model

    assert trained.model_uri.startswith("models:/m-")
    source = find_model(trained.model_uri)  # what export writes, under the run's name
    assert source.run_id == trained.run_id and source.name == "export-me"


def test_export_compares_with_the_outputs_training_recorded(trained, tmp_path, monkeypatch):
    """Not only with the model as reloaded: a model whose stored copy no longer gives what training
    recorded in test_inputs.csv is not exported."""
    read = export.read_test_inputs

    def recorded_otherwise(path):
        raw, recorded = read(path)
        return raw, recorded + 1e-3

    monkeypatch.setattr(export, "read_test_inputs", recorded_otherwise)
    with pytest.raises(ExportError, match="differs from the outputs training recorded"):
        export.export("export-me", str(tmp_path))
    assert not (tmp_path / "export-me").exists()


FAMILIES = {  # every layer the models use, each exported at least once (tests/test_javamodel.py: every family in Java)
    "plain network": {"trees": 0, "ensemble_size": 1},
    "full TabM ensemble with periodic embeddings": {"trees": 0, "ensemble_size": 4, "ensemble_kind": "full",
                                                "hidden_layers": [16, 16], "periodic_frequencies": 4},
    "trees and a TabM-mini ensemble correcting them": {"trees": 20, "tree_folds": 2, "ensemble_size": 4},
    "the trees alone": {"trees": 20, "tree_folds": 2},  # what ships when the network does not beat them
}
NETWORK_HELPS = {"trees and a TabM-mini ensemble correcting them": True, "the trees alone": False}


@pytest.mark.parametrize("family", FAMILIES)
def test_every_model_family_exports_and_reports_its_latency(family, mlflow_url, sample_dataset, tmp_path, monkeypatch,
                                                           ray_local):
    from mlflow.tracking import MlflowClient

    from caspar.training import train as training

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_url)
    if family in NETWORK_HELPS:  # whether validation finds the network's gain beyond noise, decided here
        gain = {"mean": 1.0, "standard_error": 0.1, "games": 3, "beyond_noise": NETWORK_HELPS[family]}
        monkeypatch.setattr(training, "network_gain", lambda *args: gain)
    name = "family-" + family.replace(" ", "-")
    # enough steps on the small synthetic dataset for every family to beat the mean (or it would not be registered)
    trained = train(TrainConfig(**{"hidden_layers": [16], "epochs": 20, "batch_size": 32, "learning_rate": 0.01,
                                   "data": sample_dataset, "experiment_name": "test-families",
                                   "run_name": name, "model_name": "CASPAR-families", **FAMILIES[family]}))
    layers = {type(layer).__name__ for layer in trained.model.layers}
    assert ("Dense" in layers or "EnsembleHeads" in layers) == NETWORK_HELPS.get(family, True), layers
    result = export.export(name, str(tmp_path))
    check_export(result, tmp_path)  # SavedModel and TFLite equal the Keras model within 1e-5
    assert set(result.latency) == {"tflite_batch1_ms", "tflite_batch256_ms", "savedmodel_batch1_ms", "savedmodel_floor_ms",
                                   "java_batch1_ms", "java_batch256_ms"}
    assert all(value > 0 for value in result.latency.values())
    assert result.latency["tflite_batch256_ms"] > result.latency["tflite_batch1_ms"]
    assert any(line.startswith("latency, one thread, median: TFLite") for line in result.lines())
    # the plain-Java model: written, run by the JDK on test_inputs.csv, timed
    assert result.java.verified and result.java.difference <= export.TOLERANCE
    assert (tmp_path / name / "model.caspar").is_file() and (tmp_path / name / "java" / "caspar" / "CasparModel.java").is_file()
    assert 0 < result.latency["java_batch1_ms"] < result.latency["java_batch256_ms"]
    assert any(line.startswith("Java model (model.caspar, java/caspar/): verified in Java") for line in result.lines())
    logged = MlflowClient().get_run(trained.run_id).data.metrics
    assert logged["export_tflite_batch1_ms"] == pytest.approx(result.latency["tflite_batch1_ms"])
    assert logged["export_java_batch1_ms"] == pytest.approx(result.latency["java_batch1_ms"])
    assert MlflowClient().get_run(trained.run_id).data.tags["caspar.java"] == "verified"

"""The plain-Java model (java/CasparModel.java): compiled by the JDK, run on every family the search
space can build, compared with Keras within the export's tolerance."""
import numpy as np
import pytest

from caspar import javamodel
from caspar.artifacts import write_test_inputs
from caspar.config import Hyperparameters
from caspar.export import TOLERANCE, JavaModel, write_java
from caspar.model import Normalizer, build_mlp, fit_trees

WIDTH = 12

needs_jdk = pytest.mark.skipif(not javamodel.java_available(), reason="no JDK (javac, java)")


@pytest.fixture(scope="module")
def classes(tmp_path_factory):
    """CasparModel compiled with javac --release 17 -Xlint:all -Werror (a warning fails it)."""
    if not javamodel.java_available():
        pytest.skip("no JDK (javac, java)")
    folder = tmp_path_factory.mktemp("classes")
    javamodel.compiled(str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def rows():
    """Raw rows with thresholds a tree and an encoding can find, and their rewards."""
    rng = np.random.default_rng(0)
    raw = (rng.random((300, WIDTH)) * 10).astype(np.float32)
    raw[:, 5] = 3.0  # a constant feature (max = min + 1 in the normalisation)
    raw[:, 6] = rng.integers(0, 2, 300)  # binary and three-valued: fewer encoding bins than the others
    raw[:, 7] = rng.integers(0, 3, 300) * 2.5
    reward = (0.04 * raw[:, 0] + 0.3 * (raw[:, 3] > 5)).astype(np.float32)
    return raw, reward


FAMILIES = {  # what the search space can build: trees or none, each encoding, ensemble kinds and sizes
    "plain": {},
    "piecewise-linear": {"encoding_bins": 8},
    "periodic": {"periodic_frequencies": 4},
    "TabM-mini": {"ensemble_size": 4, "encoding_bins": 8},
    "full TabM": {"ensemble_size": 4, "ensemble_kind": "full", "hidden_layers": [16, 8]},
    "trees": {"trees": 25},
    "trees, TabM-mini, piecewise-linear": {"trees": 25, "ensemble_size": 4, "encoding_bins": 8},
    "trees, full TabM, periodic": {"trees": 25, "ensemble_size": 4, "ensemble_kind": "full", "periodic_frequencies": 4},
}
ACTIVATIONS = ["relu", "gelu", "swish", "elu", "tanh", "sigmoid"]


def trained_model(rows, family: dict, activation: str):
    raw, reward = rows
    normalizer = Normalizer.fit(raw)
    x = normalizer.transform(raw)
    hp = Hyperparameters(**({"hidden_layers": [16], "dropout_rate": 0.1, "activation": activation, "encoding_bins": 0,
                             "ensemble_size": 1, "trees": 0, "seed": 0} | family))
    model = build_mlp(hp, x, fit_trees(x, reward, hp) if hp.trees else None)
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, reward, epochs=2, batch_size=32, verbose=0)  # batch norm's statistics move off their start
    return model, normalizer


def java_difference(model, normalizer, raw, folder, classes) -> float:
    normalizer.write_csv(str(folder / "min_max_feature_normalization.csv"))
    expected = model.predict(normalizer.transform(raw), verbose=0).reshape(-1)
    write_test_inputs(str(folder / "test_inputs.csv"), raw, expected)
    javamodel.write(model, str(folder / javamodel.MODEL_FILE), "v1-test")
    java = javamodel.predict(str(folder), str(folder / "test_inputs.csv"), classes)
    assert len(java) == len(raw) and np.ptp(expected) > 0  # a constant would hide a wrong layer
    return float(np.max(np.abs(java - expected)))


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_computes_in_java_what_keras_computes(family, classes, rows, tmp_path):
    model, normalizer = trained_model(rows, FAMILIES[family], "relu")
    assert java_difference(model, normalizer, rows[0], tmp_path, classes) <= TOLERANCE


def test_the_trees_alone_compute_in_java_what_keras_computes(classes, rows, tmp_path):
    """What ships when the network does not beat its trees on validation: both learners' trees,
    weighted, no network layer."""
    from caspar.model import trees_model

    raw, reward = rows
    normalizer = Normalizer.fit(raw)
    x = normalizer.transform(raw)
    model = trees_model(fit_trees(x, reward, Hyperparameters(trees=25, seed=0)), WIDTH)
    assert [type(layer).__name__ for layer in model.layers] == ["InputLayer", "TreeEnsemble", "ClipForInference"]
    assert java_difference(model, normalizer, raw, tmp_path, classes) <= TOLERANCE


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_every_activation_computes_in_java_what_keras_computes(activation, classes, rows, tmp_path):
    model, normalizer = trained_model(rows, {"ensemble_size": 4, "ensemble_kind": "full", "trees": 25}, activation)
    assert java_difference(model, normalizer, rows[0], tmp_path, classes) <= TOLERANCE


def test_the_tree_walk_reads_back_the_trees_matrix_form(rows):
    """Node arrays rebuilt from the TreeEnsemble's matrices give scikit-learn's predictions."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    from caspar.layers import TreeEnsemble

    raw, reward = rows
    x = Normalizer.fit(raw).transform(raw)
    fitted = HistGradientBoostingRegressor(max_iter=25, early_stopping=False, random_state=0).fit(x, reward)
    nodes = javamodel.tree_nodes(TreeEnsemble.from_sklearn(fitted).arrays)
    walked = np.zeros(len(x))
    for root in nodes["roots"]:
        node = np.full(len(x), root)
        while (nodes["left"][node] >= 0).any():
            inner = nodes["left"][node] >= 0
            goes_left = x[np.arange(len(x)), nodes["feature"][node]] <= nodes["threshold"][node]
            node = np.where(inner, np.where(goes_left, nodes["left"][node], nodes["right"][node]), node)
        walked += nodes["value"][node]
    np.testing.assert_allclose(walked, fitted.predict(x), atol=1e-5)


def test_a_layer_java_does_not_know_is_refused_in_one_line_and_the_rest_exports(rows, tmp_path):
    import keras

    inputs = keras.Input((WIDTH,))
    model = keras.Model(inputs, keras.layers.Activation("sigmoid")(keras.layers.LayerNormalization()(inputs)[:, :1]))
    result = write_java(model, str(tmp_path), "v1-test", classes=None)
    assert result == JavaModel(False, False, note=result.note) and "has no Java counterpart" in result.note
    assert "\n" not in result.note and not (tmp_path / javamodel.MODEL_FILE).exists()


def test_without_a_jdk_the_java_files_are_written_and_marked_unverified(rows, tmp_path):
    model, normalizer = trained_model(rows, {"trees": 25}, "relu")
    result = write_java(model, str(tmp_path), "v1-test", classes=None)
    assert result.written and not result.verified and "no JDK" in result.note
    assert (tmp_path / javamodel.MODEL_FILE).exists() and (tmp_path / "CasparModel.java").exists()


@needs_jdk
def test_the_java_model_refuses_a_file_it_does_not_know(rows, tmp_path, classes):
    model, normalizer = trained_model(rows, {}, "relu")
    java_difference(model, normalizer, rows[0], tmp_path, classes)
    content = (tmp_path / javamodel.MODEL_FILE).read_bytes().replace(b"layer dense", b"layer conv2d", 1)
    (tmp_path / javamodel.MODEL_FILE).write_bytes(content)
    with pytest.raises(javamodel.UserError, match="unknown layer conv2d"):
        javamodel.predict(str(tmp_path), str(tmp_path / "test_inputs.csv"), classes)


@needs_jdk
def test_the_readme_shell_check_runs_as_written(rows, tmp_path, classes):
    """`java CasparModel.java FOLDER < FOLDER/test_inputs.csv` (source-file mode, as the README says)
    prints the outputs test_inputs.csv records."""
    import shutil
    import subprocess

    model, normalizer = trained_model(rows, {"trees": 25, "encoding_bins": 8, "ensemble_size": 4}, "relu")
    java_difference(model, normalizer, rows[0], tmp_path, classes)
    shutil.copy(javamodel.SOURCE, tmp_path)
    with open(tmp_path / "test_inputs.csv", "rb") as rows_csv:
        result = subprocess.run(["java", "CasparModel.java", "."], cwd=tmp_path, stdin=rows_csv, capture_output=True,
                                text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    recorded = np.loadtxt(tmp_path / "test_inputs.csv", delimiter=",", skiprows=1)[:, -1]
    np.testing.assert_allclose(np.array(result.stdout.split(), float), recorded, atol=TOLERANCE)


def test_every_format_the_exporter_wrote_is_read_or_refused_by_name(classes, rows, tmp_path):
    """Format 3 (today's) and 2 (a network always present) are read alike; 1 and an unknown one
    are refused in one message naming the formats this CasparModel.java reads."""
    model, normalizer = trained_model(rows, FAMILIES["trees, TabM-mini, piecewise-linear"], "relu")
    java_difference(model, normalizer, rows[0], tmp_path, classes)
    path = tmp_path / javamodel.MODEL_FILE
    written = path.read_bytes()
    assert written.startswith(b"caspar-model 3\n")
    today = javamodel.predict(str(tmp_path), str(tmp_path / "test_inputs.csv"), classes)
    path.write_bytes(written.replace(b"caspar-model 3\n", b"caspar-model 2\n", 1))
    np.testing.assert_array_equal(javamodel.predict(str(tmp_path), str(tmp_path / "test_inputs.csv"), classes), today)
    for other in (b"caspar-model 1\n", b"caspar-model 4\n", b"caspar-model x\n"):
        path.write_bytes(written.replace(b"caspar-model 3\n", other, 1))
        with pytest.raises(Exception, match="not a caspar-model file of format 2 to 3"):
            javamodel.predict(str(tmp_path), str(tmp_path / "test_inputs.csv"), classes)

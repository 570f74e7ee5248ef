"""The plain-Java model (java/src/caspar/CasparModel.java): compiled by the JDK, run on every family
the search space can build, compared with Keras within the export's tolerance; damaged files refused
at load in one message."""
import re

import numpy as np
import pytest

from caspar.artifacts import write_test_inputs
from caspar.config import Hyperparameters
from caspar.data.features import feature_names, schema
from caspar.export import javamodel
from caspar.export.formats import TOLERANCE, JavaModel, write_java
from caspar.model.network import Normalizer, build_network, fit_trees

WIDTH = 12

needs_jdk = pytest.mark.skipif(not javamodel.java_available(), reason="no JDK (javac, java)")


@pytest.fixture(scope="module")
def rows():
    """Raw rows with thresholds a tree and an encoding can find, and their rewards."""
    rng = np.random.default_rng(0)
    raw = (rng.random((300, WIDTH)) * 10).astype(np.float32)
    raw[:, 5] = 3.0  # a constant feature (max = min in the normalisation: always 0)
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
    model = build_network(hp, x, fit_trees(x, reward, hp) if hp.trees else None).model
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
    from caspar.model.network import trees_model

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

    from caspar.model.layers import TreeEnsemble

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
    assert (tmp_path / javamodel.MODEL_FILE).exists() and (tmp_path / "java" / "caspar" / "CasparModel.java").exists()


@needs_jdk
def test_the_java_model_refuses_a_file_it_does_not_know(rows, tmp_path, classes):
    model, normalizer = trained_model(rows, {}, "relu")
    java_difference(model, normalizer, rows[0], tmp_path, classes)
    content = (tmp_path / javamodel.MODEL_FILE).read_bytes().replace(b"layer dense", b"layer conv2d", 1)
    (tmp_path / javamodel.MODEL_FILE).write_bytes(content)
    with pytest.raises(javamodel.UserError, match="unknown layer conv2d"):
        javamodel.predict(str(tmp_path), str(tmp_path / "test_inputs.csv"), classes)


@needs_jdk
def test_the_export_readme_shell_check_runs_as_written(rows, tmp_path, classes):
    """The export README's check, in an export folder: compile java/caspar/, run CasparTool predict on
    test_inputs.csv; it prints the outputs test_inputs.csv records."""
    import re
    import subprocess

    from caspar.export.formats import _write_readme

    model, normalizer = trained_model(rows, {"trees": 25, "encoding_bins": 8, "ensemble_size": 4}, "relu")
    java_difference(model, normalizer, rows[0], tmp_path, classes)
    write_java(model, str(tmp_path), "v1-test", classes=None)
    _write_readme(str(tmp_path / "README.md"), "m", {"width": WIDTH, "version": "v1-test"})
    command = re.search(r"`(javac [^`]+ < test_inputs.csv)`", (tmp_path / "README.md").read_text()).group(1)
    result = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=120)
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


# --- Damaged, truncated or hostile files: refused at load, in one line ----------------------------------

def read_caspar(path) -> tuple[list[str], list[tuple[str, np.ndarray]]]:
    """A model.caspar as its header lines and its arrays, to damage and write back."""
    data = path.read_bytes()
    head, body = data.split(b"\ndata\n", 1)
    lines, arrays, offset = head.decode().split("\n"), [], 0
    for line in lines:
        if line.startswith("array "):
            _, name, kind, count = line.split()
            dtype = "<i4" if kind == "i32" else "<f4"
            arrays.append((name, np.frombuffer(body, dtype, int(count), offset).copy()))
            offset += 4 * int(count)
    return lines, arrays


def write_caspar(path, lines, arrays, tail=b"") -> None:
    path.write_bytes(("\n".join(lines) + "\ndata\n").encode() + b"".join(a.tobytes() for _, a in arrays) + tail)


def damaged_copies(lines, arrays) -> dict[str, tuple]:
    """name -> (header lines, arrays, trailing bytes, words the refusal must contain)."""
    kernel = next(i for i, (name, _) in enumerate(arrays) if name == "kernel")  # the first kernel
    kernel_line = [i for i, line in enumerate(lines) if line.startswith("array ")][kernel]

    def changed(index, change):
        copies = [(name, array.copy()) for name, array in arrays]
        change(copies[index][1])
        return copies

    def loop(left):
        split = np.flatnonzero(left >= 0)[0]
        left[split] = split  # a split whose left child is itself: a walk would never end

    left = next(i for i, (name, _) in enumerate(arrays) if name == "left")
    short_lines = list(lines)
    short_lines[kernel_line] = re.sub(r"\d+$", lambda m: str(int(m.group()) - 1), lines[kernel_line])
    short_arrays = [(name, array[:-1] if i == kernel else array) for i, (name, array) in enumerate(arrays)]
    return {
        "a tree node that is its own child": (lines, changed(left, loop), b"", "neither a leaf"),
        "a count of 2**30 values": ([re.sub(r"^array bias f32 \d+", "array bias f32 1073741824", line) for line in lines],
                                    arrays, b"", "the file holds"),
        "an array one value short": (short_lines, short_arrays, b"", "values, expected"),
        "a NaN weight": (lines, changed(kernel, lambda a: a.__setitem__(0, np.nan)), b"", "is NaN"),
        "no feature_set": ([line for line in lines if not line.startswith("feature_set")], arrays, b"", "lacks feature_set"),
        "trailing bytes": (lines, arrays, b"garbage", "bytes after the last array"),
        "an array before any layer": ([*lines[:3], "array extra f32 0", *lines[3:]], arrays, b"", "before any layer"),
        "an unknown output": ([re.sub(r"^output .*", "output softmax", line) for line in lines], arrays, b"",
                              "unknown output"),
        # a model claiming today's feature set with another width (353 of 354 inputs) fails at load, not in the game
        "the wrong width for its feature set": ([re.sub(r"^feature_set .*", f"feature_set {schema()['version']}", line)
                                                 for line in lines], arrays, b"",
                                                f"has {len(feature_names())} inputs; this model takes {WIDTH}"),
    }


@needs_jdk
def test_a_damaged_model_file_is_refused_at_load_in_one_line(rows, tmp_path, classes):
    import subprocess

    model, normalizer = trained_model(rows, FAMILIES["trees, TabM-mini, piecewise-linear"], "relu")
    java_difference(model, normalizer, rows[0], tmp_path, classes)
    path = tmp_path / javamodel.MODEL_FILE
    lines, arrays = read_caspar(path)
    written = path.read_bytes()
    cases = damaged_copies(lines, arrays) | {
        "an empty header": None, "binary garbage": None, "half the file": None}
    for case, damage in cases.items():
        if case == "an empty header":
            path.write_bytes(b"data\n")
            words = "no header"
        elif case == "binary garbage":
            path.write_bytes(np.random.default_rng(0).bytes(5000))
            words = "not a header line"
        elif case == "half the file":
            path.write_bytes(written[:len(written) // 2])
            words = "truncated"
        else:
            damaged_lines, damaged_arrays, tail, words = damage
            write_caspar(path, damaged_lines, damaged_arrays, tail)
        with open(tmp_path / "test_inputs.csv", "rb") as rows_csv:
            result = subprocess.run(["java", "-Xmx256m", "-cp", classes, "caspar.CasparTool", "predict", str(tmp_path)],
                                    stdin=rows_csv, capture_output=True, text=True, timeout=60)
        message = result.stderr.strip()
        assert result.returncode == 2 and result.stdout == "", case
        assert len(message.splitlines()) == 1 and str(path) in message and words in message, (case, message)
        assert "Exception" not in message and "\tat " not in result.stderr, (case, message)
    path.write_bytes(written)
    assert len(javamodel.predict(str(tmp_path), str(tmp_path / "test_inputs.csv"), classes)) == len(rows[0])


@needs_jdk
def test_a_damaged_normalisation_file_is_refused_at_load_in_one_line(rows, tmp_path, classes):
    model, normalizer = trained_model(rows, {}, "relu")
    java_difference(model, normalizer, rows[0], tmp_path, classes)
    csv_path = tmp_path / "min_max_feature_normalization.csv"
    lines = csv_path.read_text().splitlines()
    for damaged, words in (([lines[0], "0,x,1", *lines[2:]], "line 2"), (lines[:-1], "features, the model"),
                           ([lines[0], "0,2,1", *lines[2:]], "max at least min"), ([], "line 1")):
        csv_path.write_text("\n".join(damaged) + "\n")
        with pytest.raises(javamodel.UserError, match=words):
            javamodel.predict(str(tmp_path), str(tmp_path / "test_inputs.csv"), classes)


@needs_jdk
def test_the_command_line_reads_every_row_and_names_a_bad_one(rows, tmp_path, classes):
    """inf is a number and a first row holding NaN is a row, not a header: both refused, as the model
    takes finite values only; a row separated by ';' or an empty cell is refused; each in one line
    naming its line."""
    import subprocess

    model, normalizer = trained_model(rows, {"trees": 25}, "relu")
    java_difference(model, normalizer, rows[0], tmp_path, classes)

    def run(text: str):
        return subprocess.run(["java", "-cp", classes, "caspar.CasparTool", "predict", str(tmp_path)], input=text,
                              capture_output=True, text=True, timeout=60)

    values = [",".join(["1.5"] * WIDTH), ",".join(["2e3"] + ["0"] * (WIDTH - 1))]
    result = run("\n".join(values) + "\n")
    assert result.returncode == 0 and len(result.stdout.split()) == 2, result.stderr
    nan_first = run(",".join(["nan"] + ["1.5"] * (WIDTH - 1)) + "\n" + values[1] + "\n")
    assert nan_first.returncode == 2 and nan_first.stderr.startswith("CasparTool: line 1: column 0 is NaN: the model takes finite")
    for bad, words in ((",".join(["1"] * (WIDTH - 1) + ["-inf"]), f"line 2: column {WIDTH - 1} is -Infinity"),
                       (";".join(["1"] * WIDTH), "line 2: 1 comma-separated values"),
                       (",".join(["1"] * (WIDTH + 2)), f"line 2: {WIDTH + 2} comma-separated values, the model takes {WIDTH}"),
                       (",".join([""] + ["1"] * (WIDTH - 1)), "line 2 value 1: '' is not a number")):
        result = run(values[1] + "\n" + bad + "\n")
        message = result.stderr.strip()
        assert result.returncode == 2 and message.startswith(f"CasparTool: {words}") and "\n" not in message, message
        assert len(result.stdout.split()) == 1  # the good row before it keeps its prediction


# --- The era guard: what never varied in training cannot move a prediction --------------------------------

@needs_jdk
def test_a_feature_constant_in_training_cannot_move_the_prediction(rows, tmp_path, classes):
    """Feature 5 is constant in the training rows: any other value gives the same output in Keras
    (through the normalisation) and in Java, and the Java tool reports the values it had not seen."""
    import subprocess

    raw, _ = rows
    model, normalizer = trained_model(rows, FAMILIES["trees, TabM-mini, piecewise-linear"], "relu")
    assert normalizer.minimum[5] == normalizer.maximum[5]
    java_difference(model, normalizer, raw, tmp_path, classes)
    before = model.predict(normalizer.transform(raw), verbose=0).reshape(-1)
    moved = raw.copy()
    moved[:, 5] = np.linspace(-100, 100, len(raw))
    after = model.predict(normalizer.transform(moved), verbose=0).reshape(-1)
    np.testing.assert_array_equal(after, before)
    write_test_inputs(str(tmp_path / "moved.csv"), moved, after)
    np.testing.assert_array_equal(javamodel.predict(str(tmp_path), str(tmp_path / "moved.csv"), classes),
                                  javamodel.predict(str(tmp_path), str(tmp_path / "test_inputs.csv"), classes))
    with open(tmp_path / "moved.csv", "rb") as moved_csv:
        result = subprocess.run(["java", "-cp", classes, "caspar.CasparTool", "predict", str(tmp_path)], stdin=moved_csv,
                                capture_output=True, text=True, timeout=60)
    assert f"{len(raw)} values of feature f5 (column 5)" in result.stderr  # by the header's name
    headerless = "".join((tmp_path / "moved.csv").read_text().splitlines(keepends=True)[1:])
    result = subprocess.run(["java", "-cp", classes, "caspar.CasparTool", "predict", str(tmp_path)], input=headerless,
                            capture_output=True, text=True, timeout=60)
    assert f"{len(raw)} values of feature column 5" in result.stderr

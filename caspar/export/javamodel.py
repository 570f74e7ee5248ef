"""The model for MegaMek's Java: `model.caspar` (the format `java/src/caspar/CasparModel.java`
reads and documents), the Java package beside it, and running that Java to check it.

Every layer `caspar.model.network.build_network` can build has a Java counterpart; anything else is refused
in one line (UnsupportedModel), and the export's other formats still go out.
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import os
import shutil
import subprocess
import tempfile

import numpy as np

from caspar.errors import UserError

MODEL_FILE = "model.caspar"
SOURCES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "java", "src")
PACKAGE = "caspar"  # the Java package: CasparModel, CasparFeatures, CasparTool (the command line)


def source_files() -> list[str]:
    """Returns the Java package's source files."""
    folder = os.path.join(SOURCES, PACKAGE)
    return sorted(os.path.join(folder, name) for name in os.listdir(folder) if name.endswith(".java"))
FORMAT = 3  # 2: the piecewise encoding's inputs may have different numbers of bins; 3: the trees alone may ship


class UnsupportedModel(UserError):
    """The model has a layer the Java model does not compute."""


def write(model, path: str, feature_set: str) -> None:
    """Writes model.caspar.

    Args:
        model: a Keras model built by caspar.model.network (a network, or the trees alone).
        path: the file written.
        feature_set: the schema's version.

    Raises:
        UnsupportedModel: a layer or activation the Java model does not compute.
    """
    header = [f"caspar-model {FORMAT}", f"feature_set {feature_set}", f"inputs {model.input_shape[-1]}"]
    arrays: list[np.ndarray] = []
    output = None
    for layer in model.layers:
        kind = type(layer).__name__
        if kind in ("InputLayer", "Dropout", "Add"):
            continue
        if kind in ("ClipForInference", "ReLU"):  # ReLU(max_value=1): the output of models saved before
            if kind == "ReLU" and not (layer.max_value == 1 and layer.negative_slope == 0 and layer.threshold == 0):
                raise UnsupportedModel(f"layer {layer.name}: a ReLU that is not the [0, 1] clip of the output")
            output = "clip"
            continue
        if kind == "Activation" and _activation(layer.activation, layer.name) == "sigmoid":
            output = "sigmoid"
            continue
        line, named = _layer(layer, kind)
        header.append(line)
        for name, array in named:
            array = np.ascontiguousarray(array)
            header.append(f"array {name} {'i32' if array.dtype == np.int32 else 'f32'} {array.size}")
            arrays.append(array)
    if output is None:
        raise UnsupportedModel("the model's output is neither the trees' clip nor a sigmoid unit")
    header.append(f"output {output}")
    with open(path, "wb") as handle:
        handle.write(("\n".join(header) + "\ndata\n").encode())
        for array in arrays:
            handle.write(array.astype("<i4" if array.dtype == np.int32 else "<f4").tobytes())


def _weights(layer) -> dict[str, np.ndarray]:
    return {w.path.split("/")[-1]: np.asarray(w.numpy()) for w in layer.weights}


def _layer(layer, kind: str) -> tuple[str, list[tuple[str, np.ndarray]]]:
    w = _weights(layer)
    members = layer.input.shape[1] if len(layer.input.shape) == 3 else 1
    width = layer.input.shape[-1]
    if kind == "PeriodicEmbedding":
        linear = _weights(layer.linear)
        return (f"layer periodic {width} {layer.frequencies} {layer.dimension}",
                [("coefficients", w["coefficients"]), ("kernel", linear["kernel"]), ("bias", linear["bias"])])
    if kind == "PiecewiseLinearEncoding":
        start = np.concatenate([[0], np.cumsum(layer.bins_per_input)]).astype(np.int32)  # each input's first bin
        return (f"layer piecewise {width} {int(start[-1])}",
                [("start", start), ("lower", w["lower"].ravel()), ("width", w["width"].ravel())])
    if kind == "EnsembleAdapter":
        return f"layer adapter {layer.members} {width}", [("scale", w["scale"])]
    if kind == "Dense":
        act = _activation(layer.activation, layer.name)
        return f"layer dense {members} {width} {layer.units} {act}", [("kernel", w["kernel"]), ("bias", w["bias"])]
    if kind == "BatchEnsembleDense":
        act = _activation(layer.activation, layer.name)
        return (f"layer batchensemble {members} {width} {layer.units} {act}",
                [("r", w["r"]), ("kernel", w["kernel"]), ("s", w["s"]), ("bias", w["bias"])])
    if kind == "BatchNormalization":
        return f"layer affine {members} {width}", _folded_batch_norm(layer, w)
    if kind == "EnsembleHeads":
        return f"layer heads {members} {width}", [("kernel", w["kernel"]), ("bias", w["bias"])]
    if kind == "TreeEnsemble":
        nodes = tree_nodes(w)
        return f"layer trees {len(nodes['roots'])} {len(nodes['value'])}", list(nodes.items())
    raise UnsupportedModel(f"layer {layer.name} ({kind}) has no Java counterpart in CasparModel.java")


def _activation(function, name: str) -> str:
    known = {"linear", "relu", "sigmoid", "tanh", "silu", "swish", "elu", "gelu"}
    label = getattr(function, "__name__", str(function))
    if label not in known:
        raise UnsupportedModel(f"layer {name}: activation {label} has no Java counterpart")
    return label


def _folded_batch_norm(layer, w) -> list[tuple[str, np.ndarray]]:
    """x * scale + shift, computed as TensorFlow computes batch normalisation at inference."""
    gamma = w.get("gamma", np.ones_like(w["moving_mean"]))
    beta = w.get("beta", np.zeros_like(w["moving_mean"]))
    scale = (gamma / np.sqrt(w["moving_variance"] + np.float32(layer.epsilon))).astype(np.float32)
    return [("scale", scale), ("shift", (beta - w["moving_mean"] * scale).astype(np.float32))]


def tree_nodes(w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The TreeEnsemble's matrix form (for each tree: the feature and threshold of each internal
    node, and for each leaf the turns its path takes) back into node arrays to walk: per node its
    feature, threshold, left and right child (-1 at a leaf) and leaf value; per tree its root.

    Args:
        w: the TreeEnsemble's weights by name (features, thresholds, paths, left_turns, values).

    Returns:
        {"roots": [trees], "feature", "threshold", "left", "right", "value": [nodes]}.
    """
    nodes: dict[str, list] = {"feature": [], "threshold": [], "left": [], "right": [], "value": []}
    roots = [_add_tree(nodes, *(w[k][t] for k in ("features", "thresholds", "paths", "left_turns", "values")))
             for t in range(len(w["features"]))]
    types = {"feature": np.int32, "threshold": np.float32, "left": np.int32, "right": np.int32, "value": np.float32}
    return {"roots": np.array(roots, np.int32)} | {k: np.array(v, types[k]) for k, v in nodes.items()}


def _add_tree(nodes: dict[str, list], features, thresholds, paths, left_turns, values) -> int:
    """Appends one tree's nodes; returns its root's index."""
    reached = left_turns >= 0  # padding leaves are never reached
    turns = paths[:, reached]  # [internal, leaves]: +1 the leaf lies left of the node, -1 right, 0 elsewhere
    by_leaves = {(turns[i] != 0).tobytes(): i for i in range(len(turns)) if turns[i].any()}  # padding nodes: none
    leaf_values = values[reached]

    def add(feature=0, threshold=0.0, left=-1, right=-1, value=0.0) -> int:
        for key, item in zip(nodes, (feature, threshold, left, right, value)):
            nodes[key].append(item)
        return len(nodes["value"]) - 1

    def build(below: np.ndarray) -> int:
        if below.sum() == 1:
            return add(value=float(leaf_values[below][0]))
        node = by_leaves[below.tobytes()]  # the internal node whose leaves are exactly these
        index = add(int(features[node]), float(thresholds[node]))
        nodes["left"][index] = build(below & (turns[node] > 0))
        nodes["right"][index] = build(below & (turns[node] < 0))
        return index

    return build(np.ones(int(reached.sum()), bool))


# --- Running the Java model ----------------------------------------------------------------------------

def java_available() -> bool:
    """Returns whether javac and java are on the PATH."""
    return shutil.which("javac") is not None and shutil.which("java") is not None


def compiled(classes: str) -> None:
    """Compiles the Java package (javac --release 17, every warning an error).

    Args:
        classes: the folder the classes go to.

    Raises:
        UserError: javac failed (its first line).
    """
    result = subprocess.run(["javac", "--release", "17", "-Xlint:all", "-Werror", "-d", classes, *source_files()],
                            capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise UserError(f"javac failed on {SOURCES}: {(result.stderr.strip().splitlines() or ['?'])[0]}")


def predict(folder: str, rows_csv: str, classes: str) -> np.ndarray:
    """The Java model's predictions for a CSV of raw feature rows (test_inputs.csv: its last column,
    the expected output, is ignored by the Java model, which reads only the model's inputs).

    Args:
        folder: the export's folder.
        rows_csv: the rows.
        classes: the compiled Java package.

    Returns:
        [rows] float64.

    Raises:
        UserError: the Java model failed (its last line).
    """
    with open(rows_csv, "rb") as rows:
        result = subprocess.run(["java", "-cp", classes, f"{PACKAGE}.CasparTool", "predict", folder], stdin=rows,
                                capture_output=True, timeout=300)
    if result.returncode != 0:
        raise UserError(f"the Java model failed: {(result.stderr.decode().strip().splitlines() or ['?'])[-1]}")
    return np.array([float(line) for line in result.stdout.decode().split()], np.float64)


def latency(folder: str, classes: str, decisions: str | None = None) -> dict[str, float]:
    """Median milliseconds per call on one thread, at batch 1 and per batch of 256; with a decisions
    file (caspar.export.javafeatures), also the features alone and the features and the model together.

    Args:
        folder: the export's folder.
        classes: the compiled Java package.
        decisions: a decisions file, or None.

    Returns:
        {java_<figure>: milliseconds}.

    Raises:
        UserError: the benchmark failed (its last line).
    """
    result = subprocess.run(["java", "-XX:ActiveProcessorCount=1", "-cp", classes, f"{PACKAGE}.CasparTool", "benchmark",
                             folder, *([decisions] if decisions else [])], capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise UserError(f"the Java benchmark failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
    figures = dict(line.split() for line in result.stdout.splitlines() if line.endswith(tuple("0123456789")))
    return {f"java_{name}": float(value) for name, value in figures.items()}


@contextlib.contextmanager
def classes():
    """A temporary folder with the Java package compiled into it, or None where there is no JDK."""
    yield compiled_for_this_process() if java_available() else None


@functools.cache
def compiled_for_this_process() -> str:
    """The Java package compiled once per process (javac takes seconds; a notebook or a test
    exporting again reuses it), into a temporary folder removed when the process exits."""
    folder = tempfile.mkdtemp(prefix="caspar-java-")
    atexit.register(shutil.rmtree, folder, True)
    try:
        compiled(folder)
    except BaseException:
        shutil.rmtree(folder, True)
        raise
    return folder

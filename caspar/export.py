"""Export a trained model the way MegaMek loads it, and prove it computes what training did.

Writes, for a run named NAME, one folder (replaced as a whole, in one step):

    NAME/                              what goes into MegaMek's data/ai/brains/NAME/
        saved_model.pb, variables/     TensorFlow SavedModel, signature `serving_default`
        NAME.tflite                    TFLite (LiteRT) flat buffer, float32 input [batch, F]
        min_max_feature_normalization.csv
        test_inputs.csv                test rows: F raw feature values, then the expected output
        schema.json                    feature names in order, widths, version hash
        README.md

After writing, everything is loaded back and fed the test rows through the game's normalisation;
if any output differs from the Keras model's by more than 1e-5 the new export is discarded (an
earlier one stays) and the job fails.
"""
from __future__ import annotations

import csv
import difflib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np

from caspar import storage, tracking
from caspar.cli import UserError
from caspar.model import NORMALIZATION_FILE, Normalizer

TOLERANCE = 1e-5
TEST_INPUTS_FILE = "test_inputs.csv"
RUN_ID = re.compile(r"^[0-9a-f]{32}$")


class ExportError(UserError):
    """The export cannot be done; the message is one line for the user."""


@dataclass
class Source:
    run_id: str
    name: str  # file stem of the export
    model_uri: str
    note: str = ""  # e.g. that a name matched several runs


def find_model(ref: str, experiment_name: str | None = None) -> Source:
    """A run name, a run id, or a registry URI (models:/NAME/VERSION, models:/NAME@ALIAS)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    if ref.startswith("models:/"):
        name, _, rest = ref[len("models:/"):].partition("/")
        name, _, alias = name.partition("@")
        try:
            version = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, rest)
        except MlflowException:
            raise ExportError(f"no registered model {ref}") from None
        run = client.get_run(version.run_id)
        return Source(version.run_id, _safe_name(run.info.run_name or f"{name}-v{version.version}"), ref)
    if RUN_ID.match(ref):
        try:
            run = client.get_run(ref)
        except MlflowException:
            run = None  # not an id after all: try it as a name
        if run is not None:
            if not _has_model(client, ref):
                raise ExportError(f"run {ref} has no model (it failed or is still running)")
            return Source(ref, _safe_name(run.info.run_name or ref), f"runs:/{ref}/model")
    experiments = _experiments(client, experiment_name)
    runs = client.search_runs([e.experiment_id for e in experiments], f"attributes.run_name = '{_quoted(ref)}'",
                              order_by=["attributes.start_time DESC"])
    with_model = [r for r in runs if _has_model(client, r.info.run_id)]
    where = f" in experiment {experiment_name}" if experiment_name else ""
    if runs and not with_model:
        raise ExportError(f"{len(runs)} runs are named {ref!r}{where} but none has a model (they failed or are still running)")
    runs = with_model
    if not runs:
        names = {r.info.run_name for r in client.search_runs([e.experiment_id for e in experiments], max_results=1000)}
        close = difflib.get_close_matches(ref, sorted(n for n in names if n and n != ref), n=5, cutoff=0.4)
        hint = f"; closest names: {', '.join(close)}" if close else ""
        raise ExportError(f"no run named {ref!r}{where}{hint}")
    note = f"{len(runs)} runs are named {ref!r}; exporting the newest, {runs[0].info.run_id}" if len(runs) > 1 else ""
    return Source(runs[0].info.run_id, _safe_name(ref), f"runs:/{runs[0].info.run_id}/model", note)


def _experiments(client, name: str | None):
    if name is None:
        return client.search_experiments()
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        raise ExportError(f"no experiment named {name!r}")
    return [experiment]


def _has_model(client, run_id: str) -> bool:
    return any(a.path == NORMALIZATION_FILE for a in client.list_artifacts(run_id))


def _quoted(text: str) -> str:
    return text.replace("'", "\\'")


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"


@dataclass
class Exported:
    source: Source
    tflite: str
    folder: str
    max_difference: float
    width: int
    sizes: dict[str, int]

    def lines(self) -> list[str]:
        lines = [self.source.note] if self.source.note else []
        sizes = ", ".join(f"{name} {size / 1024:.0f} KiB" for name, size in self.sizes.items())
        return lines + [
            f"exported run {self.source.run_id} ({self.source.model_uri}), input width {self.width}",
            f"wrote {self.folder}/ with {os.path.basename(self.tflite)} inside ({sizes})",
            f"verified: max |difference| to the Keras model {self.max_difference:.2e} (limit {TOLERANCE:g})",
            f"for MegaMek: copy {self.folder}/ to data/ai/brains/{os.path.basename(self.folder)}/",
        ]


def export(ref: str, output: str = "exports", experiment_name: str | None = None) -> Exported:
    import mlflow

    tracking.configure()
    source = find_model(ref, experiment_name)
    folder = os.path.join(output, source.name)
    tflite_name = f"{source.name}.tflite"
    with tempfile.TemporaryDirectory() as downloads:
        for artifact in (NORMALIZATION_FILE, TEST_INPUTS_FILE, "schema.json"):
            mlflow.artifacts.download_artifacts(run_id=source.run_id, artifact_path=artifact, dst_path=downloads)
        import caspar.layers  # noqa: F401  (custom layers must be known before loading)

        keras_model = mlflow.keras.load_model(source.model_uri)
        with storage.replacing(folder, "the export") as staging:  # verified before it replaces anything
            keras_model.export(staging, format="tf_saved_model", verbose=False)
            for artifact in (NORMALIZATION_FILE, TEST_INPUTS_FILE, "schema.json"):
                shutil.copy(os.path.join(downloads, artifact), staging)
            schema = json.load(open(os.path.join(staging, "schema.json")))
            _write_readme(os.path.join(staging, "README.md"), source.name, schema)
            with open(os.path.join(staging, tflite_name), "wb") as handle:
                handle.write(_to_tflite(staging))
            difference = verify(keras_model, staging, os.path.join(staging, tflite_name), schema["width"])
    with mlflow.start_run(run_id=source.run_id):
        mlflow.log_artifacts(folder, artifact_path=f"export/{source.name}")
    tflite_path = os.path.join(folder, tflite_name)
    sizes = {tflite_name: os.path.getsize(tflite_path),
             "SavedModel": sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs
                               if f != tflite_name)}
    return Exported(source, tflite_path, folder, difference, schema["width"], sizes)


def _to_tflite(saved_model: str) -> bytes:
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_saved_model(saved_model).convert()


def read_test_inputs(path: str) -> tuple[np.ndarray, np.ndarray]:
    rows = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    return rows[:, :-1], rows[:, -1]


def verify(keras_model, saved_model: str, tflite_path: str, width: int) -> float:
    """Feed the test rows, normalised as the game does, through every written model; return the
    largest difference to the Keras model. Raises ExportError above TOLERANCE."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    raw, _ = read_test_inputs(os.path.join(saved_model, TEST_INPUTS_FILE))
    normalizer = Normalizer.read_csv(os.path.join(saved_model, NORMALIZATION_FILE))
    if raw.shape[1] != width or len(normalizer.minimum) != width:
        raise ExportError(f"input width mismatch: schema {width}, test rows {raw.shape[1]}, "
                          f"normalisation {len(normalizer.minimum)}")
    x = normalizer.transform(raw)
    expected = keras_model.predict(x, verbose=0).reshape(-1)

    serving = tf.saved_model.load(saved_model).signatures["serving_default"]
    (saved_output,) = serving(tf.constant(x)).values()
    interpreter = Interpreter(model_path=tflite_path)
    input_detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(input_detail["index"], list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(input_detail["index"], x)
    interpreter.invoke()
    tflite_output = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    difference = max(float(np.max(np.abs(saved_output.numpy().reshape(-1) - expected))),
                     float(np.max(np.abs(tflite_output.reshape(-1) - expected))))
    if not difference <= TOLERANCE:
        raise ExportError(f"verification failed: exported model differs from the Keras model by {difference:.2e}")
    return difference


def write_test_inputs(path: str, raw_features: np.ndarray, expected: np.ndarray) -> None:
    """Test rows as the game would see them before normalising, and the model's output."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow([f"f{i}" for i in range(raw_features.shape[1])] + ["expected"])
        for features, output in zip(raw_features.tolist(), expected.tolist()):
            writer.writerow([repr(v) for v in features] + [repr(output)])


def _write_readme(path: str, name: str, schema: dict) -> None:
    with open(path, "w") as handle:
        handle.write(f"""# CASPAR model `{name}`

Copy this folder into your MegaMek install as `data/ai/brains/{name}/`.

* `{name}.tflite`: the same model for TensorFlow Lite (LiteRT).
* `saved_model.pb`, `variables/`: TensorFlow SavedModel, signature `serving_default`, float32 input
  `[batch, {schema['width']}]`, output `[batch, 1]` (the predicted reward of a move, 0 to 1).
* `min_max_feature_normalization.csv`: MegaMek scales every input as
  `clamp((x - min) / (max - min), 0, 1)` with these numbers before calling the model.
* `schema.json`: feature set `{schema['version']}`. The game's feature code must produce the
  {schema['width']} features in exactly this order.
* `test_inputs.csv`: raw feature rows and the output the model must give for each.
""")

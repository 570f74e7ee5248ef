"""Export a trained model the way MegaMek loads it, and prove it computes what training did.

Writes, for a run named NAME, one folder (replaced as a whole, in one step):

    NAME/                              what goes into MegaMek's data/ai/brains/NAME/
        model.caspar, java/caspar/     the model and features in plain Java (CasparModel.java documents the format)
        saved_model.pb, variables/     TensorFlow SavedModel, signature `serving_default`
        NAME.tflite                    TFLite (LiteRT) flat buffer, float32 input [batch, F]
        min_max_feature_normalization.csv
        test_inputs.csv                test rows: F raw feature values, then the expected output
        schema.json                    feature names in order, widths, version hash
        README.md

After writing, everything is loaded back and fed the test rows through the game's normalisation;
if any output (the Keras model loaded from MLflow, the SavedModel, the TFLite model) differs from
the outputs training recorded for those rows by more than 1e-5 the new export is discarded (an
earlier one stays) and the job fails.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np

from caspar import storage, tracking
from caspar.artifacts import NORMALIZATION_FILE, TEST_INPUTS_FILE, read_test_inputs
from caspar.export import javamodel
from caspar.model.normalization import Normalizer
from caspar.training.mlflow_model import keras_model_of
from caspar.training.registry import ExportError, Source, find_model

JAVA_FOLDER = "java"  # the Java package in an export: java/caspar/*.java
TOLERANCE = 1e-5
LATENCY_CALLS = 300  # at batch 1; the median is reported
LATENCY_BUDGET_MS = 0.5  # TFLite, batch 1, one thread: the game calls the model once per candidate path
SIZE_BUDGET_MB = 20.0
@dataclass
class JavaModel:
    """The plain-Java model of an export: model.caspar and the Java package (java/caspar/), run by the JDK."""
    written: bool
    verified: bool
    difference: float | None = None
    note: str = ""  # why it was not written or not verified

    @property
    def status(self) -> str:
        """"verified", "unverified" (written, no JDK) or "none"."""
        return "verified" if self.verified else "unverified" if self.written else "none"

    def line(self, latency: dict[str, float]) -> str:
        """The export's line on the Java model.

        Args:
            latency: the export's figures (java_batch1_ms, java_batch256_ms).

        Returns:
            The line: verified with its difference and speed, or why not.
        """
        if not self.verified:
            return f"Java model: {self.note}"
        return (f"Java model ({javamodel.MODEL_FILE}, {JAVA_FOLDER}/{javamodel.PACKAGE}/): verified in Java, max |difference| "
                f"{self.difference:.2e}; {latency['java_batch1_ms']:.3f} ms at batch 1, "
                f"{latency['java_batch256_ms']:.2f} ms per batch of 256 (one thread, median)")


@dataclass
class Exported:
    """What an export wrote and measured, as jobs/export.py prints it."""
    source: Source
    tflite: str
    folder: str
    max_difference: float
    width: int
    sizes: dict[str, int]
    latency: dict[str, float]  # milliseconds per call, one thread (median)
    java: JavaModel

    def lines(self) -> list[str]:
        """Returns what jobs/export.py prints at its end."""
        lines = [self.source.note] if self.source.note else []
        sizes = ", ".join(f"{name} {size / 1024:.0f} KiB" for name, size in self.sizes.items())
        ms = self.latency
        lines += [
            f"exported run {self.source.run_id} ({self.source.model_uri}), input width {self.width}",
            f"wrote {self.folder}/ with {os.path.basename(self.tflite)} inside ({sizes})",
            f"verified: max |difference| to the outputs training recorded {self.max_difference:.2e} (limit {TOLERANCE:g})",
            f"latency, one thread, median: TFLite {ms['tflite_batch1_ms']:.3f} ms at batch 1, "
            f"{ms['tflite_batch256_ms']:.2f} ms at batch 256; SavedModel called from Python {ms['savedmodel_batch1_ms']:.2f} ms "
            f"at batch 1 (an empty model costs {ms['savedmodel_floor_ms']:.2f} ms there)",
            self.java.line(ms),
        ]
        tflite_mb = self.sizes[os.path.basename(self.tflite)] / 2**20
        if ms["tflite_batch1_ms"] > LATENCY_BUDGET_MS or tflite_mb > SIZE_BUDGET_MB:
            lines.append(f"warning: over the game's budget ({LATENCY_BUDGET_MS} ms at batch 1, {SIZE_BUDGET_MB:g} MB): "
                         f"{ms['tflite_batch1_ms']:.3f} ms, {tflite_mb:.1f} MB; the game scores every path of every unit")
        return lines + [f"for MegaMek: copy {self.folder}/ to data/ai/brains/{os.path.basename(self.folder)}/"]


def export(ref: str, output: str = "exports", experiment_name: str | None = None, say=None) -> Exported:
    """The model `ref` names, written to output/<run name>/ in every format and verified.

    Args:
        ref: a run name, run id, models:/NAME/VERSION, models:/NAME@ALIAS or models:/m-… URI.
        output: the folder NAME/ is written into (replaced whole, only if it is an earlier export).
        experiment_name: look for a run name in this experiment only.
        say: called with a line as each step starts (or None).

    Returns:
        The Exported.

    Raises:
        UserError: no such model, a run that failed or is unfinished, an output that is not an
            export, or a written model whose outputs differ from training's (ExportError).
    """
    import mlflow
    import pyarrow.fs as pafs

    say = say or (lambda line: None)
    tracking.configure()
    source = find_model(ref, experiment_name)  # an unknown run is reported before TensorFlow loads
    say(f"export: run {source.run_id} ({source.name}); loading its model")
    import tensorflow as tf

    try:  # latency as one game thread sees it (not possible once TensorFlow has run in this process)
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass
    folder = os.path.join(output, source.name)
    tflite_name = f"{source.name}.tflite"
    with tempfile.TemporaryDirectory() as downloads:
        for artifact in (NORMALIZATION_FILE, TEST_INPUTS_FILE, "schema.json"):
            mlflow.artifacts.download_artifacts(run_id=source.run_id, artifact_path=artifact, dst_path=downloads)
        keras_model = keras_model_of(source.model_uri)
        with javamodel.classes() as classes:
            storage.check_owned(pafs.LocalFileSystem(), folder, folder, "an export", export_names(source.name),
                                "saved_model.pb")
            with storage.replacing(folder, "the export") as staging:  # verified before it replaces anything
                say("export: writing the SavedModel")
                keras_model.export(staging, format="tf_saved_model", verbose=False)
                for artifact in (NORMALIZATION_FILE, TEST_INPUTS_FILE, "schema.json"):
                    shutil.copy(os.path.join(downloads, artifact), staging)
                with open(os.path.join(staging, "schema.json")) as handle:
                    schema = json.load(handle)
                _write_readme(os.path.join(staging, "README.md"), source.name, schema)
                say("export: converting it to TFLite")
                with open(os.path.join(staging, tflite_name), "wb") as handle:
                    handle.write(_to_tflite(staging))
                say("export: checking the SavedModel and TFLite outputs against training's")
                difference = verify(keras_model, staging, os.path.join(staging, tflite_name), schema["width"])
                say("export: writing the Java model" + (" and checking it in Java" if classes else ""))
                java = write_java(keras_model, staging, schema["version"], classes)
            tflite_path = os.path.join(folder, tflite_name)
            say("export: measuring the latency of each format")
            latency = measure_latency(folder, tflite_path, schema["width"])
            if java.verified:
                latency |= javamodel.latency(folder, classes)
    sizes = {name: os.path.getsize(os.path.join(folder, name)) for name in (tflite_name, javamodel.MODEL_FILE)
             if os.path.exists(os.path.join(folder, name))}
    sizes["SavedModel"] = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs
                              if f == "saved_model.pb" or os.path.basename(d) == "variables")
    # through the client, not start_run: reopening the run would end it FINISHED, whatever it was
    say("export: logging the export to the run in MLflow")
    client = mlflow.MlflowClient()
    client.log_artifacts(source.run_id, folder, artifact_path=f"export/{source.name}")
    client.set_tag(source.run_id, "caspar.java", java.status if java.written else f"none: {java.note}")
    figures = ({f"export_{k}": v for k, v in latency.items()}
               | {f"export_{name.replace('.', '_').lower()}_mb": size / 2**20 for name, size in sizes.items()
                  if name != tflite_name}
               | {"export_tflite_mb": sizes[tflite_name] / 2**20})
    for key, value in figures.items():
        client.log_metric(source.run_id, key, value)
    return Exported(source, tflite_path, folder, difference, schema["width"], sizes, latency, java)


def export_names(name: str) -> set[str]:
    """What an export folder holds (an older export without the owner marker is recognised by it).

    Args:
        name: the export's name (its run's).

    Returns:
        The names of its top-level entries.
    """
    return {"saved_model.pb", "variables", "assets", "fingerprint.pb", f"{name}.tflite", NORMALIZATION_FILE,
            TEST_INPUTS_FILE, "schema.json", "README.md", javamodel.MODEL_FILE, JAVA_FOLDER,
            "CasparModel.java"}  # (where exports before the Java package kept the Java model)


def write_java(keras_model, staging: str, feature_set: str, classes: str | None) -> JavaModel:
    """model.caspar and the Java package beside the other formats, and the Java model run by the JDK
    on test_inputs.csv: an output more than TOLERANCE from what training recorded fails the export.
    A model the Java format cannot express gets no Java files (one line says why); without a JDK
    the files are written, unverified.

    Args:
        keras_model: the model that ships.
        staging: the export's folder being written.
        feature_set: the schema's version, written into model.caspar.
        classes: the compiled Java package (None: no JDK).

    Returns:
        The JavaModel: written, verified, its largest difference, or why not.

    Raises:
        ExportError: the Java model's outputs differ from training's by more than TOLERANCE.
    """
    try:
        javamodel.write(keras_model, os.path.join(staging, javamodel.MODEL_FILE), feature_set)
    except javamodel.UnsupportedModel as error:
        return JavaModel(False, False, note=f"not written: {error}")
    shutil.copytree(os.path.join(javamodel.SOURCES, javamodel.PACKAGE), os.path.join(staging, JAVA_FOLDER, javamodel.PACKAGE))
    if classes is None:
        return JavaModel(True, False, note="written, not verified: no JDK (javac and java) on this machine")
    _, recorded = read_test_inputs(os.path.join(staging, TEST_INPUTS_FILE))
    outputs = javamodel.predict(staging, os.path.join(staging, TEST_INPUTS_FILE), classes)
    difference = float(np.max(np.abs(outputs - recorded))) if len(outputs) == len(recorded) else np.inf
    if not difference <= TOLERANCE:
        raise ExportError(f"verification failed: the Java model differs from the outputs training recorded by "
                          f"{difference:.2e} (limit {TOLERANCE:g})")
    return JavaModel(True, True, difference)


def measure_latency(saved_model: str, tflite_path: str, width: int) -> dict[str, float]:
    """Median milliseconds per call on one thread: the TFLite model at batch 1 and 256, the
    SavedModel's signature at batch 1, and an empty SavedModel's signature (Python's own cost of
    calling one, which the model's time includes).

    Args:
        saved_model: the SavedModel's folder.
        tflite_path: the TFLite file.
        width: the model's inputs.

    Returns:
        {figure: milliseconds}: tflite_batch1_ms, tflite_batch256_ms, savedmodel_batch1_ms, empty_signature_ms.
    """
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    rows = np.random.default_rng(0).random((256, width), dtype=np.float32)
    figures = {}
    for batch in (1, 256):
        interpreter = Interpreter(model_path=tflite_path, num_threads=1)
        index = interpreter.get_input_details()[0]["index"]
        interpreter.resize_tensor_input(index, [batch, width])
        interpreter.allocate_tensors()
        interpreter.set_tensor(index, rows[:batch])
        figures[f"tflite_batch{batch}_ms"] = _median_ms(interpreter.invoke, LATENCY_CALLS if batch == 1 else 50)
    serving = tf.saved_model.load(saved_model).signatures["serving_default"]
    # by its input's name, as a served model is called: a positional call costs TensorFlow a
    # printout of the tensor (about 3 ms here), which would be most of what is measured
    one = {next(iter(serving.structured_input_signature[1])): tf.constant(rows[:1])}
    figures["savedmodel_batch1_ms"] = _median_ms(lambda: serving(**one), LATENCY_CALLS)
    with tempfile.TemporaryDirectory() as empty:
        module = tf.Module()
        module.serve = tf.function(lambda x: {"output_0": x[:, :1]}, input_signature=[tf.TensorSpec([None, width], tf.float32)])
        tf.saved_model.save(module, empty, signatures={"serving_default": module.serve})
        floor = tf.saved_model.load(empty).signatures["serving_default"]
        empty_input = {next(iter(floor.structured_input_signature[1])): next(iter(one.values()))}
        figures["savedmodel_floor_ms"] = _median_ms(lambda: floor(**empty_input), LATENCY_CALLS)
    return figures


def _median_ms(call, times: int) -> float:
    import time

    for _ in range(5):  # warm-up
        call()
    durations = []
    for _ in range(times):
        started = time.perf_counter()
        call()
        durations.append(time.perf_counter() - started)
    return 1000 * float(np.median(durations))


def _to_tflite(saved_model: str) -> bytes:
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_saved_model(saved_model).convert()


def verify(keras_model, saved_model: str, tflite_path: str, width: int) -> float:
    """Feed the test rows, normalised as the game does, through the Keras model and every written
    model, and compare each with the outputs training recorded for those rows (the last column of
    test_inputs.csv).

    Args:
        keras_model: the model loaded from the run.
        saved_model: the export's folder (SavedModel, test_inputs.csv, normalisation).
        tflite_path: the TFLite file.
        width: the model's inputs.

    Returns:
        The largest difference.

    Raises:
        ExportError: a difference above TOLERANCE, or test rows of another width.
    """
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    raw, recorded = read_test_inputs(os.path.join(saved_model, TEST_INPUTS_FILE))
    normalizer = Normalizer.read_csv(os.path.join(saved_model, NORMALIZATION_FILE))
    if raw.shape[1] != width or len(normalizer.minimum) != width:
        raise ExportError(f"input width mismatch: schema {width}, test rows {raw.shape[1]}, "
                          f"normalisation {len(normalizer.minimum)}")
    x = normalizer.transform(raw)
    serving = tf.saved_model.load(saved_model).signatures["serving_default"]
    (saved_output,) = serving(tf.constant(x)).values()
    interpreter = Interpreter(model_path=tflite_path)
    input_detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(input_detail["index"], list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(input_detail["index"], x)
    interpreter.invoke()
    outputs = {"the Keras model loaded from MLflow": keras_model.predict(x, verbose=0),
               "the SavedModel": saved_output.numpy(),
               "the TFLite model": interpreter.get_tensor(interpreter.get_output_details()[0]["index"])}
    differences = {name: float(np.max(np.abs(output.reshape(-1) - recorded))) for name, output in outputs.items()}
    worst = max(differences, key=differences.get)
    if not differences[worst] <= TOLERANCE:
        raise ExportError(f"verification failed: {worst} differs from the outputs training recorded in {TEST_INPUTS_FILE} "
                          f"by {differences[worst]:.2e} (limit {TOLERANCE:g})")
    return differences[worst]


def _write_readme(path: str, name: str, schema: dict) -> None:
    with open(path, "w") as handle:
        handle.write(f"""# CASPAR model `{name}`

Copy this folder into your MegaMek install as `data/ai/brains/{name}/`.

* `model.caspar`, `java/caspar/`: the model and the features in plain Java (JDK 17, no dependency;
  package `caspar`: `CasparModel`, `CasparFeatures`, and `CasparTool`, the command line):
  `CasparModel.load(Path.of("data/ai/brains/{name}")).predict(CasparFeatures.compute(...))` takes the
  **raw** feature values and normalises them itself. From a shell, in this folder:
  `javac -d classes java/caspar/*.java && java -cp classes caspar.CasparTool predict . < test_inputs.csv`
  prints one prediction per row.

* `{name}.tflite`: the same model for TensorFlow Lite (LiteRT).
* `saved_model.pb`, `variables/`: TensorFlow SavedModel, signature `serving_default`, float32 input
  `[batch, {schema['width']}]`, output `[batch, 1]` (the predicted reward of a move, 0 to 1).
* `min_max_feature_normalization.csv`: each feature's range in the training rows. The Java model
  applies it itself; the SavedModel and the TFLite file take inputs already scaled as
  `clamp((x - min) / (max - min), 0, 1)`, and 0 where `max = min` (a feature constant in training).
* `schema.json`: feature set `{schema['version']}`. The game's feature code must produce the
  {schema['width']} features in exactly this order.
* `test_inputs.csv`: raw feature rows and the output the model must give for each.
""")

"""The model as MLflow logs and registers it: a python_function model that takes **raw** feature rows
(the 354 columns of schema.json, by name) and returns the predicted reward of each.

It holds the Keras model (`model.keras`), the normalisation (`min_max_feature_normalization.csv`)
and the code that reads them (this package, shipped as the model's code), so that
`mlflow.pyfunc.load_model("models:/CASPAR/1")`, `mlflow models serve` and batch scoring work
anywhere MLflow does, without the project installed and without normalising by hand.
"""
from __future__ import annotations

import os
import shutil
import tempfile

import mlflow.pyfunc
import numpy as np
import pandas as pd

from caspar.model.normalization import Normalizer

KERAS_FILE = "model.keras"
NORMALIZATION = "min_max_feature_normalization.csv"
PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # caspar/, shipped as the model's code


class CasparModel(mlflow.pyfunc.PythonModel):
    """Raw rows in, predictions out: the normalisation (float64, as everywhere), then the Keras model."""

    def load_context(self, context) -> None:
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        import keras

        import caspar.model.layers  # noqa: F401  (registers the custom layers before the model is read)

        self.keras_model = keras.saving.load_model(context.artifacts["keras_model"], compile=False)
        self.normalizer = Normalizer.read_csv(context.artifacts["normalization"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        rows = np.asarray(model_input, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] != len(self.normalizer.minimum):
            raise MlflowException(f"expected rows of {len(self.normalizer.minimum)} raw feature values, got shape "
                                  f"{rows.shape}", INVALID_PARAMETER_VALUE)
        if not len(rows):
            return np.zeros(0, np.float64)
        bad = np.argwhere(~np.isfinite(rows))
        if len(bad):  # a missing value would become a silent 0 (clamped) or NaN: refused, named (over REST: a 400)
            row, column = bad[0]
            name = model_input.columns[column] if hasattr(model_input, "columns") else f"column {column}"
            raise MlflowException(f"row {row}: {name} is {rows[row, column]}; the model takes finite raw values "
                                  f"({len(np.unique(bad[:, 0]))} rows have a missing or infinite value)",
                                  INVALID_PARAMETER_VALUE)
        scaled = self.normalizer.transform(rows)
        return self.keras_model.predict(scaled, batch_size=4096, verbose=0).reshape(-1).astype(np.float64)


def log_model(keras_model, normalizer: Normalizer, signature, input_example: pd.DataFrame, pip_requirements: list[str]):
    """Logs the model in the active run as `model` (MLflow checks it answers `input_example`, raw rows
    by feature name).

    Args:
        keras_model: the model that ships.
        normalizer: its inputs' normalisation (the MLflow model takes raw rows).
        signature: MLflow's signature of raw rows by feature name.
        input_example: two raw rows.
        pip_requirements: what loading the model needs.

    Returns:
        MLflow's ModelInfo.
    """
    with tempfile.TemporaryDirectory() as folder:
        keras_path = os.path.join(folder, KERAS_FILE)
        keras_model.save(keras_path)
        normalization = os.path.join(folder, NORMALIZATION)
        normalizer.write_csv(normalization)
        code = os.path.join(folder, "code", "caspar")  # the package without caches
        shutil.copytree(PACKAGE, code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        return mlflow.pyfunc.log_model(name="model", python_model=CasparModel(), code_paths=[code], signature=signature,
                                       input_example=input_example, pip_requirements=pip_requirements,
                                       artifacts={"keras_model": keras_path, "normalization": normalization})


def keras_model_of(model_uri: str):
    """The Keras model inside a logged model, read from its files (never by unpickling the logged
    class, which would tie an export to the module layout of the code that logged it); the Keras
    flavour of older runs too.

    Args:
        model_uri: a logged model (runs:/…, models:/…).

    Returns:
        The Keras model.
    """
    import keras
    import mlflow.artifacts
    from mlflow.models import Model

    import caspar.model.layers  # noqa: F401  (registers the custom layers)

    folder = mlflow.artifacts.download_artifacts(artifact_uri=model_uri)
    flavors = Model.load(os.path.join(folder, "MLmodel")).flavors
    if "keras" in flavors:
        from mlflow import keras as keras_flavour

        return keras_flavour.load_model(model_uri)
    path = flavors["python_function"]["artifacts"]["keras_model"]["path"]
    return keras.saving.load_model(os.path.join(folder, path), compile=False)

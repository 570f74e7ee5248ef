"""The files a run leaves in MLflow beside its model, the contract between training (which writes
them), the registry (which finds a run's model by them) and the export (which reads them)."""
from __future__ import annotations

import csv

import numpy as np

NORMALIZATION_FILE = "min_max_feature_normalization.csv"  # the game's normalisation (caspar.model.network.Normalizer)
TEST_INPUTS_FILE = "test_inputs.csv"  # raw test rows and the output the shipped model gave each
SCHEMA_FILE = "schema.json"  # the feature set the model reads
MANIFEST_FILE = "manifest.json"  # the dataset's input files
FEATURE_PROFILE_FILE = "feature_profile.json"  # the fitted rows' range and bins, for jobs/drift.py (caspar.training.drift)
MODEL_FOLDER = "model"  # the Keras model as MLflow logged it
# Written last of the files beside the model, after the model: a run that has it has a model.
MODEL_MARKER = NORMALIZATION_FILE


def has_model(client, run_id: str) -> bool:
    """Whether a run logged a model (runs that failed before it did have none).

    Args:
        client: an MlflowClient.
        run_id: the run.

    Returns:
        True if its artefacts hold the model marker.
    """
    return any(a.path == MODEL_MARKER for a in client.list_artifacts(run_id))


def write_test_inputs(path: str, raw_features: np.ndarray, expected: np.ndarray, columns: list[str] | None = None) -> None:
    """Writes test rows as the game sees them before normalising, and the model's output (test_inputs.csv).

    Args:
        path: the CSV file to write.
        raw_features: [rows, features] raw values.
        expected: [rows] the model's outputs, the last column ("expected").
        columns: the features' names (schema.json's, as the MLflow model takes them); f0, f1, … if None.
    """
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(list(columns or [f"f{i}" for i in range(raw_features.shape[1])]) + ["expected"])
        for features, output in zip(raw_features.tolist(), expected.tolist()):
            writer.writerow([repr(v) for v in features] + [repr(output)])


def read_test_inputs(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads what write_test_inputs wrote.

    Args:
        path: a test_inputs.csv.

    Returns:
        (raw features [rows, features], expected outputs [rows]).
    """
    rows = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    return rows[:, :-1], rows[:, -1]

"""The one scaling contract of a model's inputs, shared by training, the exports, the MLflow model
and the Java model (numpy and the standard library only: the MLflow model ships it)."""
from __future__ import annotations

import csv
from dataclasses import dataclass

import numpy as np


@dataclass
class Normalizer:
    """Per-feature min-max scaling, the one contract the Java model, the exports and training share:
    value = clamp((x - min) / (max - min), 0, 1) over the range of the rows it was fitted on, and 0
    where max = min. A feature constant in those rows is 0 whatever its value, so a value the model
    never saw vary (a newer logger's column, a game-side difference) cannot move a prediction."""
    minimum: np.ndarray
    maximum: np.ndarray

    @classmethod
    def fit(cls, features: np.ndarray) -> Normalizer:
        """The ranges of the rows a model is fitted on.

        Args:
            features: [rows, features] raw values.

        Returns:
            The Normalizer of their per-feature minimum and maximum (float32, [features] each).
        """
        return cls(features.min(axis=0).astype(np.float32), features.max(axis=0).astype(np.float32))

    def transform(self, features: np.ndarray) -> np.ndarray:
        """Scales raw values, in float64 as the Java model does, then float32 for the network.

        Args:
            features: [rows, features] raw values.

        Returns:
            [rows, features] float32 in [0, 1].
        """
        low, high = self.minimum.astype(np.float64), self.maximum.astype(np.float64)
        varies = high > low
        scaled = (features.astype(np.float64) - low) / np.where(varies, high - low, 1.0)
        return np.where(varies, np.clip(scaled, 0.0, 1.0), 0.0).astype(np.float32)

    def write_csv(self, path: str) -> None:
        """Writes the file the game reads: header `feature,min,max`, then `index,min,max` per feature.

        Args:
            path: the file to write (min_max_feature_normalization.csv in an export).
        """
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["feature", "min", "max"])
            for index, (low, high) in enumerate(zip(self.minimum.tolist(), self.maximum.tolist())):
                writer.writerow([index, repr(low), repr(high)])  # exact: the float32 values as decimals

    @classmethod
    def read_csv(cls, path: str) -> Normalizer:
        """Reads what write_csv wrote.

        Args:
            path: a min_max_feature_normalization.csv.

        Returns:
            The Normalizer it holds.
        """
        with open(path, newline="") as handle:
            rows = list(csv.reader(handle))[1:]
        return cls(np.array([float(r[1]) for r in rows], np.float32), np.array([float(r[2]) for r in rows], np.float32))

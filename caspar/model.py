"""The network: MegaMek's input normalisation and a Keras MLP with one sigmoid output."""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

NORMALIZATION_FILE = "min_max_feature_normalization.csv"


@dataclass
class Normalizer:
    """Per-feature min-max scaling exactly as the game applies it:
    value = clamp((x - min) / (max - min), 0, 1), with max = min + 1 for a constant feature."""
    minimum: np.ndarray
    maximum: np.ndarray

    @classmethod
    def fit(cls, features: np.ndarray) -> Normalizer:
        low = features.min(axis=0).astype(np.float32)
        high = features.max(axis=0).astype(np.float32)
        return cls(low, np.where(high > low, high, low + 1).astype(np.float32))

    def transform(self, features: np.ndarray) -> np.ndarray:
        """In float64, as the game does, then float32 for the network."""
        low, high = self.minimum.astype(np.float64), self.maximum.astype(np.float64)
        scaled = (features.astype(np.float64) - low) / (high - low)
        return np.clip(scaled, 0.0, 1.0).astype(np.float32)

    def write_csv(self, path: str) -> None:
        """The file the game reads: header `feature,min,max`, then `index,min,max` per feature."""
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["feature", "min", "max"])
            for index, (low, high) in enumerate(zip(self.minimum.tolist(), self.maximum.tolist())):
                writer.writerow([index, repr(low), repr(high)])  # exact: the float32 values as decimals

    @classmethod
    def read_csv(cls, path: str) -> Normalizer:
        with open(path, newline="") as handle:
            rows = list(csv.reader(handle))[1:]
        return cls(np.array([float(r[1]) for r in rows], np.float32), np.array([float(r[2]) for r in rows], np.float32))


def build_mlp(n_features: int, hidden_layers: list[int], dropout_rate: float, activation: str,
              encoding_bins: int = 0, train_inputs: np.ndarray | None = None,
              ensemble_size: int = 1, trees=None, seed: int = 0, periodic_frequencies: int = 0,
              ensemble_kind: str = "mini", ensemble_loss: str = "average"):
    """[Periodic (PLR) or piecewise-linear encoding of each input,] [k ensemble members: TabM-mini,
    one adapter on the inputs, or TabM, BatchEnsemble adapters in every hidden layer,] then dense
    -> batch norm -> dropout per hidden layer, then the output. Without trees, one sigmoid unit (rewards lie in
    [0, 1]). With `trees` (a TreeEnsemble layer), the network learns a correction to the trees'
    prediction: its last layer starts at zero, so training starts from the trees' own model, and
    the sum is clipped to [0, 1] for the game (while training it is not: a gradient everywhere)."""
    import keras

    from caspar.layers import (
        BatchEnsembleDense,
        ClipForInference,
        EnsembleAdapter,
        EnsembleHeads,
        PeriodicEmbedding,
        PiecewiseLinearEncoding,
    )

    inputs = keras.Input(shape=(n_features,), name="features")
    x = inputs
    if periodic_frequencies:
        x = PeriodicEmbedding(periodic_frequencies)(x)
    elif encoding_bins:
        x = PiecewiseLinearEncoding.from_inputs(train_inputs, encoding_bins)(x)
    if ensemble_size > 1:
        x = EnsembleAdapter(ensemble_size, seed=seed)(x)
    full = ensemble_size > 1 and ensemble_kind == "full"
    for units in hidden_layers:
        x = (BatchEnsembleDense if full else keras.layers.Dense)(units, activation=activation)(x)
        x = keras.layers.BatchNormalization()(x)
        if dropout_rate > 0:
            x = keras.layers.Dropout(dropout_rate)(x)
    initializer = "zeros" if trees is not None else "glorot_uniform"
    if ensemble_size > 1:
        x = EnsembleHeads(kernel_initializer=initializer, member_losses=ensemble_loss == "members")(x)
    else:
        x = keras.layers.Dense(1, kernel_initializer=initializer)(x)
    if trees is None:
        outputs = keras.layers.Activation("sigmoid", name="reward")(x)
    else:
        outputs = ClipForInference(name="reward")(keras.layers.Add()([trees(inputs), x]))
    return keras.Model(inputs, outputs, name="caspar_mlp")


TREE_LEARNING_RATE = 0.03  # the baseline's defaults: 0.1 and 20; these fit the validation split better (R² 0.9111 vs 0.9087)
TREE_MIN_SAMPLES_LEAF = 10


def fit_trees(x_train: np.ndarray, y_train: np.ndarray, count: int, seed: int):
    """`count` gradient-boosted trees (scikit-learn's HistGradientBoostingRegressor, as the GBDT
    baseline, with a smaller learning rate and smaller leaves) as a TreeEnsemble layer."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    from caspar.layers import TreeEnsemble

    trees = HistGradientBoostingRegressor(max_iter=count, learning_rate=TREE_LEARNING_RATE, early_stopping=False,
                                          min_samples_leaf=TREE_MIN_SAMPLES_LEAF, random_state=seed)
    return TreeEnsemble.from_sklearn(trees.fit(x_train, y_train))


def make_optimizer(name: str, learning_rate, weight_decay: float = 0.0):
    """learning_rate: a number or a Keras schedule."""
    import keras

    decay = weight_decay or None  # Keras applies any weight decay decoupled (AdamW's), for every optimizer
    if name == "sgd":  # the seed's choice
        return keras.optimizers.SGD(learning_rate, momentum=0.9, nesterov=True, weight_decay=decay)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate, weight_decay=decay)
    if name == "adamw":  # AdamW needs a number: 0 is no decay
        return keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r} (sgd, adam, adamw)")


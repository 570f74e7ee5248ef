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


def build_mlp(hp, train_inputs: np.ndarray, trees=None):
    """The network of these Hyperparameters for inputs like `train_inputs` (normalised; the
    piecewise-linear encoding takes its bins from them):
    [periodic (PLR) or piecewise-linear encoding of each input,] [k ensemble members: TabM-mini,
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

    inputs = keras.Input(shape=(train_inputs.shape[1],), name="features")
    x = inputs
    if hp.periodic_frequencies:
        x = PeriodicEmbedding(hp.periodic_frequencies, hp.periodic_dimension, hp.periodic_sigma)(x)
    elif hp.encoding_bins:
        x = PiecewiseLinearEncoding.from_inputs(train_inputs, hp.encoding_bins)(x)
    if hp.ensemble_size > 1:
        x = EnsembleAdapter(hp.ensemble_size, seed=hp.seed)(x)
    full = hp.ensemble_size > 1 and hp.ensemble_kind == "full"
    for units in hp.hidden_layers:
        x = (BatchEnsembleDense if full else keras.layers.Dense)(units, activation=hp.activation)(x)
        x = keras.layers.BatchNormalization()(x)
        if hp.dropout_rate > 0:
            x = keras.layers.Dropout(hp.dropout_rate)(x)
    initializer = "zeros" if trees is not None else "glorot_uniform"
    if hp.ensemble_size > 1:
        x = EnsembleHeads(kernel_initializer=initializer, member_losses=hp.ensemble_loss == "members")(x)
    else:
        x = keras.layers.Dense(1, kernel_initializer=initializer)(x)
    if trees is None:
        outputs = keras.layers.Activation("sigmoid", name="reward")(x)
    else:
        outputs = ClipForInference(name="reward")(keras.layers.Add()([trees(inputs), x]))
    return keras.Model(inputs, outputs, name="caspar_mlp")


def fit_trees(x_train: np.ndarray, y_train: np.ndarray, hp):
    """hp.trees gradient-boosted trees (scikit-learn's HistGradientBoostingRegressor, as the GBDT
    baseline, with hp's learning rate and smallest leaf) as a TreeEnsemble layer."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    from caspar.layers import TreeEnsemble

    trees = HistGradientBoostingRegressor(max_iter=hp.trees, learning_rate=hp.tree_learning_rate, early_stopping=False,
                                          min_samples_leaf=hp.tree_min_leaf, random_state=hp.seed)
    return TreeEnsemble.from_sklearn(trees.fit(x_train, y_train))


def make_optimizer(name: str, learning_rate, weight_decay: float = 0.0):
    """learning_rate: a number or a Keras schedule."""
    import keras

    decay = weight_decay or None  # Keras applies any weight decay decoupled (AdamW's), for every optimizer
    if name == "sgd":  # the seed's choice
        return keras.optimizers.SGD(learning_rate, momentum=0.9, nesterov=True, weight_decay=decay)
    if name == "adam":  # with a weight decay, this is AdamW: keras.optimizers.AdamW only changes the default decay
        return keras.optimizers.Adam(learning_rate, weight_decay=decay)
    raise ValueError(f"unknown optimizer {name!r} (sgd, adam)")


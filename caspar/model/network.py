"""The model: a Keras network correcting the trees (or, without trees, ending in one sigmoid
unit), on inputs scaled by caspar.model.normalization."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from caspar.model.normalization import Normalizer  # noqa: F401  (the inputs' scaling, used with the model)

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")



@dataclass
class Network:
    """A model and what trains it. `model` takes the features and holds everything the game runs,
    trees included. `trainer` is the same layers (shared weights) taking the trees' prediction as a
    second input: the trees are fixed while the network trains, so their prediction is computed
    once per row (`inputs`) instead of in every epoch's every step. Without trees, both are one model."""
    model: object
    trainer: object
    trees: object = None  # the TreeEnsemble layer, if any

    def inputs(self, features: np.ndarray, tree_predictions: np.ndarray | None = None):
        """What `trainer` takes for these features.

        Args:
            features: [rows, features] normalised.
            tree_predictions: [rows, 1] the trees' predictions of those rows (computed here if None).

        Returns:
            The features alone (a network without trees), or (features, tree predictions).
        """
        if self.trees is None:
            return features
        if tree_predictions is None:
            tree_predictions = predict_trees(self.trees, features)
        return features, tree_predictions


def predict_trees(trees, features: np.ndarray, batch: int = 1024) -> np.ndarray:
    """The TreeEnsemble layer's own output for every row: exactly what the model computes inside
    (in batches: the layer's intermediate arrays grow with trees x nodes).

    Args:
        trees: a TreeEnsemble layer.
        features: [rows, features] normalised.
        batch: rows per call of the layer.

    Returns:
        [rows, 1] float32.
    """
    return np.concatenate([np.asarray(trees(features[i:i + batch])) for i in range(0, len(features), batch)]
                          or [np.zeros((0, 1), np.float32)])


def build_network(hp, train_inputs: np.ndarray, trees=None) -> Network:
    """The network of these Hyperparameters for inputs like `train_inputs` (normalised; the
    piecewise-linear encoding takes its bins from them):
    [periodic (PLR) or piecewise-linear encoding of each input,] [k ensemble members: TabM-mini,
    one adapter on the inputs, or TabM, BatchEnsemble adapters in every hidden layer,] then dense
    -> batch norm -> dropout per hidden layer, then the output. Without trees, one sigmoid unit (rewards lie in
    [0, 1]). With `trees` (a TreeEnsemble layer), the network learns a correction to the trees'
    prediction: its last layer starts at zero, so training starts from the trees' own model, and
    the sum is clipped to [0, 1] for the game (while training it is not: a gradient everywhere).

    Args:
        hp: Hyperparameters (the network's fields).
        train_inputs: [rows, features] normalised training inputs.
        trees: a TreeEnsemble layer, or None for a network alone.

    Returns:
        The Network: its trainer (what trains) and model (what ships).
    """
    import keras

    from caspar.model.layers import ClipForInference

    inputs = keras.Input(shape=(train_inputs.shape[1],), name="features")
    correction = correction_layers(hp, train_inputs, trees is not None)
    x = inputs
    for layer in correction:
        x = layer(x)
    if trees is None:
        model = keras.Model(inputs, keras.layers.Activation("sigmoid", name="reward")(x), name="caspar_mlp")
        return Network(model, model)
    add, clip = keras.layers.Add(), ClipForInference(name="reward")
    model = keras.Model(inputs, clip(add([trees(inputs), x])), name="caspar_mlp")
    tree_prediction = keras.Input(shape=(1,), name="tree_prediction")
    trainer = keras.Model([inputs, tree_prediction], clip(add([tree_prediction, x])), name="caspar_mlp_trainer")
    return Network(model, trainer, trees)


def correction_layers(hp, train_inputs: np.ndarray, zero_start: bool) -> list:
    """The layers from the features to the network's output before its activation.

    Args:
        hp: Hyperparameters (the network's fields).
        train_inputs: [rows, features] normalised training inputs (the encodings' bins).
        zero_start: the last layer starts at zero (a correction that starts as the trees alone).

    Returns:
        The Keras layers, in order.
    """
    import keras

    from caspar.model.layers import (
        BatchEnsembleDense,
        EnsembleAdapter,
        EnsembleHeads,
        PeriodicEmbedding,
        PiecewiseLinearEncoding,
    )

    layers = []
    if hp.periodic_frequencies:
        layers.append(PeriodicEmbedding(hp.periodic_frequencies, hp.periodic_dimension, hp.periodic_sigma))
    elif hp.encoding_bins:
        layers.append(PiecewiseLinearEncoding.from_inputs(train_inputs, hp.encoding_bins))
    if hp.ensemble_size > 1:
        layers.append(EnsembleAdapter(hp.ensemble_size, seed=hp.seed))
    full = hp.ensemble_size > 1 and hp.ensemble_kind == "full"
    for units in hp.hidden_layers:
        layers.append((BatchEnsembleDense if full else keras.layers.Dense)(units, activation=hp.activation))
        layers.append(keras.layers.BatchNormalization())
        if hp.dropout_rate > 0:
            layers.append(keras.layers.Dropout(hp.dropout_rate))
    initializer = "zeros" if zero_start else "glorot_uniform"
    if hp.ensemble_size > 1:
        layers.append(EnsembleHeads(kernel_initializer=initializer, member_losses=hp.ensemble_loss == "members"))
    else:
        layers.append(keras.layers.Dense(1, kernel_initializer=initializer))
    return layers


def fit_trees(x_train: np.ndarray, y_train: np.ndarray, hp):
    """hp's tree recipes fitted on these rows and averaged with equal weights, without
    cross-fitting: for tests and checks of the layer.

    Args:
        x_train: [rows, features] normalised.
        y_train: [rows] rewards.
        hp: Hyperparameters (the tree fields).

    Returns:
        A TreeEnsemble layer.
    """
    from caspar.model import trees
    from caspar.model.layers import TreeEnsemble

    fitted = [trees.node_tables(trees.fit(recipe, x_train, y_train)) for recipe in trees.recipes(hp)]
    return TreeEnsemble.from_node_tables([(tables, constant, 1 / len(fitted)) for tables, constant in fitted])


def trees_model(trees, width: int):
    """The model of the trees alone, its output clipped to [0, 1]: what ships when validation finds
    that no epoch of the network's correction beats the trees.

    Args:
        trees: a TreeEnsemble layer.
        width: the number of features.

    Returns:
        A Keras model: [rows, width] -> [rows, 1].
    """
    import keras

    from caspar.model.layers import ClipForInference

    inputs = keras.Input(shape=(width,), name="features")
    return keras.Model(inputs, ClipForInference(name="reward")(trees(inputs)), name="caspar_trees")


def make_optimizer(name: str, learning_rate, weight_decay: float = 0.0):
    """A Keras optimizer.

    Args:
        name: "sgd" (Nesterov momentum 0.9) or "adam" (AdamW with a weight decay).
        learning_rate: a number or a Keras schedule.
        weight_decay: decoupled weight decay (0: none).

    Returns:
        The optimizer.
    """
    import keras

    decay = weight_decay or None  # Keras applies any weight decay decoupled (AdamW's), for every optimizer
    if name == "sgd":  # the seed's choice
        return keras.optimizers.SGD(learning_rate, momentum=0.9, nesterov=True, weight_decay=decay)
    if name == "adam":  # with a weight decay, this is AdamW: keras.optimizers.AdamW only changes the default decay
        return keras.optimizers.Adam(learning_rate, weight_decay=decay)
    raise ValueError(f"unknown optimizer {name!r} (sgd, adam)")


def scale_correction(network: Network, factor: float) -> None:
    """Multiplies the network's correction (its output before the trees are added) by `factor`: the
    last layer of the correction is linear (Dense(1), or EnsembleHeads averaging linear heads), so
    scaling its weights and bias scales its output. A network with share w of an ensemble ships as
    the trees plus w x its correction.

    Args:
        network: the Network (its model is changed in place).
        factor: the scale, e.g. the network's share w.
    """
    head = [layer for layer in network.model.layers if type(layer).__name__ in ("Dense", "EnsembleHeads")][-1]
    head.set_weights([weight * factor for weight in head.get_weights()])

"""Custom Keras layers of the model (imported before a saved model is loaded)."""
import os

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from keras import ops  # noqa: E402


@keras.saving.register_keras_serializable(package="caspar")
class PiecewiseLinearEncoding(keras.layers.Layer):
    """Each input becomes one value per bin: how far it has gone through the bin, in [0, 1] (bin
    edges: distinct quantiles of the training inputs, so an input with few distinct values has few
    bins, a binary one a single bin). A small MLP can then draw the sharp thresholds that trees
    draw, which this data is full of. Constant inside the model: the game feeds the same
    min-max-normalised inputs as before. The bins of all inputs lie side by side, input after
    input: `bins_per_input` says how many each has."""

    def __init__(self, lower, width, bins_per_input, **kwargs):
        super().__init__(**kwargs)
        self.lower_values = np.asarray(lower, dtype=np.float32)
        self.width_values = np.asarray(width, dtype=np.float32)
        self.bins_per_input = [int(n) for n in bins_per_input]
        self.input_of_bin = np.repeat(np.arange(len(self.bins_per_input)), self.bins_per_input).astype(np.int32)

    @classmethod
    def from_inputs(cls, inputs: np.ndarray, bins: int) -> "PiecewiseLinearEncoding":
        """The encoding with each input's bins at its quantiles.

        Args:
            inputs: [rows, features] normalised training inputs.
            bins: bins per input at most (fewer where an input has fewer distinct quantiles).

        Returns:
            The layer.
        """
        lower, width, counts = [], [], []
        for column in inputs.T:
            edges = np.unique(np.quantile(column, np.linspace(0, 1, bins + 1)))
            if len(edges) < 2:  # a constant input: one bin, [0, 1]
                edges = np.array([0.0, 1.0])
            lower.append(edges[:-1])
            width.append(np.diff(edges))
            counts.append(len(edges) - 1)
        return cls(np.concatenate(lower), np.concatenate(width), counts)

    def build(self, input_shape):
        self.lower = self.add_weight(shape=self.lower_values.shape, trainable=False, name="lower",
                                     initializer=keras.initializers.Constant(self.lower_values))
        self.width = self.add_weight(shape=self.width_values.shape, trainable=False, name="width",
                                     initializer=keras.initializers.Constant(self.width_values))

    def call(self, inputs):
        tested = ops.take(inputs, self.input_of_bin, axis=1)  # [batch, bins]: each bin's input
        return ops.clip((tested - ops.reshape(self.lower, (-1,))) / ops.reshape(self.width, (-1,)), 0.0, 1.0)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], len(self.input_of_bin))

    def get_config(self):
        """The bins' counts only: the edges are weights, saved in binary with the model's weights."""
        return {**super().get_config(), "bins_per_input": self.bins_per_input}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        counts = config.pop("bins_per_input")
        return cls(np.zeros(sum(counts)), np.ones(sum(counts)), counts, **config)  # the saved weights replace them


@keras.saving.register_keras_serializable(package="caspar")
class ClipForInference(keras.layers.Layer):
    """The model's output for the game: clipped to [0, 1] (rewards lie there). While training, the
    value itself: a clip has no gradient outside [0, 1], and a model whose every prediction left
    that interval could never come back (it trained into a constant)."""

    def call(self, inputs, training=False):
        return inputs if training else ops.clip(inputs, 0.0, 1.0)


@keras.saving.register_keras_serializable(package="caspar")
class TreeEnsemble(keras.layers.Layer):
    """Gradient-boosted regression trees as standard tensor operations (the GEMM strategy of
    Microsoft's Hummingbird), so that they run inside the SavedModel and the TFLite file with no
    custom op. Per tree t, padded to I internal nodes and L leaves: the input value each node
    tests is gathered, compared with the node's threshold (goes left: 1), and a product with the
    path matrix C[t] (+1 where the leaf lies left of the node, -1 where right) equals the leaf's
    count of left turns D[t] exactly at the leaf the input reaches. Output: the sum of those
    leaves' values, per input row, shape [batch, 1]."""

    def __init__(self, features, thresholds, paths, left_turns, values, **kwargs):
        super().__init__(**kwargs)
        # the weights' initial values (zeros in a layer loaded from a saved model, which then restores the weights)
        self.arrays = {"features": np.asarray(features, np.int32), "thresholds": np.asarray(thresholds, np.float32),
                       "paths": np.asarray(paths, np.float32), "left_turns": np.asarray(left_turns, np.float32),
                       "values": np.asarray(values, np.float32)}

    @classmethod
    def from_sklearn(cls, model) -> "TreeEnsemble":
        """The layer of one fitted scikit-learn model.

        Args:
            model: a fitted HistGradientBoostingRegressor (numerical features, squared error).

        Returns:
            The layer, computing exactly the model's prediction.
        """
        from caspar.model.trees import node_tables

        trees, constant = node_tables(model)
        return cls.from_node_tables([(trees, constant, 1.0)])

    @classmethod
    def from_node_tables(cls, models: list[tuple[list, float, float]]) -> "TreeEnsemble":
        """The weighted sum of several tree models: every tree's leaves scaled by its model's
        weight, the weighted constants in the first tree's leaves.

        Args:
            models: each (its trees as node tables, its constant, its weight), as
                caspar.model.trees.node_tables gives a model's tables and constant.

        Returns:
            The layer: [rows, features] -> [rows, 1].
        """
        trees = [(nodes, weight) for tables, _, weight in models for nodes in tables]
        internal = max(1, max(int((~np.asarray(t["is_leaf"]).astype(bool)).sum()) for t, _ in trees))
        leaves = max(int(np.asarray(t["is_leaf"]).sum()) for t, _ in trees)
        n = len(trees)
        features = np.zeros((n, internal), np.int32)
        thresholds = np.full((n, internal), np.inf, np.float32)  # padding nodes always "go left"
        paths = np.zeros((n, internal, leaves), np.float32)
        left_turns = np.full((n, leaves), -1.0, np.float32)  # padding leaves are never reached
        values = np.zeros((n, leaves), np.float64)
        for t, (nodes, weight) in enumerate(trees):
            _compile_tree(nodes, features[t], thresholds[t], paths[t], left_turns[t], values[t])
            values[t] *= weight
        values[0] += sum(constant * weight for _, constant, weight in models)
        return cls(features, thresholds, paths, left_turns, values.astype(np.float32))

    def build(self, input_shape):
        self.weights_by_name = {
            name: self.add_weight(shape=array.shape, dtype="int32" if name == "features" else "float32",
                                  trainable=False, name=name, initializer=keras.initializers.Constant(array))
            for name, array in self.arrays.items()}

    def call(self, inputs):
        w = self.weights_by_name
        trees, internal = self.arrays["features"].shape
        tested = ops.take(inputs, ops.reshape(w["features"], (-1,)), axis=1)  # [batch, trees * internal]
        went_left = ops.cast(tested <= ops.reshape(w["thresholds"], (-1,)), "float32")
        went_left = ops.transpose(ops.reshape(went_left, (-1, trees, internal)), (1, 0, 2))  # [trees, batch, internal]
        reached = ops.cast(ops.equal(ops.matmul(went_left, w["paths"]), ops.expand_dims(w["left_turns"], 1)), "float32")
        return ops.expand_dims(ops.sum(reached * ops.expand_dims(w["values"], 1), axis=(0, 2)), -1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1)

    def get_config(self):
        """The arrays' shapes only: their values are weights, saved in binary with the model's weights
        (as JSON numbers in the config they made every checkpoint of a trial several times slower)."""
        trees, internal = self.arrays["features"].shape
        return {**super().get_config(), "trees": trees, "internal": internal, "leaves": self.arrays["values"].shape[1]}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        trees, internal, leaves = (config.pop(key) for key in ("trees", "internal", "leaves"))
        return cls(np.zeros((trees, internal)), np.zeros((trees, internal)), np.zeros((trees, internal, leaves)),
                   np.zeros((trees, leaves)), np.zeros((trees, leaves)), **config)


def _compile_tree(nodes, features, thresholds, paths, left_turns, values) -> None:
    """Fill one tree's rows of the TreeEnsemble arrays from its node table (caspar.model.trees.node_tables)."""
    inner: dict[int, int] = {}
    leaves: dict[int, int] = {}

    def walk(node: int, path: list[tuple[int, bool]]) -> None:
        if nodes["is_leaf"][node]:
            index = leaves.setdefault(node, len(leaves))
            values[index] = nodes["value"][node]
            left_turns[index] = sum(1 for _, went_left in path if went_left)
            for parent, went_left in path:
                paths[parent, index] = 1.0 if went_left else -1.0
            return
        index = inner.setdefault(node, len(inner))
        features[index] = nodes["feature_idx"][node]
        thresholds[index] = _float32_at_most(nodes["num_threshold"][node])
        walk(nodes["left"][node], path + [(index, True)])
        walk(nodes["right"][node], path + [(index, False)])

    walk(0, [])


def _float32_at_most(threshold: float) -> np.float32:
    """The largest float32 not above a float64 threshold: for float32 inputs x, x <= it exactly when
    x <= the threshold (rounding to the nearest float32 could send a row the other way)."""
    rounded = np.float32(threshold)
    return np.nextafter(rounded, np.float32(-np.inf)) if rounded > threshold else rounded


@keras.saving.register_keras_serializable(package="caspar")
class EnsembleAdapter(keras.layers.Layer):
    """TabM-mini (Gorishniy et al., ICLR 2025): k copies of the input, each scaled by its member's
    own vector r_k (initialised to random signs), so that the shared layers after it train k
    different members at once. [batch, d] -> [batch, k, d]."""

    def __init__(self, members: int, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.members, self.seed = members, seed

    def build(self, input_shape):
        signs = np.where(np.random.default_rng(self.seed).random((self.members, input_shape[-1])) < 0.5, -1.0, 1.0)
        self.scale = self.add_weight(shape=signs.shape, name="scale", initializer=keras.initializers.Constant(signs))

    def call(self, inputs):
        return ops.expand_dims(inputs, 1) * self.scale

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.members, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "members": self.members, "seed": self.seed}


@keras.saving.register_keras_serializable(package="caspar")
class EnsembleHeads(keras.layers.Layer):
    """One linear output per ensemble member, averaged: [batch, k, d] -> [batch, 1]. With
    `member_losses`, training minimises the mean of the members' own losses, as TabM does, instead
    of the loss of their average."""

    def __init__(self, kernel_initializer="glorot_uniform", member_losses: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.member_losses = member_losses

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[1], input_shape[2]), name="kernel",
                                      initializer=self.kernel_initializer)
        self.bias = self.add_weight(shape=(input_shape[1],), name="bias", initializer="zeros")

    def call(self, inputs, training=False):
        members = ops.sum(inputs * self.kernel, axis=-1) + self.bias  # [batch, k]
        mean = ops.mean(members, axis=-1, keepdims=True)
        if training and self.member_losses:
            # mean_k (y - p_k)^2 = (y - mean)^2 + mean_k (p_k - mean)^2: the members' spread, added to
            # the loss of their average, makes it the mean of their own losses.
            self.add_loss(ops.mean(ops.square(members - mean)))
        return mean

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1)

    def get_config(self):
        return {**super().get_config(), "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "member_losses": self.member_losses}


@keras.saving.register_keras_serializable(package="caspar")
class PeriodicEmbedding(keras.layers.Layer):
    """PLR embeddings (Gorishniy et al. 2022, "On Embeddings for Numerical Features in Tabular Deep
    Learning"), the lite variant: each input x_j becomes cos and sin of 2π c_j x_j for k trainable
    frequencies c_j (initialised from N(0, sigma)), then one linear map shared by all inputs and a
    ReLU. [batch, F] -> [batch, F * dimension]."""

    def __init__(self, frequencies: int, dimension: int = 8, sigma: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.frequencies, self.dimension, self.sigma = frequencies, dimension, sigma

    def build(self, input_shape):
        self.coefficients = self.add_weight(shape=(input_shape[-1], self.frequencies), name="coefficients",
                                            initializer=keras.initializers.RandomNormal(stddev=self.sigma))
        self.linear = keras.layers.Dense(self.dimension, activation="relu")
        self.linear.build((None, input_shape[-1], 2 * self.frequencies))

    def call(self, inputs):
        angles = 2 * np.pi * ops.expand_dims(inputs, -1) * self.coefficients
        embedded = self.linear(ops.concatenate([ops.cos(angles), ops.sin(angles)], axis=-1))
        return ops.reshape(embedded, (-1, embedded.shape[1] * self.dimension))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1] * self.dimension)

    def get_config(self):
        return {**super().get_config(), "frequencies": self.frequencies, "dimension": self.dimension, "sigma": self.sigma}


@keras.saving.register_keras_serializable(package="caspar")
class BatchEnsembleDense(keras.layers.Layer):
    """TabM's linear layer (BatchEnsemble): one weight matrix W shared by k members, each member
    scaling its inputs by r_k and its outputs by s_k and adding its own bias b_k:
    y_k = act(((x_k * r_k) W) * s_k + b_k). The adapters start at ones (TabM: all but the first,
    which is the EnsembleAdapter before the first layer). [batch, k, d] -> [batch, k, units]."""

    def __init__(self, units: int, activation=None, **kwargs):
        super().__init__(**kwargs)
        self.units, self.activation = units, keras.activations.get(activation)

    def build(self, input_shape):
        members, width = input_shape[1], input_shape[2]
        self.r = self.add_weight(shape=(members, width), name="r", initializer="ones")
        self.kernel = self.add_weight(shape=(width, self.units), name="kernel", initializer="glorot_uniform")
        self.s = self.add_weight(shape=(members, self.units), name="s", initializer="ones")
        self.bias = self.add_weight(shape=(members, self.units), name="bias", initializer="zeros")

    def call(self, inputs):
        return self.activation(ops.matmul(inputs * self.r, self.kernel) * self.s + self.bias)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1], self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "activation": keras.activations.serialize(self.activation)}

"""Custom Keras layers of the model (imported before a saved model is loaded)."""
import os

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from keras import ops  # noqa: E402


@keras.saving.register_keras_serializable(package="caspar")
class PiecewiseLinearEncoding(keras.layers.Layer):
    """Each input becomes `bins` values: how far it has gone through each of its bins, in [0, 1]
    (bin edges: quantiles of the training inputs). A small MLP can then draw the sharp thresholds
    that trees draw, which this data is full of. Constant inside the model: the game feeds the
    same min-max-normalised inputs as before."""

    def __init__(self, lower, width, **kwargs):
        super().__init__(**kwargs)
        self.lower_values = np.asarray(lower, dtype=np.float32)
        self.width_values = np.asarray(width, dtype=np.float32)

    @classmethod
    def from_inputs(cls, inputs: np.ndarray, bins: int) -> "PiecewiseLinearEncoding":
        features = inputs.shape[1]
        lower = np.full((features, bins), 2.0, np.float32)  # unused bins start above every input: always 0
        width = np.ones((features, bins), np.float32)
        for j in range(features):
            edges = np.unique(np.quantile(inputs[:, j], np.linspace(0, 1, bins + 1)))
            if len(edges) < 2:
                edges = np.array([0.0, 1.0])
            lower[j, :len(edges) - 1] = edges[:-1]
            width[j, :len(edges) - 1] = np.diff(edges)
        return cls(lower, width)

    def build(self, input_shape):
        self.lower = self.add_weight(shape=self.lower_values.shape, trainable=False, name="lower",
                                     initializer=keras.initializers.Constant(self.lower_values))
        self.width = self.add_weight(shape=self.width_values.shape, trainable=False, name="width",
                                     initializer=keras.initializers.Constant(self.width_values))

    def call(self, inputs):
        encoded = ops.clip((ops.expand_dims(inputs, -1) - self.lower) / self.width, 0.0, 1.0)
        return ops.reshape(encoded, (-1, int(np.prod(self.lower_values.shape))))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], int(np.prod(self.lower_values.shape)))

    def get_config(self):
        return {**super().get_config(), "lower": self.lower_values.tolist(), "width": self.width_values.tolist()}

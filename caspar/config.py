"""Defaults of training, in one place (the jobs and the library read them from here).

This module imports nothing heavy, so that a job can check its inputs before TensorFlow loads.
"""

TRAIN_DEFAULTS = {
    "hidden_layers": [128, 128],
    "dropout_rate": 0.3,
    "learning_rate": 1e-3,
    "batch_size": 128,
    "epochs": 200,
    "patience": 25,  # epochs without a better val_loss before stopping
    "activation": "relu",
    "encoding_bins": 16,  # piecewise-linear encoding of each input (0: feed the inputs as they are)
    "optimizer": "adam",
    "seed": 42,
    "data": "data/prepared",
    "experiment_name": "caspar",
    "run_name": None,
    "model_name": "CASPAR",
}
TRAINING_KEYS = ("hidden_layers", "dropout_rate", "learning_rate", "batch_size", "epochs", "patience",
                 "activation", "optimizer", "encoding_bins", "seed")
OPTIMIZERS = ("adam", "adamw", "sgd")
ACTIVATIONS = ("relu", "gelu", "swish", "elu", "tanh", "sigmoid")

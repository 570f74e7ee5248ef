"""Fitting one model: the normalisation and the trees of a stage (cross-fitted by game), then the
network correcting them, keeping the epoch with the best validation loss. Used by jobs/train.py
(caspar.training.train) and by every trial of a study (caspar.tuning.trial)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from caspar.config import FIT_ON, Hyperparameters
from caspar.errors import UserError
from caspar.model.crossfit import CrossFitted, cross_fit
from caspar.model.network import Network, Normalizer, build_network, make_optimizer, predict_trees
from caspar.model.trees import recipes

STEPS_PER_EXECUTION = 32
PREFETCH_BATCHES = 2


def tf_datasets(x_train, y_train, x_val, y_val, batch_size: int, seed: int):
    """Batches through tf.data with prefetching: no Python loop per batch. tf.data's autotuning is
    off: with two training processes on two cores it left each process idle a fifth of the time
    (measured: 0.78 CPU-s per wall-s each, 0.99 without it), and batching arrays in memory has
    nothing to tune.

    Args:
        x_train: [rows, features], or a tuple of arrays (a Network.trainer's inputs).
        y_train: [rows] rewards.
        x_val: the validation rows, as x_train.
        y_val: [validation rows] rewards.
        batch_size: training rows per batch (validation: 4,096).
        seed: the training rows' shuffle, reshuffled every epoch.

    Returns:
        (train, val) tf.data datasets of (inputs, reward) batches.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    train = (tf.data.Dataset.from_tensor_slices((x_train, y_train))
             .shuffle(len(y_train), seed=seed, reshuffle_each_iteration=True)
             .batch(batch_size).prefetch(PREFETCH_BATCHES).with_options(options))
    val = tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(4096).prefetch(PREFETCH_BATCHES).with_options(options)
    return train, val


def compiled_network(hp: Hyperparameters, x_train, trees=None) -> Network:
    """The network for these hyperparameters, its trainer compiled, its initial weights seeded.

    Args:
        hp: the network's hyperparameters.
        x_train: [rows, features] normalised training inputs (the piecewise encoding's bins).
        trees: a TreeEnsemble layer the network corrects (with hp.trees), or None.

    Returns:
        The Network, its trainer compiled with the optimizer and its variables built.
    """
    import keras

    keras.utils.set_random_seed(hp.seed)
    network = build_network(hp, x_train, trees if hp.trees else None)
    # Several steps per call into TensorFlow: small batches are otherwise bound by per-step overhead.
    optimizer = make_optimizer(hp.optimizer, learning_rate(hp, len(x_train)), hp.weight_decay)
    trainer = network.trainer
    # The metric and the optimizer's variables are created here, not while Keras traces the first
    # training and evaluation steps: a variable created there makes TensorFlow trace the step twice.
    trainer.compile(optimizer=optimizer, loss="mse", metrics=[keras.metrics.MeanAbsoluteError(name="mae")],
                    steps_per_execution=STEPS_PER_EXECUTION)
    trainer.optimizer.build(trainer.trainable_variables)
    return network


def learning_rate(hp: Hyperparameters, train_rows: int):
    """The optimizer's learning rate.

    Args:
        hp: the schedule's hyperparameters (learning_rate, lr_schedule, warmup_share, batch_size, epochs).
        train_rows: rows per epoch.

    Returns:
        A number (the plateau schedule changes it from a callback), or with lr_schedule "cosine" a
        Keras schedule: a linear warm-up over the first hp.warmup_share of all steps, then a cosine
        decay to 0 at the last epoch.
    """
    import keras

    if hp.lr_schedule != "cosine":
        return hp.learning_rate
    steps = math.ceil(train_rows / hp.batch_size) * hp.epochs
    warmup = max(1, int(hp.warmup_share * steps))
    return keras.optimizers.schedules.CosineDecay(0.0, decay_steps=max(1, steps - warmup), warmup_target=hp.learning_rate,
                                                  warmup_steps=warmup)


def schedule_callbacks(hp: Hyperparameters) -> list:
    """The callbacks of the learning rate's schedule.

    Args:
        hp: the schedule's hyperparameters.

    Returns:
        The plateau schedule's callback (cut the rate when val_loss stalls); none for cosine, which
        is the optimizer's own.
    """
    from caspar.model.callbacks import Plateau

    if hp.lr_schedule == "cosine":
        return []
    patience = hp.plateau_patience or max(2, hp.patience // 3)
    return [Plateau(monitor="val_loss", factor=hp.plateau_factor, patience=patience,
                    min_lr=hp.learning_rate * hp.plateau_floor)]


def validation_loss(trainer, val) -> float:
    """The loss of a network's trainer as it is on the validation batches.

    Args:
        trainer: a compiled Keras model.
        val: the validation dataset (tf_datasets).

    Returns:
        Its mean squared error there (before training: its trees' alone).
    """
    return float(trainer.evaluate(val, verbose=0, return_dict=True)["loss"])


@dataclass
class Stage:
    """What the networks of a run (or of a study's trials) are trained on: the normalisation, fitted
    on the rows the trees are fitted on, and the trees with their predictions on the train and
    validation rows, out of fold where the trees were fitted on those rows."""
    normalizer: Normalizer
    splits: tuple[str, ...]  # the rows the trees (and the normalisation) are fitted on
    crossed: CrossFitted | None = None
    layer: object = None  # the trees as a TreeEnsemble layer
    train_trees: np.ndarray | None = None  # [train rows, 1]
    val_trees: np.ndarray | None = None  # [validation rows, 1]
    val_games: np.ndarray | None = None  # the game of every validation row


def rows(splits: dict, names) -> tuple[np.ndarray, np.ndarray]:
    """The named splits' rows, concatenated.

    Args:
        splits: {name: (x [rows, features], y [rows])}.
        names: the splits wanted, in order.

    Returns:
        (x [rows, features], y [rows]).
    """
    return np.concatenate([splits[n][0] for n in names]), np.concatenate([splits[n][1] for n in names])


def fit_stage(hp: Hyperparameters, splits: dict, files: dict, fit_on: str, say=None, cpus_per_fit: int = 1,
              baselines: bool = False) -> Stage:
    """The normalisation and the trees for the shipped model's games: hp's tree recipes cross-fitted
    by game, every fit a Ray task of `cpus_per_fit` CPUs (a local Ray is started if none is running;
    small fits run in this process), weighted by ensemble selection on their out-of-fold predictions.

    Args:
        hp: the tree recipes' settings (trees 0: no trees).
        splits: {name: (x [rows, features] raw, y [rows])}.
        files: {name: [rows] the game of each row}.
        fit_on: "train" fits on the train split; "train+val" and "all" on train and validation (the
            test split never: "all" refits later, see caspar.training.train.release).
        say: called with progress lines (or None).
        cpus_per_fit: CPUs (threads) of each fit.
        baselines: also fit the GBDT and LightGBM baselines a run is scored against, with the
            trees (crossed.on_all_only); benchmarks that do not score them leave them out.

    Returns:
        The Stage: its normalisation, trees and their out-of-fold predictions of the train and
        validation rows.
    """
    from caspar.training.evaluate import baseline_recipes  # here: a trial imports this module, not matplotlib

    names = FIT_ON["train" if fit_on == "train" else "train+val"]
    x, y = rows(splits, names)
    normalizer = Normalizer.fit(x)
    if not hp.trees:
        return Stage(normalizer, names)
    groups = np.concatenate([files[n] for n in names])
    defaults = recipes(hp)
    if say:
        say(f"trees: {len(defaults)} recipes x {hp.tree_folds} folds by game on the {len(y):,} rows of "
            f"{len(np.unique(groups)):,} games ({'+'.join(names)}), {cpus_per_fit} CPU each, and each on all of them "
            "(kept where ensemble selection gives it a weight)"
            + ("; the GBDT and LightGBM baselines on all of them too" if baselines else ""))
    # the baselines the run is scored against, fitted on the same rows with the trees: the last of
    # the fits, they fill the CPUs the longer ones leave idle, not the driver's time after training
    crossed = cross_fit(defaults, normalizer.transform(x), y, groups, hp.tree_folds, hp.seed, say, cpus_per_fit,
                        on_all_only=baseline_recipes(hp.seed) if baselines else ())
    layer = crossed.layer()
    n_train = len(splits["train"][1])
    val_trees = (crossed.prediction[n_train:] if "val" in names
                 else predict_trees(layer, normalizer.transform(splits["val"][0])))
    return Stage(normalizer, names, crossed, layer, crossed.prediction[:n_train], val_trees, files["val"])


@dataclass(frozen=True)
class History:
    """A network's training and what validation chose of it.

    Attributes:
        losses: Keras's per-epoch figures by name ("loss", "val_loss", "learning_rate", ...), one
            value per epoch trained.
        best_epoch: the epoch whose weights ship; 0 is the untrained network, i.e. the trees alone.
        best_val_loss: the validation loss of what ships (None: not measured).
        untrained_val_loss: the validation loss at epoch 0 (the trees alone), None if not measured.
        network_best_epoch: the epoch validation chose before its gain was checked against the
            noise of the validation games (None: not checked).
        network_gain: that gain, game by game (caspar.training.evaluate.gain_by_game), or None.
    """
    losses: dict[str, list[float]]
    best_epoch: int
    best_val_loss: float | None = None
    untrained_val_loss: float | None = None
    network_best_epoch: int | None = None
    network_gain: dict | None = None

    @property
    def epochs(self) -> int:
        """Epochs trained."""
        return len(self.losses.get("loss", []))


def fit(hp: Hyperparameters, stage: Stage, splits: dict, callbacks=()) -> tuple[Network, History]:
    """Build and train the network on the train split's normalised inputs (correcting the stage's
    trees, from their out-of-fold predictions), keeping the epoch with the best validation loss,
    the untrained network (the trees alone) counted as epoch 0.

    Args:
        hp: the network's hyperparameters.
        stage: the normalisation and trees (fit_stage).
        splits: {name: (x [rows, features] raw, y [rows])}; trains on "train", chooses on "val".
        callbacks: more Keras callbacks (progress, MLflow).

    Returns:
        (the network, with the weights of its best epoch; its History, whose best_epoch says which)
    """
    import keras

    from caspar.model.callbacks import BestEpoch

    (x_train, y_train), (x_val, y_val) = splits["train"], splits["val"]
    x_train, x_val = stage.normalizer.transform(x_train), stage.normalizer.transform(x_val)
    network = compiled_network(hp, x_train, stage.layer)
    train, val = tf_datasets(network.inputs(x_train, stage.train_trees), y_train, network.inputs(x_val, stage.val_trees),
                             y_val, hp.batch_size, hp.seed)
    untrained = validation_loss(network.trainer, val)  # the trees alone, or an untrained network without trees
    best = BestEpoch(untrained, patience=hp.patience)
    history = network.trainer.fit(train, validation_data=val, epochs=hp.epochs, verbose=0, shuffle=False,
                                  callbacks=[*schedule_callbacks(hp), best, keras.callbacks.TerminateOnNaN(),
                                             *callbacks]).history
    return network, History(history, best.best_epoch, best.best, untrained)


def check_trained(history: History) -> None:
    """A model whose loss is not a finite number did not train: it must not be logged or registered.

    Args:
        history: the run's History.

    Raises:
        UserError: a validation loss is missing or not finite.
    """
    losses = history.losses.get("val_loss") or []
    if not losses or not np.all(np.isfinite(losses)):
        raise UserError(f"training diverged (val_loss {losses[-1] if losses else 'never computed'}): "
                        "nothing registered; try a lower --learning-rate")

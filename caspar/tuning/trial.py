"""One study trial, run by Ray Tune in a worker process on any node: a tree recipe cross-fitted by
game fold after fold, or a network correcting the study's trees epoch after epoch. Either reports
as it goes (ASHA stops a weak one early) and checkpoints what it needs to continue exactly where it
was, and what the study's ensemble is chosen from (a recipe's out-of-fold predictions)."""
from __future__ import annotations

import json
import os
import pickle
import time
from dataclasses import dataclass, field

import numpy as np
from ray import tune

from caspar.config import Hyperparameters, TuneConfig, check

# A network's checkpoint holds no trees and no architecture: both come from the study and the trial's configuration.
WEIGHTS_FILE = "weights.npz"  # the network's weights as they are now
OPTIMIZER_FILE = "optimizer.npz"  # the optimizer's state (its step, learning rate and moments)
BEST_WEIGHTS_FILE = "best_weights.npz"  # the weights of its best epoch so far
STATE_FILE = "state.json"  # epochs trained (or folds fitted), best validation loss and its epoch
OUT_OF_FOLD_FILE = "out_of_fold.npy"  # a tree trial's: [tree rows], its predictions of the folds fitted so far, NaN elsewhere
MODEL_FILE = "model.pkl"  # a tree trial's recipe fitted on every tree row, once all its folds are done
EPOCH_METRICS = ("loss", "val_loss", "val_mae", "learning_rate")  # per epoch, in MLflow
STEP_METRICS = ("best_val_loss", "cpu_seconds", "startup_seconds")  # per result, in MLflow
PHASES = ("worker_start", "setup", "training", "checkpoint")  # this process's CPU seconds in each, reported as cpu_<phase>
PER_EPOCH = "_per_epoch"  # a result's list of every epoch's value since the previous result
NETWORK, TREES = "network", "trees"  # the kinds of trial (a configuration's "kind")


@dataclass(frozen=True)
class StudyTrees:
    """The study's trees every network trial corrects (its default recipes, cross-fitted on Ray before
    the search): the arrays of their TreeEnsemble layer and their out-of-fold predictions."""
    arrays: dict[str, np.ndarray]
    train: np.ndarray  # [train rows, 1]
    val: np.ndarray  # [validation rows, 1]

    def layer(self):
        """Returns the trees as a TreeEnsemble layer (a new one each call: a trial's model owns it)."""
        from caspar.model.layers import TreeEnsemble

        return TreeEnsemble(**self.arrays)


@dataclass(frozen=True)
class TreeRows:
    """What a tree trial is cross-fitted on: the study's --fit-on rows (normalised) and their game
    folds, the same as the study's own trees'."""
    x: np.ndarray  # [rows, features]
    y: np.ndarray  # [rows]
    fold: np.ndarray  # [rows], 0 … folds-1 (caspar.model.crossfit.game_folds)
    val: np.ndarray  # [rows] bool: a validation row (the rows a network's loss is measured on)
    trees: np.ndarray | None = None  # [rows] the study's trees' out-of-fold predictions (None: a study without trees)

    def __post_init__(self):
        if self.trees is not None and self.trees.shape != self.y.shape:  # a [rows, 1] column would broadcast silently
            raise ValueError(f"TreeRows.trees has shape {self.trees.shape}, the rows {self.y.shape}")

    @property
    def folds(self) -> int:
        """The game folds the rows are in."""
        return int(self.fold.max()) + 1


@dataclass(frozen=True)
class StudyData:
    """What every trial of a study trains on (sent to the trials once, through Ray's object store):
    the normalised train and validation rows, the study's trees, the rows tree trials fit."""
    x_train: np.ndarray  # [train rows, features], normalised
    y_train: np.ndarray  # [train rows]
    x_val: np.ndarray  # [validation rows, features], normalised
    y_val: np.ndarray  # [validation rows]
    base: StudyTrees | None = None  # None: a study without trees for its networks
    tree_rows: TreeRows | None = field(default=None, repr=False)

    @classmethod
    def of(cls, stage, splits: dict, files: dict, folds: int, seed: int) -> StudyData:
        """What the trials of a study train on.

        Args:
            stage: the study's caspar.training.fit.Stage (its normalisation, its trees).
            splits: {name: (x [rows, features] raw, y [rows])}.
            files: {name: [rows] the game of each row}.
            folds: the game folds tree trials are cross-fitted in.
            seed: the seed of the games' shuffle into folds.

        Returns:
            The StudyData: normalised rows, the study's trees, the tree rows with their folds.
        """
        from caspar.model.crossfit import game_folds
        from caspar.training.fit import rows

        norm = stage.normalizer.transform
        x_fit, y_fit = rows(splits, stage.splits)
        groups = np.concatenate([files[n] for n in stage.splits])
        base = (StudyTrees(dict(stage.layer.arrays), stage.train_trees, stage.val_trees)  # not Keras's TrackedDict
                if stage.layer is not None else None)
        val = np.concatenate([np.full(len(splits[n][1]), n == "val") for n in stage.splits])
        return cls(norm(splits["train"][0]), splits["train"][1], norm(splits["val"][0]), splits["val"][1], base,
                   TreeRows(norm(x_fit), y_fit, game_folds(groups, folds, seed), val,
                            stage.crossed.prediction.reshape(-1) if stage.crossed is not None else None))

    def trees_of(self, hp: Hyperparameters) -> StudyTrees | None:
        """The trees a network corrects.

        Args:
            hp: the network's hyperparameters.

        Returns:
            The study's trees, or None with hp.trees 0 (a network alone).
        """
        return self.base if hp.trees else None


def hyperparameters_of(config: dict) -> Hyperparameters:
    """A trial's settings as the Hyperparameters a train run takes.

    Args:
        config: the trial's configuration (Tune's).

    Returns:
        Its Hyperparameters, its "kind" left out.
    """
    return Hyperparameters(**{k: v for k, v in config.items() if k != "kind"})


def recipe_of(config: dict, name: str = ""):
    """The tree recipe of a tree trial.

    Args:
        config: the trial's configuration (tree_learners names one learner).
        name: the recipe's label in figures and metrics.

    Returns:
        The Recipe.
    """
    import dataclasses

    from caspar.model.trees import recipes

    (recipe,) = recipes(hyperparameters_of(config))
    return dataclasses.replace(recipe, label=name)


def milestones(config: TuneConfig) -> set[int]:
    """The epochs after which ASHA may stop a network trial.

    Args:
        config: the study's options (epochs, grace_period, reduction_factor).

    Returns:
        grace period x reduction factor^k below the last epoch, and the last.
    """
    rungs, epoch = {config.epochs}, min(config.grace_period, config.epochs)
    while epoch < config.epochs:
        rungs.add(epoch)
        epoch *= config.reduction_factor
    return rungs


class Trial(tune.Trainable):
    """One trial of either kind. A network's step() trains up to the next epoch at which ASHA may
    stop it (its milestones, and the last epoch), or for about `report_seconds` if that comes
    first, and reports every epoch's losses at once: ASHA decides exactly as with one result per
    epoch, while the driver handles a few results per trial. A step that found a better epoch
    checkpoints, so that the best result a trial reports is always one it saved. A tree recipe's
    step() fits one game fold with the CPUs the trial holds and reports the out-of-fold error of the
    folds so far, with a checkpoint of its predictions. reset_config lets Tune run the next trial
    in this process (no TensorFlow start-up)."""

    def setup(self, config, data, cpus_per_trial, milestones, report_seconds):
        import ray

        self.threads = max(1, int(cpus_per_trial))
        self.attach(data, milestones, report_seconds, node=ray.get_runtime_context().get_node_id(),
                    worker_start_cpu=time.process_time())  # Ray's worker start and the study's data
        self.start(config)

    def attach(self, data: StudyData, milestones, report_seconds: float, node: str, worker_start_cpu: float = 0.0,
               threads: int = 1) -> None:
        """What the trial keeps across configurations (Tune reuses its process).

        Args:
            data: the study's StudyData.
            milestones: the epochs a network reports at (milestones()).
            report_seconds: a network reports at least this often.
            node: the Ray node it runs on.
            worker_start_cpu: CPU seconds the process spent before the first trial.
            threads: threads of its fits, if setup() has not set them.
        """
        self.process_cpu = dict.fromkeys(PHASES, 0.0) | {"worker_start": worker_start_cpu}
        self.data, self.milestones, self.report_seconds, self.node = data, sorted(milestones), report_seconds, node
        self.threads = getattr(self, "threads", threads)

    def start(self, config) -> None:
        """Starts a configuration (the first of the process, or one Tune hands it next).

        Args:
            config: the trial's configuration.
        """
        self.started, self.cpu_started, self.startup = time.perf_counter(), time.process_time(), None
        setup_started = time.process_time()
        self.kind = config.get("kind", NETWORK)
        hp = hyperparameters_of(config)
        check(hp)  # a sampled configuration passes the checks a command line does
        if self.kind == TREES:
            self.recipe = recipe_of(config)
            rows = self.data.tree_rows
            self.out_of_fold = np.full(len(rows.y), np.nan)
            self.fold, self.fitted = 0, None
        else:
            self.start_network(hp)
        self.process_cpu["setup"] += time.process_time() - setup_started

    def start_network(self, hp: Hyperparameters) -> None:
        """Builds and compiles a network trial's model and its batches, traced before training.

        Args:
            hp: the trial's hyperparameters.
        """
        from caspar.model.callbacks import BestEpoch, StopAfterSeconds
        from caspar.training.fit import compiled_network, schedule_callbacks, tf_datasets, validation_loss

        tensorflow_threads(self.threads)
        data, trees = self.data, self.data.trees_of(hp)
        network = compiled_network(hp, data.x_train, trees and trees.layer())
        self.model = network.trainer
        self.batches = tf_datasets(network.inputs(data.x_train, trees and trees.train), data.y_train,
                                   network.inputs(data.x_val, trees and trees.val), data.y_val,
                                   hp.batch_size, hp.seed)
        self.best = BestEpoch(validation_loss(self.model, self.batches[1]), restore=False)  # traces evaluation
        trace_training(self.model, self.batches[1])
        self.callbacks = [*schedule_callbacks(hp), self.best,
                          StopAfterSeconds(lambda: self.step_started, self.report_seconds)]
        self.epoch, self.saved_best = 0, None

    def step(self):
        if self.startup is None:
            self.startup = time.perf_counter() - self.started
        self.step_started, cpu = time.perf_counter(), time.process_time()
        result = self.tree_step() if self.kind == TREES else self.network_step()
        self.process_cpu["training"] += time.process_time() - cpu
        return {**result, "cpu_seconds": time.process_time() - self.cpu_started, "startup_seconds": self.startup,
                **{f"cpu_{phase}": seconds for phase, seconds in self.process_cpu.items()},
                "node_id": self.node}  # not a number, not in MLflow

    def tree_step(self) -> dict:
        """One more game fold of the recipe (its rows predicted by a fit without them); after the
        last fold, the recipe fitted on every tree row (what ships if it gets a weight: fitted here,
        in parallel with the other trials, not by the driver after the search).

        Returns:
            The result: fold, tree_step (ASHA's clock), oof_loss (ASHA's figure), best_val_loss
            (TPE's), done.
        """
        from caspar.model.crossfit import fold_prediction
        from caspar.model.trees import fit

        rows = self.data.tree_rows
        if self.fold < rows.folds:
            self.out_of_fold[rows.fold == self.fold] = fold_prediction(self.recipe, rows.x, rows.y, rows.fold, self.fold,
                                                                       self.threads)
            self.fold += 1
        else:
            self.fitted = fit(self.recipe, rows.x, rows.y, threads=self.threads)
        predicted = ~np.isnan(self.out_of_fold)
        on_val = predicted & rows.val
        # oof_loss: what ASHA ranks recipes by, over every row predicted so far; best_val_loss: what
        # TPE ranks every trial by, on the rows a network's loss is measured on (the validation
        # games). Both are what the recipe adds to the study's trees, blended in at its best weight:
        # a recipe is worth its place in the ensemble, not its error alone (a recipe worse alone
        # than the study's but unlike them lowers the ensemble's error; one much like them does not)
        return {"fold": self.fold, "tree_step": self.fold + (self.fitted is not None),
                "oof_loss": self.blended_loss(predicted),
                "best_val_loss": self.blended_loss(on_val if on_val.any() else predicted),
                "done": self.fitted is not None, "should_checkpoint": True}

    def blended_loss(self, on: np.ndarray) -> float:
        """The MSE over the rows `on` of the study's trees with this recipe blended in at its best
        weight w in [0, 1] (both out of fold), as a network trial's loss is the trees with its
        correction added; the recipe alone in a study without trees of its own.

        Args:
            on: [tree rows] bool, rows this recipe has predicted.

        Returns:
            The blend's mean squared error on those rows.
        """
        rows = self.data.tree_rows
        recipe, y = self.out_of_fold[on], rows.y[on]
        if rows.trees is None:
            return float(np.mean((recipe - y) ** 2))
        trees = rows.trees[on]
        step, miss = recipe - trees, y - trees
        weight = float(np.clip(np.dot(step, miss) / max(float(np.dot(step, step)), 1e-12), 0.0, 1.0))
        return float(np.mean((trees + weight * step - y) ** 2))

    def network_step(self) -> dict:
        """Trains up to the next milestone (or report_seconds).

        Returns:
            The result: the last epoch's losses, every epoch's since the last result, the best
            validation loss so far and its epoch, done, and whether to checkpoint.
        """
        train, val = self.batches
        until = next(m for m in self.milestones if m > self.epoch)
        history = self.model.fit(train, validation_data=val, initial_epoch=self.epoch, epochs=until,
                                 verbose=0, shuffle=False, callbacks=self.callbacks).history
        self.epoch += len(history["loss"])
        per_epoch = {f"{k}{PER_EPOCH}": [float(v) for v in history[k]] for k in EPOCH_METRICS if k in history}
        return {**{k: float(history[k][-1]) for k in EPOCH_METRICS if k in history}, **per_epoch,
                "epoch": self.epoch, "best_val_loss": self.best.best, "best_epoch": self.best.best_epoch,
                "done": self.epoch >= self.milestones[-1],
                "should_checkpoint": self.epoch in self.milestones or self.best.best != self.saved_best}

    def save_checkpoint(self, checkpoint_dir):
        cpu = time.process_time()
        if self.kind == TREES:
            np.save(os.path.join(checkpoint_dir, OUT_OF_FOLD_FILE), self.out_of_fold)
            if self.fitted is not None:
                with open(os.path.join(checkpoint_dir, MODEL_FILE), "wb") as handle:
                    pickle.dump(self.fitted, handle)
            state = {"fold": self.fold}
        else:
            np.savez(os.path.join(checkpoint_dir, WEIGHTS_FILE), *self.model.get_weights())
            optimizer = {}
            self.model.optimizer.save_own_variables(optimizer)
            np.savez(os.path.join(checkpoint_dir, OPTIMIZER_FILE), **optimizer)
            np.savez(os.path.join(checkpoint_dir, BEST_WEIGHTS_FILE), *self.best.best_weights)
            state = {"epoch": self.epoch, "best_val_loss": self.best.best, "best_epoch": self.best.best_epoch}
            self.saved_best = self.best.best
        with open(os.path.join(checkpoint_dir, STATE_FILE), "w") as handle:
            json.dump(state, handle)
        self.process_cpu["checkpoint"] += time.process_time() - cpu

    def load_checkpoint(self, checkpoint_dir):
        """The trial as it was: a recipe's folds fitted and their predictions; a network's current
        model (optimizer included), its best epoch so far and that epoch's weights. (The shuffling
        order of a network's later epochs is not restored.)"""
        with open(os.path.join(checkpoint_dir, STATE_FILE)) as handle:
            state = json.load(handle)
        if self.kind == TREES:
            self.out_of_fold = np.load(os.path.join(checkpoint_dir, OUT_OF_FOLD_FILE))
            self.fold = state["fold"]
            self.fitted = saved_model(checkpoint_dir)
            return
        self.model.set_weights(saved_arrays(checkpoint_dir, WEIGHTS_FILE))
        optimizer = self.model.optimizer
        if not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        with np.load(os.path.join(checkpoint_dir, OPTIMIZER_FILE)) as saved:
            optimizer.load_own_variables(dict(saved))
        self.epoch = state["epoch"]
        self.best.best, self.best.best_epoch = state["best_val_loss"], state["best_epoch"]
        self.best.best_weights = saved_arrays(checkpoint_dir, BEST_WEIGHTS_FILE)
        self.saved_best = self.best.best

    def reset_config(self, new_config):
        self.start(new_config)
        return True


def tensorflow_threads(threads: int) -> None:
    """TensorFlow imported, its thread pools sized to the trial's CPUs: at a process's first network
    trial (a process that runs only tree recipes never pays TensorFlow's start-up). The pools can
    be sized only before TensorFlow first runs: later trials of the process keep the first size,
    which is the same (a study's trials all hold --cpus-per-trial).

    Args:
        threads: intra- and inter-op threads.
    """
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # TensorFlow already runs in this process
        pass


def trace_training(trainer, batches) -> None:
    """Trace Keras's training step, and let TensorFlow optimise its graph, before training: a step
    on one row of `batches` (batches like the training ones, not those: drawing from them would
    move their shuffling on), then every variable (weights, optimizer, metrics, dropout's random
    state) put back as it was. fit() then runs training steps only, and the trial counts the
    tracing as set-up.

    Args:
        trainer: the compiled Keras model.
        batches: a tf.data.Dataset of batches shaped as the training ones.
    """
    state = [*trainer.variables, *trainer.optimizer.variables, *trainer.metrics_variables]
    saved = [variable.numpy() for variable in state]
    trainer.make_train_function()
    trainer.train_function(iter(batches.unbatch().batch(1).take(1)))
    for variable, value in zip(state, saved):
        variable.assign(value)


def saved_model(checkpoint_dir: str):
    """A tree trial's recipe fitted on every tree row.

    Args:
        checkpoint_dir: the trial's checkpoint folder.

    Returns:
        The fitted model, or None before the trial's last step.
    """
    path = os.path.join(checkpoint_dir, MODEL_FILE)
    if not os.path.exists(path):
        return None
    with open(path, "rb") as handle:
        return pickle.load(handle)


def saved_arrays(checkpoint_dir: str, name: str) -> list[np.ndarray]:
    """Weights a checkpoint saved with np.savez.

    Args:
        checkpoint_dir: the checkpoint folder.
        name: the file (WEIGHTS_FILE, BEST_WEIGHTS_FILE).

    Returns:
        The arrays, in the order they were saved.
    """
    with np.load(os.path.join(checkpoint_dir, name)) as saved:
        return [saved[f"arr_{i}"] for i in range(len(saved.files))]


def load_best_model(checkpoint_dir: str, config: dict, data: StudyData, trees=None):
    """The network (its model is what the game runs, trees included) of a trial's checkpoint, with
    the weights of the trial's best epoch up to then.

    Args:
        checkpoint_dir: the trial's checkpoint folder.
        config: the trial's configuration.
        data: the study's StudyData.
        trees: a TreeEnsemble layer in place of the study's (the network's weights are the same), or None.

    Returns:
        The caspar.model.network.Network.
    """
    from caspar.model.network import build_network

    hp = hyperparameters_of(config)
    base = data.trees_of(hp)
    network = build_network(hp, data.x_train, trees if trees is not None or base is None else base.layer())
    network.trainer.set_weights(saved_arrays(checkpoint_dir, BEST_WEIGHTS_FILE))
    return network

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

    @property
    def folds(self) -> int:
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
        """From the study's caspar.training.fit.Stage (its normalisation, its trees) and the dataset."""
        from caspar.model.crossfit import game_folds
        from caspar.training.fit import rows

        norm = stage.normalizer.transform
        x_fit, y_fit = rows(splits, stage.splits)
        groups = np.concatenate([files[n] for n in stage.splits])
        base = (StudyTrees(dict(stage.layer.arrays), stage.train_trees, stage.val_trees)  # not Keras's TrackedDict
                if stage.layer is not None else None)
        val = np.concatenate([np.full(len(splits[n][1]), n == "val") for n in stage.splits])
        return cls(norm(splits["train"][0]), splits["train"][1], norm(splits["val"][0]), splits["val"][1], base,
                   TreeRows(norm(x_fit), y_fit, game_folds(groups, folds, seed), val))

    def trees_of(self, hp: Hyperparameters) -> StudyTrees | None:
        """The trees a network of these hyperparameters corrects (none with hp.trees 0)."""
        return self.base if hp.trees else None


def hyperparameters_of(config: dict) -> Hyperparameters:
    """A trial's Hyperparameters from its configuration (its kind aside)."""
    return Hyperparameters(**{k: v for k, v in config.items() if k != "kind"})


def recipe_of(config: dict, name: str = ""):
    """The tree recipe of a tree trial's configuration (tree_learners is one learner), named `name`."""
    import dataclasses

    from caspar.model.trees import recipes

    (recipe,) = recipes(hyperparameters_of(config))
    return dataclasses.replace(recipe, label=name)


def milestones(config: TuneConfig) -> set[int]:
    """The epochs after which ASHA may stop a trial (grace period x reduction factor^k), and the last."""
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
               threads: int = 1):
        """What the trial keeps across configurations (Tune reuses its process): the study's data, the
        epochs it reports at, the node it runs on, and its process's CPU seconds per phase."""
        self.process_cpu = dict.fromkeys(PHASES, 0.0) | {"worker_start": worker_start_cpu}
        self.data, self.milestones, self.report_seconds, self.node = data, sorted(milestones), report_seconds, node
        self.threads = getattr(self, "threads", threads)

    def start(self, config):
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

    def start_network(self, hp: Hyperparameters):
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
        in parallel with the other trials, not by the driver after the search)."""
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
        error = (self.out_of_fold - rows.y) ** 2
        on_val = predicted & rows.val
        # oof_loss: what ASHA ranks recipes by (every row predicted so far); best_val_loss: what TPE
        # ranks every trial by, on the rows a network's loss is measured on (the validation games)
        return {"fold": self.fold, "tree_step": self.fold + (self.fitted is not None),
                "oof_loss": float(np.mean(error[predicted])),
                "best_val_loss": self.blended_val_loss(on_val) if on_val.any() else float(np.mean(error[predicted])),
                "done": self.fitted is not None, "should_checkpoint": True}

    def blended_val_loss(self, on_val: np.ndarray) -> float:
        """The validation games' MSE of the study's trees with this recipe blended in at its best
        weight w in [0, 1]: what the recipe adds to the trees, as a network trial's loss is the trees
        with its correction added. TPE ranks both kinds by what they add, so a recipe much like the
        study's own ranks as the trees alone rather than beside them as a model of its own (which
        favoured networks, the only kind that started from the trees). on_val: [tree rows] bool."""
        rows, base = self.data.tree_rows, self.data.base
        recipe, y = self.out_of_fold[on_val], rows.y[on_val]
        if base is None:  # a study without trees of its own: the recipe alone
            return float(np.mean((recipe - y) ** 2))
        trees = np.full(len(rows.y), np.nan)
        trees[rows.val] = base.val[:, 0]  # the study's trees' out-of-fold predictions of the validation rows
        trees = trees[on_val]
        step, miss = recipe - trees, y - trees
        weight = float(np.clip(np.dot(step, miss) / max(float(np.dot(step, step)), 1e-12), 0.0, 1.0))
        return float(np.mean((trees + weight * step - y) ** 2))

    def network_step(self) -> dict:
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
    which is the same (a study's trials all hold --cpus-per-trial)."""
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
    tracing as set-up."""
    state = [*trainer.variables, *trainer.optimizer.variables, *trainer.metrics_variables]
    saved = [variable.numpy() for variable in state]
    trainer.make_train_function()
    trainer.train_function(iter(batches.unbatch().batch(1).take(1)))
    for variable, value in zip(state, saved):
        variable.assign(value)


def saved_model(checkpoint_dir: str):
    """A tree trial's recipe fitted on every tree row, from its checkpoint (None before its last step)."""
    path = os.path.join(checkpoint_dir, MODEL_FILE)
    if not os.path.exists(path):
        return None
    with open(path, "rb") as handle:
        return pickle.load(handle)


def saved_arrays(checkpoint_dir: str, name: str) -> list[np.ndarray]:
    with np.load(os.path.join(checkpoint_dir, name)) as saved:
        return [saved[f"arr_{i}"] for i in range(len(saved.files))]


def load_best_model(checkpoint_dir: str, config: dict, data: StudyData, trees=None):
    """The network (its model is what the game runs, trees included) of a trial's checkpoint, with
    the weights of the trial's best epoch up to then. `config`: the trial's; `trees`: a
    TreeEnsemble layer in place of the study's (the network's weights are the same)."""
    from caspar.model.network import build_network

    hp = hyperparameters_of(config)
    base = data.trees_of(hp)
    network = build_network(hp, data.x_train, trees if trees is not None or base is None else base.layer())
    network.trainer.set_weights(saved_arrays(checkpoint_dir, BEST_WEIGHTS_FILE))
    return network

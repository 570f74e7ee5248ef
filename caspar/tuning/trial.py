"""One tune trial, run by Ray Tune in a worker process: trains a configuration epoch by epoch,
reports its losses, and checkpoints what it needs to continue exactly where it was."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

import numpy as np
from ray import tune

from caspar.config import Hyperparameters, TuneConfig, check

# A checkpoint holds no trees and no architecture: both come from the study and the trial's configuration.
WEIGHTS_FILE = "weights.npz"  # the network's weights as they are now
OPTIMIZER_FILE = "optimizer.npz"  # the optimizer's state (its step, learning rate and moments)
BEST_WEIGHTS_FILE = "best_weights.npz"  # the weights of its best epoch so far
STATE_FILE = "state.json"  # epochs trained, best validation loss and its epoch
EPOCH_METRICS = ("loss", "val_loss", "val_mae", "learning_rate")  # per epoch, in MLflow
STEP_METRICS = ("best_val_loss", "cpu_seconds", "startup_seconds")  # per result, in MLflow
PHASES = ("worker_start", "setup", "training", "checkpoint")  # this process's CPU seconds in each, reported as cpu_<phase>
PER_EPOCH = "_per_epoch"  # a result's list of every epoch's value since the previous result


@dataclass(frozen=True)
class StudyTrees:
    """The study's trees of one tree count, fitted once on the driver: the arrays of their
    TreeEnsemble layer and their (out-of-fold) predictions on the train and validation rows."""
    arrays: dict[str, np.ndarray]
    train: np.ndarray  # [train rows, 1]
    val: np.ndarray  # [validation rows, 1]

    def layer(self):
        from caspar.model.layers import TreeEnsemble

        return TreeEnsemble(**self.arrays)


@dataclass(frozen=True)
class StudyData:
    """What every trial of a study trains on (sent to the trials once, through Ray's object store):
    the normalised train and validation rows and the study's trees per tree count."""
    x_train: np.ndarray  # [train rows, features], normalised
    y_train: np.ndarray  # [train rows]
    x_val: np.ndarray  # [validation rows, features], normalised
    y_val: np.ndarray  # [validation rows]
    trees: dict[int, StudyTrees] = field(default_factory=dict)  # tree count -> its trees (0: none)

    @classmethod
    def of(cls, stages: dict, splits: dict) -> StudyData:
        """From the study's {tree count: caspar.training.fit.Stage} and the dataset's splits."""
        normalizer = next(iter(stages.values())).normalizer  # the same for every tree count
        trees = {count: StudyTrees(dict(stage.layer.arrays), stage.train_trees, stage.val_trees)  # not Keras's TrackedDict
                 for count, stage in stages.items() if count}
        return cls(normalizer.transform(splits["train"][0]), splits["train"][1],
                   normalizer.transform(splits["val"][0]), splits["val"][1], trees)

    def trees_of(self, hp: Hyperparameters) -> StudyTrees | None:
        return self.trees.get(hp.trees) if hp.trees else None


def milestones(config: TuneConfig) -> set[int]:
    """The epochs after which ASHA may stop a trial (grace period x reduction factor^k), and the last."""
    rungs, epoch = {config.epochs}, min(config.grace_period, config.epochs)
    while epoch < config.epochs:
        rungs.add(epoch)
        epoch *= config.reduction_factor
    return rungs


class Trial(tune.Trainable):
    """One trial: each step() trains up to the next epoch at which ASHA may stop the trial (its
    milestones, and the last epoch), or for about `report_seconds` if that comes first, and reports
    every epoch's losses at once. ASHA decides exactly as with one result per epoch, since it acts
    only at those epochs, while the driver handles a few results per trial instead of one per
    epoch. A step that found a better epoch checkpoints, so that the best result a trial reports
    is always one it saved. reset_config lets Tune run the next trial in this process (no
    TensorFlow start-up)."""

    def setup(self, config, data, cpus_per_trial, milestones, report_seconds):
        import ray
        import tensorflow as tf

        threads = max(1, int(cpus_per_trial))
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
        self.attach(data, milestones, report_seconds, node=ray.get_runtime_context().get_node_id(),
                    worker_start_cpu=time.process_time())  # Ray's worker start and TensorFlow's import
        self.start(config)

    def attach(self, data: StudyData, milestones, report_seconds: float, node: str, worker_start_cpu: float = 0.0):
        """What the trial keeps across configurations (Tune reuses its process): the study's data, the
        epochs it reports at, the node it runs on, and its process's CPU seconds per phase."""
        self.process_cpu = dict.fromkeys(PHASES, 0.0) | {"worker_start": worker_start_cpu}
        self.data, self.milestones, self.report_seconds, self.node = data, sorted(milestones), report_seconds, node

    def start(self, config):
        from caspar.model.callbacks import BestEpoch, StopAfterSeconds
        from caspar.training.fit import compiled_network, schedule_callbacks, tf_datasets, validation_loss

        self.started, self.cpu_started, self.startup = time.perf_counter(), time.process_time(), None
        setup_started = time.process_time()
        hp = Hyperparameters(**config)
        check(hp)  # a sampled configuration passes the checks a command line does
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
        self.process_cpu["setup"] += time.process_time() - setup_started

    def step(self):
        if self.startup is None:
            self.startup = time.perf_counter() - self.started
        train, val = self.batches
        until = next(m for m in self.milestones if m > self.epoch)
        self.step_started, cpu = time.perf_counter(), time.process_time()
        history = self.model.fit(train, validation_data=val, initial_epoch=self.epoch, epochs=until,
                                 verbose=0, shuffle=False, callbacks=self.callbacks).history
        self.process_cpu["training"] += time.process_time() - cpu
        self.epoch += len(history["loss"])
        per_epoch = {f"{k}{PER_EPOCH}": [float(v) for v in history[k]] for k in EPOCH_METRICS if k in history}
        return {**{k: float(history[k][-1]) for k in EPOCH_METRICS if k in history}, **per_epoch,
                "epoch": self.epoch, "best_val_loss": self.best.best, "best_epoch": self.best.best_epoch,
                "cpu_seconds": time.process_time() - self.cpu_started, "startup_seconds": self.startup,
                **{f"cpu_{phase}": seconds for phase, seconds in self.process_cpu.items()},
                "node_id": self.node,  # not a number, not in MLflow
                "should_checkpoint": self.epoch in self.milestones or self.best.best != self.saved_best}

    def save_checkpoint(self, checkpoint_dir):
        cpu = time.process_time()
        np.savez(os.path.join(checkpoint_dir, WEIGHTS_FILE), *self.model.get_weights())
        optimizer = {}
        self.model.optimizer.save_own_variables(optimizer)
        np.savez(os.path.join(checkpoint_dir, OPTIMIZER_FILE), **optimizer)
        np.savez(os.path.join(checkpoint_dir, BEST_WEIGHTS_FILE), *self.best.best_weights)
        state = {"epoch": self.epoch, "best_val_loss": self.best.best, "best_epoch": self.best.best_epoch}
        with open(os.path.join(checkpoint_dir, STATE_FILE), "w") as handle:
            json.dump(state, handle)
        self.saved_best = self.best.best
        self.process_cpu["checkpoint"] += time.process_time() - cpu

    def load_checkpoint(self, checkpoint_dir):
        """The trial as it was: its current model (optimizer included), its best epoch so far and
        that epoch's weights. (The shuffling order of later epochs is not restored.)"""
        self.model.set_weights(saved_arrays(checkpoint_dir, WEIGHTS_FILE))
        optimizer = self.model.optimizer
        if not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        with np.load(os.path.join(checkpoint_dir, OPTIMIZER_FILE)) as saved:
            optimizer.load_own_variables(dict(saved))
        with open(os.path.join(checkpoint_dir, STATE_FILE)) as handle:
            state = json.load(handle)
        self.epoch = state["epoch"]
        self.best.best, self.best.best_epoch = state["best_val_loss"], state["best_epoch"]
        self.best.best_weights = saved_arrays(checkpoint_dir, BEST_WEIGHTS_FILE)
        self.saved_best = self.best.best

    def reset_config(self, new_config):
        self.start(new_config)
        return True


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


def saved_arrays(checkpoint_dir: str, name: str) -> list[np.ndarray]:
    with np.load(os.path.join(checkpoint_dir, name)) as saved:
        return [saved[f"arr_{i}"] for i in range(len(saved.files))]


def load_best_model(checkpoint_dir: str, config: dict, data: StudyData):
    """The network (its model is what the game runs, trees included) of a trial's checkpoint, with
    the weights of the trial's best epoch up to then. `config`: the trial's."""
    from caspar.model.network import build_network

    hp = Hyperparameters(**config)
    trees = data.trees_of(hp)
    network = build_network(hp, data.x_train, trees and trees.layer())
    network.trainer.set_weights(saved_arrays(checkpoint_dir, BEST_WEIGHTS_FILE))
    return network

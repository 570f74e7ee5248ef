"""One tune trial, run by Ray Tune in a worker process: trains a configuration epoch by epoch,
reports its losses, and checkpoints what it needs to continue exactly where it was."""
from __future__ import annotations

import json
import os
import time

import numpy as np
from ray import tune

from caspar.config import Hyperparameters, TuneConfig, check

MODEL_FILE = "model.keras"  # the model as it is now, optimizer state included
BEST_WEIGHTS_FILE = "best_weights.npz"  # the weights of its best epoch so far
STATE_FILE = "state.json"  # epochs trained, best validation loss and its epoch
EPOCH_METRICS = ("loss", "val_loss", "val_mae", "learning_rate")  # per epoch, in MLflow
STEP_METRICS = ("best_val_loss", "cpu_seconds", "startup_seconds")  # per result, in MLflow
PHASES = ("worker_start", "setup", "training", "checkpoint")  # this process's CPU seconds in each, reported as cpu_<phase>
PER_EPOCH = "_per_epoch"  # a result's list of every epoch's value since the previous result


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
        # The process's CPU so far: Ray's worker start and TensorFlow's import. Counted once per process.
        self.process_cpu = dict.fromkeys(PHASES, 0.0) | {"worker_start": time.process_time()}
        self.data, self.milestones, self.report_seconds = data, sorted(milestones), report_seconds
        self.node = ray.get_runtime_context().get_node_id()
        self.start(config)

    def start(self, config):
        from caspar.callbacks import BestEpoch, StopAfterSeconds
        from caspar.train import compiled_model, schedule_callbacks, tf_datasets, validation_loss

        self.started, self.cpu_started, self.startup = time.perf_counter(), time.process_time(), None
        setup_started = time.process_time()
        hp = Hyperparameters(**config)
        check(hp)  # a sampled configuration passes the checks a command line does
        self.model = compiled_model(hp, self.data["x_train"], self.data["y_train"], trees=self.trees(hp))
        self.batches = tf_datasets(self.data["x_train"], self.data["y_train"], self.data["x_val"], self.data["y_val"],
                                   hp.batch_size, hp.seed)
        self.best = BestEpoch(validation_loss(self.model, self.batches[1]), restore=False)
        self.callbacks = [*schedule_callbacks(hp), self.best,
                          StopAfterSeconds(lambda: self.step_started, self.report_seconds)]
        self.epoch, self.saved_best = 0, None
        self.process_cpu["setup"] += time.process_time() - setup_started

    def trees(self, hp: Hyperparameters):
        """The study's trees (fitted once, on the driver) for a trial that has them."""
        from caspar.layers import TreeEnsemble

        arrays = self.data.get("trees", {}).get(hp.trees)
        return TreeEnsemble(**arrays) if arrays else None

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
        self.model.save(os.path.join(checkpoint_dir, MODEL_FILE))
        np.savez(os.path.join(checkpoint_dir, BEST_WEIGHTS_FILE), *self.best.best_weights)
        state = {"epoch": self.epoch, "best_val_loss": self.best.best, "best_epoch": self.best.best_epoch}
        with open(os.path.join(checkpoint_dir, STATE_FILE), "w") as handle:
            json.dump(state, handle)
        self.saved_best = self.best.best
        self.process_cpu["checkpoint"] += time.process_time() - cpu

    def load_checkpoint(self, checkpoint_dir):
        """The trial as it was: its current model (optimizer included), its best epoch so far and
        that epoch's weights. (The shuffling order of later epochs is not restored.)"""
        self.model = load_model(checkpoint_dir)
        with open(os.path.join(checkpoint_dir, STATE_FILE)) as handle:
            state = json.load(handle)
        self.epoch = state["epoch"]
        self.best.best, self.best.best_epoch = state["best_val_loss"], state["best_epoch"]
        self.best.best_weights = best_weights(checkpoint_dir)
        self.saved_best = self.best.best

    def reset_config(self, new_config):
        self.start(new_config)
        return True


def load_model(checkpoint_dir: str):
    import keras

    import caspar.layers  # noqa: F401  (custom layers must be known before loading)

    return keras.models.load_model(os.path.join(checkpoint_dir, MODEL_FILE))


def best_weights(checkpoint_dir: str) -> list[np.ndarray]:
    with np.load(os.path.join(checkpoint_dir, BEST_WEIGHTS_FILE)) as saved:
        return [saved[f"arr_{i}"] for i in range(len(saved.files))]


def load_best_model(checkpoint_dir: str):
    """The model of a checkpoint with the weights of the trial's best epoch up to then."""
    model = load_model(checkpoint_dir)
    model.set_weights(best_weights(checkpoint_dir))
    return model

"""The trees that carry the model: tree recipes (scikit-learn's histogram GBDT and LightGBM), one
fit of a recipe with a stated number of threads, the fitted trees as node tables (which the
TreeEnsemble layer compiles), and ensemble selection of weighted recipes (Caruana et al. 2004, as
AutoGluon and auto-sklearn do). Cross-fitting by game, every fit a Ray task: caspar.model.crossfit.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from caspar.runtime import fit_threads, passive_waits

LEARNERS = ("sklearn", "lightgbm")
SELECTION_ROUNDS = 20  # ensemble selection: each round adds one recipe (with repetition) to the average


@dataclass(frozen=True)
class Recipe:
    """How one tree model is fitted. `row_fraction` is LightGBM's bagging (scikit-learn's histogram
    GBDT has none); `feature_fraction` is the share of features each split (scikit-learn) or each
    tree (LightGBM) may use."""
    learner: str
    iterations: int
    learning_rate: float
    leaves: int
    min_leaf: int
    l2: float
    feature_fraction: float
    row_fraction: float
    seed: int
    label: str = ""  # its name in figures and metrics when several recipes share a learner

    @property
    def name(self) -> str:
        """Its name in figures and metrics: its label, else its learner."""
        return self.label or self.learner


def recipes(hp) -> list[Recipe]:
    """The default recipes of a train run.

    Args:
        hp: Hyperparameters (or a config with its tree fields: trees, tree_learners, ...).

    Returns:
        One Recipe per learner of hp.tree_learners ("sklearn+lightgbm"), with hp's tree settings;
        none when hp.trees is 0.
    """
    if not hp.trees:
        return []
    return [Recipe(learner, hp.trees, hp.tree_learning_rate, hp.tree_leaves, hp.tree_min_leaf, hp.tree_l2,
                   hp.tree_feature_fraction, hp.tree_row_fraction, hp.seed) for learner in hp.tree_learners.split("+")]


# With a listener, scikit-learn's trees are grown a chunk of iterations at a time (warm start: the
# same model as one fit), each chunk sized to take about CHUNK_SECONDS, so that a long fit can say
# how far it is. Each chunk also costs a pass over the rows (binning them, predicting them with the
# trees so far), so chunks are no smaller than progress lines need (caspar.progress.PERIOD).
SKLEARN_CHUNK = 25  # the first chunk, and the smallest
CHUNK_SECONDS = 6.0


def fit(recipe: Recipe, x: np.ndarray, y: np.ndarray, progress=None, threads: int = 1):
    """Fits a recipe with exactly `threads` threads (the CPUs its Ray task holds), waiting passively.

    Args:
        recipe: what to fit.
        x: [rows, features] normalised inputs.
        y: [rows] rewards.
        progress: called now and then with the number of iterations fitted so far (or None).
        threads: OpenMP threads of the fit.

    Returns:
        The fitted model, its own library's object (with `predict`: [rows, features] -> [rows]).
    """
    passive_waits()  # before OpenMP loads with the library (a cluster's workers have not inherited it)
    with fit_threads(threads):
        return _fit(recipe, x, y, progress, threads)


def _fit(recipe: Recipe, x: np.ndarray, y: np.ndarray, progress, threads: int):
    if recipe.learner == "sklearn":
        from sklearn.ensemble import HistGradientBoostingRegressor

        model = HistGradientBoostingRegressor(
            max_iter=recipe.iterations, learning_rate=recipe.learning_rate, max_leaf_nodes=recipe.leaves,
            min_samples_leaf=recipe.min_leaf, l2_regularization=recipe.l2, max_features=recipe.feature_fraction,
            early_stopping=False, random_state=recipe.seed)
        if progress is None:
            return model.fit(x, y)
        model.set_params(warm_start=True)
        done, chunk = 0, SKLEARN_CHUNK
        while done < recipe.iterations:
            started = time.perf_counter()
            model.set_params(max_iter=min(done + chunk, recipe.iterations)).fit(x, y)
            seconds = time.perf_counter() - started  # the chunk's iterations and its pass over the rows
            done = model.n_iter_
            chunk = max(SKLEARN_CHUNK, int(chunk * CHUNK_SECONDS / max(seconds, 1e-3)))
            progress(done)
        return model.set_params(warm_start=False, max_iter=recipe.iterations)
    if recipe.learner == "lightgbm":
        import lightgbm

        # deterministic + row-wise histograms + a fixed thread count: the same model from the same rows
        return lightgbm.LGBMRegressor(
            n_estimators=recipe.iterations, learning_rate=recipe.learning_rate, num_leaves=recipe.leaves,
            min_child_samples=recipe.min_leaf, reg_lambda=recipe.l2, colsample_bytree=recipe.feature_fraction,
            subsample=recipe.row_fraction, subsample_freq=1 if recipe.row_fraction < 1 else 0,
            random_state=recipe.seed, deterministic=True, force_row_wise=True, n_jobs=threads,
            verbose=-1).fit(x, y, callbacks=[lambda env: progress(env.iteration + 1)] if progress else None)
    raise ValueError(f"unknown tree learner {recipe.learner!r} ({', '.join(LEARNERS)})")


def node_tables(model) -> tuple[list[dict[str, np.ndarray]], float]:
    """A fitted model's trees as the arrays the TreeEnsemble layer and the Java model compile.

    Args:
        model: a model `fit` returned (scikit-learn's histogram GBDT or LightGBM).

    Returns:
        (trees, constant): each tree as arrays over its nodes, [nodes] each (feature_idx,
        num_threshold, left, right, is_leaf, value; a row goes left when its value <= the
        threshold), and the constant the model adds to the sum of the leaves a row reaches.
    """
    if hasattr(model, "_predictors"):  # scikit-learn's HistGradientBoostingRegressor
        trees = [predictors[0].nodes for predictors in model._predictors]
        return trees, float(np.ravel(model._baseline_prediction)[0])
    return [_lightgbm_nodes(tree["tree_structure"]) for tree in model.booster_.dump_model()["tree_info"]], 0.0


def _lightgbm_nodes(root: dict) -> dict[str, np.ndarray]:
    """LightGBM's nested tree (its boosting's starting value is inside the first tree's leaves)."""
    rows: list[list] = []

    def add(node: dict) -> int:
        index = len(rows)
        rows.append([0, 0.0, -1, -1, True, float(node.get("leaf_value", 0.0))])
        if "split_feature" in node:
            if node["decision_type"] != "<=":
                raise ValueError(f"LightGBM split {node['decision_type']!r}: only numerical '<=' splits compile")
            rows[index][:5] = [node["split_feature"], float(node["threshold"]), add(node["left_child"]),
                               add(node["right_child"]), False]
        return index

    add(root)
    columns = list(zip(*rows))
    return {"feature_idx": np.array(columns[0], np.int64), "num_threshold": np.array(columns[1], np.float64),
            "left": np.array(columns[2], np.int64), "right": np.array(columns[3], np.int64),
            "is_leaf": np.array(columns[4], bool), "value": np.array(columns[5], np.float64)}


def ensemble_weights(predictions: np.ndarray, y: np.ndarray, rounds: int = SELECTION_ROUNDS) -> np.ndarray:
    """Caruana et al.'s ensemble selection: start empty, add (with repetition) the member whose
    addition gives the average with the lowest squared error, `rounds` times. Ties go to the first
    member, so the result is the same every time.

    Args:
        predictions: [rows, members] out-of-fold predictions.
        y: [rows] rewards.
        rounds: picks in all.

    Returns:
        [members] weights, each member's share of the picks (sum 1).
    """
    rows, members = predictions.shape
    picks, total = np.zeros(members), np.zeros(rows)
    for round_ in range(rounds):
        errors = [np.mean(((total + predictions[:, m]) / (round_ + 1) - y) ** 2) for m in range(members)]
        best = int(np.argmin(errors))
        picks[best] += 1
        total += predictions[:, best]
    return picks / rounds

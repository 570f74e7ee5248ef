"""The trees that carry the model: tree recipes (scikit-learn's histogram GBDT and LightGBM),
cross-fitted by game so that every fitted row has an out-of-fold prediction, a weighted ensemble
of the recipes chosen on those predictions (Caruana et al. 2004, as AutoGluon and auto-sklearn
do), and the whole compiled into one TreeEnsemble layer.

Why out of fold: a network that learns a correction to the trees must see the trees' errors on
games they were not fitted on. Their errors on their own training rows are far smaller (600 trees
nearly memorise 8,000 rows), so a correction learned there does not carry over to new games.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass

import numpy as np

from caspar.progress import Every, since

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
        return self.label or self.learner


# What a study's tree search samples: each recipe a choice per field (caspar.tuning.tune).
SEARCH = {"learner": LEARNERS, "iterations": (300, 600, 1000), "learning_rate": (0.02, 0.03, 0.05, 0.1),
          "leaves": (15, 31, 63), "min_leaf": (5, 10, 20, 40), "l2": (0.0, 1.0, 10.0),
          "feature_fraction": (0.3, 0.5, 0.8, 1.0), "row_fraction": (0.7, 0.8, 1.0)}


def sampled_recipes(count: int, seed: int, known: list[Recipe] = ()) -> list[Recipe]:
    """`count` recipes drawn from SEARCH (seeded; none twice, none of `known`), labelled search1 …"""
    rng = np.random.default_rng(seed)
    seen = {dataclasses.replace(r, label="") for r in known}
    drawn: list[Recipe] = []
    while len(drawn) < count:
        values = {name: choices[rng.integers(len(choices))] for name, choices in SEARCH.items()}
        recipe = Recipe(**{k: v.item() if hasattr(v, "item") else v for k, v in values.items()}, seed=seed)
        if recipe not in seen:
            seen.add(recipe)
            drawn.append(dataclasses.replace(recipe, label=f"search{len(drawn) + 1}"))
    return drawn


def recipes(hp) -> list[Recipe]:
    """One recipe per learner of hp.tree_learners ("sklearn+lightgbm"), with hp's tree settings."""
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


def fit(recipe: Recipe, x: np.ndarray, y: np.ndarray, progress=None):
    """The fitted model of a recipe (its own library's object, with `predict`). `progress`: called
    with the number of iterations fitted so far, now and then during the fit."""
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
            random_state=recipe.seed, deterministic=True, force_row_wise=True, n_jobs=os.cpu_count() or 1,
            verbose=-1).fit(x, y, callbacks=[lambda env: progress(env.iteration + 1)] if progress else None)
    raise ValueError(f"unknown tree learner {recipe.learner!r} ({', '.join(LEARNERS)})")


def node_tables(model) -> tuple[list[dict[str, np.ndarray]], float]:
    """(trees, constant) of a fitted model: each tree as arrays of its nodes (feature_idx,
    num_threshold, left, right, is_leaf, value; a row goes left when its value <= the threshold),
    and the constant the model adds to the sum of the leaves it reaches."""
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
    addition gives the average with the lowest squared error, `rounds` times; a member's weight is
    its share of the picks. predictions: [rows, members] (out of fold) -> weights [members], sum 1.
    Ties go to the first member, so the result is the same every time."""
    rows, members = predictions.shape
    picks, total = np.zeros(members), np.zeros(rows)
    for round_ in range(rounds):
        errors = [np.mean(((total + predictions[:, m]) / (round_ + 1) - y) ** 2) for m in range(members)]
        best = int(np.argmin(errors))
        picks[best] += 1
        total += predictions[:, best]
    return picks / rounds


def game_folds(groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """The fold (0 … folds-1) of every row: whole games to a fold, games shuffled by `seed`, so a
    fold's rows are games the other folds have never seen. At most one fold per game."""
    games = np.unique(groups)
    order = np.random.default_rng(seed).permutation(len(games))
    fold_of_game = np.empty(len(games), np.int64)
    fold_of_game[order] = np.arange(len(games)) % min(folds, len(games))
    return fold_of_game[np.searchsorted(games, groups)]


@dataclass
class CrossFitted:
    """The trees of one set of recipes on one set of rows."""
    recipes: list[Recipe]
    weights: np.ndarray  # per recipe, sum 1 (ensemble selection on the out-of-fold predictions)
    out_of_fold: np.ndarray  # [rows, recipes]: each row predicted by the recipe fitted without its game
    models: list  # per recipe with a weight above 0, fitted on every row; None where the weight is 0

    @property
    def prediction(self) -> np.ndarray:
        """The ensemble's out-of-fold prediction of every row, float32 [rows, 1]: what a network
        correcting the trees learns from."""
        return (self.out_of_fold @ self.weights).astype(np.float32).reshape(-1, 1)

    def layer(self):
        """The weighted ensemble of the models fitted on every row, as one TreeEnsemble layer."""
        from caspar.model.layers import TreeEnsemble

        chosen = [(node_tables(model), weight) for model, weight in zip(self.models, self.weights) if weight > 0]
        return TreeEnsemble.from_node_tables([(trees, constant, weight) for (trees, constant), weight in chosen])

    def refitted(self, x: np.ndarray, y: np.ndarray, say=None) -> CrossFitted:
        """The same recipes and weights, the models fitted on other rows (e.g. every game)."""
        started = time.perf_counter()
        models = [_fit_on_all(recipe, x, y, say, started) if weight > 0 else None
                  for recipe, weight in zip(self.recipes, self.weights)]
        return CrossFitted(self.recipes, self.weights, np.zeros((0, len(self.recipes))), models)

    def members(self) -> dict[str, object]:
        """{recipe name: its model fitted on every row}, for the recipes with a weight."""
        return {recipe.name: model for recipe, model in zip(self.recipes, self.models) if model is not None}

    def describe(self, y: np.ndarray) -> dict[str, float]:
        """Per recipe its weight and its out-of-fold R², and the ensemble's (MLflow metrics)."""
        from sklearn.metrics import r2_score

        figures = {"trees_oof_r2": float(r2_score(y, self.prediction.reshape(-1)))}
        for r, (recipe, weight) in enumerate(zip(self.recipes, self.weights)):
            figures |= {f"trees_weight_{recipe.name}": float(weight),
                        f"trees_oof_r2_{recipe.name}": float(r2_score(y, self.out_of_fold[:, r]))}
        return figures


def cross_fit(recipe_list: list[Recipe], x: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int, seed: int,
              say=None, deadline: float | None = None, required: int | None = None) -> CrossFitted:
    """Every recipe fitted `folds` times by game (each fold's rows predicted by a model fitted
    without them; each recipe and fold fitted once, whatever uses it), the ensemble weights chosen
    on those out-of-fold predictions, then every recipe with a weight fitted on all the rows.
    `say`: a function taking a progress line. With a `deadline` (time.perf_counter()), the
    recipes after the first `required` stop at the first that would end after it (by
    expected_seconds; the recipes fitted stay a prefix of the list, which --resume relies on)."""
    started = time.perf_counter()
    fold = game_folds(groups, folds, seed)
    count = int(fold.max()) + 1
    if count < 2:
        raise ValueError(f"cross-fitting the trees needs at least 2 games; these rows have {len(np.unique(groups))}")
    required = len(recipe_list) if required is None else required
    columns, timed = [], []
    for r, recipe in enumerate(recipe_list):
        expected = expected_seconds(recipe, timed, count)
        if r >= required and deadline is not None and time.perf_counter() + expected > deadline:
            if say:
                left = deadline - time.perf_counter()
                say(f"trees: {len(recipe_list) - r} of the {len(recipe_list)} recipes left out: the next would take "
                    f"about {expected:.0f} s, {max(0.0, left):.0f} s are left of the tree search's time")
            break
        recipe_started = time.perf_counter()
        column = np.zeros(len(y))
        for k in range(count):
            held_out = fold == k
            where = f"({r + 1}/{len(recipe_list)}), fold {k + 1}/{count}"
            column[held_out] = fit(recipe, x[~held_out], y[~held_out], _progress(say, recipe, where, started)
                                   ).predict(x[held_out])
            if say:
                say(f"trees: {recipe.name} ({r + 1}/{len(recipe_list)}), fold {k + 1}/{count} "
                    f"({time.perf_counter() - started:.0f} s)")
        columns.append(column)
        timed.append((recipe, time.perf_counter() - recipe_started))
    recipe_list = recipe_list[:len(columns)]
    out_of_fold = np.stack(columns, axis=1)
    weights = ensemble_weights(out_of_fold, y)
    models = [_fit_on_all(recipe, x, y, say, started) if weight > 0 else None for recipe, weight in zip(recipe_list, weights)]
    if say:
        shares = ", ".join(f"{r.name} {w:.2f}" for r, w in zip(recipe_list, weights) if w > 0)
        say(f"trees: weights {shares}; fitted on all {len(y)} rows ({time.perf_counter() - started:.0f} s)")
    return CrossFitted(recipe_list, weights, out_of_fold, models)


def _work(recipe: Recipe) -> float:
    """A recipe's fitting work in arbitrary units: boosting grows `leaves` per iteration, each split
    over the share of features (and, for LightGBM, of rows) it may use."""
    rows = recipe.row_fraction if recipe.learner == "lightgbm" else 1.0
    return recipe.iterations * recipe.leaves * recipe.feature_fraction * rows


def expected_seconds(recipe: Recipe, timed: list[tuple[Recipe, float]], folds: int) -> float:
    """How long `recipe` would take (its `folds` fits and the fit on every row), from the seconds
    the recipes in `timed` took on the same rows, per unit of work: those of its own learner where
    there are any, else all of them; 0 with nothing timed. An estimate, not a bound."""
    same = [(r, s) for r, s in timed if r.learner == recipe.learner] or timed
    if not same:
        return 0.0
    per_work = sum(s for _, s in same) / sum(_work(r) for r, _ in same)
    return per_work * _work(recipe) * (folds + 1) / folds


def _fit_on_all(recipe: Recipe, x: np.ndarray, y: np.ndarray, say, started: float):
    """A recipe with a weight, fitted on every row, saying so as it starts."""
    if say:
        say(f"trees: {recipe.name} on all {len(y):,} rows ({since(started)})")
    return fit(recipe, x, y, _progress(say, recipe, f"on all {len(y):,} rows", started))


def _progress(say, recipe: Recipe, where: str, started: float):
    """A fit's progress callback: a line now and then (caspar.progress.PERIOD) while one fit runs long."""
    if say is None:
        return None
    every = Every(say)
    return lambda done: every(lambda: f"trees: {recipe.name} {where}: {done}/{recipe.iterations} iterations "
                                      f"({since(started)})")

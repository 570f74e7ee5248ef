"""Tree recipes cross-fitted by game, every fit a Ray task on any node: each recipe fitted once per
fold without that fold's games, so every fitted row has an out-of-fold prediction; the recipes
weighted by ensemble selection on those predictions; the weighted ones fitted on every row; the
whole compiled into one TreeEnsemble layer.

Why out of fold: ensemble weights chosen on rows a recipe was fitted on favour the recipe that
memorises best, and a network that learns a correction to the trees must see their errors on
games they were not fitted on (600 trees nearly memorise 8,000 rows; a correction learned there
does not carry over to new games).

Why Ray tasks: the fits are independent, so they run side by side on every CPU of the machine or
the cluster, each with exactly the threads its task holds (caspar.runtime).
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

import numpy as np

from caspar.model.trees import Recipe, ensemble_weights, fit, node_tables
from caspar.progress import PERIOD, Every, since
from caspar.runtime import fit_threads


@dataclass(frozen=True)
class Busy:
    """When a fit held CPUs (time.time() seconds), how many, and on which Ray node."""
    started: float
    ended: float
    cpus: float
    node: str


def game_folds(groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Whole games to a fold, games shuffled by `seed`, so a fold's rows are games the other folds
    have never seen.

    Args:
        groups: [rows] the game of each row.
        folds: folds wanted (fewer if there are fewer games).
        seed: the shuffle's seed.

    Returns:
        [rows] int64, the fold (0 … folds-1) of every row.
    """
    games = np.unique(groups)
    order = np.random.default_rng(seed).permutation(len(games))
    fold_of_game = np.empty(len(games), np.int64)
    fold_of_game[order] = np.arange(len(games)) % min(folds, len(games))
    return fold_of_game[np.searchsorted(games, groups)]


def fold_prediction(recipe: Recipe, x: np.ndarray, y: np.ndarray, fold: np.ndarray, k: int, threads: int) -> np.ndarray:
    """The recipe fitted on every row outside fold k, predicting fold k's rows.

    Args:
        recipe: what to fit.
        x: [rows, features] normalised inputs.
        y: [rows] rewards.
        fold: [rows] each row's fold (game_folds).
        k: the fold held out.
        threads: threads of the fit.

    Returns:
        [rows of fold k] the out-of-fold predictions.
    """
    held_out = fold == k
    model = fit(recipe, x[~held_out], y[~held_out], threads=threads)
    with fit_threads(threads):  # scikit-learn predicts tree by tree, each a parallel region of every CPU otherwise
        return model.predict(x[held_out])


def _timed(function, cpus: float, *args):
    """Runs in a Ray task: function(*args) and the Busy interval of the task."""
    import ray

    started = time.time()
    value = function(*args)
    return value, Busy(started, time.time(), cpus, ray.get_runtime_context().get_node_id())


@functools.cache
def _remote():
    import ray

    return ray.remote(_timed)


# Fits of less work than this (rows x boosting iterations, all fits together) run one after another
# in this process when no Ray is running: starting Ray and its workers (5-10 s) would cost more
# than the fits (a sample dataset's trees take a second or two).
IN_PROCESS_WORK = 2_000_000


def in_process(rows: int, recipe_list: list[Recipe], fits_per_recipe: int) -> bool:
    """Whether fits of this size run in this process.

    Args:
        rows: rows per fit.
        recipe_list: the recipes fitted.
        fits_per_recipe: fits of each.

    Returns:
        True when the work is small (below IN_PROCESS_WORK) and no Ray is running yet.
    """
    import ray

    return not ray.is_initialized() and rows * sum(r.iterations for r in recipe_list) * fits_per_recipe < IN_PROCESS_WORK


def run_fits(calls: list[tuple[str, object, tuple]], cpus: int, say=None, busy: list | None = None,
             here: bool = False) -> list:
    """Runs fits as Ray tasks, all at once: Ray runs as many side by side as the cluster's CPUs hold.

    Args:
        calls: (label, function, args) per fit; the function fits with `cpus` threads.
        cpus: CPUs each task holds.
        say: called with a line as each fit ends, and while none does, every PERIOD seconds.
        busy: collects each task's Busy interval (or None).
        here: one after another in this process instead (small fits, see in_process).

    Returns:
        The functions' values, in the order of `calls`.
    """
    if here:
        values, begun = [], time.perf_counter()
        for label, function, args in calls:
            started = time.time()
            values.append(function(*args))
            if busy is not None:
                busy.append(Busy(started, time.time(), cpus, "local"))
            if say:
                say(f"trees: {label} ({len(values)} of {len(calls)} fits, in this process; {since(begun)})")
        return values
    import ray

    from caspar.runtime import start_ray

    start_ray()
    started = time.perf_counter()
    refs = [_remote().options(num_cpus=cpus).remote(function, cpus, *args) for _, function, args in calls]
    position = {ref: i for i, ref in enumerate(refs)}
    values: list = [None] * len(refs)
    pending, every = list(refs), Every(say)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=PERIOD / 2)
        done = len(refs) - len(pending)
        for ref in ready:
            i = position[ref]
            values[i], interval = ray.get(ref)
            if busy is not None:
                busy.append(interval)
            if say:
                say(f"trees: {calls[i][0]} ({done} of {len(refs)} fits; {since(started)})")
                every.reset()
        every(f"trees: {done} of {len(refs)} fits done ({since(started)})")
    return values


def _fit_on_all(recipe: Recipe, x, y, threads: int):
    return fit(recipe, x, y, threads=threads)


def fit_on_all(recipe_list: list[Recipe], x: np.ndarray, y: np.ndarray, cpus: int = 1, say=None,
               busy: list | None = None) -> list:
    """Each recipe fitted on every row, as parallel Ray tasks.

    Args:
        recipe_list: the recipes.
        x: [rows, features] normalised inputs.
        y: [rows] rewards.
        cpus: CPUs (threads) of each fit.
        say: progress lines (see run_fits).
        busy: collects each fit's Busy interval (or None).

    Returns:
        Their fitted models, in order.
    """
    here = in_process(len(y), recipe_list, 1)
    x_ref, y_ref = (x, y) if here else _put(x, y)
    return run_fits([(f"{r.name} on all {len(y):,} rows", _fit_on_all, (r, x_ref, y_ref, cpus)) for r in recipe_list],
                    cpus, say, busy, here)


def _put(*arrays):
    """The arrays in Ray's object store (Ray started if it is not), each task reading them without a copy."""
    import ray

    from caspar.runtime import start_ray

    start_ray()
    return tuple(ray.put(array) for array in arrays)


@dataclass
class CrossFitted:
    """The trees of one set of recipes on one set of rows."""
    recipes: list[Recipe]
    weights: np.ndarray  # [recipes], sum 1 (ensemble selection on the out-of-fold predictions)
    out_of_fold: np.ndarray  # [rows, recipes]: each row predicted by the recipe fitted without its game
    models: list  # per recipe, fitted on every row (None where it was not: a refit fits those with a weight only)
    busy: list[Busy] = field(default_factory=list)  # when each fit held CPUs
    on_all_only: dict[str, object] = field(default_factory=dict)  # {name: model} of recipes fitted on every row only

    @property
    def prediction(self) -> np.ndarray:
        """The ensemble's out-of-fold prediction of every row, float32 [rows, 1]: what a network
        correcting the trees learns from."""
        return (self.out_of_fold @ self.weights).astype(np.float32).reshape(-1, 1)

    def layer(self):
        """Returns the weighted ensemble of the models fitted on every row, as one TreeEnsemble layer."""
        return tree_layer([(model, weight) for model, weight in zip(self.models, self.weights) if weight > 0])

    def refitted(self, x: np.ndarray, y: np.ndarray, say=None, cpus: int = 1) -> CrossFitted:
        """The same recipes and weights, the models fitted on other rows (e.g. every game).

        Args:
            x: [rows, features] normalised inputs.
            y: [rows] rewards.
            say: progress lines (see run_fits).
            cpus: CPUs (threads) of each fit.

        Returns:
            A CrossFitted without out-of-fold predictions.
        """
        chosen = [r for r, w in zip(self.recipes, self.weights) if w > 0]
        fitted = iter(fit_on_all(chosen, x, y, cpus, say))
        models = [next(fitted) if weight > 0 else None for weight in self.weights]
        return CrossFitted(self.recipes, self.weights, np.zeros((0, len(self.recipes))), models)

    def members(self) -> dict[str, object]:
        """Returns {recipe name: its model fitted on every row}, for the recipes with a weight."""
        return {recipe.name: model for recipe, model, weight in zip(self.recipes, self.models, self.weights)
                if model is not None and weight > 0}

    def describe(self, y: np.ndarray) -> dict[str, float]:
        """The figures logged as MLflow metrics.

        Args:
            y: [rows] the rewards of the rows cross-fitted.

        Returns:
            Per recipe its weight and its out-of-fold R², and the ensemble's out-of-fold R².
        """
        from sklearn.metrics import r2_score

        figures = {"trees_oof_r2": float(r2_score(y, self.prediction.reshape(-1)))}
        for r, (recipe, weight) in enumerate(zip(self.recipes, self.weights)):
            figures |= {f"trees_weight_{recipe.name}": float(weight),
                        f"trees_oof_r2_{recipe.name}": float(r2_score(y, self.out_of_fold[:, r]))}
        return figures


def tree_layer(weighted: list[tuple[object, float]]):
    """Compiles fitted models into one layer.

    Args:
        weighted: (fitted model, weight) per member.

    Returns:
        A TreeEnsemble layer computing the weighted sum of the models: [rows, features] -> [rows, 1].
    """
    from caspar.model.layers import TreeEnsemble

    return TreeEnsemble.from_node_tables([(*node_tables(model), weight) for model, weight in weighted])


def cross_fit(recipe_list: list[Recipe], x: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int, seed: int,
              say=None, cpus: int = 1, on_all_only: list[Recipe] = ()) -> CrossFitted:
    """Every recipe fitted `folds` times by game (each fold's rows predicted by a model fitted
    without them) and once on all the rows, all these fits at once as Ray tasks of `cpus` CPUs
    each (small fits without Ray started: one after another in this process); the ensemble weights
    chosen on the out-of-fold predictions. A recipe's fit on all the rows starts with its folds,
    not after the weights are known: no barrier in the middle leaves CPUs idle (on a cluster of
    enough CPUs every fit runs at once: one round of fits instead of two), and the rare recipe
    without a weight costs one fit.

    Args:
        recipe_list: the recipes.
        x: [rows, features] normalised inputs.
        y: [rows] rewards.
        groups: [rows] the game of each row.
        folds: game folds wanted.
        seed: the folds' shuffle.
        say: called with progress lines (or None).
        cpus: CPUs (threads) of each fit.
        on_all_only: recipes fitted on all the rows only, not cross-fitted nor weighed (a run's
            baselines): queued last, these short fits fill the CPUs the longer ones leave idle
            at the end, instead of running one after another in the driver later.

    Returns:
        The CrossFitted recipes: weights, out-of-fold predictions [rows, recipes], fitted models
        (and the on_all_only models by name).

    Raises:
        ValueError: the rows hold fewer than 2 games.
    """
    started = time.perf_counter()
    fold = game_folds(groups, folds, seed)
    count = int(fold.max()) + 1
    if count < 2:
        raise ValueError(f"cross-fitting the trees needs at least 2 games; these rows have {len(np.unique(groups))}")
    here = in_process(len(y), [*recipe_list, *on_all_only], count + 1)
    x_ref, y_ref = (x, y) if here else _put(x, y)
    busy: list[Busy] = []
    # the fits on all the rows first: the longest, so that none is left running alone at the end
    calls = [(f"{recipe.name} on all {len(y):,} rows", _fit_on_all, (recipe, x_ref, y_ref, cpus)) for recipe in recipe_list]
    calls += [(f"{recipe.name} fold {k + 1}/{count}", fold_prediction, (recipe, x_ref, y_ref, fold, k, cpus))
              for recipe in recipe_list for k in range(count)]
    calls += [(f"{recipe.name} on all {len(y):,} rows", _fit_on_all, (recipe, x_ref, y_ref, cpus))
              for recipe in on_all_only]
    values = run_fits(calls, cpus, say, busy, here)
    on_all = values[:len(recipe_list)]
    predictions = iter(values[len(recipe_list):len(values) - len(on_all_only)])
    only = dict(zip([r.name for r in on_all_only], values[len(values) - len(on_all_only):]))
    out_of_fold = np.zeros((len(y), len(recipe_list)))
    for r in range(len(recipe_list)):
        for k in range(count):
            out_of_fold[fold == k, r] = next(predictions)
    weights = ensemble_weights(out_of_fold, y)
    models = list(on_all)  # a study may weigh a recipe the defaults' own selection left out
    if say:
        shares = ", ".join(f"{r.name} {w:.2f}" for r, w in zip(recipe_list, weights) if w > 0)
        say(f"trees: weights {shares}; fitted on all {len(y):,} rows ({since(started)})")
    return CrossFitted(recipe_list, weights, out_of_fold, models, busy, only)

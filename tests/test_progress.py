"""Progress lines of long phases (caspar.progress) and the tree fits that report through them."""
import threading

import numpy as np
import pytest

from caspar import progress


def test_every_says_at_most_one_line_per_period(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    said = []
    every = progress.Every(said.append, period=10)
    every("at 0")  # the phase's own first line was just printed
    clock[0] += 9.9
    every("at 9.9")
    clock[0] += 0.1
    every(lambda: "at 10")  # a line may be made only when it is said
    clock[0] += 5
    every("at 15")
    clock[0] += 5
    every("at 20")
    assert said == ["at 10", "at 20"]
    progress.Every(None)("nothing is said without a say")


def test_ticking_speaks_while_the_block_runs_and_stops_with_it():
    said, enough = [], threading.Event()

    def say(line):
        said.append(line)
        if len(said) >= 3:
            enough.set()

    count = iter(range(1000))
    with progress.ticking(say, lambda: f"tick {next(count)}", period=0.01):
        assert enough.wait(60), "no progress line while the block ran"
    after = len(said)
    threading.Event().wait(0.05)
    assert len(said) == after and said[:3] == ["tick 0", "tick 1", "tick 2"]
    with progress.ticking(say, lambda: 1 / 0, period=0.01):  # a line that fails never fails the work
        threading.Event().wait(0.05)


@pytest.mark.parametrize("learner", ["sklearn", "lightgbm"])
def test_a_tree_fit_reports_its_iterations_and_fits_the_same_model(learner, monkeypatch):
    """scikit-learn's trees are grown a chunk at a time to report progress: the same model as one fit."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    from caspar.model import trees
    from caspar.model.trees import SKLEARN_CHUNK, Recipe, fit

    rng = np.random.default_rng(3)
    x = rng.random((600, 12))
    y = x[:, 0] * x[:, 1] + rng.normal(0, 0.05, 600)
    recipe = Recipe(learner, SKLEARN_CHUNK * 2 + 7, 0.05, 15, 10, 1.0, 0.5, 0.8, seed=4)
    done = []
    monkeypatch.setattr(trees, "CHUNK_SECONDS", 0.0)  # chunks of SKLEARN_CHUNK
    model = fit(recipe, x, y, progress=done.append)
    assert done[-1] == recipe.iterations and done == sorted(done) and len(done) >= 3
    if learner == "sklearn":
        whole = HistGradientBoostingRegressor(
            max_iter=recipe.iterations, learning_rate=recipe.learning_rate, max_leaf_nodes=recipe.leaves,
            min_samples_leaf=recipe.min_leaf, l2_regularization=recipe.l2, max_features=recipe.feature_fraction,
            early_stopping=False, random_state=recipe.seed).fit(x, y)
        np.testing.assert_array_equal(model.predict(x), whole.predict(x))
    np.testing.assert_array_equal(model.predict(x), fit(recipe, x, y).predict(x))  # with or without a listener

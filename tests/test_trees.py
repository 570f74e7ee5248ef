"""The trees that carry the model (caspar/model/trees.py, caspar/model/crossfit.py): recipes of both
learners compiled into the TreeEnsemble layer, fits with the threads they hold, cross-fitting by game
as Ray tasks, and ensemble selection."""
import numpy as np
import pytest

from caspar.config import Hyperparameters
from caspar.model import crossfit, trees
from caspar.model.layers import TreeEnsemble
from caspar.model.network import predict_trees


@pytest.fixture(scope="module")
def rows():
    rng = np.random.default_rng(0)
    x = rng.random((600, 10)).astype(np.float32)
    x[:, 4] = rng.integers(0, 3, 600) / 2  # values that sit on split thresholds
    y = (0.4 * (x[:, 0] > 0.5) + 0.3 * x[:, 1] * x[:, 4] + 0.05 * rng.normal(size=600)).astype(np.float32)
    games = np.repeat([f"g{i:02d}" for i in range(20)], 30)
    return x, y, games


def recipe(learner: str) -> trees.Recipe:
    hp = Hyperparameters(trees=40, tree_learning_rate=0.1, tree_min_leaf=5, tree_learners=learner, seed=3)
    return trees.recipes(hp)[0]


@pytest.mark.parametrize("learner", trees.LEARNERS)
def test_each_learner_compiles_into_the_layer_exactly(learner, rows):
    x, y, _ = rows
    model = trees.fit(recipe(learner), x, y)
    tables, constant = trees.node_tables(model)
    layer = TreeEnsemble.from_node_tables([(tables, constant, 1.0)])
    np.testing.assert_allclose(predict_trees(layer, x).ravel(), model.predict(x), atol=1e-5, rtol=0)


def test_a_weighted_ensemble_is_the_weighted_sum_of_its_models(rows):
    x, y, _ = rows
    models = [trees.fit(recipe(learner), x, y) for learner in trees.LEARNERS]
    layer = TreeEnsemble.from_node_tables([(*trees.node_tables(m), w) for m, w in zip(models, (0.3, 0.7))])
    expected = 0.3 * models[0].predict(x) + 0.7 * models[1].predict(x)
    np.testing.assert_allclose(predict_trees(layer, x).ravel(), expected, atol=1e-5, rtol=0)


def test_game_folds_keep_games_whole_and_use_every_game(rows):
    _, _, games = rows
    fold = crossfit.game_folds(games, 5, seed=1)
    assert sorted(set(fold)) == [0, 1, 2, 3, 4]
    for game in np.unique(games):
        assert len(set(fold[games == game])) == 1
    assert np.array_equal(fold, crossfit.game_folds(games, 5, seed=1))
    assert not np.array_equal(fold, crossfit.game_folds(games, 5, seed=2))
    assert sorted(set(crossfit.game_folds(games[:60], 5, seed=1))) == [0, 1]  # two games: two folds


def test_ensemble_selection_mixes_complementary_members_and_drops_a_useless_one():
    rng = np.random.default_rng(0)
    y = rng.random(500)
    noise = rng.normal(scale=0.1, size=500)
    members = np.stack([y + noise, y - noise + rng.normal(scale=0.02, size=500), rng.random(500)], axis=1)
    weights = trees.ensemble_weights(members, y)
    assert weights.sum() == pytest.approx(1.0) and weights[2] == 0
    assert 0.3 <= weights[0] <= 0.7 and 0.3 <= weights[1] <= 0.7  # errors that cancel: an even mix
    assert np.array_equal(weights, trees.ensemble_weights(members, y))
    best_alone = trees.ensemble_weights(members[:, [2, 0]], y)
    assert best_alone[1] >= 0.9  # the member worth having carries the average


def test_out_of_fold_predictions_come_from_models_that_never_saw_the_game(rows, ray_local):
    x, y, games = rows
    recipes = [recipe(learner) for learner in trees.LEARNERS]
    crossed = crossfit.cross_fit(recipes, x, y, games, folds=4, seed=7)
    fold = crossfit.game_folds(games, 4, seed=7)
    held_out = fold == 2
    again = trees.fit(recipes[1], x[~held_out], y[~held_out]).predict(x[held_out])
    np.testing.assert_allclose(crossed.out_of_fold[held_out, 1], again)
    # in-sample predictions would be closer to the rewards than out-of-fold ones
    kept = int(np.argmax(crossed.weights))
    in_sample = np.mean((crossed.models[kept].predict(x) - y) ** 2)
    assert np.mean((crossed.out_of_fold[:, kept] - y) ** 2) > in_sample
    assert crossed.weights.sum() == pytest.approx(1.0)
    layer = crossed.layer()
    expected = sum(w * m.predict(x) for w, m in zip(crossed.weights, crossed.models) if m is not None)
    np.testing.assert_allclose(predict_trees(layer, x).ravel(), expected, atol=1e-5, rtol=0)
    figures = crossed.describe(y)
    assert set(figures) == {"trees_oof_r2", "trees_weight_sklearn", "trees_weight_lightgbm", "trees_oof_r2_sklearn",
                            "trees_oof_r2_lightgbm"}


def test_the_same_rows_and_seed_give_the_same_trees(rows, ray_local):
    x, y, games = rows
    recipes = [recipe(learner) for learner in trees.LEARNERS]
    first, second = (crossfit.cross_fit(recipes, x, y, games, folds=3, seed=1).layer() for _ in range(2))
    for name, array in first.arrays.items():
        np.testing.assert_array_equal(array, second.arrays[name])


@pytest.mark.parametrize("learner", trees.LEARNERS)
def test_a_fit_uses_exactly_the_threads_it_is_given(learner, rows):
    """OpenMP threads beyond the CPUs a fit holds spin against other work (15x slower beside it)."""
    from threadpoolctl import threadpool_info

    x, y, _ = rows
    seen = []
    for threads in (1, 2):
        model = trees.fit(recipe(learner), x, y, threads=threads,
                          progress=lambda done: seen.append(max(p["num_threads"] for p in threadpool_info()
                                                                if p["user_api"] == "openmp")))
        if learner == "lightgbm":
            assert model.get_params()["n_jobs"] == threads
        assert seen and seen[-1] == threads
    import os
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"  # set before OpenMP loaded, inherited by Ray's workers


def test_every_fit_of_a_cross_fit_is_a_ray_task_with_its_interval(rows, ray_local):
    x, y, games = rows
    lines = []
    crossed = crossfit.cross_fit([recipe(learner) for learner in trees.LEARNERS], x, y, games, folds=3, seed=1,
                                 say=lines.append)
    folds = [b for b in crossed.busy]
    assert len(folds) == 2 * 3 + 2  # every recipe's folds and its fit on all the rows, at once
    assert all(b.ended >= b.started and b.cpus == 1 and b.node for b in folds)
    assert any("lightgbm fold 3/3" in line for line in lines) and "weights" in lines[-1]


def test_the_trees_own_libraries_compute_what_the_compiled_model_does(rows):
    """The permutation importance of the trees alone runs through their own libraries (WeightedTrees):
    it must see the very predictions the shipped Keras model gives."""
    from caspar.model.crossfit import tree_layer
    from caspar.model.network import trees_model
    from caspar.training import evaluate

    x, y, _ = rows
    weighted = [(trees.fit(recipe(learner), x, y), weight) for learner, weight in zip(trees.LEARNERS, (0.3, 0.7))]
    compiled = evaluate.predict(trees_model(tree_layer(weighted), x.shape[1]), x)
    np.testing.assert_allclose(evaluate.predict(evaluate.WeightedTrees(weighted), x), compiled, atol=1e-5, rtol=0)


def test_the_baselines_are_fitted_with_the_trees_and_are_their_libraries_defaults(rows, ray_local):
    """A run's GBDT and LightGBM baselines are two more fits of the trees' Ray tasks, on the same
    rows, and score exactly as the libraries' own default models (what the run's parameters say)."""
    import lightgbm
    from sklearn.ensemble import HistGradientBoostingRegressor

    from caspar.training import evaluate

    x, y, games = rows
    fit_rows, test_rows = games < "g15", games >= "g15"
    crossed = crossfit.cross_fit([recipe("lightgbm")], x[fit_rows], y[fit_rows], games[fit_rows], folds=3, seed=1,
                                 on_all_only=evaluate.baseline_recipes(seed=5))
    assert len(crossed.busy) == 3 + 1 + 2  # the folds, the fit on all the rows, the two baselines: Ray tasks
    assert sorted(crossed.on_all_only) == sorted([evaluate.GBDT_BASELINE, evaluate.LIGHTGBM_BASELINE])
    with_the_trees = evaluate.baselines(x[fit_rows], y[fit_rows], x[test_rows], y[test_rows], seed=5,
                                        fitted=crossed.on_all_only)
    gbdt = HistGradientBoostingRegressor(early_stopping=False, random_state=5).fit(x[fit_rows], y[fit_rows])
    light = lightgbm.LGBMRegressor(random_state=5, deterministic=True, force_row_wise=True, verbose=-1)
    light.fit(x[fit_rows], y[fit_rows])
    defaults = {**evaluate.metrics(y[test_rows], gbdt.predict(x[test_rows]), "baseline_gbdt_test"),
                **evaluate.metrics(y[test_rows], light.predict(x[test_rows]), "baseline_lightgbm_test")}
    for name, value in defaults.items():
        assert with_the_trees[name] == pytest.approx(value, rel=1e-6), name
    alone = evaluate.baselines(x[fit_rows], y[fit_rows], x[test_rows], y[test_rows], seed=5)  # fitted here
    assert alone == pytest.approx(with_the_trees, rel=1e-6)

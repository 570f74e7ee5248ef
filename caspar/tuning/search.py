"""The search of a study: seeded TPE (Optuna) over the searched fields of Hyperparameters, told the
best trials of an earlier study first (--warm-start)."""
from __future__ import annotations

import dataclasses

from caspar import tracking
from caspar.config import TuneConfig, search_space
from caspar.errors import UserError
from caspar.tuning.study import METRIC, MODE

WARM_START_TRIALS = 20  # the best trials of an earlier study that seed a new one


def searcher(config: TuneConfig, earlier: tuple[list[dict], list[float]] = ([], [])):
    """(search algorithm, Tune's param space): seeded TPE (Optuna) over the searched fields of
    Hyperparameters, the study's values for the others. `earlier`: configurations of an earlier
    study and their results, which TPE is told before it proposes (--warm-start)."""
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    domains = {name: getattr(tune, kind)(*args) for name, (kind, *args) in search_space(config.search).items()}
    fixed = {k: v for k, v in dataclasses.asdict(config.trial_hyperparameters()).items() if k not in domains}
    points, results = earlier
    if not config.warm_start:
        return OptunaSearch(seed=config.seed), fixed | domains
    # Optuna takes results of earlier trials only with the space given to it, not through Tune's.
    return OptunaSearch(space=OptunaSearch.convert_search_space(domains), metric=METRIC, mode=MODE, seed=config.seed,
                        points_to_evaluate=points or None, evaluated_rewards=results or None), fixed


def earlier_trials(config: TuneConfig, experiment: str) -> tuple[list[dict], list[float]]:
    """The best finished trials of the study --warm-start names whose configuration this search
    space holds: (configurations of the searched fields, their best validation losses)."""
    import mlflow

    from caspar.config import Hyperparameters, parse_logged

    runs = mlflow.MlflowClient().search_runs([experiment], f"tags.study = {tracking.literal(config.warm_start)}", max_results=5000)
    trials = [r for r in runs if "trial_name" in r.data.tags and "best_val_loss" in r.data.metrics]
    if not trials:
        raise UserError(f"--warm-start {config.warm_start}: no study of that name with finished trials in experiment "
                        f"{config.experiment_name!r}")
    space = search_space(config.search)
    seeds = []
    for run in sorted(trials, key=lambda r: r.data.metrics["best_val_loss"]):
        point = {name: parse_logged(Hyperparameters, name, run.data.params.get(name)) for name in space}
        if all(in_domain(point[name], domain) for name, domain in space.items()):
            seeds.append((point, run.data.metrics["best_val_loss"]))
    seeds = seeds[:WARM_START_TRIALS]
    return [point for point, _ in seeds], [loss for _, loss in seeds]


def in_domain(value, domain: tuple) -> bool:
    kind, *args = domain
    if value is None:
        return False
    return value in args[0] if kind == "choice" else args[0] <= value <= args[1]

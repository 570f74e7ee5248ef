"""The search of a study: seeded TPE (Optuna) over one conditional space — the kind of trial first (a
tree recipe or a network), then the fields that kind reads — told the best trials of an earlier
study first (--warm-start); and the scheduler that stops weak trials of each kind (ASHA, by kind)."""
from __future__ import annotations

import dataclasses

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from caspar import tracking
from caspar.config import TuneConfig, trial_kind
from caspar.errors import UserError
from caspar.tuning.study import METRIC, MODE

WARM_START_TRIALS = 20  # the best trials of an earlier study that seed a new one
LIGHTGBM_ONLY = ("tree_row_fraction",)  # scikit-learn's histogram GBDT has no bagging


def layers_text(layers: list[int]) -> str:
    """Hidden layers as one choice of Optuna's (its choices are numbers and strings).

    Args:
        layers: units per hidden layer, e.g. [256, 256].

    Returns:
        "256x256".
    """
    return "x".join(map(str, layers))


def distribution(domain: tuple):
    """An Optuna distribution of a search domain.

    Args:
        domain: caspar.config's ("choice", values), ("uniform", low, high) or ("loguniform", low, high).

    Returns:
        Optuna's CategoricalDistribution or FloatDistribution.
    """
    import optuna

    kind, *args = domain
    if kind == "choice":
        return optuna.distributions.CategoricalDistribution([layers_text(v) if isinstance(v, list) else v for v in args[0]])
    return optuna.distributions.FloatDistribution(args[0], args[1], log=kind == "loguniform")


def read(name: str, value):
    """A sampled value as the Hyperparameters field takes it.

    Args:
        name: the field.
        value: Optuna's value ("256x256" for hidden_layers).

    Returns:
        The field's value ([256, 256]).
    """
    return [int(units) for units in value.split("x")] if name == "hidden_layers" else value


def searched_names(space: dict[str, tuple], kind: str, learner: str | None = None) -> list[str]:
    """The fields a trial samples.

    Args:
        space: the study's search space.
        kind: "trees" or "network".
        learner: a tree recipe's learner (the ones it reads), or None.

    Returns:
        The fields' names, in the space's order.
    """
    return [name for name in space if trial_kind(name) == kind and not (learner != "lightgbm" and name in LIGHTGBM_ONLY)]


class ConditionalSpace:
    """The study's conditional space as Optuna's define-by-run function (a class: Tune pickles the
    search with the study's state): the kind, then that kind's fields; the fields nobody samples
    keep the study's values (returned as constants)."""

    def __init__(self, config: TuneConfig):
        self.space = config.space
        self.fixed = dataclasses.asdict(config.trial_hyperparameters())
        self.distributions = {name: distribution(domain) for name, domain in self.space.items()}

    def __call__(self, trial) -> dict:
        kind = trial.suggest_categorical("kind", self.distributions["kind"].choices)
        sampled, learner = {}, None
        if kind == "trees":
            learner = sampled["tree_learners"] = trial.suggest_categorical(
                "tree_learners", self.distributions["tree_learners"].choices)
        for name in searched_names(self.space, kind, learner):
            if name in sampled:
                continue
            dist = self.distributions[name]
            value = (trial.suggest_categorical(name, dist.choices) if hasattr(dist, "choices")
                     else trial.suggest_float(name, dist.low, dist.high, log=dist.log))
            sampled[name] = read(name, value)
        # Tune takes the values Optuna captured; these replace them (hidden layers as lists) and add the rest
        return {**self.fixed, **sampled, "kind": kind}


def searcher(config: TuneConfig, earlier: tuple[list[dict], list[float]] = ([], [])):
    """Seeded TPE (Optuna) over the study's conditional space; its first trials are random draws in
    which the kinds take turns.

    Args:
        config: the study's options (its space, seed).
        earlier: configurations of an earlier study (their sampled fields, kind included) and their
            results, which TPE is told before it proposes (--warm-start).

    Returns:
        Ray Tune's OptunaSearch.
    """
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    define = ConditionalSpace(config)
    distributions = define.distributions
    storage, name = optuna.storages.InMemoryStorage(), "study"
    study = optuna.create_study(storage=storage, study_name=name, direction="minimize" if MODE == "min" else "maximize")
    points, results = earlier
    for point, value in zip(points, results):  # told through the study Optuna loads (Ray's warm start takes no define-by-run space)
        params = {k: layers_text(v) if isinstance(v, list) else v for k, v in point.items()}
        study.add_trial(optuna.trial.create_trial(params=params, value=value,
                                                  distributions={k: distributions[k] for k in params}))
    # TPE starts from random draws; the kinds take turns in them, so that neither is left out by chance
    kinds = distributions["kind"].choices
    for i in range(STARTUP_TRIALS):
        study.enqueue_trial({"kind": kinds[i % len(kinds)]})
    return OptunaSearch(space=define, metric=METRIC, mode=MODE, seed=config.seed, storage=storage, study_name=name)


# TPE's first trials are random draws (Optuna's n_startup_trials)
STARTUP_TRIALS = 10


def earlier_trials(config: TuneConfig, experiment: str) -> tuple[list[dict], list[float]]:
    """The best finished trials of the study --warm-start names whose configuration this search
    space holds (a trial of a study from before trees were trials is a network).

    Args:
        config: the study's options (warm_start, its space).
        experiment: the experiment's id.

    Returns:
        (their kind and sampled fields, their best validation losses), best first, at most
        WARM_START_TRIALS.

    Raises:
        UserError: no study of that name with finished trials.
    """
    import mlflow

    from caspar.config import Hyperparameters, parse_logged

    runs = mlflow.MlflowClient().search_runs([experiment], f"tags.study = {tracking.literal(config.warm_start)}", max_results=5000)
    trials = [r for r in runs if "trial_name" in r.data.tags and "best_val_loss" in r.data.metrics]
    if not trials:
        raise UserError(f"--warm-start {config.warm_start}: no study of that name with finished trials in experiment "
                        f"{config.experiment_name!r}")
    space = config.space
    seeds = []
    for run in sorted(trials, key=lambda r: r.data.metrics["best_val_loss"]):
        kind = run.data.params.get("kind", "network")
        learner = run.data.params.get("tree_learners") if kind == "trees" else None
        names = searched_names(space, kind, learner)
        point = {"kind": kind} | {name: parse_logged(Hyperparameters, name, run.data.params.get(name)) for name in names}
        if all(in_domain(point[name], space[name]) for name in point):
            seeds.append((point, run.data.metrics["best_val_loss"]))
    seeds = seeds[:WARM_START_TRIALS]
    return [point for point, _ in seeds], [loss for _, loss in seeds]


def in_domain(value, domain: tuple) -> bool:
    """Whether a value lies in a search domain.

    Args:
        value: a field's value (None: no).
        domain: ("choice", values), ("uniform", low, high) or ("loguniform", low, high).

    Returns:
        True if the domain holds it.
    """
    kind, *args = domain
    if value is None:
        return False
    return value in args[0] if kind == "choice" else args[0] <= value <= args[1]


def scheduler(config: TuneConfig, folds: int):
    """ASHA for each kind of trial, each on its own clock: a network's epochs, a recipe's game folds.
    A recipe's out-of-fold error after its first folds (over every row predicted so far) ranks it
    as a network's validation loss after its first epochs does; the two kinds are never ranked
    against each other here (TPE compares them, on the validation games).

    Args:
        config: the study's options (epochs, grace_period, reduction_factor).
        folds: the game folds a recipe trial fits.

    Returns:
        A ByKind scheduler.
    """
    return ByKind({
        "network": ASHAScheduler(time_attr="epoch", metric=METRIC, mode=MODE, max_t=config.epochs,
                                 grace_period=min(config.grace_period, config.epochs),
                                 reduction_factor=config.reduction_factor),
        # a recipe's steps: its folds, then its fit on every row (never stopped there: it is the last)
        "trees": ASHAScheduler(time_attr="tree_step", metric="oof_loss", mode=MODE, max_t=folds + 1, grace_period=1,
                               reduction_factor=config.reduction_factor)})


class ByKind(FIFOScheduler):
    """Hands each trial to the scheduler of its kind (its configuration's "kind"); runs trials in the
    order the search proposed them.

    Args:
        schedulers: {kind: its scheduler}.
    """

    def __init__(self, schedulers: dict):
        super().__init__()
        self.schedulers = schedulers

    def of(self, trial):
        """The scheduler of a trial's kind.

        Args:
            trial: a Tune trial.

        Returns:
            The scheduler its configuration's "kind" names.
        """
        return self.schedulers[trial.config.get("kind", "network")]

    def set_search_properties(self, metric, mode, **spec) -> bool:
        """Every kind ranks by its own metric (set when it was made): the study's is taken as given."""
        return all(s.metric is not None for s in self.schedulers.values())

    def on_trial_add(self, tune_controller, trial):
        self.of(trial).on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial):
        self.of(trial).on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result):
        return self.of(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result):
        self.of(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial):
        self.of(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "\n".join(f"{kind}: {s.debug_string()}" for kind, s in self.schedulers.items())

"""Every job's settings, declared once: default, type, allowed values and help text.

The jobs' command lines are generated from these dataclasses (`parse`), the library takes them,
MLflow parameters are logged from them, and the tune search space samples fields of
`Hyperparameters` by their own names. This module imports nothing heavy, so that a job checks
its options before TensorFlow or Ray load.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
import typing
from dataclasses import dataclass, field

from caspar.errors import UserError

OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("plateau", "cosine")
ENSEMBLE_KINDS = ("mini", "full")
ENSEMBLE_LOSSES = ("average", "members")
ACTIVATIONS = ("relu", "gelu", "swish", "elu", "tanh", "sigmoid")
# --fit-on: the splits (their games) the shipped model's trees and normalisation are fitted on
FIT_ON = {"train": ("train",), "train+val": ("train", "val"), "all": ("train", "val", "test")}
TREE_LEARNERS = ("sklearn", "lightgbm", "sklearn+lightgbm")
RESERVED_ALIAS = re.compile(r"^(v\d+|latest)$", re.IGNORECASE)  # MLflow's own names for versions
ALIAS = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
MODEL_NAME = re.compile(r"^(?=.*\S)[^/:]{1,255}$")  # registry URIs (models:/NAME/VERSION) split on "/" and ":"


def setting(default, help: str, *, choices=None, minimum=None, maximum=None, above=None, below=None,
            also=(), required: bool = False, search=None, trial: str | None = "network"):
    """A field with its command-line help and allowed values.

    Args:
        default: its value when the option is not given (a list is copied for each instance).
        help: the option's help.
        choices: the values allowed, if a list of them.
        minimum: the smallest allowed, inclusive.
        maximum: the largest allowed, inclusive.
        above: values must be above this.
        below: values must be below this.
        also: values allowed besides the range (e.g. -1 meaning "automatic").
        required: the option must be given.
        search: its domain in the tune search space, as (sampler, *arguments), e.g. ("choice", [0, 8])
            or ("loguniform", 1e-4, 1e-2).
        trial: for Hyperparameters, the kind of study trial that reads the field ("network" or
            "trees"; None: no trial varies it, e.g. the epochs or the folds every trial shares).

    Returns:
        A dataclasses.field with that metadata.
    """
    metadata = {"help": help, "choices": choices, "minimum": minimum, "maximum": maximum, "above": above,
                "below": below, "also": tuple(also), "required": required, "search": search, "trial": trial}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


# --- The settings of each job -----------------------------------------------------------------

@dataclass
class PrepareConfig:
    """jobs/prepare.py's options: where the logs are, where the dataset goes, how games are split."""
    input: str = setting("data/raw", "folder (searched recursively), .zip or s3://bucket/prefix of *.tsv logs; or "
                         "corpus:caspar-2025 (the public corpus) or URL#sha256=HEX, downloaded once into a cache")
    output: str = setting("data/prepared", "dataset folder or s3://bucket/prefix (replaced as a whole)")
    test_size: float = setting(0.1, "share of games in the test split (0 with --validation-size 0: every game in "
                               "one split, for jobs/drift.py)", minimum=0, below=1)
    validation_size: float = setting(0.1, "share of games in the validation split", minimum=0, below=1)
    seed: int = setting(42, "seed of the split by game")
    mekfile: str | None = setting(None, "MegaMek unit table (TSV) for units' full armour and internal points")
    include_bots: bool = setting(False, "also the bot's moves (column is_bot)")

    def check(self) -> None:
        """The split sizes agree.

        Raises:
            UserError: they add up to 1 or more, or one of them alone is 0.
        """
        if self.test_size + self.validation_size >= 1:
            raise UserError(f"--test-size {self.test_size} and --validation-size {self.validation_size}: "
                            "must add up to less than 1")
        if (self.test_size == 0) != (self.validation_size == 0):
            raise UserError(f"--test-size {self.test_size} and --validation-size {self.validation_size}: both 0 (every "
                            "game in one split: new logs for jobs/drift.py) or both above 0 (a dataset to train on)")

    def splits(self) -> tuple[str, ...]:
        """The splits this dataset has rows in: all three, or train alone (both sizes 0)."""
        return ("train", "val", "test") if self.test_size > 0 else ("train",)


@dataclass
class Hyperparameters:
    """What a model is trained with: logged as MLflow parameters by train runs, tune trials and
    tuned best runs alike. A field with a `search` domain is sampled by the tune search space
    (seeded TPE); the study fixes the others."""
    hidden_layers: list[int] = setting([128, 128], "units per hidden layer", minimum=1, maximum=4096,
                                       search=("choice", [[128], [256], [128, 128], [256, 256], [354, 354], [512, 512],
                                                          [256, 256, 256], [354, 354, 354, 354]]))
    dropout_rate: float = setting(0.3, "dropout after each hidden layer", minimum=0, below=1, search=("uniform", 0.0, 0.4))
    learning_rate: float = setting(1e-3, "initial learning rate", above=0, maximum=10, search=("loguniform", 1e-4, 1e-2))
    batch_size: int = setting(128, "samples per gradient step", minimum=1, maximum=65536, search=("choice", [32, 64, 128, 256]))
    epochs: int = setting(200, "at most; early stopping ends sooner", minimum=1, maximum=100000, trial=None)
    patience: int = setting(25, "epochs without a better validation loss before stopping", minimum=1, maximum=100000, trial=None)
    activation: str = setting("relu", "activation of the hidden layers", choices=ACTIVATIONS,
                              search=("choice", ["relu", "gelu", "swish", "sigmoid"]))
    optimizer: str = setting("adam", "adam (with --weight-decay: AdamW's decoupled decay); sgd: SGD with Nesterov "
                             "momentum 0.9", choices=OPTIMIZERS)
    weight_decay: float = setting(0.0, "decoupled weight decay of the optimizer (0: none)", minimum=0, maximum=1,
                                  search=("choice", [0.0, 1e-5, 1e-4, 1e-3]))
    lr_schedule: str = setting("plateau", "plateau: cut the learning rate when val_loss stalls; cosine: warm up, then "
                               "cosine decay to 0 at the last epoch (RealMLP's recipe)",
                               choices=LR_SCHEDULES, search=("choice", ["plateau", "cosine"]))
    plateau_factor: float = setting(0.5, "plateau schedule: the learning rate is multiplied by this when val_loss stalls",
                                    above=0, below=1)
    plateau_patience: int = setting(0, "plateau schedule: epochs without a better val_loss before the cut "
                                    "(0: a third of --patience, at least 2)", minimum=0)
    plateau_floor: float = setting(0.01, "plateau schedule: the lowest learning rate, as a share of --learning-rate",
                                   minimum=0, maximum=1)
    warmup_share: float = setting(0.05, "cosine schedule: share of all training steps spent warming up", minimum=0, below=1)
    encoding_bins: int = setting(16, "piecewise-linear encoding bins per input; 0 feeds the inputs as they are",
                                 minimum=0, maximum=256, search=("choice", [0, 8, 16]))
    periodic_frequencies: int = setting(0, "periodic (PLR) embedding of each input with this many frequencies, "
                                        "instead of the piecewise-linear encoding (0: off)", minimum=0, maximum=64,
                                        search=("choice", [0, 16]))
    periodic_dimension: int = setting(8, "periodic embedding: values per input after its linear map", minimum=1, maximum=64)
    periodic_sigma: float = setting(1.0, "periodic embedding: standard deviation of the initial frequencies", above=0)
    ensemble_size: int = setting(4, "members of a TabM-style ensemble sharing the hidden layers (1: one network)",
                                 minimum=1, maximum=64, search=("choice", [1, 4]))
    ensemble_kind: str = setting("mini", "mini: TabM-mini, one adapter on the inputs, then shared hidden layers; full: TabM, "
                                 "BatchEnsemble adapters in every hidden layer", choices=ENSEMBLE_KINDS,
                                 search=("choice", ["mini", "full"]))
    ensemble_loss: str = setting("average", "average: the loss of the members' average prediction; members: the mean of "
                                 "the members' own losses (TabM's)", choices=ENSEMBLE_LOSSES,
                                 search=("choice", ["average", "members"]))
    trees: int = setting(600, "boosting iterations of each tree model (0: no trees, the network alone); in a study, the "
                         "iterations of a tree trial's recipe", minimum=0, maximum=2000,
                         search=("choice", [300, 600, 1000]), trial="trees")
    tree_learners: str = setting("sklearn+lightgbm", "the tree models, averaged with weights chosen on their out-of-fold "
                                 "predictions: scikit-learn's histogram GBDT, LightGBM, or both", choices=TREE_LEARNERS,
                                 search=("choice", ["sklearn", "lightgbm"]), trial="trees")
    tree_learning_rate: float = setting(0.03, "learning rate of the trees' boosting (scikit-learn's default: 0.1)",
                                        above=0, maximum=1, search=("loguniform", 0.01, 0.2), trial="trees")
    tree_leaves: int = setting(31, "most leaves of a tree", minimum=2, maximum=1024, search=("choice", [15, 31, 63, 127]),
                               trial="trees")
    tree_min_leaf: int = setting(10, "fewest training rows in a leaf of the trees (scikit-learn's default: 20)", minimum=1,
                                 maximum=10000, search=("choice", [5, 10, 20, 40, 80]), trial="trees")
    tree_l2: float = setting(0.0, "L2 regularisation of the trees' leaf values", minimum=0, maximum=1000,
                             search=("choice", [0.0, 0.1, 1.0, 10.0]), trial="trees")
    tree_feature_fraction: float = setting(0.5, "share of the features a split (scikit-learn) or a tree (LightGBM) may use",
                                           above=0, maximum=1, search=("uniform", 0.2, 1.0), trial="trees")
    tree_row_fraction: float = setting(0.8, "share of the rows each LightGBM tree is fitted on (bagging)", above=0, maximum=1,
                                       search=("uniform", 0.5, 1.0), trial="trees")
    tree_folds: int = setting(5, "folds by game the trees are cross-fitted in: the network and the ensemble weights learn "
                              "from the trees' predictions on games they were not fitted on", minimum=2, maximum=20, trial=None)
    seed: int = setting(42, "seed of weights, shuffling and the GBDT baseline", trial=None)


TRIAL_KINDS = ("trees", "network")  # a study's trials: a tree recipe, or a network correcting the study's trees


def trial_kind(name: str) -> str | None:
    """The kind of trial that reads a Hyperparameters field.

    Args:
        name: the field.

    Returns:
        "network" or "trees", or None where no trial varies it.
    """
    return {f.name: f.metadata["trial"] for f in dataclasses.fields(Hyperparameters)}.get(name)


def search_space(changes: list[str] = ()) -> dict[str, tuple]:
    """The searched fields of Hyperparameters.

    Args:
        changes: tune's --search values (see parse_search).

    Returns:
        {name: (sampler, *arguments)} with the changes applied, and "kind": the kinds of trial searched.

    Raises:
        UserError: a change names no searchable field or gives values the option refuses.
    """
    space = {f.name: f.metadata["search"] for f in dataclasses.fields(Hyperparameters) if f.metadata["search"]}
    return {"kind": ("choice", list(TRIAL_KINDS))} | space | dict(parse_search(change) for change in changes)


RANGES = ("uniform", "loguniform")


def parse_logged(cls, name: str, text: str | None):
    """A field's value from its MLflow parameter (str() of the value).

    Args:
        cls: the dataclass (e.g. Hyperparameters).
        name: the field.
        text: the logged parameter, or None.

    Returns:
        The value in the field's type; None if it does not parse.
    """
    import json

    if text is None:
        return None
    kind = field_types(cls)[name]
    try:
        if typing.get_origin(kind) is list:
            return [int(v) for v in json.loads(text)]
        return kind(text) if kind is not bool else text == "True"
    except (ValueError, TypeError):
        return None


def parse_search(change: str) -> tuple[str, tuple]:
    """One --search change, every value checked as the option's own.

    Args:
        change: NAME=V1,V2,… (a choice; a list of hidden layers as 256x256), or
            NAME=uniform:LOW,HIGH or NAME=loguniform:LOW,HIGH.

    Returns:
        (name, domain).

    Raises:
        UserError: an unknown name, a malformed domain or a value the option refuses.
    """
    name, _, domain = change.partition("=")
    if name == "kind":  # which kinds of trial the study runs, e.g. kind=trees
        kinds = domain.split(",")
        if not domain or not set(kinds) <= set(TRIAL_KINDS):
            raise UserError(f"--search {change}: kind is one or more of {', '.join(TRIAL_KINDS)}")
        return name, ("choice", [k for k in TRIAL_KINDS if k in kinds])
    fields = {f.name: f for f in dataclasses.fields(Hyperparameters) if f.metadata["trial"]}
    if name not in fields or not domain:
        every = {f.name for f in dataclasses.fields(Hyperparameters)} - set(fields)
        unread = f" ({name} is the same for every trial of a study)" if name in every else ""
        raise UserError(f"--search {change}: expected NAME=V1,V2 or NAME=uniform:LOW,HIGH with NAME kind or one of "
                        f"{', '.join(fields)}{unread}")
    kind, _, values = domain.rpartition(":")
    if kind and kind not in RANGES:
        raise UserError(f"--search {change}: {kind!r} is not uniform or loguniform")
    convert = field_types(Hyperparameters)[name]
    try:
        if typing.get_origin(convert) is list:
            parsed = [[int(units) for units in value.split("x")] for value in values.split(",")]
        else:
            parsed = [convert(value) for value in values.split(",")]
    except ValueError:
        raise UserError(f"--search {change}: values of --{name.replace('_', '-')} are {convert.__name__} numbers") from None
    if name == "trees" and 0 in parsed:
        raise UserError(f"--search {change}: a tree trial's recipe fits at least 1 iteration")
    for value in parsed:
        problem = _out_of_range(value, fields[name].metadata) if not isinstance(value, list) else next(
            filter(None, (_out_of_range(v, fields[name].metadata) for v in value)), None)
        if problem:
            raise UserError(f"--search {change}: {value} {problem}")
    if kind:
        if convert is not float:
            raise UserError(f"--search {change}: --{name.replace('_', '-')} takes a list of values, not a range")
        if len(parsed) != 2 or not parsed[0] < parsed[1] or (kind == "loguniform" and parsed[0] <= 0):
            raise UserError(f"--search {change}: a range is LOW,HIGH with LOW < HIGH (and LOW > 0 for loguniform)")
        return name, (kind, *parsed)
    return name, ("choice", parsed)


@dataclass
class Tracking:
    """Where a run's data comes from and where it is recorded."""
    data: str = setting("data/prepared", "prepared dataset (folder or s3://)")
    experiment_name: str = setting("caspar", "MLflow experiment")
    run_name: str | None = setting(None, "the name jobs/export.py --run finds the model by")
    model_name: str = setting("CASPAR", "registered model name")
    alias: str | None = setting(None, "registry alias to point at the new version (export with models:/NAME@ALIAS)")
    fit_on: str = setting("train+val", "the games the shipped model's trees are fitted on: train, train+val (the test "
                          "split scores it), all (every game; the figures are then those of the train+val fit); the "
                          "network always trains on train and is chosen on validation", choices=tuple(FIT_ON))

    def check(self) -> None:
        """Names are checked before any work: a name that fails only once the model is trained loses the run.

        Raises:
            UserError: an alias, model name, run name or experiment name MLflow would refuse.
        """
        if self.alias is not None and RESERVED_ALIAS.match(self.alias):
            raise UserError(f"--alias {self.alias}: MLflow reserves 'latest' and v<number> for versions; choose another name")
        if self.alias is not None and not ALIAS.match(self.alias):
            raise UserError(f"--alias {self.alias!r}: letters, digits, '_' and '-' only, at most 255")
        if not MODEL_NAME.match(self.model_name):
            raise UserError(f"--model-name {self.model_name!r}: 1 to 255 characters, no '/' or ':' and not only spaces")
        if self.run_name is not None and not 0 < len(self.run_name.strip()) <= 200:
            raise UserError(f"--run-name {self.run_name[:40]!r}{'…' if len(self.run_name) > 40 else ''}: "
                            "1 to 200 characters, not only spaces")
        for option, name in (("run-name", self.run_name), ("model-name", self.model_name), ("warm-start",
                                                                                          getattr(self, "warm_start", None))):
            if name is not None and "'" in name and '"' in name:
                raise UserError(f"--{option} {name!r}: a name with both ' and \" cannot be looked up in MLflow")
        if not 0 < len(self.experiment_name.strip()) <= 200:
            raise UserError(f"--experiment-name {self.experiment_name[:40]!r}: 1 to 200 characters, not only spaces")


@dataclass
class TrainConfig(Tracking, Hyperparameters):
    """jobs/train.py's options: where the run is recorded, what it is trained with, and the CPUs of each tree fit."""
    cpus_per_fit: int = setting(1, "CPUs (threads) each tree fit holds; the fits run side by side as Ray tasks on every "
                                "CPU of this machine (or of the cluster of RAY_ADDRESS)", minimum=1, maximum=256)


@dataclass
class TuneConfig(Tracking):
    """jobs/tune.py's options: the study's budget, trials, search space, scheduler and storage."""
    experiment_name: str = setting("caspar-tune", "MLflow experiment")
    run_name: str = setting("tuned", "the study's name, and the run name of its best model")
    n_trials: int = setting(100, "trials to run", minimum=1)
    n_jobs: int = setting(-1, "concurrent trials; -1: as many as the cluster's CPUs allow", minimum=1, also=(-1,))
    cpus_per_trial: float = setting(1.0, "CPUs reserved for each trial", above=0)
    epochs: int = setting(30, "at most, per trial", minimum=1)
    grace_period: int = setting(3, "epochs every trial gets before ASHA may stop it", minimum=1)
    time_budget: float | None = setting(None, "seconds for the whole study", above=0)
    storage_path: str | None = setting(None, "study storage (folder or s3://; shared storage with several nodes); "
                                             "default ./ray_results")
    resume: bool = setting(False, "continue the interrupted study of this --run-name")
    replace: bool = setting(False, "start the study of --run-name anew, removing the one stored under that name")
    register_partial: bool = setting(False, "when the study is interrupted (Ctrl-C), still score and register its best "
                                            "trial (by default an interrupted study registers nothing)")
    seed: int = setting(42, "seed of the search and of every trial's training")
    max_failures: int = setting(2, "retries of a trial whose worker died", minimum=0)
    keep_checkpoints: int = setting(2, "checkpoints kept per trial (the best ones)", minimum=1)
    warm_start: str | None = setting(None, "seed the search with the best trials of an earlier study (its --run-name, "
                                           "in this experiment): their configurations and results, where this search "
                                           "space holds them")
    search: list[str] = setting([], "change the search space: NAME=V1,V2 (a choice; hidden layers as 256x256) or "
                                "NAME=uniform:LOW,HIGH or NAME=loguniform:LOW,HIGH, NAME a train option a trial reads "
                                "(e.g. tree_leaves=31,63 learning_rate=loguniform:1e-4,1e-2), or kind=trees or "
                                "kind=network for one kind of trial")
    trees: int = setting(600, "boosting iterations of the study's own tree recipes (jobs/train.py's defaults), cross-fitted "
                         "before the search: every network trial corrects them, and they are candidates of the "
                         "ensemble beside the tree trials' recipes", minimum=1, maximum=2000)
    reduction_factor: int = setting(3, "ASHA keeps the best 1/this of the trials at each of its milestones", minimum=2)
    report_seconds: float = setting(10.0, "a trial reports at least this often (at an epoch's end), so that little is "
                                          "lost when the study's time is up", above=0)

    @functools.cached_property
    def space(self) -> dict[str, tuple]:
        """The study's search space: search_space() with --search applied, parsed once."""
        return search_space(self.search)

    def check(self) -> None:
        """The names and the search space are valid, and the options agree.

        Raises:
            UserError: a name, a --search change or a combination of options refused.
        """
        super().check()
        self.space  # noqa: B018  (parsed: every change is valid)
        if self.replace and self.resume:
            raise UserError("--replace and --resume: choose one")
        if "/" in self.run_name or "\\" in self.run_name or self.run_name.strip(".") == "":
            raise UserError(f"--run-name {self.run_name!r}: a study's name is its folder in --storage-path: "
                            "no '/' or '\\', not '.' or '..'")

    def trial_hyperparameters(self) -> Hyperparameters:
        """What every trial starts from before the search space overrides its sampled fields:
        no early stopping of its own (ASHA stops trials), the study's epochs and seed."""
        return Hyperparameters(epochs=self.epochs, patience=self.epochs, seed=self.seed, trees=self.trees)


@dataclass
class ExportConfig:
    """jobs/export.py's options: which model, and where its formats go."""
    run: str = setting(None, required=True, help="run name, run id, models:/NAME/VERSION, models:/NAME@ALIAS, or the "
                       "models:/m-… URI a train or tune run printed")
    output: str = setting("exports", "folder to write NAME/ into (the model in every format, NAME = the run's name)")
    experiment_name: str | None = setting(None, "look for the run name in this experiment only")


@dataclass
class DriftConfig:
    """jobs/drift.py's options: the model, the new logs' dataset, the experiment the check is logged to."""
    run: str = setting(None, required=True, help="the model: run name, run id, models:/NAME/VERSION, models:/NAME@ALIAS")
    data: str = setting(None, required=True, help="a prepared dataset of the new logs (jobs/prepare.py), every split")
    experiment_name: str | None = setting(None, "look for the run name in this experiment only")
    drift_experiment: str = setting("caspar-drift", "the experiment the check is logged to")


def field_types(cls) -> dict[str, type]:
    """Each field's type.

    Args:
        cls: a dataclass.

    Returns:
        {field: type}, Optional[T] as T (lists stay lists).
    """
    hints = typing.get_type_hints(cls)
    resolved = {}
    for name, hint in hints.items():
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        resolved[name] = hint if not args or typing.get_origin(hint) is list else args[0]
    return resolved


def check(config) -> None:
    """Every field inside its allowed values, then the config's own check().

    Args:
        config: any of the jobs' configs.

    Raises:
        UserError: naming the option, its value and what it allows.
    """
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        for item in value if isinstance(value, list) else [value]:
            problem = _out_of_range(item, f.metadata)
            if problem:
                shown = " ".join(map(str, value)) if isinstance(value, list) else value
                raise UserError(f"--{f.name.replace('_', '-')} {shown}: {problem}")
    if hasattr(config, "check"):
        config.check()


def _out_of_range(value, meta) -> str | None:
    if meta.get("choices") is not None and value is not None:
        return None if value in meta["choices"] else f"must be one of {', '.join(map(str, meta['choices']))}"
    if value is None or isinstance(value, (bool, str)) or value in meta.get("also", ()):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    low, high, above, below = meta.get("minimum"), meta.get("maximum"), meta.get("above"), meta.get("below")
    if (low is not None and value < low) or (high is not None and value > high) \
            or (above is not None and value <= above) or (below is not None and value >= below):
        lower = f"[{low}" if low is not None else f"({above}" if above is not None else "(-inf"
        upper = f"{high}]" if high is not None else f"{below})" if below is not None else "inf)"
        extra = "".join(f" or {v}" for v in meta.get("also", ()))
        return f"must be in {lower}, {upper}{extra}"
    return None


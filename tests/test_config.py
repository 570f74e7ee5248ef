"""Settings: one dataclass per job gives the command line, the checks and the logged parameters."""
import dataclasses
import os
import subprocess
import sys

import pytest
from conftest import ROOT

from caspar import cli, config
from caspar.data.features import markdown


def run_job(job, *args, env=None):
    return subprocess.run([sys.executable, str(ROOT / "jobs" / f"{job}.py"), *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


def test_help_shows_every_setting_with_its_default():
    text = cli.parser_for(config.TrainConfig, "").format_help()
    for f in dataclasses.fields(config.TrainConfig):
        assert f"--{f.name.replace('_', '-')}" in text
    assert "(default: 0.3)" in text and "(default: [128, 128])" in text
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "(default: None)" not in cli.parser_for(config.ExportConfig, "").format_help()


def test_parsed_values_reach_the_configuration():
    settings, verbose = cli.parse(config.TrainConfig, "", ["--hidden-layers", "64", "32", "--activation", "gelu",
                                                              "--alias", "champion", "--verbose"])
    assert settings.hidden_layers == [64, 32] and settings.activation == "gelu" and settings.alias == "champion"
    assert verbose and settings.dropout_rate == config.Hyperparameters().dropout_rate


@pytest.mark.parametrize("job, args, named", [
    ("train", ["--epochs", "0"], "--epochs 0: must be in [1, 100000]"),
    ("train", ["--learning-rate", "-1"], "--learning-rate -1.0: must be in (0, 10]"),
    ("train", ["--dropout-rate", "1.5"], "--dropout-rate 1.5: must be in [0, 1)"),
    ("train", ["--batch-size", "0"], "--batch-size 0: must be in [1, 65536]"),
    ("train", ["--hidden-layers", "64", "0"], "--hidden-layers 64 0: must be in [1, 4096]"),
    ("train", ["--encoding-bins", "-3"], "--encoding-bins -3: must be in [0, 256]"),
    ("train", ["--learning-rate", "nan"], "--learning-rate nan: must be a finite number"),
    ("tune", ["--n-trials", "0"], "--n-trials 0: must be in [1, inf)"),
    ("tune", ["--n-jobs", "0"], "--n-jobs 0: must be in [1, inf) or -1"),
    ("tune", ["--cpus-per-trial", "0"], "--cpus-per-trial 0.0: must be in (0, inf)"),
    ("tune", ["--time-budget", "-5"], "--time-budget -5.0: must be in (0, inf)"),
    ("prepare", ["--test-size", "1"], "--test-size 1.0: must be in [0, 1)"),
    ("prepare", ["--test-size", "0"], "both 0 (every game in one split: new logs for jobs/drift.py) or both above 0"),
    ("prepare", ["--test-size", "0.5", "--validation-size", "0.5"], "must add up to less than 1"),
    ("train", ["--epochs", "many"], "argument --epochs: invalid int value: 'many'"),
])
def test_a_bad_option_is_one_line_before_anything_loads(job, args, named, tmp_path):
    result = run_job(job, *args, "--data" if job != "prepare" else "--output", str(tmp_path / "x"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and named in result.stderr, result.stderr
    assert not (tmp_path / "x").exists()


def test_the_search_space_samples_hyperparameters_by_their_own_names():
    space = config.search_space()
    assert {"hidden_layers", "learning_rate", "trees"} <= set(space)
    trial = config.TuneConfig(epochs=7, seed=3).trial_hyperparameters()
    assert (trial.epochs, trial.patience, trial.seed) == (7, 7, 3)


def test_every_searched_domain_lies_inside_its_allowed_values():
    fields = {f.name: f for f in dataclasses.fields(config.Hyperparameters)}
    for name, (kind, *args) in config.search_space().items():
        if name == "kind":  # which kinds of trial the study runs: no field of Hyperparameters
            assert args[0] == list(config.TRIAL_KINDS)
            continue
        values = args[0] if kind == "choice" else args  # a choice's values; a range's ends
        for value in values:
            config.check(dataclasses.replace(config.Hyperparameters(), **{name: value}))  # raises if outside
        assert kind in ("choice", "uniform", "loguniform"), name
        assert fields[name].metadata["search"] == (kind, *args)


def test_a_value_outside_a_fields_choices_is_refused_by_the_same_check():
    with pytest.raises(config.UserError, match="--activation softmax: must be one of relu"):
        config.check(config.Hyperparameters(activation="softmax"))
    with pytest.raises(config.UserError, match=r"--dropout-rate 1.2: must be in \[0, 1\)"):
        config.check(config.Hyperparameters(dropout_rate=1.2))


def test_feature_documentation_is_current():
    with open(ROOT / "docs" / "features.md") as handle:
        assert handle.read() == markdown(), "docs/features.md is stale: run `make docs`"
    assert "| `strategic_goal` |" in markdown() and "|  |" not in markdown()  # every feature described


def test_search_changes_replace_domains_and_are_checked_like_options():
    space = config.search_space(["trees=10,50", "learning_rate=loguniform:1e-4,1e-2", "hidden_layers=64,128x128",
                                 "kind=trees"])
    assert space["kind"] == ("choice", ["trees"])
    assert space["trees"] == ("choice", [10, 50]) and space["learning_rate"] == ("loguniform", 1e-4, 1e-2)
    assert space["hidden_layers"] == ("choice", [[64], [128, 128]])
    for bad, named in [("trees=5000", r"5000 must be in \[0, 2000\]"), ("activation=softmax", "must be one of"),
                       ("nothing=1", r"NAME kind or one of .*tree_row_fraction$"), ("trees=uniform:1,9", "not a range"),
                       ("dropout_rate=uniform:0.3,0.1", "LOW < HIGH"), ("trees=many", "int numbers"),
                       # a field no trial reads, or one every trial must share, is refused rather than ignored
                       ("tree_folds=3,5", "the same for every trial"), ("epochs=5,10", "the same for every trial"),
                       ("seed=1,2", "the same for every trial"), ("trees=0,50", "at least 1"),
                       ("kind=forest", "kind is one or more of trees, network")]:
        with pytest.raises(config.UserError, match=named):
            config.check(config.TuneConfig(search=[bad]))


def test_a_bad_search_change_is_one_line_before_anything_loads(tmp_path):
    result = run_job("tune", "--search", "trees=5000", "--data", str(tmp_path / "x"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--search trees=5000" in result.stderr


@pytest.mark.parametrize("option, value, named", [
    ("--model-name", "", "--model-name ''"), ("--model-name", "a/b", "no '/' or ':'"), ("--model-name", "   ", "only spaces"),
    ("--alias", "champ/ion x", "letters, digits"), ("--alias", "v3", "reserves"), ("--run-name", "x" * 300, "1 to 200"),
    ("--run-name", "it's \"quoted\"", "both ' and \""), ("--experiment-name", "", "--experiment-name ''")])
def test_a_name_mlflow_or_the_registry_would_refuse_is_refused_before_any_work(option, value, named, tmp_path):
    """Checked before the dataset loads (it does not exist here): a name that failed only after
    training would lose the run, or leave a registered version behind."""
    result = run_job("train", option, value, "--data", str(tmp_path / "nothing"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and named in result.stderr, result.stderr


def test_a_name_with_a_quote_is_looked_up_as_written():
    from caspar import tracking

    assert tracking.literal("o'brien") == '"o\'brien"' and tracking.literal("plain") == "'plain'"


def test_a_study_stays_inside_its_storage_and_does_not_replace_another_unasked(tmp_path):
    from caspar.tuning.checks import check_new_study

    for name in ("../../esc", "a/b", "..", "a\\b"):
        with pytest.raises(config.UserError, match="a study's name is its folder"):
            config.check(config.TuneConfig(run_name=name))
    with pytest.raises(config.UserError, match="choose one"):
        config.check(config.TuneConfig(replace=True, resume=True))
    stored = tmp_path / "ray" / "model-v1"
    stored.mkdir(parents=True)
    (stored / "tuner.pkl").write_bytes(b"state")
    study = config.TuneConfig(run_name="model-v1", storage_path=str(tmp_path / "ray"))
    with pytest.raises(config.UserError, match="a study of that name is stored in .*--resume.*--replace"):
        check_new_study(study)
    assert (stored / "tuner.pkl").exists()
    check_new_study(config.TuneConfig(run_name="model-v2", storage_path=str(tmp_path / "ray")))  # a new name
    check_new_study(config.TuneConfig(run_name="model-v1", storage_path=str(tmp_path / "ray"), replace=True))
    assert not stored.exists()


def test_credentials_in_a_tracking_uri_are_moved_out_of_it_and_never_shown(monkeypatch):
    from caspar import tracking

    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI"):
        monkeypatch.setenv(name, "")  # recorded, so that what the call sets is undone after the test
        monkeypatch.delenv(name)
    bare = tracking.credentials_out_of("http://ann:s%40cret@127.0.0.1:5005/")
    assert bare == "http://127.0.0.1:5005/" and os.environ["MLFLOW_TRACKING_URI"] == bare
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("ann", "s@cret")
    assert tracking.shown("https://ann:SECRET@mlflow.example:443/x") == "https://***@mlflow.example:443/x"
    assert "SECRET" not in tracking.ui_hint("http://ann:SECRET@h:1")


def test_a_job_never_prints_the_password_of_its_tracking_uri(sample_dataset):
    from services import free_port

    port = free_port()
    result = run_job("train", "--data", sample_dataset, env={"MLFLOW_TRACKING_URI": f"http://ann:SECRET@127.0.0.1:{port}"})
    assert result.returncode == 2 and f"MLflow server http://127.0.0.1:{port} does not answer" in result.stderr
    assert "SECRET" not in result.stdout + result.stderr


def test_absurd_sizes_are_refused_before_anything_loads(tmp_path):
    for option, value in (("--hidden-layers", "100000000"), ("--batch-size", "10000000"), ("--epochs", "1000000000")):
        result = run_job("train", option, value, "--data", str(tmp_path / "nothing"))
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and f"{option} {value}: must be in" in result.stderr

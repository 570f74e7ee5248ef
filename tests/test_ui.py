"""The MLflow UI as a user opens it: a real MLflow server, a real train run, Debian's Chromium
headless (skipped where no Chromium is installed; CI installs it)."""
import re
import shutil
import subprocess

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [pytest.mark.browser, pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (Debian: apt install chromium)")]


def page_text(url: str, profile) -> str:
    """The text of the page once its scripts have run (a new, empty browser profile each time: what a
    new user's browser shows, with nothing the UI keeps in the browser)."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=20000", "--dump-dom"]
    html = subprocess.run([CHROMIUM, *flags, url], capture_output=True, text=True, timeout=120).stdout
    html = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", html, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_the_link_a_job_prints_opens_its_training_runs(tracking_server, sample_dataset, tmp_path):
    from caspar.config import TrainConfig
    from caspar.data.prepared import load_prepared
    from caspar.training.train import train

    result = train(TrainConfig(hidden_layers=[16], epochs=2, trees=0, data=sample_dataset,  # the UI is the subject
                               experiment_name="test-ui", run_name="seen-in-the-ui", model_name="CASPAR-ui"))
    link = re.search(r"runs: (\S+)", result.lines()[-1]).group(1)
    assert link.startswith(tracking_server)
    runs = page_text(link, tmp_path / "a")
    # the experiment opens on its runs in the model-training view, not on MLflow 3's GenAI overview
    assert "Runs - Experiment" in runs and "seen-in-the-ui" in runs, runs[:500]
    assert "Model registry" in runs and "Judges" not in runs and "Agent versions" not in runs
    run = page_text(link.replace("/runs?", f"/runs/{result.run_id}?"), tmp_path / "b")
    version = load_prepared(sample_dataset).version
    assert "test R²" in run.split("Description")[1][:300]  # the run's summary line is its description
    assert f"train ({version})" in run and "Datasets None" not in run  # what trained it
    assert "best_val_loss" in run

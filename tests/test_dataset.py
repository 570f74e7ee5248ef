"""The prepare job: split by game, Parquet + schema + manifest, replacement, inputs, errors."""
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pyarrow.dataset as pads
import pytest
from conftest import ROOT

from caspar.config import PrepareConfig
from caspar.data import dataset, prepared
from caspar.data import rows as game_rows
from caspar.data.features import feature_bounds, featurize, load_unit_points, schema
from caspar.data.gamelog import read_log
from caspar.data.samples import write_samples
from caspar.errors import UserError


def read_rows(path, filesystem=None):
    return pads.dataset(f"{path}/rows", format="parquet", filesystem=filesystem).to_table()


def test_split_is_by_game_and_deterministic():
    segments = np.array([0, 0, 1, 1, 1, 2, 3, 3])
    first = game_rows.split_of("a.tsv", segments, 7, 0.3, 0.3)
    assert first.tolist() == game_rows.split_of("a.tsv", segments, 7, 0.3, 0.3).tolist()
    for segment in np.unique(segments):
        assert len(set(first[segments == segment])) == 1
    games = [game_rows.split_of(f"g{i}.tsv", np.array([0]), 7, 0.2, 0.2)[0] for i in range(400)]
    other_seed = [game_rows.split_of(f"g{i}.tsv", np.array([0]), 8, 0.2, 0.2)[0] for i in range(400)]
    assert games != other_seed
    shares = {split: games.count(split) / 400 for split in ("train", "val", "test")}
    assert 0.5 < shares["train"] < 0.7 and 0.12 < shares["val"] < 0.28 and 0.12 < shares["test"] < 0.28


@pytest.fixture(scope="module")
def sample_logs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("raw")
    write_samples(folder / "nested", count=12, seed=3)
    (folder / "broken.tsv").write_bytes(b"\x00\x01garbage\nROUND\tPHASE\n1\t2\t3\n")
    (folder / "notes.txt").write_text("not a log")
    return folder


def test_prepare_writes_rows_schema_and_manifest(ray_local, sample_logs, tmp_path):
    out = tmp_path / "prepared"
    summary = dataset.prepare(PrepareConfig(input=str(sample_logs), output=str(out), seed=6))
    table = read_rows(out)
    points = load_unit_points()
    expected = sum(len(featurize(read_log(p.read_bytes(), p.name), points))
                   for p in sorted((sample_logs / "nested").glob("*.tsv")))
    assert table.num_rows == expected == sum(summary.rows.values())
    assert json.loads((out / "schema.json").read_text()) == schema()
    manifest = json.loads((out / "manifest.json").read_text())
    by_name = {f["file"]: f for f in manifest["files"]}
    assert len(by_name) == 13 and "notes.txt" not in by_name
    assert by_name["broken.tsv"]["problems"] and by_name["broken.tsv"]["rows"] == 0
    import hashlib
    sample = sorted((sample_logs / "nested").glob("*.tsv"))[0]
    assert by_name[sample.name]["sha256"] == hashlib.sha256(sample.read_bytes()).hexdigest()
    assert by_name[sample.name]["path"] == f"nested/{sample.name}"
    assert manifest["rows"] == summary.rows and summary.files_with_problems == 1
    # identity columns and game-level split
    assert set(table.column_names) >= {"file", "segment", "round", "player_id", "team_id", "entity_id",
                                       "move_index", "split", "features", "reward"}
    frame = table.select(["file", "segment", "split", "move_index"]).to_pandas()
    assert frame.groupby(["file", "segment"])["split"].nunique().max() == 1
    assert not frame.duplicated(["file", "move_index"]).any()
    features = np.stack(table["features"].to_numpy(zero_copy_only=False))
    assert features.shape[1] == 354 and np.isfinite(features).all()
    loaded = prepared.load_prepared(str(out))  # each row's log file, for grouping by game
    for name in ("train", "val", "test"):
        assert len(loaded.files[name]) == len(loaded.splits[name][1])
        assert sorted(loaded.files[name]) == sorted(frame.loc[frame["split"] == name, "file"])


def test_preparing_in_this_process_writes_what_ray_data_writes(ray_local, sample_logs, tmp_path):
    """A few local logs are prepared without Ray: the same rows, splits and manifest (but for where
    and when the work ran) as the Ray Data path."""
    config = dict(input=str(sample_logs), seed=6)
    with_ray = dataset.prepare(PrepareConfig(**config, output=str(tmp_path / "ray")), in_process=False)
    here = dataset.prepare(PrepareConfig(**config, output=str(tmp_path / "here")))
    assert with_ray.ray_start_seconds > 0 and here.ray_start_seconds == 0  # 13 games: in this process by default
    order = ["file", "move_index"]
    ray_rows, here_rows = (read_rows(tmp_path / name).sort_by([(c, "ascending") for c in order]) for name in ("ray", "here"))
    assert ray_rows.num_rows > 0 and ray_rows.equals(here_rows)
    manifests = [json.loads((tmp_path / name / "manifest.json").read_text()) for name in ("ray", "here")]
    for manifest in manifests:
        del manifest["created"], manifest["row_files"]
        for entry in manifest["files"]:
            entry.pop("cost", None)
    assert manifests[0] == manifests[1]
    assert (tmp_path / "ray" / "schema.json").read_text() == (tmp_path / "here" / "schema.json").read_text()


def test_rerun_replaces_the_dataset(ray_local, sample_logs, tmp_path):
    out = tmp_path / "prepared"
    dataset.prepare(PrepareConfig(input=str(sample_logs), output=str(out), seed=6))
    first = read_rows(out).num_rows
    dataset.prepare(PrepareConfig(input=str(sample_logs), output=str(out), seed=6))
    assert read_rows(out).num_rows == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]  # no staging, old copy or lock file left


def test_zip_input_and_bot_moves(ray_local, sample_logs, tmp_path):
    archive = tmp_path / "logs.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:  # compressed: no log text readable as is
        for path in (sample_logs / "nested").glob("*.tsv"):
            z.write(path, f"games/{path.name}")
    humans = dataset.prepare(PrepareConfig(input=str(archive), output=str(tmp_path / "humans"), seed=6))
    shouted = archive.rename(tmp_path / "LOGS.ZIP")  # an archive by its content, whatever its name's case
    everyone = dataset.prepare(PrepareConfig(input=str(shouted), output=str(tmp_path / "all"), include_bots=True, seed=6))
    table = read_rows(tmp_path / "all")
    assert sum(everyone.rows.values()) > sum(humans.rows.values())
    assert table.filter(table["is_bot"]).num_rows == sum(everyone.rows.values()) - sum(humans.rows.values())


def test_refuses_to_replace_a_folder_that_is_not_a_dataset(ray_local, sample_logs, tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a prepared dataset"):
        dataset.prepare(PrepareConfig(input=str(sample_logs), output=str(tmp_path)))
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_a_manifest_alone_does_not_make_a_folder_a_dataset(ray_local, sample_logs, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "manifest.json").write_text("{}")
    (site / "index.html").write_text("hi")
    with pytest.raises(UserError, match=r"is not a prepared dataset \(it holds index.html\)"):
        dataset.prepare(PrepareConfig(input=str(sample_logs), output=str(site)))
    assert sorted(p.name for p in site.iterdir()) == ["index.html", "manifest.json"]


def test_refuses_an_input_inside_the_output(ray_local, sample_logs, tmp_path):
    import shutil

    shutil.copytree(sample_logs, tmp_path / "D" / "logs")
    before = sorted(p.name for p in (tmp_path / "D" / "logs").rglob("*.tsv"))
    with pytest.raises(UserError, match="lies inside --output"):
        dataset.prepare(PrepareConfig(input=str(tmp_path / "D" / "logs"), output=str(tmp_path / "D")))
    assert sorted(p.name for p in (tmp_path / "D" / "logs").rglob("*.tsv")) == before


def test_a_linked_dataset_folder_stays_a_link_to_the_new_dataset(ray_local, sample_logs, tmp_path):
    dataset.prepare(PrepareConfig(input=str(sample_logs), output=str(tmp_path / "real"), seed=6))
    (tmp_path / "linked").symlink_to(tmp_path / "real")
    summary = dataset.prepare(PrepareConfig(input=str(sample_logs), output=str(tmp_path / "linked"), seed=7))
    assert (tmp_path / "linked").is_symlink() and (tmp_path / "real" / ".caspar-output").is_file()
    assert json.loads((tmp_path / "real" / "manifest.json").read_text())["settings"]["seed"] == 7
    assert sum(summary.rows.values()) > 0 and not list(tmp_path.glob(".*staging*"))


def run_prepare(*args, env=None):
    return subprocess.run([sys.executable, str(ROOT / "jobs" / "prepare.py"), *args], capture_output=True,
                          text=True, timeout=120, env=env)


@pytest.mark.parametrize("make_input, message", [
    (lambda tmp: tmp / "missing", "input path does not exist"),
    (lambda tmp: tmp, "no game logs"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, make_input, message):
    result = run_prepare("--input", str(make_input(tmp_path)), "--output", str(tmp_path / "out"))
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_unreachable_s3_endpoint_is_one_line_and_exit_2(tmp_path):
    from services import free_port

    env = {**__import__("os").environ, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
           "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"}
    result = run_prepare("--input", "s3://logs/raw", "--output", str(tmp_path / "out"), env=env)
    assert result.returncode == 2 and "cannot reach s3://logs/raw" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_s3_input_and_output(ray_local, s3_endpoint, sample_logs, tmp_path):
    from services import s3_client

    client = s3_client(s3_endpoint)
    client.create_bucket(Bucket="games")
    for path in sorted((sample_logs / "nested").glob("*.tsv")):
        client.upload_file(str(path), "games", f"raw/{path.name}")
    summary = dataset.prepare(PrepareConfig(input="s3://games/raw", output="s3://games/prepared", seed=6))
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="games", Prefix="prepared/")["Contents"]]
    assert "prepared/manifest.json" in keys and "prepared/schema.json" in keys
    assert not any(".staging-" in k for k in client.list_objects_v2(Bucket="games")["Contents"] for k in [k["Key"]])
    from caspar import storage
    filesystem, path = storage.resolve("s3://games/prepared")
    assert read_rows(path, filesystem).num_rows == sum(summary.rows.values()) > 0


def test_real_corpus(corpus_dataset):
    folder, summary = corpus_dataset
    assert summary.files == 143 and summary.unreadable_files == 0
    assert sum(summary.rows.values()) == 9502 and summary.human_moves == 10285
    table = read_rows(folder)
    features = np.stack(table["features"].to_numpy(zero_copy_only=False)).astype(np.float64)
    reward = table["reward"].to_numpy()
    bounds = feature_bounds()
    assert np.isfinite(features).all() and np.isfinite(reward).all()
    assert (features >= bounds[:, 0] - 1e-6).all() and (features <= bounds[:, 1] + 1e-6).all()
    assert ((reward >= 0) & (reward <= 1)).all()
    assert abs(reward.mean() - 0.556) < 0.001


def test_the_listing_visits_each_real_folder_once_and_names_odd_file_names(tmp_path):
    from caspar.data.logfiles import find_logs

    root = tmp_path / "logs"
    (root / "a").mkdir(parents=True)
    (root / "a" / "game.tsv").write_text("x")
    (root / "a" / "loop").symlink_to(root)  # two symbolic-link loops
    (root / "b").symlink_to(root / "a")
    with open(os.fsencode(root) + b"/caf\xe9.tsv", "wb") as handle:  # a Windows-1252 name
        handle.write(b"x")
    inputs = find_logs(str(root))
    assert [os.path.basename(p) for p in inputs.paths] == ["game.tsv"]
    [(odd, why)] = inputs.skipped.items()
    assert odd.endswith("caf\\xe9.tsv") and "not UTF-8" in why


def test_a_zip_input_has_a_size_cap_and_no_unpacked_copy_outlives_its_run(tmp_path, monkeypatch):
    import tempfile

    from caspar.data import logfiles

    archive = tmp_path / "logs.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("game.tsv", "x" * 5000)
    abandoned = tempfile.mkdtemp(prefix=f"{logfiles.ZIP_FOLDER_PREFIX}{2**22 + 1}-")  # its process is gone
    with logfiles.found_logs(str(archive)) as inputs:
        unpacked = inputs.root
        assert os.path.isfile(os.path.join(unpacked, "game.tsv"))
    assert not os.path.exists(unpacked) and not os.path.exists(abandoned)
    monkeypatch.setattr(logfiles, "ZIP_LIMIT_BYTES", 4000)
    with pytest.raises(UserError, match=r"logs.zip: unpacks to 0.0 GiB, more than"):
        logfiles.unpack(str(archive))


class FailingCopies:
    """A local filesystem whose copies fail from the `fail_from`-th on (an object store going down)."""

    def __init__(self, fail_from):
        import pyarrow.fs as pafs

        self.local, self.fail_from, self.copies = pafs.LocalFileSystem(), fail_from, 0

    def copy_file(self, source, target):
        self.copies += 1
        if self.copies >= self.fail_from:
            raise OSError("connection reset")
        self.local.create_dir(os.path.dirname(target))
        self.local.copy_file(source, target)

    def __getattr__(self, name):
        return getattr(self.local, name)


@pytest.mark.parametrize("fail_from", [1, 2, 3, 99])
def test_object_store_replacement_keeps_the_old_version_whole_until_the_new_is(tmp_path, fail_from):
    from caspar import storage

    live = tmp_path / "dataset"
    (live / "rows").mkdir(parents=True)
    (live / "rows" / "old.parquet").write_text("old rows")
    (live / "manifest.json").write_text('{"row_files": ["rows/old.parquet"]}')
    filesystem = FailingCopies(fail_from)
    try:
        with storage.replacing_objects(filesystem, str(live), str(live), "the dataset", last="manifest.json") as staging:
            os.makedirs(f"{staging}/rows")
            storage.write_bytes(filesystem.local, f"{staging}/rows/new.parquet", b"new rows")
            storage.write_bytes(filesystem.local, f"{staging}/manifest.json", b'{"row_files": ["rows/new.parquet"]}')
    except OSError:
        manifest = json.loads((live / "manifest.json").read_text())
        assert manifest["row_files"] == ["rows/old.parquet"] and (live / "rows" / "old.parquet").read_text() == "old rows"
    else:
        assert fail_from == 99
        assert json.loads((live / "manifest.json").read_text())["row_files"] == ["rows/new.parquet"]
        assert not (live / "rows" / "old.parquet").exists() and (live / "rows" / "new.parquet").read_text() == "new rows"
    assert [p.name for p in tmp_path.iterdir()] == ["dataset"]  # the staging prefix is gone either way


def test_a_published_archive_is_downloaded_once_checked_and_prepared(tmp_path, monkeypatch):
    """--input URL#sha256=HEX against a local HTTP server: downloaded into the cache, checked,
    prepared; a second run needs no server; a wrong hash keeps nothing."""
    import functools
    import hashlib
    import http.server
    import threading

    from caspar.data import corpus

    served = tmp_path / "served"
    write_samples(tmp_path / "logs", count=30, seed=11)
    served.mkdir()
    with zipfile.ZipFile(served / "logs.zip", "w") as archive:
        for path in sorted((tmp_path / "logs").rglob("*.tsv")):
            archive.write(path, f"corpus/{path.name}")
            archive.writestr(f"__MACOSX/corpus/._{path.name}", b"\x00\x05\x16\x07 macOS metadata")  # as the public archive has
    digest = hashlib.sha256((served / "logs.zip").read_bytes()).hexdigest()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/logs.zip"
    env = {"CASPAR_CACHE": str(tmp_path / "cache"), "RAY_AUTH_MODE": "disabled"}
    try:
        wrong = prepare_job("--input", f"{url}#sha256={'0' * 64}", "--output", str(tmp_path / "bad"), env=env)
        assert wrong.returncode == 2 and f"has sha256 {digest}, not {'0' * 64}; nothing kept" in wrong.stderr
        assert not list((tmp_path / "cache").iterdir())
        first = prepare_job("--input", f"{url}#sha256={digest}", "--output", str(tmp_path / "a"), *SPLITS, env=env)
        assert first.returncode == 0, first.stderr
    finally:
        server.shutdown()
        server.server_close()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f"{digest}.zip"]
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert len(manifest["files"]) == 30 and not any(f["problems"] for f in manifest["files"])  # no ._ files
    # no server now; and no RAY_* settings: the job's local Ray must write nothing into the user's home
    # (Ray's token authentication is on by default; the job's Ray uses a token of its own)
    (tmp_path / "home").mkdir()
    again = prepare_job("--input", f"{url}#sha256={digest}", "--output", str(tmp_path / "b"), *SPLITS,
                        env={"CASPAR_CACHE": env["CASPAR_CACHE"], "HOME": str(tmp_path / "home")}, without="RAY_")
    assert again.returncode == 0, again.stderr
    assert not list((tmp_path / "home").iterdir())
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["rows"] == \
        json.loads((tmp_path / "a" / "manifest.json").read_text())["rows"]
    assert corpus.resolve("corpus:caspar-2025") == corpus.CORPORA["caspar-2025"]
    with pytest.raises(UserError, match="no corpus named 'nope'"):
        corpus.resolve("corpus:nope")


SPLITS = ["--test-size", "0.2", "--validation-size", "0.2", "--seed", "1"]  # as the sample dataset


def prepare_job(*args, env, without=None):
    inherited = {k: v for k, v in os.environ.items() if not (without and k.startswith(without))}
    return subprocess.run([sys.executable, str(ROOT / "jobs" / "prepare.py"), *args], capture_output=True, text=True,
                          timeout=300, env={**inherited, **env})


def test_a_folder_mixing_synthetic_and_real_games_is_named_in_one_warning(ray_local, tmp_path):
    write_samples(tmp_path / "raw", count=30, seed=11)
    config = PrepareConfig(input=str(tmp_path / "raw"), output=str(tmp_path / "out"), test_size=0.2, validation_size=0.2,
                           seed=1)
    assert not [line for line in dataset.prepare(config).lines() if "warning" in line]  # all synthetic: the demo
    for log in sorted((tmp_path / "raw").rglob("*.tsv"))[:3]:  # three games from a real board
        log.write_text(log.read_text().replace("Synthetic #", "Grasslands #"))
    warnings = [line for line in dataset.prepare(config).lines() if "warning" in line]
    assert warnings == ["warning: 27 of the 30 games are synthetic sample logs (boards named 'Synthetic #…', written by "
                        "make demo): keep them apart from real logs"]


def test_a_folder_is_replaced_only_when_every_file_in_it_is_the_jobs_own(ray_local, sample_logs, tmp_path):
    """Names alone prove nothing: a user's own rows/ folder (or a schema.json) is not an old dataset,
    and a file a user put into a dataset the job wrote is not the job's: nothing of either is lost."""
    mine = tmp_path / "mine"
    (mine / "rows").mkdir(parents=True)
    (mine / "rows" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match=r"is not a prepared dataset \(it holds rows/notes.txt"):
        dataset.prepare(PrepareConfig(input=str(sample_logs), output=str(mine)))
    (tmp_path / "schema-only").mkdir()
    (tmp_path / "schema-only" / "schema.json").write_text("{}")
    with pytest.raises(UserError, match=r"is not a prepared dataset \(it holds schema.json"):
        dataset.prepare(PrepareConfig(input=str(sample_logs), output=str(tmp_path / "schema-only")))
    assert (mine / "rows" / "notes.txt").read_text() == "keep me" and (tmp_path / "schema-only" / "schema.json").exists()
    ours = tmp_path / "ours"
    dataset.prepare(PrepareConfig(input=str(sample_logs), output=str(ours), test_size=0.3, validation_size=0.3))
    dataset.prepare(PrepareConfig(input=str(sample_logs), output=str(ours), test_size=0.3, validation_size=0.3))  # its own: replaced
    (ours / "rows" / "mine.csv").write_text("a user's file, added later")
    with pytest.raises(UserError, match=r"\(it holds rows/mine.csv"):
        dataset.prepare(PrepareConfig(input=str(sample_logs), output=str(ours), test_size=0.3, validation_size=0.3))
    assert (ours / "rows" / "mine.csv").exists() and (ours / "manifest.json").exists()


def test_the_same_log_under_two_names_is_one_game(sample_logs, tmp_path):
    """A game is its content: a copy under another name (another folder) is read once, named in the
    manifest and the summary, so its rows can never be in two splits."""
    import json
    import shutil

    shutil.copytree(sample_logs, tmp_path / "logs")
    original = sorted((tmp_path / "logs").rglob("*.tsv"))[0]
    (tmp_path / "logs" / "again").mkdir()
    shutil.copy(original, tmp_path / "logs" / "again" / "renamed.tsv")
    summary = dataset.prepare(PrepareConfig(input=str(tmp_path / "logs"), output=str(tmp_path / "out"), test_size=0.3,
                                            validation_size=0.3))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    [copy] = [f for f in manifest["files"] if "duplicate_of" in f]
    assert copy["rows"] == 0 and {copy["file"], copy["duplicate_of"]} == {"renamed.tsv", original.name}
    assert any("the same game as another" in line for line in summary.lines())
    rows = read_rows(tmp_path / "out")
    assert "renamed.tsv" not in set(rows["file"].to_pylist()) or original.name not in set(rows["file"].to_pylist())

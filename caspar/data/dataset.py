"""The feature dataset: game logs -> Parquet rows, split by game, built in parallel by Ray Data
(a few local logs in this process).

Layout of a prepared dataset (local folder or s3:// prefix):

    rows/*.parquet   one row per selected move: identity columns, `split`, `features` (354 floats,
                     named in schema.json), `reward`
    schema.json      the feature schema (ordered names, widths, version hash)
    manifest.json    every input file with its sha256, rows produced and problems found

A dataset is written beside its destination and swapped in when complete, so a re-run replaces
it and a failed run leaves the previous one untouched.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import os
import posixpath
import resource
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from caspar import storage
from caspar.config import PrepareConfig, check
from caspar.data import corpus
from caspar.data.features import load_unit_points, schema
from caspar.data.logfiles import Inputs, found_logs
from caspar.data.prepared import ROWS_FOLDER, SPLITS
from caspar.data.rows import ROW_SETTINGS, SYNTHETIC_BOARD, row_schema, rows_of_game
from caspar.errors import InputError
from caspar.progress import Every, since, ticking
from caspar.runtime import start_ray

FILES_PER_BLOCK = 8
# A log file above this is not read (a whole game's log is under 1 MB; the largest of the 143 shared
# games is 0.75 MB): it is a reported problem, and a worker's memory stays bounded, about
# FILES_PER_BLOCK x this x the parser's overhead, whatever one file holds.
MAX_LOG_BYTES = 64 << 20


def read_log_bytes(filesystem, path: str) -> bytes:
    """A log file's bytes, checked by its size and by reading no further than the limit.

    Args:
        filesystem: a pyarrow filesystem.
        path: the log's path in it.

    Returns:
        Its bytes.

    Raises:
        InputError: the file is larger than MAX_LOG_BYTES.
    """
    size = filesystem.get_file_info(path).size
    if size is not None and size > MAX_LOG_BYTES:
        raise InputError(f"{size / 2**20:.0f} MB, more than the {MAX_LOG_BYTES >> 20} MB a game's log may be; not read")
    with filesystem.open_input_stream(path) as stream:
        data = stream.read(MAX_LOG_BYTES + 1)
    if len(data) > MAX_LOG_BYTES:
        raise InputError(f"more than the {MAX_LOG_BYTES >> 20} MB a game's log may be; not read")
    return data
IN_PROCESS_GAMES = 48  # at most this many local games are prepared without Ray (starting it takes 4-6 s)
# --- The Ray Data job ------------------------------------------------------------------------

def featurize_game(name: str, paths: list[str], filesystem, settings: PrepareConfig) -> tuple[pa.Table, dict]:
    """The rows and the manifest entry of one game (its file, or the four files of a split game):
    the work of every prepare, in a Ray worker or in this process.

    Args:
        name: the game's name (its file, or a split game's timestamp).
        paths: its files.
        filesystem: the pyarrow filesystem they are on.
        settings: the prepare's options (split sizes, seed, unit table, bots).

    Returns:
        (its rows as an Arrow table, its manifest entry: problems, format, rows, timings).
    """
    cpu = time.process_time()
    try:
        files = {os.path.basename(path): read_log_bytes(filesystem, path) for path in paths}
    except (OSError, InputError) as error:  # reported in the manifest; the other files go on
        table = row_schema().empty_table()
        entry = {"file": name, "rows": 0, "problems": [{"line": 0, "reason": f"unreadable: {error}"}]}
    else:
        table, entry = rows_of_game(files, name, settings)
    entry["path"] = paths[0] if len(paths) == 1 else os.path.join(os.path.dirname(paths[0]), name)
    if len(paths) > 1:
        entry["parts"] = paths
    entry["cost"] = {"cpu_ms": round(1000 * (time.process_time() - cpu), 2), "worker_pid": os.getpid(),
                     "worker_memory_mb": _private_memory_mb()}
    return table, entry


def _featurize_batch(batch: dict, filesystem, settings: PrepareConfig, collector) -> pa.Table:
    import ray

    tables, recorded = [], []
    for name, paths in zip(batch["game"].to_pylist(), batch["paths"].to_pylist()):
        table, entry = featurize_game(name, paths, filesystem, settings)
        recorded.append(collector.add.remote(entry))
        tables.append(table)
    # Calls to an actor from different processes have no order: wait until this block's entries
    # are recorded, so that the driver's collector.all() after the write sees every one of them.
    ray.get(recorded)
    pa.default_memory_pool().release_unused()
    return pa.concat_tables(tables) if tables else row_schema().empty_table()


def _private_memory_mb() -> float:
    """The worker's own memory (anonymous pages), without the object store's shared pages that
    the process has mapped; peak RSS would count those too."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _manifest_collector():
    import ray

    @ray.remote(num_cpus=0)
    class ManifestCollector:
        """Gathers each file's manifest entry from the workers (keyed by path: retries overwrite)."""

        def __init__(self):
            self.entries = {}

        def add(self, entry: dict) -> None:
            self.entries[entry["path"]] = entry

        def all(self) -> list[dict]:
            return [self.entries[k] for k in sorted(self.entries)]

        def count(self) -> int:
            return len(self.entries)

    return ManifestCollector.remote()


@dataclass
class Summary:
    """What a prepare read and wrote, as jobs/prepare.py prints it."""
    files: int
    files_with_problems: int
    unreadable_files: int
    rows: dict[str, int]
    human_moves: int
    dropped: dict[str, int]  # moves that did not become rows, by reason
    formats: dict[str, int]  # games per log format (FORMATS)
    synthetic: int  # games written by caspar.data.samples, not by MegaMek
    seconds: float
    ray_start_seconds: float
    output: str
    duplicates: list = field(default_factory=list)  # (file, the file of the same content that was read)

    def lines(self) -> list[str]:
        """Returns what jobs/prepare.py prints at its end."""
        splits = ", ".join(f"{k} {v:,}" for k, v in self.rows.items())
        formats = ", ".join(f"{count} in format {name}" for name, count in sorted(self.formats.items())) or "none readable"
        dropped = "; ".join(f"{count:,} {reason}" for reason, count in sorted(self.dropped.items(), key=lambda i: -i[1]))
        lines = [
            f"read {self.files} games ({formats}), {self.human_moves:,} human moves",
            f"wrote {sum(self.rows.values()):,} rows ({splits}) to {self.output}",
        ]
        if dropped:
            lines.append(f"moves that did not become rows: {dropped}")
        if self.duplicates:
            named = "; ".join(f"{copy} = {kept}" for copy, kept in self.duplicates[:3])
            lines.append(f"{len(self.duplicates)} files are the same game as another (the same content), read once: "
                         f"{named}{' …' if len(self.duplicates) > 3 else ''}")
        if 0 < self.synthetic < self.files:
            lines.append(f"warning: {self.synthetic} of the {self.files} games are synthetic sample logs (boards named "
                         f"'{SYNTHETIC_BOARD}…', written by make demo): keep them apart from real logs")
        if self.files_with_problems:
            lines.append(f"{self.files_with_problems} files had problems ({self.unreadable_files} unreadable): "
                         f"see {storage.join(self.output, 'manifest.json')}")
        ray = f" ({self.ray_start_seconds:.1f} s of it starting Ray)" if self.ray_start_seconds else " (in this process)"
        lines.append(f"took {self.seconds:.1f} s{ray}")
        return lines


def prepare(config: PrepareConfig, parallelism: int | None = None, in_process: bool | None = None,
            say=None) -> Summary:
    """Read every log under `config.input`, featurise in parallel and write the dataset to
    `config.output`, replacing the previous one only when the new one is complete and usable.
    A few local logs (at most IN_PROCESS_GAMES) are featurised in this process, without starting
    Ray (`in_process` decides otherwise): the same per-game work and the same dataset, seconds sooner.

    Args:
        config: the prepare's options.
        parallelism: Ray Data's blocks at once (every CPU of the cluster if None).
        in_process: featurise in this process (True) or on Ray (False); None: by the input's size.
        say: called with progress lines (how many games are done, now and then), or None.

    Returns:
        The Summary.

    Raises:
        InputError: bad options or input, or a dataset training could not use (nothing is replaced).
    """
    started = time.perf_counter()
    check(config)
    if config.mekfile:
        try:
            load_unit_points(mekfile=config.mekfile)
        except (OSError, ValueError) as error:
            raise InputError(f"--mekfile: {error}") from None
    _check_input_outside_output(config.input, config.output)
    out_fs, out_path = storage.resolve(config.output)
    _check_replaceable(out_fs, out_path, config.output)
    # what every game's rows are made with (in a Ray worker too): the mekfile found from anywhere
    settings = dataclasses.replace(config, mekfile=os.path.abspath(config.mekfile) if config.mekfile else None)
    with found_logs(config.input) as inputs, _staging(out_fs, out_path, config.output) as staging:
        duplicates = drop_duplicate_games(inputs)
        if in_process is None:
            in_process = len(inputs.games) <= IN_PROCESS_GAMES and not storage.is_s3(config.input)
        if say:
            say(f"prepare: {len(inputs.games)} games found; featurising them"
                f"{' in this process' if in_process else ' on Ray'}")
        if in_process:
            ray_seconds, entries = 0.0, _write_rows_in_process(inputs, settings, out_fs, staging, say)
        else:
            ray_seconds = _start_ray()
            entries = _write_rows(inputs, settings, out_fs, staging, parallelism, say)
        entries = [*entries, *duplicates]
        manifest = _manifest(entries, config.input, settings, inputs.root, out_fs, staging)
        _check_usable(manifest, config)
        storage.write_bytes(out_fs, storage.join(staging, "schema.json"), json.dumps(schema(), indent=1).encode())
        storage.write_bytes(out_fs, storage.join(staging, "manifest.json"), json.dumps(manifest, indent=1).encode())
    dropped: dict[str, int] = {}
    for entry in entries:
        for reason, count in entry.get("dropped", {}).items():
            dropped[reason] = dropped.get(reason, 0) + count
    return Summary(
        files=len(entries), files_with_problems=sum(1 for e in entries if e["problems"]),
        unreadable_files=sum(1 for e in entries if any(p["line"] == 0 for p in e["problems"])),
        rows=manifest["rows"], human_moves=sum(e.get("human_moves", 0) for e in entries), dropped=dropped,
        formats=_count_formats(entries), synthetic=sum(1 for e in entries if e.get("synthetic")),
        seconds=time.perf_counter() - started, ray_start_seconds=ray_seconds, output=config.output,
        duplicates=[(e["file"], e["duplicate_of"]) for e in entries if "duplicate_of" in e])


def drop_duplicate_games(inputs) -> list[dict]:
    """A game is its content: a log found twice (copied under another name, in another folder) is one
    game, read once (the first by name), or its rows would count twice and could land in two splits
    (test rows in training).

    Args:
        inputs: the logs found (its games lose their copies).

    Returns:
        The copies' manifest entries, each naming the file it is a copy of.
    """
    first: dict[str, str] = {}
    entries = []
    for name in sorted(inputs.games):
        digest = hashlib.sha256()
        for path in sorted(inputs.games[name], key=os.path.basename):  # as rows_of_game hashes a game
            digest.update(read_log_bytes(inputs.filesystem, path) if _readable(inputs.filesystem, path) else b"")
        key = digest.hexdigest()
        if key in first:
            paths = inputs.games.pop(name)
            entries.append({"file": name, "path": paths[0], "sha256": key, "rows": 0, "duplicate_of": first[key],
                            "problems": [{"line": 0, "reason": f"the same content as {first[key]}: one game, read once"}]})
        else:
            first[key] = name
    return entries


def _readable(filesystem, path: str) -> bool:
    """Whether the file can be hashed here (one that cannot is reported when it is featurised)."""
    try:
        size = filesystem.get_file_info(path).size
    except OSError:
        return False
    return size is not None and size <= MAX_LOG_BYTES


def _count_formats(entries: list[dict]) -> dict[str, int]:
    return dict(collections.Counter(entry["format"] for entry in entries if entry.get("format")))


def _start_ray() -> float:
    started = time.perf_counter()
    start_ray()
    return time.perf_counter() - started


def _write_rows(inputs: Inputs, settings: PrepareConfig, out_fs, staging: str, parallelism: int | None, say=None) -> list[dict]:
    """Ray Data: read the logs in blocks of a few files, featurise, write Parquet; returns the
    manifest entry of every input file."""
    import ray

    collector = _manifest_collector()
    workers = parallelism or max(1, int(ray.cluster_resources().get("CPU", 1)))
    # Blocks of a few files: a worker holds one block at a time, whatever the corpus size.
    # Each worker reads its own files, so that one that cannot be read is reported, not fatal.
    games = [{"game": name, "paths": paths} for name, paths in inputs.games.items()]
    dataset = ray.data.from_items(games, override_num_blocks=max(2 * workers, -(-len(games) // FILES_PER_BLOCK)))
    dataset = dataset.map_batches(
        _featurize_batch, batch_size=1, batch_format="pyarrow", zero_copy_batch=True,
        fn_kwargs={"filesystem": inputs.filesystem, "settings": settings, "collector": collector})
    started = time.perf_counter()
    with ticking(say, lambda: f"prepare: {ray.get(collector.count.remote())}/{len(games)} games featurised "
                              f"({since(started)})"):
        dataset.write_parquet(storage.join(staging, ROWS_FOLDER), filesystem=out_fs)
    entries = ray.get(collector.all.remote())
    return entries + [{"file": os.path.basename(p), "path": p, "rows": 0, "problems": [{"line": 0, "reason": why}]}
                      for p, why in inputs.skipped.items()]


def _write_rows_in_process(inputs: Inputs, settings: PrepareConfig, out_fs, staging: str, say=None) -> list[dict]:
    """_write_rows without Ray: the games one after another, their rows in one Parquet file."""
    import pyarrow.parquet as pq

    tables, entries = [], []
    started, every = time.perf_counter(), Every(say)
    for name, paths in inputs.games.items():
        table, entry = featurize_game(name, paths, inputs.filesystem, settings)
        tables.append(table)
        entries.append(entry)
        every(lambda: f"prepare: {len(entries)}/{len(inputs.games)} games featurised ({since(started)})")
    rows = pa.concat_tables(tables) if tables else row_schema().empty_table()
    if rows.num_rows:
        folder = storage.join(staging, ROWS_FOLDER)
        out_fs.create_dir(folder, recursive=True)
        pq.write_table(rows, storage.join(folder, "rows-0.parquet"), filesystem=out_fs)
    return sorted(entries, key=lambda e: e["path"]) + [
        {"file": os.path.basename(p), "path": p, "rows": 0, "problems": [{"line": 0, "reason": why}]}
        for p, why in inputs.skipped.items()]


def _check_usable(manifest: dict, config: PrepareConfig) -> None:
    """A dataset that training cannot use is not written (and the previous one stays)."""
    rows = manifest["rows"]
    if all(rows[split] > 0 for split in config.splits()):
        return
    counts = ", ".join(f"{split} {rows[split]}" for split in SPLITS)
    if not sum(rows.values()):
        problems = sum(1 for f in manifest["files"] if f["problems"])
        raise InputError(f"no rows from {len(manifest['files'])} files in {config.input} ({problems} with problems, "
                         f"first: {_first_problem(manifest)}); {config.output} left as it was")
    raise InputError(f"a split would be empty ({counts}): add logs or change --test-size/--validation-size; "
                     f"{config.output} left as it was")


def _first_problem(manifest: dict) -> str:
    for entry in manifest["files"]:
        for problem in entry["problems"]:
            return f"{entry['path']}:{problem['line']}: {problem['reason']}"
    return "none"


@contextlib.contextmanager
def _staging(filesystem, path: str, uri: str):
    """A staging location that replaces `path` when the block succeeds: atomically on a local
    disk; on an object store, object by object with the manifest (which names the rest) last."""
    if isinstance(filesystem, pafs.LocalFileSystem):
        with storage.replacing(path, "the dataset") as staging:
            yield staging
    else:
        with storage.replacing_objects(filesystem, path, uri, "the dataset", last="manifest.json") as staging:
            yield staging


def _manifest(entries, source, settings: PrepareConfig, root, filesystem, staging) -> dict:
    files = []
    for entry in entries:
        entry = dict(entry)
        if not storage.is_s3(source):
            entry["path"] = os.path.relpath(entry["path"], root)
            if "parts" in entry:
                entry["parts"] = [os.path.relpath(part, root) for part in entry["parts"]]
        files.append(entry)
    rows = storage.join(staging, ROWS_FOLDER)
    counts, row_files = {}, []
    if filesystem.get_file_info(rows).type == pafs.FileType.Directory:  # absent when no log gave a row
        parquet = pads.dataset(rows, filesystem=filesystem, format="parquet")
        splits = parquet.to_table(columns=["split"])["split"]
        counts = dict(zip(*np.unique(splits.to_numpy(zero_copy_only=False), return_counts=True)))
        row_files = sorted(posixpath.relpath(file, staging) for file in parquet.files)
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "input": source, "schema_version": schema()["version"],
        "settings": {name: getattr(settings, name) for name in ROW_SETTINGS},
        "rows": {split: int(counts.get(split, 0)) for split in SPLITS},
        "row_files": row_files,  # readers read these, not whatever else lies in rows/
        "files": files,
    }


DATASET_NAMES = {ROWS_FOLDER, "schema.json", "manifest.json"}


def _check_replaceable(filesystem, path, uri) -> None:
    """Refuse to replace a folder that is not an earlier dataset (it may hold anything)."""
    storage.check_owned(filesystem, path, uri, "a prepared dataset", DATASET_NAMES, "manifest.json")


def _check_input_outside_output(source: str, output: str) -> None:
    if corpus.is_remote(source) or storage.is_s3(source) != storage.is_s3(output):
        return
    inner, outer = (os.path.realpath(p) if not storage.is_s3(p) else p.rstrip("/") for p in (source, output))
    if inner == outer or inner.startswith(outer + "/"):
        raise InputError(f"--input {source} lies inside --output {output}: replacing the dataset would delete the logs; "
                         "choose another output")

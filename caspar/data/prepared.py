"""Reading a prepared dataset (written by `caspar.data.dataset.prepare`) into memory, checked first."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from caspar import storage
from caspar.data.features import schema
from caspar.errors import InputError
from caspar.runtime import in_ray_job

SPLITS = ("train", "val", "test")
ROWS_FOLDER = "rows"


class Split(NamedTuple):
    """One split's rows (a tuple: `x, y = prepared.splits["train"]` reads it too)."""
    x: np.ndarray  # [rows, features] float32, the raw feature values
    y: np.ndarray  # [rows] float32, the rewards


@dataclass
class Prepared:
    """A prepared dataset in memory: the rows of each split (train, val, test), and the log file of
    each row (to group rows by game)."""
    uri: str
    splits: dict[str, Split]
    schema: dict
    manifest: dict
    files: dict[str, np.ndarray]  # per split: [rows] the log file (game) of each row

    @property
    def version(self) -> str:
        """Changes when the features or the input logs change."""
        files = sorted(f.get("sha256", "") for f in self.manifest.get("files", []))
        body = json.dumps([self.schema.get("version"), self.manifest.get("settings"), files], sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()[:16]


def load_prepared(uri: str, every_split: bool = True) -> Prepared:
    """Read a dataset written by `prepare`, checked first: a missing, stale or damaged dataset is
    an InputError naming the file and what is wrong.

    Args:
        uri: the dataset's folder or s3:// prefix.
        every_split: rows needed in train, val and test (training); False for a drift check's one split.

    Returns:
        The Prepared dataset.

    Raises:
        InputError: missing, of another feature set, damaged, or without rows where they are needed.
    """
    filesystem, path = storage.resolve(uri)
    manifest_path, schema_path = storage.join(path, "manifest.json"), storage.join(path, "schema.json")
    if storage.info(filesystem, manifest_path, uri).type != pafs.FileType.File:
        if in_ray_job() and not storage.is_s3(uri):
            raise InputError(f"--data {uri}: not on the cluster (a Ray job runs in a copy of --working-dir without "
                             "git-ignored folders such as data/): use s3://BUCKET/prefix or an absolute path every node reads")
        raise InputError(f"no prepared dataset at {storage.describe(uri)}: run jobs/prepare.py first")
    manifest = _read_json(filesystem, manifest_path)
    if storage.info(filesystem, schema_path, uri).type != pafs.FileType.File:
        raise InputError(f"{schema_path}: missing; run jobs/prepare.py again")
    prepared_schema = _read_json(filesystem, schema_path)
    expected = schema()
    for name, content in ((manifest_path, manifest), (schema_path, prepared_schema)):
        if not isinstance(content, dict) or (content is prepared_schema and not isinstance(content.get("features"), list)):
            raise InputError(f"{name}: not a dataset's {name.rsplit('/', 1)[-1]} (run jobs/prepare.py again)")
    if (prepared_schema.get("version"), prepared_schema.get("width")) != (expected["version"], expected["width"]):
        raise InputError(f"{schema_path}: feature set {prepared_schema.get('version')} ({prepared_schema.get('width')} "
                         f"values), but this code computes {expected['version']} ({expected['width']} values): "
                         "run jobs/prepare.py again")
    files = row_files(filesystem, path, uri, manifest)
    if not files:
        raise InputError(f"{storage.join(path, ROWS_FOLDER)}: no Parquet files; run jobs/prepare.py again")
    table = pa.concat_tables([_read_rows(filesystem, file, expected["width"]) for file in files])
    features = table["features"].combine_chunks().flatten().to_numpy().reshape(-1, expected["width"])
    reward = table["reward"].to_numpy()
    split = table["split"].to_numpy(zero_copy_only=False)
    splits = {name: Split(features[split == name], reward[split == name]) for name in SPLITS}
    log_files = table["file"].to_numpy(zero_copy_only=False)
    if every_split and any(len(splits[name][1]) == 0 for name in SPLITS):
        sizes = {name: len(splits[name][1]) for name in SPLITS}
        hint = ("prepared for jobs/drift.py (--test-size 0 --validation-size 0): prepare it with both above 0 to train"
                if sizes["val"] == sizes["test"] == 0 else "add logs or change --test-size/--validation-size")
        raise InputError(f"dataset {uri} has an empty split ({sizes}): {hint}")
    return Prepared(uri, splits, prepared_schema, manifest, {name: log_files[split == name] for name in SPLITS})


def _read_json(filesystem, path: str):
    try:
        return json.loads(storage.read_bytes(filesystem, path))
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: unreadable ({error}); run jobs/prepare.py again") from None


def _read_rows(filesystem, path: str, width: int) -> pa.Table:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, filesystem=filesystem, columns=["file", "split", "features", "reward"])
    except (OSError, pa.ArrowException) as error:
        raise InputError(f"{path}: unreadable Parquet ({storage.first_line(error)}); run jobs/prepare.py again") from None
    expected = {"file": (pa.string(), "strings"), "split": (pa.string(), "strings"), "reward": (pa.float32(), "float32"),
                "features": (pa.list_(pa.float32(), width), f"{width} float32 values each")}
    for column, (kind, described) in expected.items():
        if table[column].type != kind:
            raise InputError(f"{path}: column {column} is {table[column].type}, expected {described}; "
                             "run jobs/prepare.py again")
    for column in ("features", "reward"):  # prepare never writes NaN or inf: one here means a damaged file
        values = table[column].combine_chunks()
        bad = int((~np.isfinite((values.flatten() if column == "features" else values).to_numpy(zero_copy_only=False))).sum())
        if bad:
            raise InputError(f"{path}: {bad} {column} values are NaN or infinite; run jobs/prepare.py again")
    return table


def row_files(filesystem, path: str, uri: str, manifest: dict) -> list[str]:
    """The Parquet files of the dataset: those its manifest names (a dataset written before the
    manifest named them: every file in rows/).

    Args:
        filesystem: a pyarrow filesystem.
        path: the dataset's path in it.
        uri: the dataset as the user named it (for messages).
        manifest: its manifest.

    Returns:
        The files' paths.

    Raises:
        InputError: a file the manifest names is missing.
    """
    if "row_files" in manifest:
        files = [storage.join(path, name) for name in manifest["row_files"]]
        for file in files:
            if storage.info(filesystem, file, uri).type != pafs.FileType.File:
                raise InputError(f"{file}: missing, though manifest.json names it; run jobs/prepare.py again")
        return files
    return [i.path for i in storage.list_files(filesystem, storage.join(path, ROWS_FOLDER), uri)
            if i.base_name.endswith(".parquet")]

"""Finding the game logs to prepare: every `*.tsv` under a folder, in a `.zip`, or under an
s3:// prefix, grouped into games (one file, or the four files of a split game)."""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow.fs as pafs

from caspar import storage
from caspar.data import corpus
from caspar.data.gamelog import split_part
from caspar.data.gamelog.split import SPLIT_PARTS
from caspar.errors import InputError

LOG_SUFFIX = ".tsv"
ZIP_LIMIT_BYTES = 4 << 30  # what a .zip input may unpack to
ZIP_FOLDER_PREFIX = "caspar-zip-"


@dataclass
class Inputs:
    """The logs an input holds: their filesystem and paths, grouped into games, and what was skipped."""
    filesystem: pafs.FileSystem
    paths: list[str]
    root: str
    games: dict[str, list[str]] = field(default_factory=dict)  # game name -> its files (four for a split game)
    skipped: dict[str, str] = field(default_factory=dict)  # path -> why it was not read


@contextlib.contextmanager
def found_logs(source: str) -> Iterator[Inputs]:
    """The logs of `source`; a `.zip` (also one downloaded: corpus:NAME, URL#sha256=HEX) is unpacked
    into a temporary folder for the block's duration.

    Args:
        source: --input (a folder, a file, a .zip, s3://…, corpus:NAME or URL#sha256=HEX).

    Yields:
        The Inputs found.
    """
    if corpus.is_remote(source):
        source = corpus.archive(source)
    # an archive is known by its content, not its name (X.ZIP, a download without an extension)
    if storage.is_s3(source) or not (os.path.isfile(source) and zipfile.is_zipfile(source)):
        yield find_logs(source)
        return
    folder = unpack(source)
    try:
        yield find_logs(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def unpack(archive_path: str) -> str:
    """The archive unpacked into a new temporary folder, refused above ZIP_LIMIT_BYTES. Folders a
    killed run left behind are removed first.

    Args:
        archive_path: a .zip file.

    Returns:
        The folder it was unpacked into.

    Raises:
        InputError: not a readable zip, or larger unpacked than ZIP_LIMIT_BYTES.
    """
    remove_abandoned_unpacks()
    try:
        with zipfile.ZipFile(archive_path) as archive:
            size = sum(member.file_size for member in archive.infolist())
            if size > ZIP_LIMIT_BYTES:
                raise InputError(f"{archive_path}: unpacks to {size / 2**30:.1f} GiB, more than the "
                                 f"{ZIP_LIMIT_BYTES / 2**30:.0f} GiB a .zip input may; unpack it and give the folder")
            folder = tempfile.mkdtemp(prefix=f"{ZIP_FOLDER_PREFIX}{os.getpid()}-")
            try:
                archive.extractall(folder)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
    except (zipfile.BadZipFile, OSError) as error:
        raise InputError(f"{archive_path}: not a readable zip archive ({error})") from None
    return folder


def remove_abandoned_unpacks() -> None:
    """Unpacked archives whose process is gone (killed before it could remove them)."""
    for folder in glob.glob(os.path.join(tempfile.gettempdir(), f"{ZIP_FOLDER_PREFIX}*-*")):
        pid = os.path.basename(folder)[len(ZIP_FOLDER_PREFIX):].split("-")[0]
        if pid.isdigit() and not _process_exists(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find_logs(source: str) -> Inputs:
    """All `*.tsv` logs under a folder (recursively) or an s3:// prefix, or one log file.

    Args:
        source: the folder, prefix or file.

    Returns:
        The Inputs, grouped into games.

    Raises:
        InputError: the path does not exist, or holds no log.
    """
    filesystem, root = storage.resolve(source)
    kind = storage.info(filesystem, root, source).type
    if kind == pafs.FileType.NotFound and not storage.is_s3(source):
        raise InputError(f"input path does not exist: {source}")
    skipped: dict[str, str] = {}
    if kind == pafs.FileType.File:
        paths, root = [root], os.path.dirname(root)
    elif isinstance(filesystem, pafs.LocalFileSystem):
        paths = local_logs(root, skipped)
    else:
        paths = [i.path for i in storage.list_files(filesystem, root, source)
                 if i.base_name.endswith(LOG_SUFFIX) and not is_mac_metadata(i.path)]
    if not paths:
        raise InputError(f"no game logs (*{LOG_SUFFIX}) found in {storage.describe(source)}")
    inputs = Inputs(filesystem, [], root, skipped=skipped)
    seen: dict[str, str] = {}
    for path in paths:  # `file` identifies a row, so a file name may appear once
        name = os.path.basename(path)
        if name in seen:
            inputs.skipped[path] = f"same file name as {seen[name]}; skipped"
        else:
            seen[name] = path
            inputs.paths.append(path)
    group_games(inputs)
    return inputs


def local_logs(root: str, skipped: dict[str, str]) -> list[str]:
    """The logs under a local folder, following symbolic links but visiting each real folder once
    (a link loop ends there).

    Args:
        root: the folder.
        skipped: filled with each path not read and why (a name that is not UTF-8).

    Returns:
        The logs' paths, sorted.
    """
    paths, visited = [], set()
    for folder, subfolders, files in os.walk(root, followlinks=True):
        real = os.stat(folder)
        if (real.st_dev, real.st_ino) in visited:
            subfolders.clear()
            continue
        visited.add((real.st_dev, real.st_ino))
        subfolders.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            if not _is_utf8(path):
                skipped[printable(path)] = "its name is not UTF-8; rename it to read it"
            elif name.endswith(LOG_SUFFIX) and not is_mac_metadata(path) and os.path.isfile(path):
                paths.append(path)
    return paths


def is_mac_metadata(path: str) -> bool:
    """What macOS adds to an archive beside each file (`__MACOSX/…/._NAME`): not a log.

    Args:
        path: a file's path.

    Returns:
        True for such a file.
    """
    return os.path.basename(path).startswith("._") or "__MACOSX" in path.split("/")


def _is_utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # os.walk decodes other bytes as surrogates
        return False
    return True


def printable(path: str) -> str:
    """A path whose name is not UTF-8, with its odd bytes as \\x escapes.

    Args:
        path: a path as os.walk gives it (undecodable bytes as surrogates).

    Returns:
        A printable text.
    """
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def group_games(inputs: Inputs) -> None:
    """One game per log file, except the four files of a split game (same timestamp), which are
    one game; a split game with a file missing is reported and not read.

    Args:
        inputs: the logs found; its games and skipped are filled in.
    """
    split: dict[str, dict[str, str]] = {}
    for path in inputs.paths:
        part = split_part(os.path.basename(path))
        if part:
            split.setdefault(part[1], {})[part[0]] = path
        else:
            inputs.games[os.path.basename(path)] = [path]
    for game, parts in sorted(split.items()):
        missing = [p for p in SPLIT_PARTS if p not in parts]
        if missing:
            for path in parts.values():
                inputs.skipped[path] = f"split game {game} lacks its {' and '.join(missing)} file; not read"
        else:
            inputs.games[game] = [parts[p] for p in SPLIT_PARTS]

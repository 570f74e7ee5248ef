"""Where files live: a local path or `s3://bucket/prefix`, through one pyarrow filesystem.

S3 endpoint from `AWS_ENDPOINT_URL` (or `MLFLOW_S3_ENDPOINT_URL`); credentials from the usual
AWS environment variables.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import glob
import os
import posixpath
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from urllib.parse import urlparse

import pyarrow.fs as pafs

from caspar.errors import UserError


class StorageError(UserError):
    """A storage location that cannot be used; the message is one line for the user."""


def is_s3(uri: str) -> bool:
    """Whether a location is on S3.

    Args:
        uri: a local path or a URI.

    Returns:
        True for an s3:// URI.
    """
    return str(uri).startswith("s3://")


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem of a location (S3: the endpoint and keys of the environment's AWS_* settings).

    Args:
        uri: a local path or an s3://BUCKET/PREFIX URI.

    Returns:
        (pyarrow filesystem, the path inside it).
    """
    uri = str(uri)
    if not is_s3(uri):
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("MLFLOW_S3_ENDPOINT_URL")
    options = {}
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        options.update(endpoint_override=parsed.netloc, scheme=parsed.scheme)
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        # Explicit, so that the filesystem carries them to Ray workers started before they were set.
        options.update(access_key=os.environ["AWS_ACCESS_KEY_ID"], secret_key=os.environ["AWS_SECRET_ACCESS_KEY"],
                       session_token=os.environ.get("AWS_SESSION_TOKEN"))
    filesystem = pafs.S3FileSystem(
        region=os.environ.get("AWS_DEFAULT_REGION", os.environ.get("AWS_REGION", "us-east-1")),
        connect_timeout=3, request_timeout=10, allow_bucket_creation=True,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=2), **options)
    return filesystem, uri[len("s3://"):].rstrip("/")


def describe(uri: str) -> str:
    """A location as messages name it.

    Args:
        uri: a local path or an s3:// URI.

    Returns:
        The path, or the URI with its endpoint (or that it is AWS's).
    """
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("MLFLOW_S3_ENDPOINT_URL")
    if not is_s3(uri):
        return str(uri)
    return f"{uri} (endpoint {endpoint})" if endpoint else f"{uri} (AWS; AWS_ENDPOINT_URL is not set)"


def info(filesystem: pafs.FileSystem, path: str, uri: str) -> pafs.FileInfo:
    """A path's file info.

    Args:
        filesystem: the pyarrow filesystem (resolve).
        path: the path inside it.
        uri: the location as the user gave it, for messages.

    Returns:
        pyarrow's FileInfo.

    Raises:
        StorageError: the storage cannot be reached (one line).
    """
    try:
        return filesystem.get_file_info(path)
    except OSError as error:
        raise StorageError(f"cannot reach {describe(uri)}: {first_line(error)}") from None


def list_files(filesystem: pafs.FileSystem, path: str, uri: str) -> list[pafs.FileInfo]:
    """Every file under a folder or prefix.

    Args:
        filesystem: the pyarrow filesystem (resolve).
        path: the folder or prefix inside it (missing: no files).
        uri: the location as the user gave it, for messages.

    Returns:
        Their FileInfos, by path.

    Raises:
        StorageError: the storage cannot be listed (one line).
    """
    try:
        infos = filesystem.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    except OSError as error:
        raise StorageError(f"cannot list {describe(uri)}: {first_line(error)}") from None
    return sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.path)


def write_bytes(filesystem: pafs.FileSystem, path: str, data: bytes) -> None:
    """Writes a whole file.

    Args:
        filesystem: the pyarrow filesystem (resolve).
        path: the file inside it.
        data: its content.
    """
    with filesystem.open_output_stream(path) as stream:
        stream.write(data)


def read_bytes(filesystem: pafs.FileSystem, path: str) -> bytes:
    """Reads a whole file.

    Args:
        filesystem: the pyarrow filesystem (resolve).
        path: the file inside it.

    Returns:
        Its content.
    """
    with filesystem.open_input_stream(path) as stream:
        return stream.read()


def join(*parts: str) -> str:
    """Joins path parts with '/' (local paths and object keys alike).

    Args:
        *parts: the parts.

    Returns:
        The path.
    """
    return posixpath.join(*parts)


def first_line(error: Exception) -> str:
    """An error's message in one line.

    Args:
        error: any exception.

    Returns:
        Its first line, or its type's name when it has no message.
    """
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


# --- Outputs a job owns --------------------------------------------------------------------------

OWNER_MARKER = ".caspar-output"  # written into every output folder a job creates: the job may replace it


def check_owned(filesystem: pafs.FileSystem, path: str, uri: str, what: str, names: set[str], whole: str) -> None:
    """Refuses to replace `path` unless it is absent, empty, or provably a folder a job of this
    project wrote: its owner marker lists every file it holds (a marker without a list: written
    before lists existed, the folder is the job's), or, written before the marker existed, it holds
    `whole` (the file that completes such an output) and nothing but the top-level `names` the job
    writes. A symbolic link counts as its target.

    Args:
        filesystem: the pyarrow filesystem (resolve).
        path: the output inside it.
        uri: the output as the user gave it, for messages.
        what: what the output is ("a prepared dataset"), for messages.
        names: the top-level names such an output holds.
        whole: the file that completes such an output.

    Raises:
        StorageError: it is a file, or holds files no job of this project wrote (one line; nothing touched).
    """
    if isinstance(filesystem, pafs.LocalFileSystem):
        path = os.path.realpath(path)
    found = info(filesystem, path, uri)
    if found.type == pafs.FileType.NotFound:
        return
    if found.type != pafs.FileType.Directory:
        raise StorageError(f"{uri} is a file, not {what}: not replacing it")
    files = {posixpath.relpath(i.path, path) for i in list_files(filesystem, path, uri)}
    if not files:
        return
    if OWNER_MARKER in files:
        with filesystem.open_input_stream(join(path, OWNER_MARKER)) as stream:
            listed = set(stream.read().decode(errors="replace").splitlines()[1:])
        foreign = sorted(files - listed - {OWNER_MARKER}) if listed else []
    else:
        foreign = sorted(f for f in files if f.split("/")[0] not in names) or ([] if whole in files else sorted(files))
    if foreign:
        more = f", … ({len(foreign)} files)" if len(foreign) > 3 else ""
        raise StorageError(f"{uri} exists and is not {what} (it holds {', '.join(foreign[:3])}{more}): no job of this "
                           "project wrote them, so it is not replaced; move them or choose another output")


def mark_owned(filesystem: pafs.FileSystem, folder: str, what: str) -> None:
    """Writes the owner marker of an output folder being written (what it is; mark_complete adds its files).

    Args:
        filesystem: the pyarrow filesystem (resolve).
        folder: the folder being written.
        what: what the output is.
    """
    write_bytes(filesystem, join(folder, OWNER_MARKER), f"{what}, written by caspar-trainer; replaced as a whole\n".encode())


def mark_complete(filesystem: pafs.FileSystem, folder: str, uri: str) -> None:
    """Lists every file of the finished folder in its owner marker: a later job replaces the folder
    only if it holds nothing else (a file a user put there is never deleted).

    Args:
        filesystem: the pyarrow filesystem (resolve).
        folder: the finished folder.
        uri: the folder as the user gave it, for messages.
    """
    marker = join(folder, OWNER_MARKER)
    with filesystem.open_input_stream(marker) as stream:
        header = stream.read().decode().splitlines()[0]
    files = sorted(posixpath.relpath(i.path, folder) for i in list_files(filesystem, folder, uri))
    write_bytes(filesystem, marker, "\n".join([header, *files]).encode() + b"\n")


# --- Replacing an output on an object store -----------------------------------------------------

@contextlib.contextmanager
def replacing_objects(filesystem: pafs.FileSystem, path: str, uri: str, what: str, last: str) -> Iterator[str]:
    """A staging prefix beside `path`; when the block succeeds, its objects are copied under `path`,
    `last` (the object that makes the output whole, e.g. its manifest) after every other, and only
    then are the objects of the previous version that the new one does not have deleted. An object
    store has no rename: a reader that follows `last` (which names the other objects) sees the old
    or the new version; a failed copy leaves the old one whole.

    Args:
        filesystem: the pyarrow filesystem (resolve).
        path: the output's prefix.
        uri: the output as the user gave it, for messages.
        what: what the output is (its owner marker says it).
        last: the object copied last.

    Yields:
        The staging prefix to write into.
    """
    staging = f"{path}.staging-{uuid.uuid4().hex[:8]}"
    try:
        filesystem.create_dir(staging)  # and the bucket, if it is missing
        mark_owned(filesystem, staging, what)
        yield staging
        mark_complete(filesystem, staging, uri)
        new = {posixpath.relpath(i.path, staging) for i in list_files(filesystem, staging, uri)}
        old = {posixpath.relpath(i.path, path) for i in list_files(filesystem, path, uri)}
        for name in sorted(new, key=lambda n: n == last):
            filesystem.copy_file(join(staging, name), join(path, name))
        for name in old - new:
            filesystem.delete_file(join(path, name))
    finally:
        remove(filesystem, staging)


def remove(filesystem: pafs.FileSystem, path: str) -> None:
    """Deletes a folder or prefix if it is there; a failure to delete is not an error.

    Args:
        filesystem: the pyarrow filesystem (resolve).
        path: the folder or prefix.
    """
    try:
        if filesystem.get_file_info(path).type != pafs.FileType.NotFound:
            filesystem.delete_dir(path)
    except OSError:
        pass


# --- Replacing a local output in one step ------------------------------------------------------

@contextlib.contextmanager
def replacing(path: str, what: str) -> Iterator[str]:
    """An empty staging folder beside `path`; when the block succeeds, the staging folder takes
    `path`'s place in one atomic step (readers see the old or the new version, never a missing or
    mixed one). Staging folders that a killed run left behind are removed by the next run. The new
    folder holds the owner marker (see check_owned, which the caller runs first).

    Args:
        path: the local output folder (a symbolic link stays; its target is replaced).
        what: what the output is (its owner marker says it).

    Yields:
        The staging folder to write into.

    Raises:
        StorageError: another job is writing the same output (one writer at a time).
    """
    path = os.path.realpath(path)  # a symbolic link (e.g. into MegaMek's data/ai/brains/) stays; its target is replaced
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    with exclusive_lock(os.path.join(parent, f".{name}.lock"), f"another job is writing {what} {path}"):
        for leftover in glob.glob(os.path.join(parent, f".{name}.staging-*")):
            shutil.rmtree(leftover, ignore_errors=True)
        staging = tempfile.mkdtemp(prefix=f".{name}.staging-", dir=parent)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it private; the output is an ordinary folder
        mark_owned(pafs.LocalFileSystem(), staging, what)
        try:
            yield staging
            mark_complete(pafs.LocalFileSystem(), staging, staging)
            exchange(staging, path)  # staging now holds the previous version, if there was one
        finally:
            shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def exclusive_lock(lock_path: str, busy: str | None = None) -> Iterator[None]:
    """An flock on `lock_path`, removed when done (filelock would leave the file beside every output;
    removing it while still holding it needs the same-file check below). A process killed while
    holding it leaves the file, but not the lock (it ends with the process).

    Args:
        lock_path: the lock file.
        busy: the message when another process holds it (None: wait for it instead).

    Yields:
        Nothing, while the lock is held.

    Raises:
        StorageError: another process holds it and `busy` is given.
    """
    while True:
        lock = open(lock_path, "a")  # noqa: SIM115  (held past this block)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | (fcntl.LOCK_NB if busy else 0))
        except BlockingIOError:
            lock.close()
            raise StorageError(busy) from None
        if _same_file(lock, lock_path):
            break
        lock.close()  # the holder before us removed the file once done: lock the one now there
    try:
        yield
    finally:
        os.unlink(lock_path)  # while still holding it, so that nobody else holds this file
        lock.close()


def _same_file(handle, path: str) -> bool:
    try:
        return os.path.samestat(os.fstat(handle.fileno()), os.stat(path))
    except FileNotFoundError:
        return False


_RENAME_EXCHANGE = 2  # Linux renameat2 flag
_RENAME_SWAP = 2  # macOS renamex_np flag
_AT_FDCWD = -100


def exchange(source: str, target: str) -> None:
    """Atomically puts `source` at `target`; the old `target` (if any) ends up at `source`.

    Args:
        source: the new folder.
        target: where it goes.
    """
    if not os.path.lexists(target):
        os.rename(source, target)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if hasattr(libc, "renameat2"):  # Linux
        result = libc.renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_EXCHANGE)
    elif hasattr(libc, "renamex_np"):  # macOS
        result = libc.renamex_np(os.fsencode(source), os.fsencode(target), _RENAME_SWAP)
    else:
        result = None
    if result == 0:
        return
    if result is not None and ctypes.get_errno() not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        raise OSError(ctypes.get_errno(), f"cannot replace {target}: {os.strerror(ctypes.get_errno())}")
    # No atomic exchange on this filesystem: two renames (a short window without `target`).
    aside = f"{source}.old"
    os.rename(target, aside)
    os.rename(source, target)
    os.rename(aside, source)

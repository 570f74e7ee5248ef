"""Where files live: a local path or `s3://bucket/prefix`, through one pyarrow filesystem.

S3 endpoint from `AWS_ENDPOINT_URL` (or `MLFLOW_S3_ENDPOINT_URL`); credentials from the usual
AWS environment variables.
"""
from __future__ import annotations

import os
import posixpath
from urllib.parse import urlparse

import pyarrow.fs as pafs

from caspar.cli import UserError


class StorageError(UserError):
    """A storage location that cannot be used; the message is one line for the user."""


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or an s3:// URI."""
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
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("MLFLOW_S3_ENDPOINT_URL")
    return f"{uri} (endpoint {endpoint})" if is_s3(uri) and endpoint else str(uri)


def info(filesystem: pafs.FileSystem, path: str, uri: str) -> pafs.FileInfo:
    """File info, with S3 connection failures turned into a one-line StorageError."""
    try:
        return filesystem.get_file_info(path)
    except OSError as error:
        raise StorageError(f"cannot reach {describe(uri)}: {_first_line(error)}") from None


def list_files(filesystem: pafs.FileSystem, path: str, uri: str) -> list[pafs.FileInfo]:
    try:
        infos = filesystem.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    except OSError as error:
        raise StorageError(f"cannot list {describe(uri)}: {_first_line(error)}") from None
    return sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.path)


def write_bytes(filesystem: pafs.FileSystem, path: str, data: bytes) -> None:
    with filesystem.open_output_stream(path) as stream:
        stream.write(data)


def read_bytes(filesystem: pafs.FileSystem, path: str) -> bytes:
    with filesystem.open_input_stream(path) as stream:
        return stream.read()


def join(*parts: str) -> str:
    return posixpath.join(*parts)


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__

"""Published game-log archives, downloaded once into a cache and checked against their hash.

    --input corpus:caspar-2025              the public CASPAR gameplay corpus (174 games, 3 MB)
    --input https://HOST/logs.zip#sha256=…  any archive of logs, with the hash it must have

The cache is `$CASPAR_CACHE`, else `$XDG_CACHE_HOME/caspar-trainer`, else `~/.cache/caspar-trainer`;
an archive is kept under its hash, so a second run does not download it again.
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from caspar.errors import UserError

# The MegaMek project's CASPAR gameplay logs (March-April 2025), CC BY-NC-SA 4.0: the archive in
# raw_gameplay_logs/ of github.com/MegaMek/mm-caspar-trainer, pinned to a commit.
CORPORA = {
    "caspar-2025": ("https://github.com/MegaMek/mm-caspar-trainer/raw/29d0c9f5a0d2e86b76ef319d466875edc78002fe/"
                    "raw_gameplay_logs/DECOMPRESS%20IN%20THIS%20FOLDER.zip",
                    "6bde32f5bbfdad88d2372e16622d51f4f1f286a1195eba0c46d1363409c51148"),
}
PREFIX = "corpus:"
HASHED_URL = re.compile(r"^(https?://[^#]+)#sha256=([0-9a-f]{64})$")
DOWNLOAD_TIMEOUT_S = 60


def is_remote(source: str) -> bool:
    return source.startswith((PREFIX, "http://", "https://"))


def archive(source: str) -> str:
    """The local path of the archive `source` names (corpus:NAME or URL#sha256=HEX), downloaded
    into the cache unless it is there already."""
    url, digest = resolve(source)
    cached = cache_folder() / f"{digest}.zip"
    if cached.is_file():
        return str(cached)
    cached.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=cached.parent, prefix=".download-")
    try:
        with os.fdopen(handle, "wb") as target:
            actual = download(url, target)
        if actual != digest:
            raise UserError(f"--input {source}: the download from {url} has sha256 {actual}, not {digest}; nothing kept")
        os.replace(partial, cached)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return str(cached)


def resolve(source: str) -> tuple[str, str]:
    """(url, sha256) of corpus:NAME or URL#sha256=HEX."""
    if source.startswith(PREFIX):
        name = source[len(PREFIX):]
        if name not in CORPORA:
            raise UserError(f"--input {source}: no corpus named {name!r} (known: {', '.join(sorted(CORPORA))})")
        return CORPORA[name]
    match = HASHED_URL.match(source)
    if not match:
        raise UserError(f"--input {source}: give a download as URL#sha256=HEX (the archive's hash), or corpus:NAME")
    return match.group(1), match.group(2)


def download(url: str, target) -> str:
    """Writes the body of `url` to `target`; returns its sha256."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                target.write(chunk)
    except (urllib.error.URLError, OSError) as error:
        raise UserError(f"cannot download {url}: {getattr(error, 'reason', error)}") from None
    return digest.hexdigest()


def cache_folder() -> Path:
    if os.environ.get("CASPAR_CACHE"):
        return Path(os.environ["CASPAR_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "caspar-trainer"

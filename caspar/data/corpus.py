"""Published game-log archives, downloaded once into a cache and checked against their hash.

    --input corpus:caspar-2025              the public CASPAR gameplay corpus (174 games, 3 MB)
    --input https://HOST/logs.zip#sha256=…  any archive of logs, with the hash it must have

The cache is `$CASPAR_CACHE`, else `$XDG_CACHE_HOME/caspar-trainer`, else `~/.cache/caspar-trainer`;
an archive is kept under its hash, so a second run does not download it again.
"""
from __future__ import annotations

import os
import re
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
    """Whether --input names something to download.

    Args:
        source: --input.

    Returns:
        True for corpus:NAME and http(s) URLs.
    """
    return source.startswith((PREFIX, "http://", "https://"))


def archive(source: str) -> str:
    """The local path of the archive `source` names (corpus:NAME or URL#sha256=HEX), downloaded
    into the cache unless it is there already (pooch: a download lands under its final name only
    once its hash is checked).

    Args:
        source: corpus:NAME or URL#sha256=HEX.

    Returns:
        The archive's local path.

    Raises:
        UserError: the download failed or its hash differs.
    """
    import pooch
    import requests

    url, digest = resolve(source)
    try:
        return pooch.retrieve(url, known_hash=f"sha256:{digest}", fname=f"{digest}.zip", path=cache_folder(),
                              downloader=pooch.HTTPDownloader(timeout=DOWNLOAD_TIMEOUT_S, progressbar=False))
    except ValueError as mismatch:  # pooch removed the download
        actual = re.search(r"but got ([0-9a-f]{64})", str(mismatch))
        raise UserError(f"--input {source}: the download from {url} has sha256 {actual and actual.group(1)}, "
                        f"not {digest}; nothing kept") from None
    except (requests.RequestException, OSError) as error:
        raise UserError(f"cannot download {url}: {error}") from None


def resolve(source: str) -> tuple[str, str]:
    """Where an archive is and what it must hash to.

    Args:
        source: corpus:NAME or URL#sha256=HEX.

    Returns:
        (url, sha256).

    Raises:
        UserError: an unknown corpus, or a URL without its hash.
    """
    if source.startswith(PREFIX):
        name = source[len(PREFIX):]
        if name not in CORPORA:
            raise UserError(f"--input {source}: no corpus named {name!r} (known: {', '.join(sorted(CORPORA))})")
        return CORPORA[name]
    match = HASHED_URL.match(source)
    if not match:
        raise UserError(f"--input {source}: give a download as URL#sha256=HEX (the archive's hash), or corpus:NAME")
    return match.group(1), match.group(2)


def cache_folder() -> Path:
    """Where downloads are kept: $CASPAR_CACHE, else caspar-trainer in the user's cache folder."""
    if os.environ.get("CASPAR_CACHE"):
        return Path(os.environ["CASPAR_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "caspar-trainer"

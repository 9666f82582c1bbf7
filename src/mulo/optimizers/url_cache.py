"""A file at a public HTTPS URL, downloaded once into mulo's cache (``~/.cache/mulo``, ``mulo.layout.CACHE_ROOT``).

Used for Google's released VeLO checkpoint (``velo:google``, a public Google Cloud Storage object: no credentials).
A file already in the cache is returned without any network call. A download is written to a temporary file in the
cache folder and renamed onto its final name only when complete (``os.replace``), so the final name never holds a
partial file. Offline, an HTTP error, a timeout or a body shorter or longer than its Content-Length is one
CheckpointError line naming the URL and saying how to place the file by hand.
"""

from __future__ import annotations

import http.client
import os
import tempfile
import urllib.request
from pathlib import Path

from mulo.errors import CheckpointError, one_line
from mulo.layout import CACHE_ROOT

TIMEOUT_S = 60.0  # per blocking socket operation (connect, each read), not the whole download
CHUNK = 1 << 20
PROGRESS_MIN_BYTES = 8 << 20  # show a progress bar above this size


def cache_path(*parts: str) -> Path:
    """``CACHE_ROOT/<parts>`` with ``~`` expanded (HOME at call time)."""
    return Path(CACHE_ROOT).expanduser().joinpath(*parts)


def open_url(url: str, timeout: float):
    """The HTTP response of ``url`` (the network boundary: tests replace it)."""
    return urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "mulo"}), timeout=timeout)


def cached_download(url: str, dest: Path, by_hand: str, timeout: float = TIMEOUT_S) -> Path:
    """``dest``, downloading ``url`` into it first if it is not there. ``by_hand`` says how to use a copy placed by
    hand (the last words of the one-line error)."""
    if dest.is_file():
        return dest
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as e:
        raise CheckpointError(f"cannot write into the cache folder {dest.parent} ({e.strerror or e}): download "
                              f"{url} by hand and {by_hand}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            _copy(url, out, timeout, dest.name)
        os.replace(tmp, dest)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        # URLError, HTTPError, timeouts and truncation are OSErrors; IncompleteRead and bad status lines HTTPExceptions
        if isinstance(e, (OSError, ValueError, http.client.HTTPException)):
            reason = one_line(getattr(e, "reason", None) or e, 200)
            raise CheckpointError(f"cannot download {url} ({type(e).__name__}: {reason}); offline? Download it by "
                                  f"hand and {by_hand}") from None
        raise
    return dest


def _copy(url: str, out, timeout: float, name: str) -> None:
    """Stream ``url`` into ``out``; a body of another length than its Content-Length is an OSError."""
    from tqdm.auto import tqdm

    with open_url(url, timeout) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length is not None and length.strip().isdigit() else None
        got = 0
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {name}", leave=False,
                  disable=total is None or total < PROGRESS_MIN_BYTES, dynamic_ncols=True) as bar:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                got += len(chunk)
                bar.update(len(chunk))
    if total is not None and got != total:
        raise OSError(f"truncated: got {got} of {total} bytes")

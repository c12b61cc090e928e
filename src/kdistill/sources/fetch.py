"""Fetching an archive: a local path, a file:// URL or HTTP(S) with timeouts and retries, verified by md5."""

from __future__ import annotations

import http.client
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from tqdm import tqdm

from kdistill.errors import DataError
from kdistill.files import atomic_path, md5sum


def _local_source(url: str) -> Path | None:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme == "":
        return Path(url)
    return None


def _is_transient(error: Exception) -> bool:
    if isinstance(error, urllib.error.HTTPError):
        return error.code >= 500 or error.code in (408, 429)
    return isinstance(error, (urllib.error.URLError, TimeoutError, ConnectionError, http.client.IncompleteRead))


def _download(url: str, destination: Path, timeout: float) -> None:
    with urllib.request.urlopen(url, timeout=timeout) as response, open(destination, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        received = 0
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {url}", disable=None) as bar:
            while block := response.read(1 << 20):
                out.write(block)
                received += len(block)
                bar.update(len(block))
    if total is not None and received < total:  # the connection dropped: worth another attempt
        raise http.client.IncompleteRead(b"", total - received)


def fetch(url: str, destination: Path, md5: str, *, attempts: int = 3, timeout: float = 10.0,
          backoff: float = 1.0, keys: tuple[str, str] = ("data.url", "data.md5")) -> Path:
    """Make ``destination`` a verified copy of ``url``; a file already there with the right md5 stays.

    The copy is written under a temporary name and moved into place only once its md5 matches, so
    an interrupted or corrupt download never looks like a good archive.
    """
    if destination.is_file() and md5sum(destination) == md5:
        print(f"{destination}: already present, md5 {md5} verified; not fetched again")
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(destination) as partial:
        local = _local_source(url)
        if local is not None:
            if not local.is_file():
                raise DataError(f"{keys[0]} {url!r}: no such file")
            shutil.copyfile(local, partial)
        else:
            _download_with_retries(url, partial, attempts=attempts, timeout=timeout, backoff=backoff)
        actual = md5sum(partial)
        if actual != md5:
            raise DataError(
                f"md5 mismatch for {url}: expected {md5} ({keys[1]}), got {actual}; "
                "the file is corrupt, truncated or not the file you meant"
            )
    return destination


def _download_with_retries(url: str, partial: Path, *, attempts: int, timeout: float, backoff: float) -> None:
    for attempt in range(1, attempts + 1):
        try:
            _download(url, partial, timeout)
            return
        except Exception as error:  # noqa: BLE001 - classified just below
            if not _is_transient(error):
                raise DataError(f"cannot download {url}: {error}") from None
            if attempt == attempts:
                raise DataError(f"cannot download {url} after {attempts} attempts: {error}") from None
            delay = backoff * 2 ** (attempt - 1)
            print(f"download of {url} failed ({error}); retrying in {delay:.0f} s")
            time.sleep(delay)


def archive_path(url: str, raw_dir: Path) -> Path:
    name = PurePosixPath(urlparse(url).path).name or "archive"
    return raw_dir / name

"""Checksum-verified, resumable downloads of public dataset archives.

:func:`fetch` hands the work to pooch (``pooch.retrieve``: skip when a file with the right hash is
already there, download to a temporary file, check the hash, then move it into place; a file whose
hash does not match is deleted, never kept) and adds what pooch lacks, in
:class:`ResumableHTTPDownloader`:

- the bytes go to ``<file>.part`` first; an interrupted transfer (dropped connection, killed
  process, reboot) continues from the end of that file with an HTTP ``Range`` request when the
  server allows it (``206 Partial Content``), and starts again when it does not;
- retries with back-off on connection errors and truncated responses, resuming each time;
- a ``User-Agent`` of our own (some hosts refuse library defaults);
- one clear message (:class:`DownloadError`) when the host cannot be reached, which says where to
  put a file fetched by hand; never a stack of socket errors.

A ``.part`` file is never taken for a complete download: only a finished transfer is handed to
pooch, and only a file whose hash matches is renamed to its final name.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from crd.errors import CrdError

__all__ = ["Source", "DownloadError", "ResumableHTTPDownloader", "fetch", "file_checksum"]

CHUNK_BYTES = 1 << 16
"""Bytes read at a time: what a dropped connection can lose of the last read."""


class DownloadError(CrdError):
    """A download failed (unreachable host, HTTP error, checksum mismatch); the message names the
    file and what to do."""


@dataclass(frozen=True)
class Source:
    """One file to download.

    Attributes:
        url: where to get it.
        filename: the local file name.
        known_hash: ``"sha256:<hex>"`` or ``"md5:<hex>"``, as published; ``None`` when no checksum
            is published (the file is then only checked for completeness, and its sha256 is
            recorded in ``dataset.json``).
        size_bytes: approximate size, for messages and the README (0 = unknown).
        hash_origin: where ``known_hash`` comes from (for provenance).
    """

    url: str
    filename: str
    known_hash: str | None = None
    size_bytes: int = 0
    hash_origin: str = ""


def _user_agent() -> str:
    from crd import __version__

    return f"crd-bench/{__version__} (dataset downloader; +https://pypi.org/project/pooch/)"


def _short_reason(exc: BaseException) -> str:
    """The useful part of a requests/urllib3 error chain, e.g. 'Connection refused'."""
    text = str(exc)
    for needle in (
        "Name or service not known",
        "Temporary failure in name resolution",
        "nodename nor servname provided",
        "Connection refused",
        "Network is unreachable",
        "No route to host",
        "timed out",
        "Connection reset by peer",
        "Connection aborted",
        "IncompleteRead",
    ):
        if needle in text:
            return needle
    return (type(exc).__name__ + ": " + text)[:160]


class _Truncated(Exception):
    """The server closed the connection before the announced length."""


class ResumableHTTPDownloader:
    """A pooch downloader (``downloader(url, output_file, pooch)``) that resumes and retries.

    Args:
        part: the partial file, kept between attempts and between runs.
        progress: show a tqdm bar (bytes).
        retries: further attempts after a connection error or a truncated transfer.
        timeout: seconds to wait for the server to answer or send the next bytes.
        backoff: seconds before the first retry; doubled each time (at most 30 s).
        user_agent: the ``User-Agent`` header.
        sleep: the sleep function (tests pass a no-op).
    """

    def __init__(
        self,
        part: Path,
        *,
        progress: bool = True,
        retries: int = 5,
        timeout: float = 60.0,
        backoff: float = 2.0,
        user_agent: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.part = Path(part)
        self.progress = progress
        self.retries = retries
        self.timeout = timeout
        self.backoff = backoff
        self.user_agent = user_agent or _user_agent()
        self.sleep = sleep

    def __call__(self, url: str, output_file: Any, pooch: Any = None, check_only: bool = False):
        import requests

        if check_only:  # pooch's API: does the URL exist?
            response = requests.head(url, headers=self._headers(), timeout=self.timeout,
                                     allow_redirects=True)
            return response.status_code == 200
        errors = (requests.ConnectionError, requests.Timeout,
                  requests.exceptions.ChunkedEncodingError, _Truncated)
        for attempt in range(self.retries + 1):
            try:
                self._transfer(url)
                break
            except errors as exc:
                if attempt == self.retries:
                    host = urlparse(url).netloc
                    raise DownloadError(
                        f"cannot download {self.part.name[: -len('.part')]} from {host} "
                        f"({_short_reason(exc)}) after {self.retries + 1} attempt(s). If this "
                        f"machine is offline, fetch {url} elsewhere and put it at "
                        f"{self.part.with_suffix('')} (it is checked before use); the "
                        f"{self.part.stat().st_size if self.part.exists() else 0} bytes "
                        f"received so far are kept in {self.part} and the next run resumes."
                    ) from None
                self.sleep(min(self.backoff * 2**attempt, 30.0))
        os.replace(self.part, output_file)

    def _headers(self, start: int = 0) -> dict[str, str]:
        headers = {"User-Agent": self.user_agent}
        if start:
            headers["Range"] = f"bytes={start}-"
        return headers

    def _transfer(self, url: str) -> None:
        import requests
        from tqdm.auto import tqdm

        have = self.part.stat().st_size if self.part.exists() else 0
        with requests.get(url, headers=self._headers(have), stream=True,
                          timeout=self.timeout) as response:
            if have and response.status_code == 416:
                return  # the range starts at the end: the part file is complete
            if response.status_code >= 400:
                raise DownloadError(
                    f"cannot download {url}: the server answered {response.status_code} "
                    f"{response.reason}"
                )
            resumed = have > 0 and response.status_code == 206
            if not resumed:
                have = 0  # no Range support (200): start again
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            with (
                open(self.part, "ab" if resumed else "wb") as out,
                tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                     desc=self.part.name[: -len(".part")], disable=not self.progress,
                     leave=False) as bar,
            ):
                for chunk in response.iter_content(CHUNK_BYTES):
                    out.write(chunk)
                    bar.update(len(chunk))
                out.flush()
                os.fsync(out.fileno())
            got = self.part.stat().st_size
            if total is not None and got < total:
                raise _Truncated(f"received {got} of {total} bytes")


def fetch(
    source: Source,
    folder: str | os.PathLike[str],
    *,
    progress: bool = True,
    retries: int = 5,
    timeout: float = 60.0,
    sleep: Callable[[float], None] = time.sleep,
) -> Path:
    """Download ``source`` into ``folder`` (once), verify it, and return its path.

    A file already at ``folder/filename`` whose hash matches is used as is (so a file fetched by
    hand works offline); one whose hash does not match is downloaded again.

    Raises:
        DownloadError: the host is unreachable, the server refused, or the checksum of what
            arrived does not match ``source.known_hash`` (that file is deleted).
    """
    import pooch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    downloader = ResumableHTTPDownloader(
        folder / f"{source.filename}.part", progress=progress, retries=retries, timeout=timeout,
        sleep=sleep,
    )
    try:
        path = pooch.retrieve(
            source.url, known_hash=source.known_hash, fname=source.filename, path=folder,
            downloader=downloader,
        )
    except ValueError as exc:  # pooch's hash mismatch
        raise DownloadError(
            f"{folder / source.filename}: checksum mismatch, the file was deleted ({exc})"
        ) from None
    return Path(path)


def file_checksum(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """``"<algorithm>:<hex>"`` of a file, read in chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return f"{algorithm}:{digest.hexdigest()}"

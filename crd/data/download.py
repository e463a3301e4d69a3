"""Checksum-verified, resumable downloads of public dataset archives.

:func:`fetch` hands the work to pooch (``pooch.retrieve``: skip when a file with the right hash is
already there, download to a temporary file, check the hash, then move it into place; a file whose
hash does not match is deleted, never kept) and adds what pooch lacks, in
:class:`ResumableHTTPDownloader`:

- the bytes go to ``<file>.part`` first; an interrupted transfer (dropped connection, killed
  process, reboot) continues from the end of that file with an HTTP ``Range: bytes=<have>-``
  request when the server allows it, and starts again when it does not (``200``);
- a resumed reply is appended only when it fits the ``.part``: a ``206 Partial Content`` must carry
  ``Content-Range: bytes <start>-<end>/<total or *>`` with ``start`` equal to the ``.part``'s size
  (and an end and ``Content-Length`` that agree with it); a ``416 Range Not Satisfiable`` means
  "already complete" only when it says ``Content-Range: bytes */<total>`` and that total is the
  ``.part``'s size. Any other answer (missing or unparseable ``Content-Range``, another start, a
  ``416`` without the total or with another one), and a transfer that leaves the ``.part`` larger
  than the size the server announced, discard the ``.part`` and start once more from byte 0 with a
  plain request; when that does not give a consistent file either, :class:`DownloadError`;
- retries with back-off on connection errors and truncated responses, resuming each time;
- a ``User-Agent`` of our own (some hosts refuse library defaults) and ``Accept-Encoding:
  identity``, so that byte counts are those of the file;
- one clear message (:class:`DownloadError`) when the host cannot be reached, which says where to
  put a file fetched by hand; never a stack of socket errors.

A ``.part`` file is never taken for a complete download: only a finished transfer whose size
matches the one the server announced (when it announced one) is handed to pooch, and only a file
whose hash matches (when a hash is published) is renamed to its final name. Without a published
hash and without an announced size (no ``Content-Length``, no ``Content-Range``) nothing can tell
a short file from a whole one; every dataset host we use announces the size.
"""

from __future__ import annotations

import hashlib
import os
import re
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
    """A download failed (unreachable host, HTTP error, checksum mismatch, replies that do not fit
    together even after starting again); the message names the file and what to do."""


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


class _Inconsistent(Exception):
    """What the server sent does not continue the ``.part`` (or overruns the announced size): the
    ``.part`` is discarded and the download starts again from byte 0."""


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes \*/(\d+)")


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
        name = self.part.name[: -len(".part")]
        restarted = False
        attempt = 0
        while True:
            try:
                self._transfer(url)
                break
            except _Inconsistent as exc:
                self.part.unlink(missing_ok=True)
                if restarted:
                    raise DownloadError(
                        f"cannot download {name} from {urlparse(url).netloc}: even after "
                        f"discarding the partial file and starting again from byte 0, {exc}; "
                        f"nothing was kept. Try again later, or fetch {url} elsewhere and put it "
                        f"at {self.part.with_suffix('')} (it is checked before use)."
                    ) from None
                restarted = True  # start again from byte 0, at once (not a retry)
            except errors as exc:
                have = self.part.stat().st_size if self.part.exists() else 0
                # a connection that never delivered a byte (offline, unknown host, refused) is tried
                # twice, not retries + 1 times with back-off: that would only delay the message
                unreachable = isinstance(exc, requests.ConnectionError) and not have
                if attempt >= (min(self.retries, 1) if unreachable else self.retries):
                    host = urlparse(url).netloc
                    kept = (f"the {have} bytes received so far are kept in {self.part} and the next run resumes"
                            if have else "nothing was received")  # fmt: skip
                    raise DownloadError(
                        f"cannot download {name} from {host} "
                        f"({_short_reason(exc)}) after {attempt + 1} attempt(s). If this "
                        f"machine is offline, fetch {url} elsewhere and put it at "
                        f"{self.part.with_suffix('')} (it is checked before use); {kept}."
                    ) from None
                self.sleep(min(self.backoff * 2**attempt, 30.0))
                attempt += 1
        os.replace(self.part, output_file)

    def _headers(self, start: int = 0) -> dict[str, str]:
        # identity: Content-Length and Content-Range then count the bytes of the file itself
        headers = {"User-Agent": self.user_agent, "Accept-Encoding": "identity"}
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
                match = _UNSATISFIED_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
                if match and int(match.group(1)) == have:
                    return  # the range starts at the end of a file of this size: the part is complete
                said = f"the file is {match.group(1)} bytes" if match else "without the file's size"
                raise _Inconsistent(f"the server answered 416 to a resume from byte {have} ({said})")
            if response.status_code >= 400:
                raise DownloadError(
                    f"cannot download {url}: the server answered {response.status_code} "
                    f"{response.reason}"
                )
            length = response.headers.get("Content-Length")
            length = int(length) if length is not None and length.strip().isdigit() else None
            if response.status_code == 206:
                limit, total = self._check_range(response.headers.get("Content-Range"), have, length)
            else:  # 200 (no Range support, or none asked): the whole file, from byte 0
                have = 0
                limit = total = length
            with (
                open(self.part, "ab" if have else "wb") as out,
                tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                     desc=self.part.name[: -len(".part")], disable=not self.progress,
                     leave=False) as bar,
            ):
                got = have
                for chunk in response.iter_content(CHUNK_BYTES):
                    got += len(chunk)
                    if limit is not None and got > limit:
                        break  # more bytes than announced: stop reading, checked below
                    out.write(chunk)
                    bar.update(len(chunk))
                out.flush()
                os.fsync(out.fileno())
            if limit is not None and got > limit:
                raise _Inconsistent(f"the server sent more bytes than the {limit} it announced")
            if total is not None and got < total:
                raise _Truncated(f"received {got} of {total} bytes")

    @staticmethod
    def _check_range(content_range: str | None, have: int, length: int | None) -> tuple[int, int]:
        """``(limit, total)`` of a ``206`` reply to ``Range: bytes=<have>-``: the size the ``.part``
        reaches with this reply, and the file's size (``limit`` when the reply says ``/*``).

        Raises:
            _Inconsistent: the reply does not continue a ``.part`` of ``have`` bytes.
        """
        match = _CONTENT_RANGE.fullmatch((content_range or "").strip())
        if match is None:
            said = f"Content-Range {content_range!r}" if content_range else "no Content-Range"
            raise _Inconsistent(f"the server answered 206 to a resume from byte {have} with {said}")
        start, end = int(match.group(1)), int(match.group(2))
        total = int(match.group(3)) if match.group(3) != "*" else end + 1
        if start != have:
            raise _Inconsistent(
                f"the server answered a resume from byte {have} with bytes from {start}"
            )
        if end < start or end >= total or (length is not None and length != end + 1 - start):
            raise _Inconsistent(
                f"the server answered a resume from byte {have} with Content-Range {content_range!r} "
                f"and Content-Length {length}, which disagree"
            )
        return end + 1, total


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
        DownloadError: the host is unreachable, the server refused, its replies did not give a
            file of the size it announced even after starting again from byte 0, or the checksum
            of what arrived does not match ``source.known_hash`` (that file is deleted).
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

"""Atomic file writes: write to a temporary file in the target's folder, then ``os.replace``.

Readers (and Snakemake) never see a half-written output; a failed write leaves nothing behind.
Every writer in crd-bench (datasets, checkpoints, tables, images, bench results) goes through
:func:`atomic_target`, or :func:`atomic_targets` when one command writes several files that
belong together (all are renamed into place only once every one of them is written).

:func:`check_outputs` is the one guard every command runs before it writes: no output may be one
of the command's inputs, another of its outputs, or lie inside an input folder.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from crd.errors import CrdError

__all__ = [
    "default_mode",
    "atomic_target",
    "atomic_targets",
    "write_text_atomic",
    "check_outputs",
    "check_writable_folder",
    "OutputClashError",
]

PathLike = str | os.PathLike[str]


class OutputClashError(CrdError, ValueError):
    """An output path would replace an input, another output, or a file in an input folder."""


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode(directory: bool = False) -> int:
    """Permission bits a plain ``open``/``mkdir`` would give (temp files are created 0600/0700)."""
    return (0o777 if directory else 0o666) & ~_umask()


def _temporary_next_to(path: Path, suffix: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, default_mode())
    return tmp


@contextmanager
def atomic_targets(paths: list[PathLike], suffixes: list[str] | None = None) -> Iterator[list[Path]]:
    """Yield one temporary path next to each of ``paths`` (ending in the matching ``suffixes``,
    default ``.tmp``); when the block succeeds every one replaces its target, in order; when it
    fails (or a temporary file cannot be made) every temporary file is removed and no target is
    touched."""
    targets = [Path(p) for p in paths]
    suffixes = list(suffixes) if suffixes is not None else [".tmp"] * len(targets)
    if len(suffixes) != len(targets):
        raise ValueError(f"{len(targets)} paths but {len(suffixes)} suffixes")
    tmps: list[Path] = []
    try:
        for target, suffix in zip(targets, suffixes, strict=True):
            tmps.append(_temporary_next_to(target, suffix))
        yield tmps
        for tmp, target in zip(tmps, targets, strict=True):
            os.replace(tmp, target)
    except BaseException:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_target(path: PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (ending in ``suffix``, so libraries that pick the
    format from the extension still do); on success it replaces ``path``, on error it is removed.
    """
    with atomic_targets([path], [suffix]) as (tmp,):
        yield tmp


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically."""
    with atomic_target(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="")
    return Path(path)


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _inside(path: Path, folder: Path) -> bool:
    return folder.resolve() in path.resolve().parents


def check_outputs(
    inputs: dict[str, PathLike | None],
    outputs: dict[str, PathLike | None],
    input_folders: dict[str, PathLike | None] | None = None,
) -> None:
    """Refuse, before anything is written, an output that would replace one of the command's
    inputs or another of its outputs (the same path, a symbolic or hard link to it), or that lies
    inside an input folder (e.g. a dataset).

    Each mapping goes from what the file is (``"--out-flow"``, ``"fixed image"``) to its path;
    ``None`` entries are skipped. List derived outputs (a sidecar ``.json``, an example image) as
    outputs too. Raises :class:`OutputClashError` with one line naming both.
    """
    ins = [(what, Path(p)) for what, p in inputs.items() if p is not None]
    outs = [(what, Path(p)) for what, p in outputs.items() if p is not None]
    folders = [(what, Path(p)) for what, p in (input_folders or {}).items() if p is not None]
    for i, (what, out) in enumerate(outs):
        for in_what, src in ins:
            if _same_file(out, src):
                raise OutputClashError(
                    f"{what} {out} is the {in_what}: an output never replaces an input; give another path"
                )
        for other_what, other in outs[:i]:
            if _same_file(out, other):
                raise OutputClashError(f"{what} {out} is also {other_what}: give each output its own path")
        for in_what, folder in folders:
            if _inside(out, folder):
                raise OutputClashError(
                    f"{what} {out} lies inside the {in_what} {folder}: outputs never go into an input folder"
                )


def check_writable_folder(folder: PathLike, what: str) -> Path:
    """Create ``folder`` if needed and make sure a file can be written in it, so a long job fails
    at its start, not when it first saves. Raises :class:`~crd.errors.CrdError` with one line
    naming the folder."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".crd-write-test.", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise CrdError(f"{what}: cannot write in {folder} ({exc.strerror or exc})") from None
    return folder

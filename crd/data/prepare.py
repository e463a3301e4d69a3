"""Download and preprocess a public dataset into the canonical layout.

``download_dataset`` fetches a spec's files (checksum-verified, resumable; refuses without
``accept_terms`` where the terms require it). ``prepare_dataset`` reads them (archives are read
member by member, never unpacked to disk), preprocesses every subject that appears in a pair
(a thread pool, a progress bar), writes everything into a staging folder next to the target, and
renames it into place only when complete: a failed run leaves no half-written dataset.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from crd.data.download import DownloadError, Source, fetch, file_checksum
from crd.data.layout import dataset_info, write_dataset_json, write_nifti, write_pairs
from crd.data.specs import SPECS, get_spec
from crd.data.specs.base import DatasetSpec, SpecError
from crd.errors import CrdError

__all__ = ["TermsError", "MissingSourceError", "download_dataset", "prepare_dataset", "sources_for"]

_SPACING_RTOL = 1e-4


class TermsError(CrdError):
    """The dataset's terms must be accepted explicitly (``accept_terms: true``)."""


class MissingSourceError(CrdError):
    """A file the dataset needs is not there; the message says where to get it."""


def sources_for(
    spec: DatasetSpec,
    urls: Mapping[str, str] | None = None,
    checksums: Mapping[str, str] | None = None,
) -> list[Source]:
    """The spec's sources with per-file overrides (a mirror URL, a checksum pinned by the user)."""
    urls, checksums = dict(urls or {}), dict(checksums or {})
    names = {s.filename for s in spec.sources}
    for key in (*urls, *checksums):
        if key not in names:
            raise SpecError(f"{spec.name}: no source file {key!r}; its files: {', '.join(sorted(names))}")
    out = []
    for s in spec.sources:
        out.append(Source(urls.get(s.filename, s.url), s.filename,
                          checksums.get(s.filename, s.known_hash), s.size_bytes,
                          "config" if s.filename in checksums else s.hash_origin))
    return out


def _terms_message(spec: DatasetSpec) -> str:
    return (
        f"{spec.name}: its terms must be accepted before crd-bench downloads it: {spec.license}. "
        f"Read them at {spec.homepage}; then set `accept_terms: true` under datasets.{spec.name} "
        f"in the config (or pass --accept-terms to `crd download`)."
    )


def _byo_message(spec: DatasetSpec, folder: Path, missing: list[str]) -> str:
    return (
        f"{spec.name}: bring-your-own dataset: {', '.join(str(folder / m) for m in missing)} "
        f"not found. {spec.instructions} Put the file(s) in {folder}, or set "
        f"datasets.{spec.name}.path in the config to the folder that holds them."
    )


def download_dataset(
    name: str,
    folder: str | os.PathLike[str],
    *,
    accept_terms: bool = False,
    urls: Mapping[str, str] | None = None,
    checksums: Mapping[str, str] | None = None,
    progress: bool = True,
    retries: int = 5,
) -> list[Path]:
    """Download every file of dataset ``name`` into ``folder`` (skipping verified ones).

    Raises:
        TermsError: the terms need ``accept_terms`` and it is False.
        MissingSourceError: a bring-your-own dataset (nothing to download) lacks its files.
        DownloadError: see :func:`crd.data.download.fetch`.
    """
    spec = get_spec(name)
    folder = Path(folder)
    if spec.bring_your_own:
        return list(_source_files(spec, folder).values())
    if spec.requires_terms and not accept_terms:
        raise TermsError(_terms_message(spec))
    return [fetch(s, folder, progress=progress, retries=retries)
            for s in sources_for(spec, urls, checksums)]


def _source_files(spec: DatasetSpec, folder: Path) -> dict[str, Path]:
    if spec.bring_your_own:
        found = spec.own_sources(folder)
        if found is None:
            raise MissingSourceError(_byo_message(spec, folder, list(spec.own_files)))
        return found
    names = tuple(s.filename for s in spec.sources)
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise MissingSourceError(
            f"{spec.name}: {', '.join(str(folder / m) for m in missing)} not found; run "
            f"`crd download {spec.name} {folder}` first"
        )
    return {n: folder / n for n in names}


class _Prepared(NamedTuple):
    """What writing one subject reports back."""

    subject: str
    shape: tuple[int, ...]  # (D, H, W) voxels of image and labels
    spacing: tuple[float, ...]  # voxel size per axis: the norms of the affine's columns (world units, mm)
    warnings: list[str]  # the preprocessing's compromises, also printed to stderr


def _plan(
    spec: DatasetSpec, src: Any, opts: Mapping[str, Any]
) -> tuple[list[tuple[str, str, str]], list[str], dict[str, Any]]:
    """The ``(split, fixed, moving)`` pair rows, the sorted ids of the subjects they use, and the
    spec's shared context for preprocessing those subjects."""
    ids = spec.subject_ids(src, opts)
    rows = spec.pairs(src, ids, opts)
    needed = sorted({s for _, f, m in rows for s in (f, m)})
    ctx = spec.context(src, needed, opts)
    return rows, needed, ctx


def _staging_folder(out: Path) -> Path:
    """A new empty ``.<name>.*.partial`` folder next to ``out`` (its parent created if need be)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))


def _write_subject(
    spec: DatasetSpec, src: Any, subject: str, opts: Mapping[str, Any], ctx: Mapping[str, Any], staging: Path,
    name: str,
) -> _Prepared:
    """Preprocess one subject and write ``images/<id>.nii.gz`` (float32) and ``labels/<id>.nii.gz``
    (int16) into ``staging``; its warnings are printed to stderr, prefixed with ``name``."""
    sub = spec.load(src, subject, opts, ctx)
    if sub.image.shape != sub.labels.shape:
        raise SpecError(f"{spec.name}: {subject}: image {sub.image.shape} and labels "
                        f"{sub.labels.shape} differ in shape")
    write_nifti(staging / "images" / f"{subject}.nii.gz",
                sub.image.astype(np.float32), affine=sub.affine)
    write_nifti(staging / "labels" / f"{subject}.nii.gz",
                sub.labels.astype(np.int16), affine=sub.affine)
    spacing = tuple(float(s) for s in np.linalg.norm(sub.affine[:3, :3], axis=0))
    for message in sub.warnings:
        print(f"crd prepare {name}: warning: {message}", file=sys.stderr)
    return _Prepared(subject, tuple(sub.image.shape), spacing, sub.warnings)


def _write_subjects(spec: DatasetSpec, src: Any, subjects: list[str], opts: Mapping[str, Any], ctx: Mapping[str, Any],
                    staging: Path, *, name: str, threads: int, progress: bool) -> list[_Prepared]:
    """:func:`_write_subject` for every subject on ``threads`` threads (at least one), in order."""
    from tqdm.auto import tqdm

    def one(subject: str) -> _Prepared:
        return _write_subject(spec, src, subject, opts, ctx, staging, name)

    with ThreadPoolExecutor(max(1, threads)) as pool:
        return list(tqdm(pool.map(one, subjects), total=len(subjects), desc=f"prepare {name}",
                         unit="subject", disable=not progress))


def _common_grid(spec: DatasetSpec, done: list[_Prepared]) -> tuple[tuple[int, ...], np.ndarray]:
    """The one shape (voxels) and the ``(3,)`` spacing (mm, the first subject's) all subjects share;
    ``SpecError`` when shapes differ or a spacing differs beyond a relative ``_SPACING_RTOL``."""
    shapes = {s for _, s, _, _ in done}
    if len(shapes) != 1:
        raise SpecError(f"{spec.name}: preprocessed subjects differ in shape: {sorted(shapes)}")
    spacing = np.asarray(done[0][2])
    for subject, _, sp, _ in done:
        if not np.allclose(sp, spacing, rtol=_SPACING_RTOL, atol=0):
            raise SpecError(f"{spec.name}: {subject} has voxel spacing {sp} mm, "
                            f"{done[0][0]} has {tuple(spacing)} mm")
    return next(iter(shapes)), spacing


def _info(spec: DatasetSpec, src: Any, name: str, out: Path, files: Mapping[str, Path], opts: Mapping[str, Any],
          grid: tuple[tuple[int, ...], np.ndarray], done: list[_Prepared]) -> dict[str, Any]:
    """The ``dataset.json`` dict: the spec's metadata, the source files' checksums, the options,
    the common ``grid`` (shape in voxels, spacing in mm) and every subject's warnings."""
    shape, spacing = grid
    checksums = {n: file_checksum(p) for n, p in sorted(files.items())}
    return dataset_info(
        name=out.name,  # the folder (= config key) names the dataset everywhere
        labels=spec.labels,
        spacing=spacing.tolist(),
        shape=shape,
        description=spec.title,
        source=", ".join(s.url for s in spec.sources) or f"bring your own: {', '.join(files)}",
        license=spec.license,
        citation=spec.citation,
        checksums=checksums,
        generator={"source": name, "options": opts, "protocol": spec.protocol_of(opts).record()},
        intensity=spec.intensity,
        provenance=spec.notes,
        spacing_unit=getattr(src, "spacing_unit", "mm"),
        preprocess_warnings=[w for *_, ws in done for w in ws],
        **spec.extra,
    )


def _replace(staging: Path, out: Path) -> None:
    """Rename the complete ``staging`` folder to ``out``, deleting an existing ``out`` first."""
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)


def _close(src: Any) -> None:
    """Close the opened sources when they can be closed."""
    close = getattr(src, "close", None)
    if close is not None:
        close()


def prepare_dataset(
    name: str,
    sources: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    options: Mapping[str, Any] | None = None,
    threads: int = 1,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Preprocess dataset ``name`` from the files in ``sources`` into the canonical layout at
    ``out`` (see :mod:`crd.data.layout`), recording options and checksums in ``dataset.json``.

    Args:
        name: a key of :data:`crd.data.specs.SPECS`.
        sources: the folder holding the downloaded (or, bring-your-own, placed) files.
        out: the dataset folder to create; its name is the dataset's name (``dataset.json``,
            tables, report), e.g. the config key.
        options: preprocessing options (the spec's ``options`` are the defaults).
        threads: subjects preprocessed at once.
        progress: show a progress bar.
        overwrite: replace an existing ``out``.

    Returns:
        ``out``.
    """
    spec = get_spec(name)
    opts = spec.resolve_options(options)
    out, sources = Path(out), Path(sources)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists (pass overwrite=True / --overwrite)")
    files = _source_files(spec, sources)
    src = spec.open(files)
    rows, needed, ctx = _plan(spec, src, opts)
    staging = _staging_folder(out)
    try:
        (staging / "images").mkdir()
        (staging / "labels").mkdir()
        done = _write_subjects(spec, src, needed, opts, ctx, staging, name=name, threads=threads, progress=progress)
        grid = _common_grid(spec, done)
        write_pairs(staging, rows)
        write_dataset_json(staging, _info(spec, src, name, out, files, opts, grid, done))
        _replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        _close(src)
    return out


__all__ += ["SPECS", "DownloadError"]

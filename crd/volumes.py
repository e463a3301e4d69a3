"""Volumes on disk: the one place crd-bench reads and writes NIfTI (and other nibabel) images.

Every reader (the dataset layout, ``crd register``, ``crd metrics``, the report's example figure)
goes through :func:`read_volume` and :func:`voxels`, so a missing, truncated or corrupt file, a
volume that is not 3-D, or a grid mismatch is reported the same way everywhere: one line naming
the file and the problem, as the caller's exception type. Every image writer goes through
:func:`save_images_atomic` (several images of one command are renamed into place together).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Mapping
from pathlib import Path

import nibabel as nib
import numpy as np

from crd.atomic import atomic_targets
from crd.errors import CrdError

__all__ = [
    "GRID_ATOL_MM",
    "VolumeError",
    "open_image",
    "read_volume",
    "voxels",
    "same_grid",
    "check_same_grid",
    "nifti_suffix",
    "save_image_atomic",
    "save_images_atomic",
]

GRID_ATOL_MM = 1e-3
"""Two volumes share a voxel grid when their shapes are equal and their voxel-to-world affines
agree to this many millimetres (the one tolerance of crd-bench)."""

#: what nibabel and its decompressors raise on truncated or damaged files
_READ_ERRORS = (OSError, EOFError, zlib.error, ValueError, nib.filebasedimages.ImageFileError)


class VolumeError(CrdError, ValueError):
    """A volume file cannot be used: missing, unreadable, damaged, not 3-D, off the grid."""


def open_image(
    path: str | os.PathLike[str], what: str = "image", *, error: type[Exception] = VolumeError
) -> nib.spatialimages.SpatialImage:
    """Open any image nibabel reads, of any dimension (header only). Raises ``error`` with one
    line ``"<what> <path>: <problem>"`` if the file is missing or not an image."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path}: file not found")
    try:
        return nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for unknown or corrupt files
        raise error(f"{what} {path}: cannot be read by nibabel as an image ({_reason(exc)})") from None


def read_volume(
    path: str | os.PathLike[str], what: str = "image", *, error: type[Exception] = VolumeError
) -> nib.spatialimages.SpatialImage:
    """Open a 3-D volume (header only; the voxels are read by :func:`voxels`).

    Trailing axes of length 1 (``(D, H, W, 1)``) are dropped. Raises ``error`` with one line
    ``"<what> <path>: <problem>"`` if the file is missing, not an image nibabel reads, or not 3-D.
    """
    path = Path(path)
    img = open_image(path, what, error=error)
    shape = tuple(int(s) for s in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise error(f"{what} {path}: expected a 3-D volume (D, H, W), got shape {tuple(img.shape)}")
    if shape != tuple(img.shape):
        img = img.__class__(voxels(img, path, what, error=error).reshape(shape), img.affine, img.header)
    return img


def voxels(
    img: nib.spatialimages.SpatialImage,
    path: str | os.PathLike[str],
    what: str = "image",
    *,
    dtype: type | None = None,
    error: type[Exception] = VolumeError,
) -> np.ndarray:
    """The voxel array of ``img`` (header scaling applied; as ``dtype`` when given, e.g.
    ``np.float32`` for images, else as stored). A truncated or damaged file raises ``error``
    naming ``path`` instead of a decompressor's traceback."""
    try:
        if dtype is not None and np.issubdtype(np.dtype(dtype), np.floating):
            return np.asarray(img.get_fdata(dtype=dtype), dtype=dtype)
        data = np.asanyarray(img.dataobj)
        return data.astype(dtype) if dtype is not None else data
    except _READ_ERRORS as exc:
        problem = f"its voxels cannot be read, the file is truncated or damaged ({_reason(exc)})"
        raise error(f"{what} {path}: {problem}") from None


def same_grid(a: nib.spatialimages.SpatialImage, b: nib.spatialimages.SpatialImage, atol: float = GRID_ATOL_MM) -> bool:
    """Whether ``a`` and ``b`` have the same 3-D shape and affines within ``atol`` mm."""
    if tuple(a.shape[:3]) != tuple(b.shape[:3]):
        return False
    return bool(np.abs(np.asarray(a.affine) - np.asarray(b.affine)).max() <= atol)


def check_same_grid(
    a: nib.spatialimages.SpatialImage,
    b: nib.spatialimages.SpatialImage,
    names: tuple[str, str],
    *,
    atol: float = GRID_ATOL_MM,
    error: type[Exception] = VolumeError,
) -> None:
    """Raise ``error`` (one line naming both and the difference) unless ``a`` and ``b`` share a grid."""
    what = f"{names[0]} and {names[1]} must share one voxel grid (resample them to the same grid first)"
    if tuple(a.shape[:3]) != tuple(b.shape[:3]):
        raise error(f"{what}: shapes {tuple(a.shape)} and {tuple(b.shape)} differ")
    diff = float(np.abs(np.asarray(a.affine) - np.asarray(b.affine)).max())
    if not diff <= atol:
        raise error(
            f"{what}: their affines differ by up to {diff:.4g} mm (tolerance {atol} mm); {names[0]} affine "
            f"{np.round(a.affine, 4).tolist()}, {names[1]} affine {np.round(b.affine, 4).tolist()}"
        )


def nifti_suffix(path: str | os.PathLike[str]) -> str:
    """``.nii.gz`` for gzipped NIfTI names, else the last suffix (nibabel picks the format from it)."""
    path = Path(path)
    return "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix


def save_images_atomic(images: Mapping[str | os.PathLike[str], nib.spatialimages.SpatialImage]) -> list[Path]:
    """``nib.save`` each image to a temporary file next to its target (same extension, so the same
    format and compression), then rename them all into place; if any save fails, none is."""
    targets = [Path(p) for p in images]
    with atomic_targets(targets, [nifti_suffix(p) for p in targets]) as tmps:
        for img, tmp in zip(images.values(), tmps, strict=True):
            nib.save(img, str(tmp))
    return targets


def save_image_atomic(img: nib.spatialimages.SpatialImage, path: str | os.PathLike[str]) -> Path:
    """:func:`save_images_atomic` for one image: readers never see a half-written file."""
    return save_images_atomic({path: img})[0]


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    return text if len(text) <= 160 else text[:157] + "..."

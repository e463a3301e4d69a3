"""Preprocessing steps shared by the public datasets: orientation, intensity, cropping and
resampling onto a box grid.

Conventions: arrays are ``(D, H, W)`` = the NIfTI voxel axes ``(i, j, k)``; a *box* is a region in
the input's voxel coordinates given by its centre (voxels, float) and its side lengths in
millimetres; :func:`resample_box` samples the input on a regular grid of ``shape`` voxels that
spans the box, voxel centres at the box's ends (``align_corners=True``, as everywhere in crd-bench),
so the output spacing is ``side_mm / (shape - 1)`` on each axis and the output affine is exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage

__all__ = [
    "canonical",
    "scale_to_unit",
    "window",
    "foreground_box",
    "resample_box",
    "relabel",
]


def canonical(img: nib.spatialimages.SpatialImage) -> nib.spatialimages.SpatialImage:
    """The image reoriented to the closest RAS+ axes (a permutation/flip, no resampling)."""
    return nib.as_closest_canonical(img)


def scale_to_unit(array: np.ndarray, low: float, high: float) -> np.ndarray:
    """``(array - low) / (high - low)`` clipped to [0, 1], float32."""
    if not high > low:
        raise ValueError(f"intensity range: expected high > low, got [{low}, {high}]")
    out = (np.asarray(array, dtype=np.float32) - np.float32(low)) / np.float32(high - low)
    return np.clip(out, 0.0, 1.0, out=out)


def window(array: np.ndarray, low: float, high: float) -> np.ndarray:
    """A CT intensity window in Hounsfield units mapped to [0, 1] (below ``low`` -> 0, above
    ``high`` -> 1)."""
    return scale_to_unit(array, low, high)


def foreground_box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(low, high)`` voxel indices (inclusive) of the bounding box of ``mask``'s true voxels.

    Raises:
        ValueError: the mask is empty.
    """
    idx = np.argwhere(np.asarray(mask))
    if idx.size == 0:
        raise ValueError("the mask is empty (no foreground voxel)")
    return idx.min(axis=0), idx.max(axis=0)


def resample_box(
    array: np.ndarray,
    affine: np.ndarray,
    centre_vox: Sequence[float],
    side_mm: Sequence[float],
    shape: Sequence[int],
    *,
    order: int,
    fill: float = 0.0,
    antialias: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``array`` on a ``shape`` grid spanning a box of ``side_mm`` centred at ``centre_vox``.

    Args:
        array: ``(D, H, W)`` input.
        affine: the input's ``(4, 4)`` voxel-to-world affine (mm); its column norms are the
            input spacing.
        centre_vox: box centre in input voxel coordinates.
        side_mm: box side lengths (mm) along the input's three voxel axes (from the first to the
            last output voxel centre).
        shape: output ``(D, H, W)`` voxels.
        order: 1 = trilinear (images), 0 = nearest (label maps).
        fill: value outside the input.
        antialias: with ``order=1``, blur with a Gaussian of sigma ``(f - 1) / 2`` input voxels
            on each axis shrunk by a factor ``f > 1`` first (scikit-image's rule).

    Returns:
        ``(out, out_affine)``: the resampled array (input dtype for ``order=0``, float32 else) and
        its voxel-to-world affine.
    """
    array = np.asarray(array)
    affine = np.asarray(affine, dtype=np.float64)
    spacing_in = np.linalg.norm(affine[:3, :3], axis=0)
    shape = np.asarray(shape, dtype=np.int64)
    side = np.asarray(side_mm, dtype=np.float64)
    centre = np.asarray(centre_vox, dtype=np.float64)
    step_vox = side / np.maximum(shape - 1, 1) / spacing_in  # output step in input voxels
    start = centre - step_vox * (shape - 1) / 2.0
    # crop to the part of the input the box touches (+ margin for blur/interpolation)
    pad = np.ceil(2.0 * np.maximum(step_vox, 1.0)).astype(int) + 1
    lo = np.clip(np.floor(start).astype(int) - pad, 0, np.asarray(array.shape) - 1)
    hi = np.clip(np.ceil(start + step_vox * (shape - 1)).astype(int) + pad + 1, 1, array.shape)
    hi = np.maximum(hi, lo + 1)
    sub = array[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    if order == 1:
        sub = sub.astype(np.float32)
        if antialias:
            sigma = np.maximum(step_vox - 1.0, 0.0) / 2.0
            if np.any(sigma > 0):
                sub = ndimage.gaussian_filter(sub, sigma, mode="nearest")
    axes = [start[a] - lo[a] + step_vox[a] * np.arange(shape[a]) for a in range(3)]
    coords = np.stack(np.meshgrid(*axes, indexing="ij"))
    out = ndimage.map_coordinates(sub, coords, order=order, mode="constant", cval=fill,
                                  prefilter=False)
    if order == 0:
        out = out.astype(array.dtype)
    out_affine = affine.copy()
    out_affine[:3, :3] = affine[:3, :3] * step_vox[None, :]
    out_affine[:3, 3] = affine[:3, :3] @ start + affine[:3, 3]
    return out, out_affine


def relabel(labels: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    """Map label values (``old -> new``); values not in ``mapping`` become 0 (background)."""
    labels = np.asarray(labels)
    lut_size = int(max(labels.max(initial=0), max(mapping, default=0))) + 1
    lut = np.zeros(lut_size, dtype=np.int16)
    for old, new in mapping.items():
        lut[old] = new
    if labels.min(initial=0) < 0:
        raise ValueError("label maps with negative values are not supported")
    return lut[labels.astype(np.int64)]

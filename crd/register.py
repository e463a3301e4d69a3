"""Register one pair of images with any crd-bench checkpoint (``crd register``).

    crd register --checkpoint lr.pt --fixed F.nii.gz --moving M.nii.gz --out-warped W.nii.gz \\
        [--out-flow U.nii.gz] [--moving-labels L.nii.gz --out-warped-labels WL.nii.gz] \\
        [--device auto|cpu|cuda] [--threads N] [--normalisation minmax|none]

Steps: read the images with nibabel (any format it reads); check that fixed and moving share one
voxel grid (same shape, affines equal within :data:`GRID_ATOL_MM`), since the networks register
voxel arrays and do not resample; normalise intensities as the checkpoint's ``input`` entry says
(or as ``--normalisation`` overrides it; a checkpoint that records none, as ``crd train``'s, is fed
the images as stored, as ``crd evaluate`` feeds dataset images), with a one-line warning for an
image fed as stored whose intensities lie far outside [0, 1] (:func:`intensity_range_warning`);
zero-pad every side symmetrically to the model's
``size_multiple`` (16 for the full-resolution backbone, 32 for the x2 low-resolution model and the
teacher) and crop the field back; warp the moving image (its own intensities, trilinear) and
labels (nearest neighbour); write the outputs atomically as NIfTI with the fixed image's affine
and header.

The displacement field ``u`` is written as a ``(D, H, W, 3)`` float32 NIfTI volume in crd-bench's
convention: voxels of the fixed grid, channel ``c`` along array axis ``c`` (D, H, W = the file's
i, j, k axes), ``warped(p) = moving(p + u(p))`` with voxel centres at integer coordinates.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torch.nn as nn

from crd.atomic import check_outputs
from crd.errors import CheckpointError, CrdError
from crd.external import ExternalRegistration
from crd.models.array_order import ARRAY_ORDERS
from crd.models.checkpoint import load_for_inference
from crd.models.functional import warp
from crd.models.inference import pad_to_multiple, predict_flow
from crd.profiling import measure, release_freed_memory
from crd.runtime import configure_threads, select_device
from crd.volumes import GRID_ATOL_MM, save_images_atomic, voxels
from crd.volumes import check_same_grid as _check_same_grid
from crd.volumes import read_volume as _read_volume

__all__ = [
    "GRID_ATOL_MM",
    "NORMALISATIONS",
    "DEFAULT_NORMALISATION",
    "RANGE_SLACK",
    "InputImageError",
    "RegistrationResult",
    "read_volume",
    "check_same_grid",
    "normalise_intensity",
    "intensity_range_warning",
    "pad_to_multiple",
    "predict_flow",
    "volume_image",
    "write_volume",
    "register",
]

#: intensity normalisations a checkpoint's ``input`` entry (or ``--normalisation``) can ask for
NORMALISATIONS = ("minmax", "none")

#: for a checkpoint whose ``input`` entry records no normalisation (``crd train`` writes
#: ``{"intensity": "dataset images scaled to [0, 1]"}``): images as stored, since the network was
#: trained, and ``crd evaluate`` scores it, on crd-bench dataset images fed as stored (each dataset's
#: own recipe to [0, 1]: HU window, percentile, or as distributed; never min-max per image)
DEFAULT_NORMALISATION = "none"

#: an image fed as stored (``"none"``) with values more than this below 0 or above 1 gets a warning:
#: the networks saw [0, 1]; raw MRI (hundreds to thousands) or CT in HU is far outside
RANGE_SLACK = 0.5

log = logging.getLogger("crd.register")

_SUFFIXES = (".nii.gz", ".nii")


class InputImageError(CrdError, ValueError):
    """An input image cannot be used as it is (unreadable, not 3-D, not on the expected grid)."""


@dataclass
class RegistrationResult:
    """What :func:`register` did: outputs written, sizes, time (s), peak memory (MB) and the mean
    length of the displacement (voxels)."""

    warped: Path
    flow: Path | None
    warped_labels: Path | None
    method: str
    normalisation: str
    shape: tuple[int, int, int]
    padded_shape: tuple[int, int, int]
    device: str
    seconds: float
    field_seconds: float = float("nan")
    peak_rss_mb: float | None = None
    cuda_alloc_peak_mb: float | None = None
    nvml_peak_mb: float | None = None
    mean_displacement: float = float("nan")
    array_order: str = "stored"
    outputs: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few lines for the terminal."""
        memory = [f"peak RSS +{self.peak_rss_mb:.0f} MB"] if self.peak_rss_mb is not None else []
        if self.cuda_alloc_peak_mb is not None:
            memory.append(f"CUDA allocator peak {self.cuda_alloc_peak_mb:.0f} MB")
        if self.nvml_peak_mb is not None:
            memory.append(f"NVML process peak {self.nvml_peak_mb:.0f} MB")
        shape = "x".join(map(str, self.shape))
        padded = "" if self.padded_shape == self.shape else f" (padded to {'x'.join(map(str, self.padded_shape))})"
        lines = [
            f"registered {shape}{padded} with {self.method} on {self.device} (normalisation {self.normalisation}, "
            f"array order {self.array_order}): "
            f"{self.seconds:.2f} s "
            f"(field {self.field_seconds:.2f} s, then warps), {', '.join(memory)}",
            f"mean |u| = {self.mean_displacement:.3f} voxels (length of the displacement, over the fixed grid)",
        ]
        lines += [f"wrote {p}" for p in self.outputs]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# reading and checking
# --------------------------------------------------------------------------------------------


def read_volume(path: Path, name: str) -> nib.spatialimages.SpatialImage:
    """Open a 3-D image (:func:`crd.volumes.read_volume`); a missing, unreadable or non-3-D file
    raises :class:`InputImageError` naming ``name`` and ``path``."""
    return _read_volume(path, name, error=InputImageError)


def check_same_grid(
    a: nib.spatialimages.SpatialImage,
    b: nib.spatialimages.SpatialImage,
    names: tuple[str, str],
    atol: float = GRID_ATOL_MM,
) -> None:
    """Raise :class:`InputImageError` unless ``a`` and ``b`` have the same shape and affine."""
    _check_same_grid(a, b, names, atol=atol, error=InputImageError)


def _image_array(img: nib.spatialimages.SpatialImage, name: str, path: Path) -> tuple[np.ndarray, str | None]:
    """The voxels as float32, non-finite values set to 0; with a one-line warning when there were any."""
    data = voxels(img, path, name, dtype=np.float32, error=InputImageError)
    bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if not bad:
        return data, None
    warning = (
        f"crd register: warning: {name} {path}: {bad} of {data.size} voxels are NaN or infinite; "
        "they are registered as 0"
    )
    return np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0), warning


def _label_array(img: nib.spatialimages.SpatialImage, path: Path) -> np.ndarray:
    data = voxels(img, path, "moving labels", error=InputImageError)
    if np.issubdtype(data.dtype, np.integer):
        return data
    rounded = np.rint(data)
    if not np.array_equal(rounded, data):
        raise InputImageError(f"moving labels {path}: the label map holds non-integer values")
    if rounded.size and np.abs(rounded).max() >= 2**24:
        raise InputImageError(f"moving labels {path}: label values must be below 2**24")
    return rounded.astype(np.int32)


def normalise_intensity(image: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """Scale ``image`` as the checkpoint's ``input`` entry says; returns float32.

    ``spec["normalisation"]``: ``"minmax"`` maps [min, max] to [0, 1] (a constant image becomes
    0); ``"none"`` keeps the values. Checkpoints without the key (``crd train``'s, trained on
    dataset images already in [0, 1] and fed as stored) get :data:`DEFAULT_NORMALISATION`,
    ``"none"``.
    """
    mode = spec.get("normalisation", DEFAULT_NORMALISATION)
    image = np.asarray(image, dtype=np.float32)
    if mode == "none":
        return image
    if mode == "minmax":
        lo, hi = float(image.min()), float(image.max())
        if hi <= lo:
            return np.zeros_like(image)
        return (image - lo) / (hi - lo)
    raise CheckpointError(f"the checkpoint's input normalisation {mode!r} is unknown: expected 'minmax' or 'none'")


def intensity_range_warning(image: np.ndarray, name: str, path: Path, mode: str) -> str | None:
    """One line if ``image``, fed to the network as ``mode`` says, lies far outside [0, 1].

    Only ``"none"`` can: the image is fed as stored, and the networks were trained on [0, 1]
    (values more than :data:`RANGE_SLACK` outside warn). Returns ``None`` when all is well.
    """
    if mode != "none" or image.size == 0:
        return None
    lo, hi = float(image.min()), float(image.max())
    if lo >= -RANGE_SLACK and hi <= 1.0 + RANGE_SLACK:
        return None
    return (
        f"crd register: warning: {name} {path}: intensities span [{lo:.4g}, {hi:.4g}], far outside [0, 1]; this "
        "checkpoint takes images as stored (normalisation none) and its network was trained on [0, 1], so the "
        "field is likely meaningless: pass --normalisation minmax, or scale the images to [0, 1] first"
    )


# --------------------------------------------------------------------------------------------
# the field
# --------------------------------------------------------------------------------------------


def _warm_up(
    model: nn.Module,
    fixed: torch.Tensor,
    moving: torch.Tensor,
    moving_raw: torch.Tensor,
    labels: torch.Tensor | None,
) -> None:
    """One untimed registration at the real size: the same calls on the same tensors (shapes,
    dtype, device) as the timed one in :func:`_timed_registration`, so that what happens once per
    input size happens here and not in the measurement (lazy imports and initialisation, kernel
    selection, cuDNN autotuning under ``torch.backends.cudnn.benchmark``, which selects kernels per
    input shape, so a warm-up on another size would leave the timed call to pay for it; allocator
    growth). Tensors ``(1, 1, D, H, W)``; call it under ``torch.inference_mode()``.

    Its outputs (a field and warped images the size of the input) are freed before it returns,
    and memory glibc keeps after ``free`` is given back (``malloc_trim``), so that the CPU RSS
    baseline of the measurement holds no warm-up leftovers; on CUDA the device is synchronised (no
    warm-up kernel still runs when the clock starts) and the allocator keeps its cache for the
    timed call. ``crd register`` therefore runs the registration twice.
    """
    flow, _ = predict_flow(model, fixed, moving)
    warped = warp(moving_raw, flow)
    warped_labels = warp(labels, flow, mode="nearest") if labels is not None else None
    del flow, warped, warped_labels
    if fixed.device.type == "cuda":
        torch.cuda.synchronize(fixed.device)
    release_freed_memory()


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


def _check_output(path: Path, option: str) -> Path:
    path = Path(path)
    if not path.name.endswith(_SUFFIXES):
        raise InputImageError(f"{option} {path}: outputs are NIfTI, give a name ending in .nii or .nii.gz")
    return path


def volume_image(
    array: np.ndarray, like: nib.spatialimages.SpatialImage, description: str | None = None
) -> nib.Nifti1Image:
    """``array`` (``(D, H, W)`` or ``(D, H, W, 3)``) as a NIfTI-1 image with ``like``'s affine and
    header (data type and scaling reset to ``array``'s)."""
    try:
        header = nib.Nifti1Header.from_header(like.header)
    except Exception:  # a header nibabel cannot convert to NIfTI-1 (e.g. some MGH fields)
        header = nib.Nifti1Header()
    img = nib.Nifti1Image(array, like.affine, header)
    img.header.set_data_dtype(array.dtype)
    img.header.set_slope_inter(None, None)
    if description is not None:
        img.header["descrip"] = description[:79].encode()
    return img


def write_volume(
    path: Path, array: np.ndarray, like: nib.spatialimages.SpatialImage, description: str | None = None
) -> Path:
    """Write :func:`volume_image` of ``array`` to ``path`` atomically (temporary file, then rename)."""
    return save_images_atomic({path: volume_image(array, like, description)})[0]


# --------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------


def register(
    checkpoint: Path | None,
    fixed: Path,
    moving: Path,
    out_warped: Path,
    *,
    out_flow: Path | None = None,
    moving_labels: Path | None = None,
    out_warped_labels: Path | None = None,
    device: str = "auto",
    threads: int | None = None,
    normalisation: str | None = None,
    array_order: str | None = None,
    method: Any = None,
) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` with the model in ``checkpoint`` and write the results.

    Args:
        checkpoint: a crd-bench checkpoint (``crd train`` or ``crd import-official``).
        fixed, moving: 3-D images on one voxel grid (any format nibabel reads).
        out_warped: warped moving image, float32, fixed's affine and header.
        out_flow: displacement field ``(D, H, W, 3)`` float32, voxels, channels (D, H, W).
        moving_labels: integer label map on the moving grid; warped with nearest neighbour into
            ``out_warped_labels`` (same integer type). Give both or neither.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        threads: torch CPU threads (default: torch's choice).
        normalisation: ``"minmax"`` or ``"none"`` instead of what the checkpoint's ``input`` entry
            says (see :func:`normalise_intensity`): ``"minmax"`` for images that are not in [0, 1]
            (raw scanner intensities), ``"none"`` for images already prepared as the weights expect.
        array_order: ``"stored"`` or ``"reversed"`` instead of the order the checkpoint records
            (:mod:`crd.models.array_order`): the images are transposed into it around the network
            and the field back, so the outputs are always on the files' grid.
        method: instead of a checkpoint, a method without a network (a
            :class:`crd.methods.MethodSpec` with ``register_pair``, e.g. ``ants-syn``): its field
            (:class:`ExternalRegistration`, images fed as stored unless ``normalisation``, the
            fixed image's voxel sizes as ``spacing``, seed 0), then the same warps and outputs.

    An image fed as stored that lies far outside [0, 1] is logged as a one-line warning (logger
    ``crd.register``; also in the result's ``warnings``) and registered all the same.

    Everything is checked before anything is written. Time and peak memory cover the field and
    the warps, after one untimed warm-up registration of the same pair (same sizes, device and
    dtype); not the warm-up, nor reading, normalising or writing files.
    """
    if (checkpoint is None) == (method is None):
        raise InputImageError("give a checkpoint, or a method without a network (its method file with register_pair)")
    if method is not None and getattr(method, "register_pair", None) is None:
        raise InputImageError(f"{method.path}: has no register_pair; a network's method needs its --checkpoint")
    if method is not None and array_order not in (None, "stored"):
        raise InputImageError("--array-order is for networks; a method without one gets the arrays as stored")
    out_warped, out_flow, out_warped_labels = _checked_outputs(
        checkpoint, fixed, moving, moving_labels, out_warped, out_flow, out_warped_labels, normalisation, array_order
    )
    dev = select_device(device)
    configure_threads(threads)
    fixed_img, moving_img, labels_img = _read_inputs(Path(fixed), Path(moving), moving_labels)
    if method is not None:
        spacing = tuple(float(z) for z in fixed_img.header.get_zooms()[:3])
        model = ExternalRegistration(method.register_pair, spacing, threads or 1, str(method.path))
        payload = {"method": method.name, "input": {"normalisation": "none", "array_order": "stored"}}
    else:
        model, payload = load_for_inference(Path(checkpoint), dev, array_order)
    spec = dict(payload.get("input", {}))
    order = str(spec["array_order"])
    if normalisation is not None:
        spec["normalisation"] = normalisation
    mode = spec.get("normalisation", DEFAULT_NORMALISATION)

    fixed_raw, fixed_bad = _image_array(fixed_img, "fixed", Path(fixed))
    moving_raw, moving_bad = _image_array(moving_img, "moving", Path(moving))
    warnings = [
        w
        for w in (
            fixed_bad,
            moving_bad,
            intensity_range_warning(fixed_raw, "fixed", Path(fixed), mode),
            intensity_range_warning(moving_raw, "moving", Path(moving), mode),
        )
        if w is not None
    ]
    for w in warnings:
        log.warning(w)
    labels = _label_array(labels_img, Path(moving_labels)) if labels_img is not None else None

    def to_tensor(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array))[None, None].to(dev)

    run = _timed_registration(
        model,
        to_tensor(normalise_intensity(fixed_raw, spec)),
        to_tensor(normalise_intensity(moving_raw, spec)),
        to_tensor(moving_raw),
        to_tensor(labels.astype(np.float32)) if labels is not None else None,
    )
    flow_np = run.flow[0].permute(1, 2, 3, 0).float().cpu().numpy()
    images = {out_warped: volume_image(run.warped[0, 0].float().cpu().numpy(), fixed_img)}
    if out_flow is not None:
        images[out_flow] = volume_image(flow_np, fixed_img, "crd displacement, voxels, channels D,H,W (i,j,k)")
    if run.warped_labels is not None and labels is not None:
        values = run.warped_labels[0, 0].round().cpu().numpy().astype(labels.dtype)
        images[out_warped_labels] = volume_image(values, fixed_img)
    outputs = save_images_atomic(images)  # all or none
    return RegistrationResult(
        warped=out_warped,
        flow=out_flow,
        warped_labels=out_warped_labels,
        method=str(payload.get("method")),
        normalisation=str(mode),
        array_order=order,
        shape=tuple(int(s) for s in fixed_img.shape),  # type: ignore[arg-type]
        padded_shape=run.padded_shape,
        device=str(dev),
        seconds=run.measured.seconds,
        field_seconds=run.field_seconds,
        peak_rss_mb=run.measured.peak_rss_mb,
        cuda_alloc_peak_mb=run.measured.cuda_alloc_peak_mb,
        nvml_peak_mb=run.measured.nvml_peak_mb,
        mean_displacement=float(np.linalg.norm(flow_np, axis=-1).mean()),
        outputs=outputs,
        warnings=warnings,
    )


def _checked_outputs(
    checkpoint: Path,
    fixed: Path,
    moving: Path,
    moving_labels: Path | None,
    out_warped: Path,
    out_flow: Path | None,
    out_warped_labels: Path | None,
    normalisation: str | None,
    array_order: str | None = None,
) -> tuple[Path, Path | None, Path | None]:
    """Check the options and outputs before anything is read or written; returns the outputs."""
    out_warped = _check_output(out_warped, "--out-warped")
    out_flow = _check_output(out_flow, "--out-flow") if out_flow is not None else None
    if (moving_labels is None) != (out_warped_labels is None):
        raise InputImageError("give --moving-labels and --out-warped-labels together")
    if out_warped_labels is not None:
        out_warped_labels = _check_output(out_warped_labels, "--out-warped-labels")
    if normalisation not in (None, *NORMALISATIONS):
        raise InputImageError(f"normalisation {normalisation!r}: expected one of {', '.join(NORMALISATIONS)}")
    if array_order not in (None, *ARRAY_ORDERS):
        raise InputImageError(f"array order {array_order!r}: expected one of {', '.join(ARRAY_ORDERS)}")
    check_outputs(
        {"fixed image": fixed, "moving image": moving, "moving labels": moving_labels, "checkpoint": checkpoint},
        {"--out-warped": out_warped, "--out-flow": out_flow, "--out-warped-labels": out_warped_labels},
    )
    return out_warped, out_flow, out_warped_labels


def _read_inputs(fixed: Path, moving: Path, moving_labels: Path | None) -> tuple[Any, Any, Any]:
    """Open the fixed and moving images (and labels) and check that they share one grid."""
    fixed_img = read_volume(fixed, "fixed")
    moving_img = read_volume(moving, "moving")
    check_same_grid(fixed_img, moving_img, ("fixed", "moving"))
    labels_img = None
    if moving_labels is not None:
        labels_img = read_volume(moving_labels, "moving labels")
        check_same_grid(moving_img, labels_img, ("moving", "moving labels"))
    return fixed_img, moving_img, labels_img


@dataclass
class _Run:
    flow: torch.Tensor  # (1, 3, D, H, W), voxels
    warped: torch.Tensor  # (1, 1, D, H, W)
    warped_labels: torch.Tensor | None
    padded_shape: tuple[int, int, int]
    field_seconds: float
    measured: Any  # crd.profiling.measure's record: seconds and peak memory of field + warps


def _timed_registration(
    model: nn.Module,
    fixed: torch.Tensor,
    moving: torch.Tensor,
    moving_raw: torch.Tensor,
    labels: torch.Tensor | None,
) -> _Run:
    """The field on the normalised pair and the warps of the raw moving image and its labels,
    timed (field alone, and all) after one untimed warm-up on the same tensors (:func:`_warm_up`),
    all under ``torch.inference_mode()``. Tensors ``(1, 1, D, H, W)``."""
    dev = fixed.device
    with torch.inference_mode():
        _warm_up(model, fixed, moving, moving_raw, labels)
        with measure(dev) as m:
            start = time.perf_counter()
            flow, padded = predict_flow(model, fixed, moving)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            field_seconds = time.perf_counter() - start
            warped = warp(moving_raw, flow)
            warped_labels = warp(labels, flow, mode="nearest") if labels is not None else None
    return _Run(flow, warped, warped_labels, tuple(int(s) for s in padded), field_seconds, m)  # type: ignore[arg-type]

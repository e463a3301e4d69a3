"""``crd metrics``: a registration result read from NIfTI files, scored, and printed.

:func:`score_files` reads the fixed and warped label maps (and optionally a displacement field),
checks that they share one grid, scores them with :func:`crd.metrics.score_pair` (the moving map
unknown) and returns a JSON-ready dict; :func:`format_scores` turns that dict into the plain-text
table the command prints. The mathematics on arrays is :mod:`crd.metrics`; every file goes through
:mod:`crd.volumes`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from crd.metrics import Spacing, _check_labels, _check_spacing, score_pair
from crd.volumes import open_image, same_grid, voxels

__all__ = ["score_files", "format_scores"]


# --------------------------------------------------------------------------------------------
# files -> arrays
# --------------------------------------------------------------------------------------------
def _load_nifti(path: Path, what: str):
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path}: file not found")
    return open_image(path, what, error=ValueError)


def _load_label_file(path: Path, what: str):
    img = _load_nifti(path, what)
    if len(img.shape) != 3:
        raise ValueError(f"{what} {path}: expected a 3-D (D, H, W) label map, got shape {tuple(img.shape)}")
    data = voxels(img, path, what, error=ValueError)
    try:
        data = _check_labels(data, f"{what} {path}")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{exc} (stored as {img.get_data_dtype()}); is it an image rather than a label map?") from None
    return img, data


def _grid_text(img) -> str:
    zooms = tuple(round(float(z), 4) for z in img.header.get_zooms()[:3])
    return f"shape {tuple(int(n) for n in img.shape[:3])}, voxel size {zooms} mm"


def _load_label_pair(fixed_path: Path, warped_path: Path):
    """``(fixed image, fixed labels, warped labels)``; the two maps must share one grid."""
    fixed_img, fixed = _load_label_file(fixed_path, "fixed labels")
    warped_img, warped = _load_label_file(warped_path, "warped labels")
    if not same_grid(fixed_img, warped_img):
        raise ValueError(
            f"warped labels {warped_path} ({_grid_text(warped_img)}) are not on the grid of the fixed labels "
            f"{fixed_path} ({_grid_text(fixed_img)}): expected the same shape and affine"
        )
    return fixed_img, fixed, warped


def _load_flow(flow_path: Path, fixed_img, fixed_shape: tuple[int, ...], fixed_path: Path) -> np.ndarray:
    """The ``(D, H, W, 3)`` (or ``(D, H, W, 1, 3)``) field file as a ``(3, D, H, W)`` array on the fixed grid."""
    flow_img = _load_nifti(flow_path, "flow")
    shape = tuple(int(n) for n in flow_img.shape)
    if len(shape) == 5 and shape[3] == 1:
        shape = shape[:3] + shape[4:]
    if len(shape) != 4 or shape[3] != 3:
        raise ValueError(
            f"flow {flow_path}: expected a (D, H, W, 3) displacement field in voxels, got shape "
            f"{tuple(int(n) for n in flow_img.shape)}"
        )
    if shape[:3] != tuple(fixed_shape) or not same_grid(flow_img, fixed_img):
        raise ValueError(
            f"flow {flow_path} (shape {shape[:3]}) is not on the grid of the fixed labels {fixed_path} "
            f"({_grid_text(fixed_img)}): expected the same shape and affine"
        )
    data = voxels(flow_img, flow_path, "flow", error=ValueError).reshape(shape)
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        raise ValueError(f"flow {flow_path}: expected real displacement values, got dtype {data.dtype}")
    return np.ascontiguousarray(np.moveaxis(data, -1, 0), dtype=np.float32 if data.dtype != np.float64 else None)


def _spacing_mm(fixed_img, spacing: Spacing | None) -> tuple[tuple[float, float, float], str]:
    """``(spacing in mm, where it came from)``: the given one, else the fixed label map's header."""
    if spacing is None:
        return _check_spacing(fixed_img.header.get_zooms()[:3]), "fixed labels header"
    return _check_spacing(spacing), "given"


def _labels_to_score(fixed: np.ndarray, warped: np.ndarray, labels: Sequence[int] | None) -> list[int]:
    """The given labels without repeats; default: every nonzero value of either map."""
    if labels is None:
        found = np.union1d(np.unique(fixed), np.unique(warped))
        labels = [int(v) for v in found if v != 0]
    return list(dict.fromkeys(int(v) for v in labels))


# --------------------------------------------------------------------------------------------
# tidy rows -> one JSON-ready summary
# --------------------------------------------------------------------------------------------
def _json_number(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def _label_summary(rows: list[dict], labels: list[int]) -> dict:
    """``dice``, ``hd95``, ``assd`` as ``{"mean", "per_label"}``, then the two label counts."""
    table: dict[str, dict] = {}
    for name, metric in (("dice", "dice"), ("hd95", "hd95_mm"), ("assd", "assd_mm")):
        values = {r["label"]: r["value"] for r in rows if r["metric"] == metric}
        table[name] = {
            "mean": _json_number(values[None]),
            "per_label": {str(lab): _json_number(values[lab]) for lab in labels},
        }
    single = {r["metric"]: r["value"] for r in rows if r["label"] is None}
    return {
        **table,
        "labels_missing": int(single["labels_missing"]),
        "labels_vanished": int(single["labels_vanished"]),
    }


def _jacobian_summary(rows: list[dict]) -> dict:
    """The whole-grid Jacobian values of the rows."""
    single = {r["metric"]: r["value"] for r in rows if r["label"] is None}
    return {
        "fold_pct": single["fold_pct"],
        "fold_count": int(single["fold_count"]),
        "nonpos_jac_mm3": single["nonpos_jac_mm3"],
        "sdlogj": _json_number(single["sdlogj"]),
        "logj_excluded_pct": single["logj_excluded_pct"],
    }


def score_files(
    fixed_labels: str | os.PathLike[str],
    warped_labels: str | os.PathLike[str],
    flow: str | os.PathLike[str] | None = None,
    *,
    labels: Sequence[int] | None = None,
    spacing: Spacing | None = None,
) -> dict:
    """Score a registration result stored in NIfTI files (what ``crd metrics`` prints).

    Args:
        fixed_labels: label map of the fixed image (integer values; a float file holding whole
            numbers is accepted).
        warped_labels: the moving label map warped onto the fixed grid (same shape and affine).
        flow: optional displacement field on the fixed grid: ``(D, H, W, 3)`` (or NIfTI's vector
            layout ``(D, H, W, 1, 3)``) in voxels, channels in (D, H, W) order, as written by
            ``crd register --out-flow``.
        labels: labels to score; default: every nonzero value of either map.
        spacing: voxel size in mm, (D, H, W) order; default: the fixed label map's header.

    Returns:
        A JSON-ready dict: ``dice``, ``hd95``, ``assd`` each ``{"mean", "per_label"}`` (per-label
        keys are the labels as strings; NaN, e.g. for a missing label, becomes ``None``), the
        counts ``labels_missing`` / ``labels_vanished`` and their lists, the spacing and where it
        came from, and with a flow ``fold_pct``, ``fold_count``, ``nonpos_jac_mm3``, ``sdlogj``,
        ``logj_excluded_pct``. The rules are :func:`crd.metrics.score_pair`'s with the moving map
        unknown: a label absent from the fixed map is missing; one in the fixed map but not in the
        warped one has vanished (penalty: the image diagonal).

    Raises:
        FileNotFoundError: a file does not exist.
        ValueError: unreadable file, non-integer label values, grids that differ, a field of the
            wrong shape.
    """
    fixed_path, warped_path = Path(fixed_labels), Path(warped_labels)
    fixed_img, fixed, warped = _load_label_pair(fixed_path, warped_path)
    flow_path = Path(flow) if flow is not None else None
    u = _load_flow(flow_path, fixed_img, fixed.shape, fixed_path) if flow_path is not None else None
    spacing_mm, source = _spacing_mm(fixed_img, spacing)
    labels = _labels_to_score(fixed, warped, labels)
    rows = score_pair(fixed, None, warped, labels, spacing_mm, flow=u)
    present = set(np.unique(fixed).tolist())
    in_warped = set(np.unique(warped).tolist())
    out: dict = {
        "fixed_labels": str(fixed_path),
        "warped_labels": str(warped_path),
        "flow": str(flow_path) if flow_path is not None else None,
        "shape": list(fixed.shape),
        "spacing_mm": list(spacing_mm),
        "spacing_from": source,
        "labels": labels,
        **_label_summary(rows, labels),
        "missing": [lab for lab in labels if lab not in present],
        "vanished": [lab for lab in labels if lab in present and lab not in in_warped],
    }
    if u is not None:
        out.update(_jacobian_summary(rows))
    return out


# --------------------------------------------------------------------------------------------
# summary -> text
# --------------------------------------------------------------------------------------------
def format_scores(result: dict) -> str:
    """A plain-text table of :func:`score_files`' result (one line per label, then the means)."""

    def num(v: float | None, digits: int) -> str:
        return "nan" if v is None else f"{v:.{digits}f}"

    lines = [f"{'label':>8} {'dice':>8} {'hd95_mm':>9} {'assd_mm':>9}"]
    for lab in result["labels"]:
        key = str(lab)
        lines.append(
            f"{lab:>8} {num(result['dice']['per_label'][key], 4):>8} "
            f"{num(result['hd95']['per_label'][key], 3):>9} {num(result['assd']['per_label'][key], 3):>9}"
        )
    lines.append(
        f"{'mean':>8} {num(result['dice']['mean'], 4):>8} {num(result['hd95']['mean'], 3):>9} "
        f"{num(result['assd']['mean'], 3):>9}"
    )
    sp = " x ".join(f"{s:g}" for s in result["spacing_mm"])
    lines.append(
        f"{len(result['labels'])} labels; missing (not in the fixed map, left out of the means): "
        f"{result['missing'] or 'none'}; vanished (not in the warped map, Dice 0 and distances = image diagonal): "
        f"{result['vanished'] or 'none'}; spacing {sp} mm ({result['spacing_from']})"
    )
    if "fold_pct" in result:
        lines.append(
            f"Jacobian (central differences, all voxels): det <= 0 in {result['fold_pct']:.4f} % "
            f"({result['fold_count']} voxels, {result['nonpos_jac_mm3']:g} mm^3); SDlogJ "
            f"{num(result['sdlogj'], 4)} ({result['logj_excluded_pct']:.4f} % of voxels excluded)"
        )
    return "\n".join(lines)

"""The canonical dataset layout, read and written in one place.

Every dataset (the embedded ``synth`` one included) lives in one folder::

    <root>/images/<id>.nii.gz     intensity image, float, scaled to [0, 1]
    <root>/labels/<id>.nii.gz     integer label map on the same grid (0 = background)
    <root>/pairs.csv              columns split,fixed,moving; split in train/val/test
    <root>/dataset.json           name, labels, spacing, shape, source, license, citation, ...

Array axes are the NIfTI voxel axes ``(i, j, k)``, taken as ``(D, H, W)``; spacing is the header's
zooms in millimetres in the same order. Registration pairs are ``(fixed, moving)``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from crd.atomic import default_mode, write_text_atomic
from crd.volumes import read_volume, save_image_atomic, voxels

__all__ = [
    "SPLITS",
    "REQUIRED_KEYS",
    "DatasetError",
    "Dataset",
    "open_dataset",
    "dataset_info",
    "write_nifti",
    "write_dataset_json",
    "write_pairs",
    "default_mode",
]

SPLITS: tuple[str, ...] = ("train", "val", "test")
"""The allowed values of ``pairs.csv``'s ``split`` column."""

REQUIRED_KEYS: tuple[str, ...] = ("name", "labels", "spacing", "shape")
"""Keys ``dataset.json`` must have; the others (source, license, ...) are recommended."""

PAIR_COLUMNS: tuple[str, ...] = ("split", "fixed", "moving")

_SPACING_RTOL = 1e-4


class DatasetError(ValueError):
    """A dataset folder does not follow the canonical layout; the message names the file."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """A dataset in the canonical layout (build it with :func:`open_dataset`).

    Attributes:
        root: the dataset folder.
        name: ``dataset.json``'s name.
        labels: label value -> structure name, background 0 excluded, sorted by value.
        spacing: voxel size in millimetres, array-axis order ``(D, H, W)``.
        shape: array shape ``(D, H, W)`` of every image and label map.
        pairs: ``pairs.csv`` as a DataFrame with string columns ``split, fixed, moving``.
        info: the whole ``dataset.json``.

    Compared by identity (``eq=False``): it holds a DataFrame and dicts.
    """

    root: Path
    name: str
    labels: dict[int, str]
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    pairs: pd.DataFrame = field(repr=False)
    info: dict[str, Any] = field(repr=False)

    # -- paths -------------------------------------------------------------------------------
    def image_path(self, subject: str) -> Path:
        """``<root>/images/<subject>.nii.gz``."""
        return self.root / "images" / f"{subject}.nii.gz"

    def label_path(self, subject: str) -> Path:
        """``<root>/labels/<subject>.nii.gz``."""
        return self.root / "labels" / f"{subject}.nii.gz"

    # -- loading -----------------------------------------------------------------------------
    def load_image(self, subject: str) -> np.ndarray:
        """The image of ``subject`` as a float32 ``(D, H, W)`` array (header scaling applied)."""
        path = self.image_path(subject)
        return voxels(_load_nifti(path, "image"), path, "image", dtype=np.float32, error=DatasetError)

    def load_labels(self, subject: str) -> np.ndarray:
        """The label map of ``subject`` as an integer ``(D, H, W)`` array.

        int16 when the values fit, else int32. Raises :class:`DatasetError` if the stored values
        are not integers.
        """
        path = self.label_path(subject)
        data = voxels(_load_nifti(path, "label map"), path, "label map", error=DatasetError)
        if not np.issubdtype(data.dtype, np.integer):
            rounded = np.rint(data)
            if not np.array_equal(rounded, data):
                raise DatasetError(f"{path}: label map holds non-integer values")
            data = rounded
        info16 = np.iinfo(np.int16)
        if data.size and (data.min() < info16.min or data.max() > info16.max):
            return data.astype(np.int32)
        return data.astype(np.int16)

    def load_affine(self, subject: str) -> np.ndarray:
        """The ``(4, 4)`` voxel-to-world affine (millimetres) of ``subject``'s image."""
        return np.asarray(_load_nifti(self.image_path(subject)).affine, dtype=np.float64)

    def load_spacing(self, subject: str) -> tuple[float, float, float]:
        """Voxel size in millimetres ``(D, H, W)`` from the header of ``subject``'s image."""
        zooms = _load_nifti(self.image_path(subject)).header.get_zooms()[:3]
        return tuple(float(z) for z in zooms)  # type: ignore[return-value]

    # -- splits ------------------------------------------------------------------------------
    def _split_rows(self, split: str) -> pd.DataFrame:
        if split not in SPLITS:
            raise DatasetError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
        return self.pairs[self.pairs["split"] == split]

    def pairs_for(self, split: str) -> list[tuple[str, str]]:
        """The ``(fixed, moving)`` pairs of ``split`` in ``pairs.csv`` order."""
        rows = self._split_rows(split)
        return list(zip(rows["fixed"].tolist(), rows["moving"].tolist(), strict=True))

    def subjects(self, split: str) -> list[str]:
        """The sorted ids appearing (as fixed or moving) in the pairs of ``split``."""
        rows = self._split_rows(split)
        return sorted(set(rows["fixed"]) | set(rows["moving"]))

    def all_subjects(self) -> list[str]:
        """The sorted ids appearing in any pair."""
        return sorted(set(self.pairs["fixed"]) | set(self.pairs["moving"]))

    def check_headers(self) -> None:
        """Check every referenced image and label map against ``shape`` and ``spacing``.

        Reads headers only (fast). Raises :class:`DatasetError` naming the first bad file.
        """
        for subject in self.all_subjects():
            for path in (self.image_path(subject), self.label_path(subject)):
                img = _load_nifti(path)
                shape = tuple(int(s) for s in img.shape)
                if shape != self.shape:
                    raise DatasetError(
                        f"{path}: array shape {shape} differs from dataset.json's shape "
                        f"{self.shape}"
                    )
                zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
                if not np.allclose(zooms, self.spacing, rtol=_SPACING_RTOL, atol=0):
                    raise DatasetError(
                        f"{path}: voxel spacing {zooms} mm differs from dataset.json's spacing "
                        f"{self.spacing} mm"
                    )


def _load_nifti(path: Path, what: str = "volume") -> nib.spatialimages.SpatialImage:
    return read_volume(path, what, error=DatasetError)


def _read_info(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found (every dataset folder needs a dataset.json)")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(info, dict):
        raise DatasetError(f"{path}: expected a JSON object, got {type(info).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in info]
    if missing:
        raise DatasetError(f"{path}: missing key(s) {', '.join(missing)}")
    return info


def _parse_labels(raw: Any, path: Path) -> dict[int, str]:
    if not isinstance(raw, Mapping) or not raw:
        raise DatasetError(f"{path}: 'labels' must be a non-empty object of value -> name")
    labels: dict[int, str] = {}
    for key, value in raw.items():
        try:
            number = int(key)
        except (TypeError, ValueError):
            raise DatasetError(f"{path}: label key {key!r} is not an integer") from None
        if str(number) != str(key).strip():
            raise DatasetError(f"{path}: label key {key!r} is not an integer")
        if number < 0:
            raise DatasetError(f"{path}: label key {key!r} is negative")
        if number != 0:
            labels[number] = str(value)
    if not labels:
        raise DatasetError(f"{path}: 'labels' lists no foreground label (only background 0)")
    return dict(sorted(labels.items()))


def _parse_triple(raw: Any, key: str, path: Path, kind: type) -> tuple:
    try:
        numbers = tuple(float(v) for v in raw)
    except (TypeError, ValueError):
        raise DatasetError(f"{path}: '{key}' must be a list of 3 numbers, got {raw!r}") from None
    if len(numbers) != 3:
        raise DatasetError(f"{path}: '{key}' must have 3 entries (D, H, W), got {raw!r}")
    if not all(np.isfinite(v) and v > 0 for v in numbers):
        raise DatasetError(f"{path}: '{key}' entries must be positive, got {raw!r}")
    if kind is int:
        if not all(v.is_integer() for v in numbers):
            raise DatasetError(f"{path}: '{key}' must hold integers, got {raw!r}")
        return tuple(int(v) for v in numbers)
    return numbers


def _read_pairs(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found (every dataset folder needs a pairs.csv)")
    try:
        pairs = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot parse as CSV ({exc})") from exc
    pairs.columns = [str(c).strip() for c in pairs.columns]
    missing = [c for c in PAIR_COLUMNS if c not in pairs.columns]
    if missing:
        raise DatasetError(
            f"{path}: missing column(s) {', '.join(missing)}; expected columns "
            f"{','.join(PAIR_COLUMNS)}, got {','.join(pairs.columns)}"
        )
    pairs = pairs.loc[:, list(PAIR_COLUMNS)].apply(lambda col: col.str.strip())
    if pairs.empty:
        raise DatasetError(f"{path}: no pairs")
    bad = sorted(set(pairs["split"]) - set(SPLITS))
    if bad:
        row = int(pairs.index[pairs["split"].isin(bad)][0]) + 2  # 1-based, after the header
        raise DatasetError(
            f"{path}: unknown split(s) {', '.join(map(repr, bad))} (first at line {row}); "
            f"expected one of {', '.join(SPLITS)}"
        )
    for column in ("fixed", "moving"):
        empty = pairs.index[pairs[column] == ""]
        if len(empty):
            raise DatasetError(f"{path}: empty '{column}' at line {int(empty[0]) + 2}")
    same = pairs.index[pairs["fixed"] == pairs["moving"]]
    if len(same):
        raise DatasetError(
            f"{path}: line {int(same[0]) + 2} pairs {pairs.loc[same[0], 'fixed']!r} with itself"
        )
    return pairs.reset_index(drop=True)


def open_dataset(root: str | os.PathLike[str], *, check_headers: bool = True) -> Dataset:
    """Open and check a dataset folder in the canonical layout.

    Checks that ``dataset.json`` and ``pairs.csv`` exist and are well formed, and that every id
    in a pair has both an image and a label map; with ``check_headers`` (default) also that every
    such file's header matches ``shape`` and ``spacing`` (headers only, fast).

    Raises:
        DatasetError: naming the file and what is wrong.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found")
    info_path = root / "dataset.json"
    info = _read_info(info_path)
    labels = _parse_labels(info["labels"], info_path)
    spacing = _parse_triple(info["spacing"], "spacing", info_path, float)
    shape = _parse_triple(info["shape"], "shape", info_path, int)
    pairs_path = root / "pairs.csv"
    pairs = _read_pairs(pairs_path)

    ds = Dataset(
        root=root,
        name=str(info["name"]),
        labels=labels,
        spacing=spacing,
        shape=shape,
        pairs=pairs,
        info=info,
    )
    # each subject once (OASIS has ~150k training pairs of ~400 subjects), in pairs.csv order
    first_line: dict[str, int] = {}
    for i, (fixed, moving) in enumerate(zip(pairs["fixed"], pairs["moving"], strict=True)):
        first_line.setdefault(fixed, i)
        first_line.setdefault(moving, i)
    for subject, i in first_line.items():
        for path in (ds.image_path(subject), ds.label_path(subject)):
            if not path.is_file():
                row = pairs.iloc[i]
                raise DatasetError(
                    f"{pairs_path}: line {i + 2} ({row['split']}, fixed={row['fixed']}, "
                    f"moving={row['moving']}) references {subject!r}, but {path} does not exist"
                )
    if check_headers:
        ds.check_headers()
    return ds


# -- writing ---------------------------------------------------------------------------------
def write_nifti(
    path: str | os.PathLike[str],
    array: np.ndarray,
    spacing: Sequence[float] | None = None,
    *,
    affine: np.ndarray | None = None,
) -> Path:
    """Write a ``(D, H, W)`` array as NIfTI-1 atomically (temp file in the same folder, then
    ``os.replace``), so readers never see a half-written file.

    Args:
        path: target, normally ``*.nii.gz`` (gzip chosen by the extension; bytes are
            deterministic: nibabel writes no timestamp).
        array: 3-D array; bool is stored as uint8, float64 as float32, other dtypes as given.
        spacing: voxel size in millimetres ``(D, H, W)``; the affine becomes ``diag(spacing, 1)``.
        affine: ``(4, 4)`` voxel-to-world affine instead of ``spacing`` (give exactly one, or
            neither for 1 mm isotropic).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"{path}: expected a 3-D (D, H, W) array, got shape {array.shape}")
    if spacing is not None and affine is not None:
        raise ValueError("give either spacing or affine, not both")
    if affine is None:
        sp = (1.0, 1.0, 1.0) if spacing is None else tuple(float(s) for s in spacing)
        if len(sp) != 3 or not all(s > 0 for s in sp):
            raise ValueError(f"spacing: expected 3 positive numbers (mm), got {spacing!r}")
        affine = np.diag([*sp, 1.0])
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"affine: expected a (4, 4) matrix, got shape {affine.shape}")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    elif array.dtype == np.float64:
        array = array.astype(np.float32)
    img = nib.Nifti1Image(array, affine)
    img.header.set_data_dtype(array.dtype)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return save_image_atomic(img, path)


def write_dataset_json(root: str | os.PathLike[str], info: Mapping[str, Any]) -> Path:
    """Write ``<root>/dataset.json`` atomically (sorted keys, 2-space indent, final newline)."""
    missing = [k for k in REQUIRED_KEYS if k not in info]
    if missing:
        raise ValueError(f"dataset.json: missing key(s) {', '.join(missing)}")
    text = json.dumps(dict(info), indent=2, sort_keys=True) + "\n"
    return write_text_atomic(Path(root) / "dataset.json", text)


def write_pairs(
    root: str | os.PathLike[str], pairs: pd.DataFrame | Iterable[tuple[str, str, str]]
) -> Path:
    """Write ``<root>/pairs.csv`` atomically from a DataFrame or ``(split, fixed, moving)`` rows."""
    if not isinstance(pairs, pd.DataFrame):
        pairs = pd.DataFrame(list(pairs), columns=list(PAIR_COLUMNS))
    missing = [c for c in PAIR_COLUMNS if c not in pairs.columns]
    if missing:
        raise ValueError(f"pairs.csv: missing column(s) {', '.join(missing)}")
    bad = sorted(set(pairs["split"]) - set(SPLITS))
    if bad:
        raise ValueError(f"pairs.csv: unknown split(s) {bad}; expected one of {', '.join(SPLITS)}")
    text = pairs.loc[:, list(PAIR_COLUMNS)].to_csv(index=False, lineterminator="\n")
    return write_text_atomic(Path(root) / "pairs.csv", text)


def dataset_info(
    *,
    name: str,
    labels: Mapping[int, str],
    spacing: Sequence[float],
    shape: Sequence[int],
    description: str = "",
    source: str = "",
    license: str = "",
    citation: str = "",
    checksums: Mapping[str, str] | None = None,
    generator: Mapping[str, Any] | None = None,
    intensity: str = "images scaled to [0, 1]",
    **extra: Any,
) -> dict[str, Any]:
    """Build a ``dataset.json`` dict with every standard key.

    Args:
        name: dataset name (= the folder name under the data root, = the config key).
        labels: label value -> structure name (background 0 left out).
        spacing: voxel size in millimetres ``(D, H, W)``.
        shape: array shape ``(D, H, W)``.
        description, source, license, citation: free text (source: URL or "generated by ...").
        checksums: file name -> "sha256:<hex>" of what was downloaded; ``{}`` for generated data.
        generator: parameters that generated or preprocessed the data (recorded verbatim).
        intensity: how image intensities are normalised.
        extra: further keys, recorded verbatim.

    ``crd_version`` is filled in from :data:`crd.__version__`.
    """
    from crd import __version__

    return {
        "name": name,
        "description": description,
        "labels": {str(int(k)): str(v) for k, v in sorted(labels.items()) if int(k) != 0},
        "spacing": [float(s) for s in spacing],
        "shape": [int(s) for s in shape],
        "source": source,
        "license": license,
        "citation": citation,
        "checksums": dict(checksums or {}),
        "generator": dict(generator or {}),
        "crd_version": __version__,
        "intensity": intensity,
        **extra,
    }

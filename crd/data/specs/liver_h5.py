"""``sliver`` and ``lspig``: the paper's two liver test sets, bring-your-own.

Both need registration with their providers, so crd-bench cannot download them. It reads the
preprocessed HDF5 files of the recursive cascaded networks (RCN) release, which the CRD paper's
liver experiments follow: one group per scan, each with ``volume`` (128^3, 0..255) and
``segmentation`` (128^3, liver = values above 128); for SLIVER it also reads the original
SLIVER07 scans (``liver-orig001.mhd`` + ``liver-seg001.mhd`` ..., MetaImage, read with
SimpleITK), which it prepares with the ``lits`` recipe (RAS, a ``box_mm`` box centred on the
liver, ``shape``, HU ``window``), so distances stay in millimetres::

    sliver_val.h5   SLIVER07 training scans, e.g. groups "1", "2", ...
    lspig_val.h5    17 pigs, pre/after-gas scans, e.g. "2017_02_pregas", "2017_02_aftergas"

The HDF5 files carry no voxel spacing (RCN stretched each liver crop to 128^3), so distances
(HD95) are then in voxel units, as ``dataset.json`` says (``spacing_unit``).

Pairs. SLIVER (option ``protocol``):

- ``crd-bench`` (default): test only, every ordered pair of scans; the models come from the
  dataset named by ``train_on`` in the config (e.g. ``lits``);
- ``paper``: the authors' ``LiverTrain`` / ``LiverTest`` (``core/datasets.py`` of
  BlaiseBrain/CRD_registration: ``generate_pairs`` keeps the first 270 of the ordered pairs
  ``(scan i, scan j), i != j`` in scan order, ``generate_pairs_val`` the rest: 72 of 342 for
  the 19 scans of ``sliver_val.h5``), no validation. The split is by pair, not by scan: every
  test pair's scans are also in training pairs. Their scan order is ``os.listdir``'s
  (file-system dependent); here the scans are sorted by number.

LSPIG (the authors' ``LspigTest``, ``generate_lspig_val``; RCN's ``lspig-val`` with
``--paired``): the scans sorted by id, each pig's after-gas and pre-gas scans registered in both
directions (after-gas fixed first); test only, models from ``train_on`` (the authors': their
SLIVER model).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from crd.data.specs.base import CRD_BENCH, PAPER, DatasetSpec, Protocol, SpecError, Subject

RCN_DATASETS = "https://github.com/microsoft/Recursive-Cascaded-Networks#datasets"

#: the authors' LiverTrain keeps the first 270 ordered pairs of sliver_val (their comment: 342 = 19 x 18)
PAPER_SLIVER_TRAIN_PAIRS = 270


def scan_order(ids: Sequence[str]) -> list[str]:
    """Scan ids sorted by number when every id is a number ("1", "2", ..., "20"), else as strings."""
    return sorted(ids, key=int) if all(i.isdigit() for i in ids) else sorted(ids)
_PIG = re.compile(r"^(.+)_(pregas|aftergas)$")


class H5Scans:
    """The groups of one RCN HDF5 file (thread-safe: h5py serialises access)."""

    spacing_unit = "voxel"

    def __init__(self, path: Path) -> None:
        import h5py

        self.label = str(path)
        try:
            self.file = h5py.File(path, "r")
        except OSError as exc:
            raise SpecError(f"{path}: cannot open as HDF5 ({exc})") from None

    def ids(self) -> list[str]:
        return sorted(k for k, v in self.file.items()
                      if hasattr(v, "keys") and "volume" in v and "segmentation" in v)

    def scan(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        group = self.file[key]
        volume = np.asarray(group["volume"])
        seg = np.asarray(group["segmentation"])
        if volume.ndim != 3 or volume.shape != seg.shape:
            raise SpecError(f"{self.label}: group {key!r}: volume {volume.shape} and "
                            f"segmentation {seg.shape} must be the same 3-D shape")
        return volume, seg

    def close(self) -> None:
        self.file.close()


_ORIG = re.compile(r"^liver-orig(\d+)\.mhd$")


def _read_metaimage(path: Path):
    """A MetaImage (``.mhd`` + data file) as a nibabel image in RAS world coordinates (mm)."""
    try:
        import SimpleITK as sitk
    except ImportError:  # pragma: no cover - a declared dependency
        raise SpecError(f"{path}: reading MetaImage needs SimpleITK (pip install SimpleITK)") from None
    import nibabel as nib

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise SpecError(f"{path}: cannot read as MetaImage ({str(exc).strip().splitlines()[-1]})") from None
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)  # ITK index order (i, j, k)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction * np.asarray(image.GetSpacing(), dtype=np.float64)[None, :]
    lps[:3, 3] = image.GetOrigin()
    return nib.Nifti1Image(array, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps)  # LPS -> RAS


class _MhdScans:
    """SLIVER07's original scans in one folder: ``liver-orig<N>.mhd`` with ``liver-seg<N>.mhd``."""

    spacing_unit = "mm"

    def __init__(self, files: Mapping[str, Path]) -> None:
        self.files = dict(files)
        self.label = str(next(iter(files.values())).parent)

    def ids(self) -> list[str]:
        return sorted(f"liver-{m.group(1)}" for n in self.files if (m := _ORIG.match(n)))

    def scan(self, subject: str):
        number = subject.split("-", 1)[1]
        return (_read_metaimage(self.files[f"liver-orig{number}.mhd"]),
                _read_metaimage(self.files[f"liver-seg{number}.mhd"]))

    def close(self) -> None:
        pass


def _mhd_data_files(header: Path) -> list[Path]:
    """The ``.mhd`` and the data file its ``ElementDataFile`` names (when it is one file)."""
    for line in header.read_text(errors="replace").splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "ElementDataFile" and value.strip() not in ("LOCAL", "") \
                and " " not in value.strip():
            return [header, header.parent / value.strip()]
    return [header]


class _RcnLiver(DatasetSpec):
    def open(self, files: Mapping[str, Path]) -> H5Scans | _MhdScans:
        if self.own_files[0] in files:
            return H5Scans(files[self.own_files[0]])
        return _MhdScans(files)

    def own_sources(self, folder: Path) -> dict[str, Path] | None:
        found = super().own_sources(folder)
        if found is not None or self.name != "sliver":
            return found
        folder = Path(folder)
        pairs = [(p, folder / p.name.replace("liver-orig", "liver-seg"))
                 for p in sorted(folder.glob("liver-orig*.mhd"))]
        pairs = [(o, s) for o, s in pairs if s.is_file()]
        if len(pairs) < 2:
            return None
        files = [f for o, s in pairs for f in (*_mhd_data_files(o), *_mhd_data_files(s))]
        return {f.name: f for f in files if f.is_file()}

    def subject_ids(self, src: H5Scans, opts: Mapping[str, Any]) -> list[str]:
        ids = src.ids()
        if len(ids) < 2:
            raise SpecError(f"{src.label}: expected groups with 'volume' and 'segmentation' "
                            f"datasets (the RCN layout), found {len(ids)}")
        return ids

    def pairs(self, src: Any, ids: Sequence[str], opts: Mapping[str, Any]):
        if self.name == "lspig":
            pigs: dict[str, dict[str, str]] = {}
            for s in ids:
                if m := _PIG.match(s):
                    pigs.setdefault(m.group(1), {})[m.group(2)] = s
            rows = []
            for pig in sorted(pigs):
                if len(pigs[pig]) == 2:
                    pre, after = pigs[pig]["pregas"], pigs[pig]["aftergas"]
                    rows += [("test", after, pre), ("test", pre, after)]
            if not rows:
                raise SpecError(f"{src.label}: no pig with both <id>_pregas and <id>_aftergas")
            return rows
        scans = scan_order(ids)
        ordered = [(f, m) for f in scans for m in scans if f != m]
        if opts.get("protocol") != PAPER:
            return [("test", f, m) for f, m in ordered]
        if len(ordered) <= PAPER_SLIVER_TRAIN_PAIRS:
            raise SpecError(f"{src.label}: protocol paper trains on the first {PAPER_SLIVER_TRAIN_PAIRS} ordered "
                            f"pairs and tests on the rest, but {len(scans)} scans give {len(ordered)} pairs "
                            f"(the authors' sliver_val.h5 has 19: 342)")  # fmt: skip
        split = PAPER_SLIVER_TRAIN_PAIRS
        return [("train", f, m) for f, m in ordered[:split]] + [("test", f, m) for f, m in ordered[split:]]

    def load(self, src: H5Scans | _MhdScans, subject: str, opts: Mapping[str, Any], ctx) -> Subject:
        if isinstance(src, _MhdScans):
            from crd.data.specs.lits import liver_box

            image, seg = src.scan(subject)
            return liver_box(image, seg, opts, f"{src.label}: {subject}")
        volume, seg = src.scan(subject)
        image = np.clip(volume.astype(np.float32) / 255.0, 0.0, 1.0)
        labels = (seg.astype(np.float32) > 128).astype(np.int16)
        return Subject(image, labels, np.eye(4))


_TERMS_SLIVER = "SLIVER07 challenge terms (registration at https://sliver07.grand-challenge.org; "
_COMMON = dict(
    labels={1: "liver"},
    options={},
    option_help={},
    intensity="volume / 255 (RCN's preprocessing: liver crop, window, 128^3)",
    disk="0.1 GB",
    time="seconds",
)

SLIVER = _RcnLiver(
    name="sliver",
    title="SLIVER07 liver CT (RCN's preprocessed sliver_val.h5), test only",
    homepage="https://sliver07.grand-challenge.org/",
    license=_TERMS_SLIVER + "use for liver-segmentation research only, no redistribution)",
    citation="Heimann et al., Comparison and evaluation of methods for liver segmentation from "
    "CT datasets, IEEE TMI 2009; Zhao et al., Recursive Cascaded Networks, ICCV 2019",
    own_files=("sliver_val.h5",),
    instructions=(
        "Register at https://sliver07.grand-challenge.org, then either get sliver_val.h5 from "
        f"the recursive cascaded networks' dataset links ({RCN_DATASETS}), or place the original "
        "training scans (liver-orig001.mhd + .raw, liver-seg001.mhd + .raw, ...)."
    ),
    protocol="test only: every ordered pair of scans (models from `train_on`)",
    protocols={
        CRD_BENCH: Protocol(CRD_BENCH, "test only: every ordered pair of scans (models from `train_on`)",
                            "crd-bench"),  # fmt: skip
        PAPER: Protocol(
            PAPER,
            "the ordered pairs (scan i, scan j), i != j, scans sorted by number: the first 270 train, the rest "
            "test (72 of 342 for 19 scans); pairs share scans across the split; no validation",
            "BlaiseBrain/CRD_registration core/datasets.py: LiverTrain (generate_pairs [:270]), "
            "LiverTest (generate_pairs_val [270:])",
            ("the authors' scan order is os.listdir's of their sliver_val folder (file-system dependent): "
             "sorted by scan number here",),  # fmt: skip
        ),
    },
    notes="HDF5 layout from RCN's data_util/liver.py; originals read as MetaImage; no checksum "
    "published.",
    labels={1: "liver"},
    options={"protocol": CRD_BENCH, "shape": [128, 128, 128], "box_mm": [256.0, 256.0, 256.0],
             "window": [-25.0, 265.0]},  # fmt: skip
    option_help={
        "protocol": "crd-bench (default: test only) or paper (the authors' first 270 pairs train, the rest test)",
        "shape": "original scans only: output size (D, H, W), as lits",
        "box_mm": "original scans only: box centred on the liver, mm, as lits",
        "window": "original scans only: HU window mapped to [0, 1], as lits",
    },
    intensity="sliver_val.h5: volume / 255 (RCN's preprocessing); original scans: the lits "
    "recipe (HU window [-25, 265] -> [0, 1] in a 256 mm box on the liver)",
    disk="0.1 GB (h5) or 0.7 GB (originals)",
    time="seconds to a minute",
)

LSPIG = _RcnLiver(
    name="lspig",
    title="LSPIG liver CT of 17 pigs, pre/after gas (RCN's lspig_val.h5), test only",
    homepage=RCN_DATASETS,
    license="terms of the RCN release (research use; ask its authors)",
    citation="Zhao et al., Recursive Cascaded Networks for Unsupervised Medical Image "
    "Registration, ICCV 2019",
    own_files=("lspig_val.h5",),
    instructions=f"Get lspig_val.h5 from the recursive cascaded networks' dataset links ({RCN_DATASETS}).",
    protocol="test only: after-gas <-> pre-gas scans of the same pig, both directions",
    protocols={
        PAPER: Protocol(
            PAPER,
            "test only: each pig's after-gas and pre-gas scans, both directions (after-gas fixed first), pigs "
            "sorted; models from `train_on`",
            "BlaiseBrain/CRD_registration core/datasets.py: LspigTest (generate_lspig_val); RCN's lspig-val "
            "with --paired",
        ),
    },
    notes="HDF5 layout and <pig>_pregas/<pig>_aftergas ids from RCN's datasets/liver.json.",
    **{**_COMMON, "options": {"protocol": PAPER},
       "option_help": {"protocol": "paper (the only one: the authors' pairs, which crd-bench uses too)"}},
)

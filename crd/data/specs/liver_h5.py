"""``sliver`` and ``lspig``: the paper's two liver test sets, bring-your-own.

Both need registration with their providers, so crd-bench cannot download them. It reads the
preprocessed HDF5 files of the recursive cascaded networks (RCN) release, which the CRD paper's
liver experiments follow: one group per scan, each with ``volume`` (128^3, 0..255) and
``segmentation`` (128^3, liver = values above 128)::

    sliver_val.h5   SLIVER07 training scans, e.g. groups "1", "2", ...
    lspig_val.h5    17 pigs, pre/after-gas scans, e.g. "2017_02_pregas", "2017_02_aftergas"

The files carry no voxel spacing (RCN stretched each liver crop to 128^3), so distances (HD95) are
in voxel units, as ``dataset.json`` says. Both sets are for testing only (every pair is a test
pair); the models come from the dataset named by ``train_on`` in the config (``lits`` in the
paper-scale configurations). SLIVER: every ordered pair of scans. LSPIG: the pre-gas and after-gas
scans of the same pig, in both directions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from crd.data.specs.base import DatasetSpec, SpecError, Subject

_RCN = "https://github.com/microsoft/Recursive-Cascaded-Networks#datasets"
_PIG = re.compile(r"^(.+)_(pregas|aftergas)$")


class _H5Scans:
    """The groups of one RCN HDF5 file (thread-safe: h5py serialises access)."""

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


class _RcnLiver(DatasetSpec):
    def open(self, files: Mapping[str, Path]) -> _H5Scans:
        return _H5Scans(files[self.own_files[0]])

    def subject_ids(self, src: _H5Scans, opts: Mapping[str, Any]) -> list[str]:
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
                    rows += [("test", pre, after), ("test", after, pre)]
            if not rows:
                raise SpecError(f"{src.label}: no pig with both <id>_pregas and <id>_aftergas")
            return rows
        return [("test", f, m) for f in ids for m in ids if f != m]

    def load(self, src: _H5Scans, subject: str, opts: Mapping[str, Any], ctx) -> Subject:
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
    extra={"spacing_unit": "voxel"},
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
        "Register at https://sliver07.grand-challenge.org, then get sliver_val.h5 from the "
        f"recursive cascaded networks' dataset links ({_RCN})."
    ),
    protocol="test only: every ordered pair of scans (models from `train_on`)",
    notes="HDF5 layout from RCN's data_util/liver.py; no checksum published.",
    **_COMMON,
)

LSPIG = _RcnLiver(
    name="lspig",
    title="LSPIG liver CT of 17 pigs, pre/after gas (RCN's lspig_val.h5), test only",
    homepage=_RCN,
    license="terms of the RCN release (research use; ask its authors)",
    citation="Zhao et al., Recursive Cascaded Networks for Unsupervised Medical Image "
    "Registration, ICCV 2019",
    own_files=("lspig_val.h5",),
    instructions=f"Get lspig_val.h5 from the recursive cascaded networks' dataset links ({_RCN}).",
    protocol="test only: pre-gas <-> after-gas scans of the same pig, both directions",
    notes="HDF5 layout and <pig>_pregas/<pig>_aftergas ids from RCN's datasets/liver.json.",
    **_COMMON,
)

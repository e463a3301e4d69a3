"""``lpba40-rcn``: LPBA40 as the CRD authors read it, the recursive cascaded networks' ``lpba_val.h5``.

Bring your own: the recursive cascaded networks (RCN) release distributes LPBA40 preprocessed
(``lpba_val.h5``, their "LPBA" download, under LONI's terms), one group per subject::

    lpba_val.h5   groups "S01" ... "S40", each with ``volume`` (128^3, 0..255) and
                  ``segmentation`` (128^3, the 56 LPBA40 label values 21..182, 0 background)

The CRD authors converted it to one folder per subject and read it with ``BrainTrain`` /
``BrainTest`` (``core/datasets.py``), dividing the volume by 255. This spec reads the same file
and does the same: ``volume / 255`` (clipped to [0, 1]), the segmentation's values as labels. The
file carries no voxel spacing (RCN resampled each brain to 128^3), so distances (HD95) are in
voxels (``spacing_unit``). Pairs (option ``protocol``), atlas ``S01`` fixed, the other subjects
sorted as moving images:

- ``paper`` (default): the authors' split, the first 27 train (S02-S28), the last 12 test
  (S29-S40), no validation (their order is ``os.listdir``'s; sorted here);
- ``crd-bench``: the last ``test`` test, the ``val`` before them validation (give ``val: 3,
  test: 10`` for ``lpba40``'s split).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from crd.data.specs.base import CRD_BENCH, PAPER, DatasetSpec, Protocol, SpecError, Subject
from crd.data.specs.liver_h5 import RCN_DATASETS, H5Scans
from crd.data.specs.lpba40 import LABELS, lpba_pairs


class _Lpba40Rcn(DatasetSpec):
    def open(self, files: Mapping[str, Path]) -> H5Scans:
        return H5Scans(files[self.own_files[0]])

    def subject_ids(self, src: H5Scans, opts: Mapping[str, Any]) -> list[str]:
        ids = src.ids()
        if opts["atlas"] not in ids:
            raise SpecError(f"{src.label}: atlas subject {opts['atlas']!r} not found (found {len(ids)} groups with "
                            f"'volume' and 'segmentation'; RCN's lpba_val.h5 has S01 ... S40)")  # fmt: skip
        return ids

    def pairs(self, src: Any, ids: Sequence[str], opts: Mapping[str, Any]):
        return lpba_pairs(ids, opts, self.name)

    def load(self, src: H5Scans, subject: str, opts: Mapping[str, Any], ctx) -> Subject:
        volume, seg = src.scan(subject)
        labels = np.rint(seg).astype(np.int16)
        unknown = sorted(set(np.unique(labels).tolist()) - {0, *LABELS})
        if unknown:
            raise SpecError(f"{src.label}: group {subject!r}: segmentation values {unknown[:5]} are not LPBA40 "
                            f"labels (expected 0 and the 56 values 21..182)")  # fmt: skip
        image = np.clip(volume.astype(np.float32) / 255.0, 0.0, 1.0)
        return Subject(image, labels, np.eye(4))


SPEC = _Lpba40Rcn(
    name="lpba40-rcn",
    title="LONI LPBA40 as RCN preprocessed it (lpba_val.h5: 40 brains, 128^3, 56 labels), atlas S01",
    homepage=RCN_DATASETS,
    license=(
        "LONI LPBA40 terms (https://resource.loni.usc.edu/resources/atlases/license-agreement/) and those of the "
        "RCN release: research use, cite Shattuck et al. 2008 and Zhao et al. 2019, no redistribution"
    ),
    citation="Shattuck et al., NeuroImage 2008; Zhao et al., Recursive Cascaded Networks, ICCV 2019",
    own_files=("lpba_val.h5",),
    instructions=f"Get lpba_val.h5 from the recursive cascaded networks' dataset links ({RCN_DATASETS}, 'LPBA').",
    labels=LABELS,
    options={"protocol": PAPER, "atlas": "S01", "val": 0, "test": 12},
    option_help={
        "protocol": "paper (default: the authors' 27 training / 12 test moving images) or crd-bench",
        "atlas": "the fixed image of every pair",
        "val": "validation subjects (moving), just before the test subjects (paper: 0; crd-bench: 3)",
        "test": "test subjects (moving): the last ids (paper: 12; crd-bench: 10)",
    },
    protocol="atlas-based: S01 fixed; moving = each other subject",
    protocols={
        PAPER: Protocol(
            PAPER,
            "atlas S01 fixed; moving, in id order: the first 27 train (S02-S28), the last 12 test (S29-S40); "
            "no validation",
            "BlaiseBrain/CRD_registration core/datasets.py: BrainTrain (generate_atlas [:27]), "
            "BrainTest (generate_atlas_val [27:]), on RCN's lpba_val.h5 / 255",
            (
                "the authors' order is os.listdir's (file-system dependent): sorted here",
                "arrays in nibabel's order; the authors' loaders read SimpleITK's (axes reversed)",
            ),
        ),
        CRD_BENCH: Protocol(
            CRD_BENCH,
            "atlas S01 fixed; moving, in id order: the last `test` test, the `val` before them validation, the "
            "rest training (lpba40's: val 3, test 10)",
            "crd-bench",
        ),
    },
    fixed_options={PAPER: {"val": 0, "test": 12}},
    intensity="volume / 255 (RCN's preprocessing, as the authors' BrainTrain/BrainTest)",
    notes="HDF5 layout (groups with volume and segmentation) from RCN's data_util and datasets/brain.json; "
    "no checksum published.",
    disk="0.1 GB",
    time="seconds",
)

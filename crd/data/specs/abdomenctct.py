"""``abdomenctct``: Learn2Reg AbdomenCTCT, 30 labelled abdominal CT, 13 organs, 192x160x256.

Archive (one zip)::

    AbdomenCTCT/AbdomenCTCT_dataset.json       Learn2Reg dataset description
    AbdomenCTCT/imagesTr/AbdomenCTCT_0001_0000.nii.gz ...  CT in Hounsfield units
    AbdomenCTCT/labelsTr/AbdomenCTCT_0001_0000.nii.gz ...  13 organs
    AbdomenCTCT/imagesTs/...                               unlabelled (not used)

Preprocessing: none geometrically (Learn2Reg already resampled and cropped the scans to one grid;
the arrays stay as stored, as its evaluation expects); intensities windowed to ``window`` HU (the
usual abdominal soft-tissue window, level 40, width 400) and scaled to [0, 1]. Pairs: the test
pairs are Learn2Reg's validation pairs: ``registration_val`` of the dataset JSON when it lists
them, else the 45 pairs of its evaluation configuration (every i < j of ids 1, 4, ..., 28, the
lower id fixed). The subjects in no test pair are split into validation (the last ``val``) and
training (every ordered pair).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from crd.data.archive import Archive
from crd.data.download import Source
from crd.data.preprocess import window
from crd.data.specs.base import DatasetSpec, SpecError, Subject, inter_subject_pairs

_ROOT = "AbdomenCTCT"
_IMAGE = re.compile(rf"^{_ROOT}/imagesTr/(AbdomenCTCT_\d{{4}})_0000\.nii\.gz$")
_ID = re.compile(r"(AbdomenCTCT_\d{4})_0000\.nii\.gz$")
_EVAL_IDS = [1, 4, 7, 10, 13, 16, 19, 22, 25, 28]

LABELS = {
    1: "spleen", 2: "right kidney", 3: "left kidney", 4: "gall bladder", 5: "esophagus",
    6: "liver", 7: "stomach", 8: "aorta", 9: "inferior vena cava", 10: "portal and splenic vein",
    11: "pancreas", 12: "right adrenal gland", 13: "left adrenal gland",
}


def _test_pairs(src: Archive) -> list[tuple[str, str]]:
    name = f"{_ROOT}/AbdomenCTCT_dataset.json"
    if name in src:
        try:
            info = json.loads(src.read(name))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SpecError(f"{src.label}!{name}: not valid JSON ({exc})") from None
        pairs = []
        for entry in info.get("registration_val") or []:
            fixed, moving = (_ID.search(str(entry.get(k, ""))) for k in ("fixed", "moving"))
            if fixed is None or moving is None:
                raise SpecError(f"{src.label}!{name}: registration_val entry {entry!r} names "
                                f"no AbdomenCTCT_xxxx_0000.nii.gz image")
            pairs.append((fixed.group(1), moving.group(1)))
        if pairs:
            return pairs
    ids = [f"AbdomenCTCT_{i:04d}" for i in _EVAL_IDS]
    return [(f, m) for i, f in enumerate(ids) for m in ids[i + 1 :]]


class _AbdomenCTCT(DatasetSpec):
    def open(self, files: Mapping[str, Path]) -> Archive:
        return Archive(files[self.sources[0].filename])

    def subject_ids(self, src: Archive, opts: Mapping[str, Any]) -> list[str]:
        ids = sorted(m.group(1) for n in src.names() if (m := _IMAGE.match(n)))
        ids = [s for s in ids if f"{_ROOT}/labelsTr/{s}_0000.nii.gz" in src]
        if not ids:
            raise SpecError(f"{src.label}: no AbdomenCTCT/imagesTr/AbdomenCTCT_xxxx_0000.nii.gz "
                            f"with a label map; is this Learn2Reg's AbdomenCTCT.zip?")
        return ids

    def pairs(self, src: Archive, ids: Sequence[str], opts: Mapping[str, Any]):
        test_pairs = _test_pairs(src)
        test = {s for p in test_pairs for s in p}
        unknown = sorted(test - set(ids))
        if unknown:
            raise SpecError(f"{src.label}: test pairs name {', '.join(unknown)}, which have no "
                            f"labelled image")
        rest = [s for s in ids if s not in test]
        if len(rest) - opts["val"] < 2:
            raise SpecError(f"{self.name}: {len(rest)} subjects outside the test pairs cannot "
                            f"give val={opts['val']} and at least 2 training subjects")
        train, val = rest[: len(rest) - opts["val"]], rest[len(rest) - opts["val"] :]
        rows = inter_subject_pairs(train, val, [])
        return rows + [("test", f, m) for f, m in test_pairs]

    def load(self, src: Archive, subject: str, opts: Mapping[str, Any], ctx) -> Subject:
        img = src.load_nifti(f"{_ROOT}/imagesTr/{subject}_0000.nii.gz")
        seg = src.load_nifti(f"{_ROOT}/labelsTr/{subject}_0000.nii.gz")
        labels = np.rint(np.asarray(seg.dataobj)).astype(np.int16)
        hu = np.asarray(img.dataobj, dtype=np.float32)
        return Subject(window(hu, *opts["window"]), labels, np.asarray(img.affine, np.float64))


SPEC = _AbdomenCTCT(
    name="abdomenctct",
    title="Learn2Reg AbdomenCTCT: 30 labelled abdominal CT, 13 organs, 192x160x256",
    homepage="https://learn2reg.grand-challenge.org/",
    license="CC BY 4.0 (Learn2Reg 2022 AbdomenCTCT; derived from the BTCV/TCIA abdomen scans)",
    citation="Hering et al., Learn2Reg, IEEE TMI 2023; Xu et al., Evaluation of six "
    "registration methods for the human abdomen on clinically acquired CT, IEEE TBME 2016",
    sources=(
        Source(
            "https://cloud.imi.uni-luebeck.de/s/32WaSRaTnFk2JeT/download/AbdomenCTCT.zip",
            "AbdomenCTCT.zip",
            None,
            size_bytes=900_000_000,
            hash_origin="no published checksum; the sha256 of what was downloaded is recorded",
        ),
    ),
    labels=LABELS,
    options={"window": [-160.0, 240.0], "val": 3},
    option_help={
        "window": "intensity window [low, high] in Hounsfield units, mapped to [0, 1]",
        "val": "validation subjects, taken from those in no test pair (consecutive pairs)",
    },
    protocol="Learn2Reg 2021's (AbdomenCTCT is not one of the paper's datasets): inter-subject; test: "
    "Learn2Reg's validation pairs (45 pairs of 10 subjects)",
    disk="0.9 GB download + 0.5 GB prepared",
    time="minutes",
    intensity="HU window [-160, 240] (soft tissue, level 40 width 400) mapped to [0, 1]",
    notes=(
        "Layout from public loaders; the 45 evaluation pairs from Learn2Reg's evaluation "
        "configuration (AbdomenCTCT_VAL_evaluation_config.json); label names in the order "
        "of the dataset description (exact spellings unconfirmed); no published checksum."
    ),
)

"""``oasis``: neurite-oasis v1.0, 414 T1 brain MRI, affinely aligned, 160x192x224, 35 labels.

Archive (one uncompressed tar, subject folders at its top level)::

    subjects.txt  seg35_labels.txt  seg4_labels.txt  ...
    OASIS_OAS1_0001_MR1/aligned_norm.nii.gz    intensities in [0, 1], 160x192x224
    OASIS_OAS1_0001_MR1/aligned_seg35.nii.gz   labels 0..35
    ...

Preprocessing: none beyond clipping to [0, 1]. The arrays stay as stored (no reorientation).
Pairs (option ``protocol``):

- ``crd-bench`` (default): the last ``test`` subjects in id order give the test pairs as
  consecutive pairs (Learn2Reg 2021's OASIS validation pairs are the 19 consecutive pairs of
  OAS1_0438..0457, the last 20 ids); the ``val`` subjects before them give the validation pairs;
  every ordered pair of the rest is a training pair.
- ``paper``: the authors' ``OasisTrain`` / ``OasisTest`` (``core/datasets.py`` of
  BlaiseBrain/CRD_registration: ``generate_oasis_pairs``, every ordered pair of the training
  subjects; ``generate_oasis_pairs_val``, consecutive pairs of the test subjects sorted by their
  4-digit id), with no validation subjects (``val`` fixed to 0). Which subjects their
  ``oasis_train`` and ``oasis_val`` folders held is not published: the test subjects are the last
  ``test`` ids, as in ``crd-bench``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from crd.data.archive import Archive
from crd.data.download import Source
from crd.data.specs.base import (
    CRD_BENCH,
    PAPER,
    DatasetSpec,
    Protocol,
    SpecError,
    Subject,
    inter_subject_pairs,
    split_subjects,
)

_SUBJECT = re.compile(r"^(OASIS_OAS1_\d{4}_MR1)/aligned_norm\.nii\.gz$")

# seg35: 1..35 <- FreeSurfer aseg ids (the neurite-oasis protocol; CSF, 24, is not labelled)
_FREESURFER = {
    2: "Left-Cerebral-White-Matter", 3: "Left-Cerebral-Cortex", 4: "Left-Lateral-Ventricle",
    5: "Left-Inf-Lat-Vent", 7: "Left-Cerebellum-White-Matter", 8: "Left-Cerebellum-Cortex",
    10: "Left-Thalamus", 11: "Left-Caudate", 12: "Left-Putamen", 13: "Left-Pallidum",
    14: "3rd-Ventricle", 15: "4th-Ventricle", 16: "Brain-Stem", 17: "Left-Hippocampus",
    18: "Left-Amygdala", 26: "Left-Accumbens-area", 28: "Left-VentralDC", 30: "Left-vessel",
    31: "Left-choroid-plexus", 41: "Right-Cerebral-White-Matter", 42: "Right-Cerebral-Cortex",
    43: "Right-Lateral-Ventricle", 44: "Right-Inf-Lat-Vent", 46: "Right-Cerebellum-White-Matter",
    47: "Right-Cerebellum-Cortex", 49: "Right-Thalamus", 50: "Right-Caudate", 51: "Right-Putamen",
    52: "Right-Pallidum", 53: "Right-Hippocampus", 54: "Right-Amygdala",
    58: "Right-Accumbens-area", 60: "Right-VentralDC", 62: "Right-vessel",
    63: "Right-choroid-plexus",
}
LABELS = {i + 1: name for i, name in enumerate(_FREESURFER.values())}


class _Oasis(DatasetSpec):
    def open(self, files: Mapping[str, Path]) -> Archive:
        return Archive(files[self.sources[0].filename])

    def subject_ids(self, src: Archive, opts: Mapping[str, Any]) -> list[str]:
        ids = sorted(m.group(1) for n in src.names() if (m := _SUBJECT.match(n)))
        if not ids:
            raise SpecError(
                f"{src.label}: no OASIS_OAS1_xxxx_MR1/aligned_norm.nii.gz member; is this "
                f"neurite-oasis.v1.0.tar?"
            )
        return ids

    def pairs(self, src: Any, ids: Sequence[str], opts: Mapping[str, Any]):
        train, val, test = split_subjects(ids, opts["val"], opts["test"], name=self.name)
        return inter_subject_pairs(train, val, test)

    def load(self, src: Archive, subject: str, opts: Mapping[str, Any], ctx) -> Subject:
        img = src.load_nifti(f"{subject}/aligned_norm.nii.gz")
        seg = src.load_nifti(f"{subject}/aligned_seg35.nii.gz")
        image = np.clip(np.asarray(img.get_fdata(dtype=np.float32)), 0.0, 1.0)
        labels = np.rint(np.asarray(seg.dataobj)).astype(np.int16)
        if image.shape != labels.shape:
            raise SpecError(f"{src.label}: {subject} image {image.shape} and seg35 "
                            f"{labels.shape} differ in shape")
        return Subject(image, labels, np.asarray(img.affine, dtype=np.float64))


SPEC = _Oasis(
    name="oasis",
    title="OASIS-1 brain MRI (neurite-oasis v1.0: 414 T1, aligned, 160x192x224, 35 labels)",
    homepage="https://github.com/adalca/medical-datasets/blob/master/neurite-oasis.md",
    license=(
        "OASIS Data Use Agreement (https://www.oasis-brains.org/#access): research use, cite "
        "the OASIS and neurite-oasis papers, no re-identification, no redistribution"
    ),
    citation=(
        "Marcus et al., Open Access Series of Imaging Studies (OASIS), J Cogn Neurosci 2007; "
        "Hoopes et al., HyperMorph, IPMI 2021 (neurite-oasis preprocessing)"
    ),
    sources=(
        Source(
            "https://surfer.nmr.mgh.harvard.edu/ftp/data/neurite/data/neurite-oasis.v1.0.tar",
            "neurite-oasis.v1.0.tar",
            "sha256:86dd117dda17f736ade8a4088d7e98e066e1181950fe8b406f1a35f7fb743e78",
            size_bytes=6_600_000_000,
            hash_origin="torch_em's OASIS loader (CHECKSUM next to the same URL)",
        ),
    ),
    requires_terms=True,
    labels=LABELS,
    options={"protocol": CRD_BENCH, "val": 6, "test": 20},
    option_help={
        "protocol": "crd-bench (default) or paper (the authors' OasisTrain/OasisTest pairs, no validation)",
        "val": "validation subjects (consecutive pairs), just before the test subjects (paper: 0)",
        "test": "test subjects: the last ones in id order (consecutive pairs)",
    },
    protocol="inter-subject; test: consecutive pairs of the last `test` ids (Learn2Reg style)",
    protocols={
        CRD_BENCH: Protocol(
            CRD_BENCH,
            "train: every ordered pair of the first ids; val: consecutive pairs of the next `val` (6); "
            "test: consecutive pairs of the last `test` (20: Learn2Reg 2021's 19 pairs, OAS1_0438-0457)",
            "crd-bench (test pairs as Learn2Reg 2021's OASIS validation pairs)",
        ),
        PAPER: Protocol(
            PAPER,
            "train: every ordered pair of the training subjects; test: consecutive pairs of the last `test` "
            "ids (20), sorted by id; no validation",
            "BlaiseBrain/CRD_registration core/datasets.py: OasisTrain (generate_oasis_pairs), "
            "OasisTest (generate_oasis_pairs_val)",
            (
                "which subjects the authors' oasis_train / oasis_val folders held is not published: the test "
                "subjects are the last `test` ids (Learn2Reg 2021's OASIS validation subjects for 20)",
                "arrays in nibabel's order; the authors' loaders read SimpleITK's (axes reversed), so a network "
                "trained here sees the other order (their released weights are fed theirs: crd import-official)",
            ),
        ),
    },
    fixed_options={PAPER: {"val": 0}},
    disk="6.6 GB download + 5 GB prepared",
    time="download ~1 h at 2 MB/s; preparation ~10 min on 8 cores",
    intensity="aligned_norm as distributed (already in [0, 1]); clipped to [0, 1]",
    notes=(
        "Layout and 35-label protocol from the maintainers' README and three public loaders; "
        "the label names are FreeSurfer's for the seg35 ids (seg35_labels.txt not read). "
        "Which subject of a Learn2Reg pair is fixed is not confirmed; we fix the earlier id."
    ),
)

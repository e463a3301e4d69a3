"""``lpba40``: LONI Probabilistic Brain Atlas, 40 T1 brain MRI in delineation space, 56 labels.

Archive (a zip holding a zip)::

    LPBA40_Subjects_Delineation_Space_MRI_and_label_files.zip
      LPBA40subjects.delineation_space.zip
        LPBA40/delineation_space/S01/S01.delineation.skullstripped.hdr  (+ .img.gz)
        LPBA40/delineation_space/S01/S01.delineation.structure.label.hdr (+ .img.gz)
        ...

Preprocessing (crd-bench's own, from the LONI zip, at 128^3 as the recursive cascaded networks'
preprocessed ``lpba_val.h5`` the authors read): one common box for all subjects (they share the delineation space): the
bounding box of the union of the skull-stripped brains plus ``margin_mm``, made a cube (so the
output voxels are isotropic), resampled to ``shape`` (trilinear with anti-aliasing for the image,
nearest for the labels); intensities divided by the 99.5th percentile of the brain and clipped to
[0, 1]. Pairs (option ``protocol``): ``atlas`` (S01) is always fixed, every other subject is a
moving image, in id order:

- ``crd-bench`` (default): the last ``test`` subjects are the test moving images, the ``val``
  before them validation, the rest training;
- ``paper``: the authors' ``BrainTrain`` / ``BrainTest`` (``core/datasets.py`` of
  BlaiseBrain/CRD_registration: ``generate_atlas(...)[:27]`` trains, ``generate_atlas_val(...)[27:]``
  tests): the first 27 moving images train (S02-S28), the last 12 test (S29-S40), no validation
  (``val`` 0 and ``test`` 12 fixed). Their order is ``os.listdir``'s (file-system dependent);
  sorted here. Their images are RCN's ``lpba_val.h5`` divided by 255, which crd-bench does not
  read: the intensities and grid are this module's preprocessing (a named deviation).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from crd.data.archive import Archive
from crd.data.download import Source
from crd.data.preprocess import foreground_box, resample_box, scale_to_unit
from crd.data.specs.base import (
    CRD_BENCH,
    PAPER,
    DatasetSpec,
    Protocol,
    SpecError,
    Subject,
    atlas_pairs,
    split_subjects,
)

_INNER = re.compile(r"(^|/)LPBA40subjects\.delineation_space\.zip$")
_SUBJECT = re.compile(r"^LPBA40/delineation_space/(S\d\d)/\1\.delineation\.skullstripped\.hdr$")

_STRUCTURES = [
    (21, "superior frontal gyrus"), (23, "middle frontal gyrus"), (25, "inferior frontal gyrus"),
    (27, "precentral gyrus"), (29, "middle orbitofrontal gyrus"),
    (31, "lateral orbitofrontal gyrus"), (33, "gyrus rectus"), (41, "postcentral gyrus"),
    (43, "superior parietal gyrus"), (45, "supramarginal gyrus"), (47, "angular gyrus"),
    (49, "precuneus"), (61, "superior occipital gyrus"), (63, "middle occipital gyrus"),
    (65, "inferior occipital gyrus"), (67, "cuneus"), (81, "superior temporal gyrus"),
    (83, "middle temporal gyrus"), (85, "inferior temporal gyrus"), (87, "parahippocampal gyrus"),
    (89, "lingual gyrus"), (91, "fusiform gyrus"), (101, "insular cortex"),
    (121, "cingulate gyrus"), (161, "caudate"), (163, "putamen"), (165, "hippocampus"),
]
LABELS = {v + side: f"{'LR'[side]} {name}" for v, name in _STRUCTURES for side in (0, 1)}
LABELS.update({181: "cerebellum", 182: "brainstem"})


def lpba_pairs(ids: Sequence[str], opts: Mapping[str, Any], name: str) -> list[tuple[str, str, str]]:
    """``atlas`` fixed; the other ids, sorted, are moving images: the last ``test`` test, the
    ``val`` before them validation, the rest training (both protocols; the paper's fixes
    ``val`` 0 and ``test`` 12, the authors' ``[:27]`` / ``[27:]`` of 39)."""
    others = [s for s in ids if s != opts["atlas"]]
    train, val, test = split_subjects(others, opts["val"], opts["test"], name=name)
    return atlas_pairs(opts["atlas"], train, val, test)


def _paths(subject: str, kind: str) -> tuple[str, str]:
    stem = f"LPBA40/delineation_space/{subject}/{subject}.delineation.{kind}"
    return f"{stem}.hdr", f"{stem}.img.gz"


def _volume(img, label: str) -> np.ndarray:
    """The image data as a 3-D array (Analyze headers may carry a trailing time axis of 1)."""
    data = np.asarray(img.dataobj)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise SpecError(f"{label}: expected a 3-D volume, got shape {data.shape}")
    return data


class _Lpba40(DatasetSpec):
    def open(self, files: Mapping[str, Path]) -> Archive:
        outer = Archive(files[self.sources[0].filename])
        inner = [n for n in outer.names() if _INNER.search(n)]
        if not inner:
            raise SpecError(f"{outer.label}: no LPBA40subjects.delineation_space.zip inside; "
                            f"is this the LPBA40 delineation-space download?")
        nested = outer.nested(inner[0])
        outer.close()
        return nested

    def subject_ids(self, src: Archive, opts: Mapping[str, Any]) -> list[str]:
        ids = sorted(m.group(1) for n in src.names() if (m := _SUBJECT.match(n)))
        if opts["atlas"] not in ids:
            raise SpecError(f"{src.label}: atlas subject {opts['atlas']!r} not found "
                            f"(found {len(ids)} subjects)")
        return ids

    def pairs(self, src: Any, ids: Sequence[str], opts: Mapping[str, Any]):
        return lpba_pairs(ids, opts, self.name)

    def _image(self, src: Archive, subject: str):
        return src.load_analyze(*_paths(subject, "skullstripped"))

    def context(self, src: Archive, ids: Sequence[str], opts: Mapping[str, Any]) -> dict[str, Any]:
        lows, highs, affine = [], [], None
        for subject in ids:
            img = self._image(src, subject)
            lo, hi = foreground_box(_volume(img, f"{src.label}: {subject}") > 0)
            lows.append(lo)
            highs.append(hi)
            affine = img.affine if affine is None else affine
        lo, hi = np.min(lows, axis=0), np.max(highs, axis=0)
        spacing = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
        side = float(np.max((hi - lo) * spacing) + 2 * opts["margin_mm"])
        return {"centre": ((lo + hi) / 2.0).tolist(), "side_mm": [side] * 3}

    def load(self, src: Archive, subject: str, opts: Mapping[str, Any], ctx) -> Subject:
        img = self._image(src, subject)
        seg = src.load_analyze(*_paths(subject, "structure.label"))
        data = _volume(img, f"{src.label}: {subject}").astype(np.float32)
        labels = np.rint(_volume(seg, f"{src.label}: {subject} labels")).astype(np.int16)
        if data.shape != labels.shape:
            raise SpecError(f"{src.label}: {subject}: image {data.shape} and labels {labels.shape} "
                            f"differ in shape")
        brain = data[data > 0]
        top = float(np.percentile(brain, 99.5)) if brain.size else 1.0
        image, affine = resample_box(data, img.affine, ctx["centre"], ctx["side_mm"],
                                     opts["shape"], order=1)
        labels, _ = resample_box(labels, img.affine, ctx["centre"], ctx["side_mm"],
                                 opts["shape"], order=0)
        return Subject(scale_to_unit(image, 0.0, top), labels, affine)


SPEC = _Lpba40(
    name="lpba40",
    title="LONI LPBA40, 40 T1 brain MRI in delineation space, 56 labels (atlas S01)",
    homepage="https://www.loni.usc.edu/research/atlases",
    license=(
        "LONI LPBA40 terms (https://resource.loni.usc.edu/resources/atlases/license-agreement/): "
        "research use, cite Shattuck et al. 2008, no redistribution"
    ),
    citation="Shattuck et al., Construction of a 3D probabilistic atlas of human cortical "
    "structures, NeuroImage 2008",
    sources=(
        Source(
            "https://resource.loni.usc.edu/atlasfiles/"
            "LPBA40_Subjects_Delineation_Space_MRI_and_label_files.zip",
            "LPBA40_Subjects_Delineation_Space_MRI_and_label_files.zip",
            None,
            size_bytes=240_000_000,
            hash_origin="no published checksum; the sha256 of what was downloaded is recorded",
        ),
    ),
    requires_terms=True,
    labels=LABELS,
    options={"protocol": CRD_BENCH, "shape": [128, 128, 128], "margin_mm": 4.0, "atlas": "S01", "val": 3,
             "test": 10},  # fmt: skip
    option_help={
        "protocol": "crd-bench (default) or paper (the authors' 27 training / 12 test moving images, no validation)",
        "shape": "output size (D, H, W); multiples of 32 for the fst and the x2 students",
        "margin_mm": "margin around the union of the brains, mm",
        "atlas": "the fixed image of every pair",
        "val": "validation subjects (moving), just before the test subjects (paper: 0)",
        "test": "test subjects (moving): the last ids (paper: 12)",
    },
    protocol="atlas-based: S01 fixed; moving = each other subject (test: the last `test` ids)",
    protocols={
        CRD_BENCH: Protocol(
            CRD_BENCH,
            "atlas S01 fixed; moving, in id order: training S02-S27, val S28-S30 (`val` 3), test S31-S40 (`test` 10)",
            "crd-bench",
        ),
        PAPER: Protocol(
            PAPER,
            "atlas S01 fixed; moving, in id order: the first 27 train (S02-S28), the last 12 test (S29-S40); "
            "no validation",
            "BlaiseBrain/CRD_registration core/datasets.py: BrainTrain (generate_atlas [:27]), "
            "BrainTest (generate_atlas_val [27:])",
            (
                "the authors' order is os.listdir's (file-system dependent): sorted here",
                "images from the LONI zip with crd-bench's preprocessing (common brain box, 128^3, 99.5th "
                "percentile); the authors read RCN's preprocessed lpba_val.h5 divided by 255",
                "arrays in nibabel's order; the authors' loaders read SimpleITK's (axes reversed)",
            ),
        ),
    },
    fixed_options={PAPER: {"val": 0, "test": 12}},
    disk="0.3 GB download + 0.2 GB prepared",
    time="minutes",
    intensity="divided by the 99.5th percentile of the skull-stripped brain, clipped to [0, 1]",
    notes=(
        "Nested layout from a public loader that reads the real zip; the 56 label values from "
        "Brainstorm's LPBA40 table (= RCN's brain.json); no published checksum; the volume "
        "size and spacing are read from the headers."
    ),
)

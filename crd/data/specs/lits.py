"""``lits``: liver CT of the Medical Segmentation Decathlon (Task03_Liver = LiTS), 131 labelled scans.

Archive (one tar; some Decathlon tars also carry macOS ``._*`` files, which are skipped)::

    Task03_Liver/dataset.json
    Task03_Liver/imagesTr/liver_0.nii.gz ... liver_130.nii.gz   CT in Hounsfield units
    Task03_Liver/labelsTr/liver_0.nii.gz ...                    0 background, 1 liver, 2 tumour
    Task03_Liver/imagesTs/...                                    unlabelled (not used)

Preprocessing, in the spirit of the recursive cascaded networks' liver pipeline (crop to the liver
with a margin, 128^3, intensity window): reoriented to RAS; the liver (tumour merged, label 1) is
centred in a box of ``box_mm`` (the same physical size for every scan, so voxel spacing is the
same for all and distances stay in millimetres; RCN instead stretched each crop to 128^3), sampled
to ``shape`` (trilinear with anti-aliasing; labels nearest), intensities windowed to ``window``
HU (RCN's level 120, width 290) and scaled to [0, 1]. Pairs: subjects shuffled by ``seed``; the
last ``test`` give consecutive test pairs, ``val`` validation pairs, the rest every ordered
training pair.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from crd.data.archive import Archive
from crd.data.download import Source
from crd.data.preprocess import canonical, foreground_box, resample_box, window
from crd.data.specs.base import DatasetSpec, SpecError, Subject, inter_subject_pairs, split_subjects

_IMAGE = re.compile(r"^Task03_Liver/imagesTr/(liver_\d+)\.nii\.gz$")
AIR_HU = -1024.0


class _Lits(DatasetSpec):
    def open(self, files: Mapping[str, Path]) -> Archive:
        return Archive(files[self.sources[0].filename])

    def subject_ids(self, src: Archive, opts: Mapping[str, Any]) -> list[str]:
        ids = [m.group(1) for n in src.names() if (m := _IMAGE.match(n))]
        ids = [s for s in ids if f"Task03_Liver/labelsTr/{s}.nii.gz" in src]
        if not ids:
            raise SpecError(f"{src.label}: no Task03_Liver/imagesTr/liver_N.nii.gz with a label "
                            f"map; is this the Decathlon's Task03_Liver.tar?")
        return sorted(ids, key=lambda s: int(s.split("_")[1]))

    def pairs(self, src: Any, ids: Sequence[str], opts: Mapping[str, Any]):
        train, val, test = split_subjects(ids, opts["val"], opts["test"], seed=opts["seed"],
                                          name=self.name)
        return inter_subject_pairs(train, val, test)

    def load(self, src: Archive, subject: str, opts: Mapping[str, Any], ctx) -> Subject:
        img = src.load_nifti(f"Task03_Liver/imagesTr/{subject}.nii.gz")
        seg = src.load_nifti(f"Task03_Liver/labelsTr/{subject}.nii.gz")
        return liver_box(img, seg, opts, f"{src.label}: {subject}")


def liver_box(img, seg, opts: Mapping[str, Any], label: str) -> Subject:
    """The liver CT recipe (shared with SLIVER07's original scans): reorient to RAS, liver =
    every non-zero label, centre a ``box_mm`` box on the liver's bounding box, sample it to
    ``shape`` (trilinear, anti-aliased; labels nearest; air outside the scan), window to
    ``window`` HU -> [0, 1]. A liver larger than the box is cropped and a warning recorded.

    Args:
        img, seg: nibabel images (CT in HU, label map) on the same grid.
        opts: ``shape``, ``box_mm``, ``window``.
        label: names the scan in messages.
    """
    img, seg = canonical(img), canonical(seg)
    liver = np.asarray(seg.dataobj) > 0  # tumour merged into the liver
    if liver.shape != img.shape:
        raise SpecError(f"{label}: image {img.shape} and label map {liver.shape} differ in shape")
    try:
        lo, hi = foreground_box(liver)
    except ValueError:
        raise SpecError(f"{label}: the label map has no liver") from None
    centre = (lo + hi) / 2.0
    spacing = np.linalg.norm(np.asarray(img.affine)[:3, :3], axis=0)
    extent = (hi - lo + 1) * spacing
    warnings = []
    if np.any(extent > np.asarray(opts["box_mm"], dtype=float)):
        warnings.append(f"{label.rsplit(': ', 1)[-1]}: liver extent {np.round(extent).tolist()} mm "
                        f"exceeds box_mm {opts['box_mm']}; its ends are cropped")
    hu, affine = resample_box(np.asarray(img.dataobj, dtype=np.float32), img.affine, centre,
                              opts["box_mm"], opts["shape"], order=1, fill=AIR_HU)
    labels, _ = resample_box(liver.astype(np.int16), img.affine, centre, opts["box_mm"],
                             opts["shape"], order=0)
    return Subject(window(hu, *opts["window"]), labels, affine, warnings)


SPEC = _Lits(
    name="lits",
    title="Liver CT, Medical Segmentation Decathlon Task03_Liver (LiTS), 131 labelled scans",
    homepage="http://medicaldecathlon.com/",
    license="CC BY-SA 4.0 (Medical Segmentation Decathlon)",
    citation="Antonelli et al., The Medical Segmentation Decathlon, Nat Commun 2022; "
    "Bilic et al., The Liver Tumor Segmentation Benchmark (LiTS), Med Image Anal 2023",
    sources=(
        Source(
            "https://msd-for-monai.s3-us-west-2.amazonaws.com/Task03_Liver.tar",
            "Task03_Liver.tar",
            "md5:a90ec6c4aa7f6a3d087205e23d4e6397",
            size_bytes=28_000_000_000,
            hash_origin="MONAI's DecathlonDataset (monai/apps/datasets.py)",
        ),
    ),
    labels={1: "liver"},
    options={"shape": [128, 128, 128], "box_mm": [256.0, 256.0, 256.0], "window": [-25.0, 265.0],
             "val": 5, "test": 20, "seed": 0},
    option_help={
        "shape": "output size (D, H, W); multiples of 32",
        "box_mm": "side lengths of the box centred on the liver, mm (RAS axes)",
        "window": "intensity window [low, high] in Hounsfield units, mapped to [0, 1]",
        "val": "validation subjects (consecutive pairs)",
        "test": "test subjects (consecutive pairs)",
        "seed": "seed of the subject shuffle before splitting",
    },
    protocol="crd-bench's own (LiTS is not one of the paper's datasets): inter-subject, seeded split; test: "
    "consecutive pairs of the test subjects",
    disk="28 GB download + 1 GB prepared",
    time="download hours; preparation ~15 min on 8 cores",
    intensity="HU window [-25, 265] (RCN's level 120, width 290) mapped to [0, 1]",
    notes=(
        "URL and md5 as MONAI's DecathlonDataset records them; layout as the Decathlon "
        "documents it; the window follows RCN's demo.py; the fixed physical box is our choice."
    ),
)

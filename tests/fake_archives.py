"""Miniature archives laid out exactly like the real public downloads (same folder and file names,
formats and nesting; tiny volumes), for the offline dataset tests."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import zipfile
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np


def _blob_volume(rng, shape, n_labels):
    """A random smooth-ish label map (0 = background) and an image whose intensity follows it."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    centre = rng.uniform(-0.15, 0.15, 3)[:, None, None, None]
    r = np.sqrt(((grid - centre) ** 2).sum(0))
    inside = r < 0.75
    angle = np.arctan2(grid[1], grid[0]) + np.pi
    labels = np.where(inside, 1 + np.floor(angle / (2 * np.pi) * n_labels).clip(0, n_labels - 1), 0)
    return labels.astype(np.int16)


def _nifti_bytes(array, affine, dtype):
    img = nib.Nifti1Image(np.asarray(array, dtype=dtype), affine)
    img.header.set_data_dtype(dtype)
    return gzip.compress(img.to_bytes(), mtime=0)


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=(2008, 1, 1, 0, 0, 0)), data)
    return buf.getvalue()


OASIS_IDS = ["0001", "0002", "0004", "0005", "0006", "0007", "0009", "0010"]


def oasis_tar(folder: Path, shape=(16, 20, 24), ids=None) -> Path:
    """neurite-oasis.v1.0.tar: subject folders at the top level, aligned_* files in [0, 1]."""
    rng = np.random.default_rng(0)
    ids = OASIS_IDS if ids is None else ids
    affine = np.array([[-1, 0, 0, 80], [0, 0, 1, -112], [0, -1, 0, 96], [0, 0, 0, 1]], float)
    members = {"subjects.txt": "".join(f"OASIS_OAS1_{i}_MR1\n" for i in ids).encode(),
               "seg35_labels.txt": b"0 Unknown\n", "seg4_labels.txt": b"0 Unknown\n"}
    for sid in ids:
        labels = _blob_volume(rng, shape, 35)
        image = (labels / 35.0 * 0.8 + rng.normal(0, 0.02, shape)).clip(0, 1)
        d = f"OASIS_OAS1_{sid}_MR1"
        members[f"{d}/aligned_orig.nii.gz"] = _nifti_bytes(image * 200, affine, np.float32)
        members[f"{d}/aligned_norm.nii.gz"] = _nifti_bytes(image, affine, np.float32)
        members[f"{d}/aligned_seg35.nii.gz"] = _nifti_bytes(labels, affine, np.uint8)
        members[f"{d}/aligned_seg4.nii.gz"] = _nifti_bytes(np.minimum(labels, 4), affine, np.uint8)
    return _tar(folder / "neurite-oasis.v1.0.tar", members)


def _analyze_pair(array, zooms):
    img = nib.AnalyzeImage(np.asarray(array), np.diag([*zooms[:3], 1.0]))
    img.header.set_zooms(zooms)
    fm = img.make_file_map({"header": io.BytesIO(), "image": io.BytesIO()})
    img.to_file_map(fm)
    return fm["header"].fileobj.getvalue(), gzip.compress(fm["image"].fileobj.getvalue(), mtime=0)


LPBA_IDS = [f"S{i:02d}" for i in range(1, 9)]


def lpba40_zip(folder: Path, shape=(24, 14, 24), n=8) -> Path:
    """The LPBA40 zip holding LPBA40subjects.delineation_space.zip holding Analyze pairs."""
    from crd.data.specs.lpba40 import LABELS

    rng = np.random.default_rng(1)
    values = np.array([0, *sorted(LABELS)])
    inner = {"LPBA40/delineation_space/lpba40.label.xml": b"<labels/>"}
    for sid in [f"S{i:02d}" for i in range(1, n + 1)]:
        lab = _blob_volume(rng, shape, len(LABELS))
        labels = values[lab].astype(np.int16)
        image = np.where(lab > 0, 40 + lab * 2 + rng.normal(0, 3, shape), 0).astype(np.int16)
        d = f"LPBA40/delineation_space/{sid}/{sid}.delineation"
        if sid == "S03":  # some Analyze headers carry a trailing time axis of length 1
            image = image[..., None]
        inner[f"{d}.skullstripped.hdr"], inner[f"{d}.skullstripped.img.gz"] = _analyze_pair(
            image, (0.86, 1.5, 0.86, 1.0)[: image.ndim])
        inner[f"{d}.structure.label.hdr"], inner[f"{d}.structure.label.img.gz"] = _analyze_pair(
            labels, (0.86, 1.5, 0.86))
    outer = _zip_bytes({"LPBA40subjects.delineation_space.zip": _zip_bytes(inner)})
    path = folder / "LPBA40_Subjects_Delineation_Space_MRI_and_label_files.zip"
    path.write_bytes(outer)
    return path


LITS_IDS = list(range(7))


def lits_tar(folder: Path, shape=(30, 30, 12), n=7) -> Path:
    """Task03_Liver.tar with dataset.json, imagesTr/labelsTr/imagesTs and macOS ._ junk."""
    rng = np.random.default_rng(2)
    # LPS-like, anisotropic: canonical() must reorient it
    affine = np.array([[-0.8, 0, 0, 100], [0, -0.8, 0, 120], [0, 0, 2.5, -300], [0, 0, 0, 1]])
    members = {}
    training = []
    for i in range(n):
        lab = _blob_volume(rng, shape, 2)  # 1 liver, 2 tumour
        hu = np.where(lab > 0, 60 + 80 * (lab == 2), -900) + rng.normal(0, 10, shape)
        members[f"Task03_Liver/imagesTr/liver_{i}.nii.gz"] = _nifti_bytes(hu, affine, np.int16)
        members[f"Task03_Liver/labelsTr/liver_{i}.nii.gz"] = _nifti_bytes(lab, affine, np.uint8)
        members[f"Task03_Liver/imagesTr/._liver_{i}.nii.gz"] = b"\x00\x05\x16\x07junk"
        training.append({"image": f"./imagesTr/liver_{i}.nii.gz",
                         "label": f"./labelsTr/liver_{i}.nii.gz"})
    members["Task03_Liver/imagesTs/liver_132.nii.gz"] = _nifti_bytes(np.zeros(shape), affine,
                                                                    np.int16)
    members["Task03_Liver/dataset.json"] = json.dumps({
        "name": "LiTS", "labels": {"0": "background", "1": "liver", "2": "cancer"},
        "numTraining": n, "training": training, "test": ["./imagesTs/liver_132.nii.gz"],
    }).encode()
    return _tar(folder / "Task03_Liver.tar", members)


ABDOMEN_IDS = list(range(1, 9))
ABDOMEN_VAL_PAIRS = [(1, 4), (1, 7), (4, 7)]


def abdomenctct_zip(folder: Path, shape=(24, 20, 32), with_pairs=True, n=8) -> Path:
    """AbdomenCTCT.zip: AbdomenCTCT/{AbdomenCTCT_dataset.json, imagesTr, labelsTr, imagesTs}."""
    rng = np.random.default_rng(3)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    members = {}
    for i in range(1, max(n, 8) + 1):
        lab = _blob_volume(rng, shape, 13)
        hu = np.where(lab > 0, lab * 10, -1000) + rng.normal(0, 5, shape)
        name = f"AbdomenCTCT_{i:04d}_0000.nii.gz"
        members[f"AbdomenCTCT/imagesTr/{name}"] = _nifti_bytes(hu, affine, np.float32)
        members[f"AbdomenCTCT/labelsTr/{name}"] = _nifti_bytes(lab, affine, np.uint8)
    members["AbdomenCTCT/imagesTs/AbdomenCTCT_0031_0000.nii.gz"] = _nifti_bytes(
        np.zeros(shape), affine, np.float32)
    info = {"name": "AbdomenCTCT", "release": "1.1", "tensorImageShape": {"0": list(shape)}}
    if with_pairs:
        info["registration_val"] = [
            {"fixed": f"./imagesTr/AbdomenCTCT_{f:04d}_0000.nii.gz",
             "moving": f"./imagesTr/AbdomenCTCT_{m:04d}_0000.nii.gz"} for f, m in ABDOMEN_VAL_PAIRS]
    members["AbdomenCTCT/AbdomenCTCT_dataset.json"] = json.dumps(info).encode()
    path = folder / "AbdomenCTCT.zip"
    path.write_bytes(_zip_bytes(members))
    return path


def rcn_h5(path: Path, ids: list[str], shape=(16, 16, 16)) -> Path:
    """An RCN-style HDF5 file: one group per scan with uint8 volume and segmentation (0/255)."""
    rng = np.random.default_rng(4)
    with h5py.File(path, "w") as f:
        for sid in ids:
            lab = _blob_volume(rng, shape, 1)
            g = f.create_group(sid)
            g["volume"] = (lab * 150 + rng.integers(0, 50, shape)).astype(np.uint8)
            g["segmentation"] = (lab * 255).astype(np.uint8)
    return path


def sliver07_originals(folder: Path, n=3, shape=(40, 36, 14)) -> Path:
    """SLIVER07's original training scans: liver-orig00N.mhd/.raw (CT, HU) and liver-seg00N.mhd/
    .raw (liver 1), MetaImage with spacing, origin and direction (LPS), written by SimpleITK."""
    import SimpleITK as sitk

    rng = np.random.default_rng(5)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, n + 1):
        lab = _blob_volume(rng, shape, 1).astype(np.uint8)
        hu = (np.where(lab > 0, 80, -900) + rng.normal(0, 10, shape)).astype(np.int16)
        for name, array in ((f"liver-orig{i:03d}.mhd", hu), (f"liver-seg{i:03d}.mhd", lab)):
            image = sitk.GetImageFromArray(array.transpose(2, 1, 0))  # (x, y, z) -> ITK's (z, y, x)
            image.SetSpacing((0.7, 0.7, 2.5))
            image.SetOrigin((-120.0, -90.0, 300.0))
            sitk.WriteImage(image, str(folder / name), useCompression=False)
    return folder

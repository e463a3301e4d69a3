"""Tests for crd.data.layout: the canonical dataset layout reader and writers."""

from __future__ import annotations

import gzip
import json
import os
import stat
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import crd
from crd.data.layout import (
    DatasetError,
    dataset_info,
    open_dataset,
    write_dataset_json,
    write_nifti,
    write_pairs,
)

SHAPE = (6, 7, 8)
SPACING = (1.5, 2.0, 2.5)
SUBJECTS = ["s0", "s1", "s2", "s3", "s4"]
PAIRS = [
    ("train", "s0", "s1"),
    ("train", "s1", "s0"),
    ("val", "s2", "s3"),
    ("test", "s4", "s3"),
]


def _labels(i: int) -> np.ndarray:
    lab = np.zeros(SHAPE, dtype=np.uint8)
    lab[1:4, 1:5, 2:6] = 1
    lab[4:, :, :] = 2
    lab[0, 0, : i + 1] = 3
    return lab


def _image(i: int) -> np.ndarray:
    return np.random.default_rng(i).random(SHAPE).astype(np.float32)


def make_dataset(root: Path) -> Path:
    for i, s in enumerate(SUBJECTS):
        write_nifti(root / "images" / f"{s}.nii.gz", _image(i), SPACING)
        write_nifti(root / "labels" / f"{s}.nii.gz", _labels(i), SPACING)
    write_pairs(root, PAIRS)
    info = dataset_info(
        name="toy",
        labels={0: "background", 1: "a", 2: "b", 3: "c"},
        spacing=SPACING,
        shape=SHAPE,
        source="tests",
        license="CC0",
    )
    write_dataset_json(root, info)
    return root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "toy")


def test_round_trip(root: Path):
    ds = open_dataset(root)
    assert ds.root == root and ds.name == "toy"
    assert ds.labels == {1: "a", 2: "b", 3: "c"}  # background excluded
    assert ds.spacing == SPACING and ds.shape == SHAPE
    assert list(ds.pairs.columns) == ["split", "fixed", "moving"]
    assert ds.info["crd_version"] == crd.__version__
    assert ds.info["checksums"] == {} and ds.info["intensity"] == "images scaled to [0, 1]"
    for key in ("description", "source", "license", "citation", "generator"):
        assert key in ds.info

    assert ds.pairs_for("train") == [("s0", "s1"), ("s1", "s0")]
    assert ds.pairs_for("test") == [("s4", "s3")]
    assert ds.subjects("val") == ["s2", "s3"] and ds.subjects("test") == ["s3", "s4"]
    assert ds.all_subjects() == SUBJECTS

    for i, s in enumerate(SUBJECTS):
        image, labels = ds.load_image(s), ds.load_labels(s)
        assert image.dtype == np.float32 and image.shape == SHAPE
        np.testing.assert_array_equal(image, _image(i))
        assert labels.dtype == np.int16
        np.testing.assert_array_equal(labels, _labels(i))
        assert ds.load_spacing(s) == pytest.approx(SPACING)
        np.testing.assert_allclose(ds.load_affine(s), np.diag([*SPACING, 1.0]))
    assert ds.image_path("s0") == root / "images" / "s0.nii.gz"
    assert ds.label_path("s0") == root / "labels" / "s0.nii.gz"


def test_unknown_split_in_query(root: Path):
    with pytest.raises(DatasetError, match="unknown split 'validation'"):
        open_dataset(root).pairs_for("validation")


def test_write_nifti_is_atomic_deterministic_and_readable(tmp_path: Path):
    a = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    p1 = write_nifti(tmp_path / "a.nii.gz", a, (1.0, 2.0, 3.0))
    p2 = write_nifti(tmp_path / "sub" / "b.nii.gz", a, affine=np.diag([1.0, 2.0, 3.0, 1.0]))
    assert p1.read_bytes() == p2.read_bytes()  # no timestamp or file name inside
    assert sorted(os.listdir(tmp_path)) == ["a.nii.gz", "sub"]  # no temp files left
    img = nib.load(p1)
    assert img.get_data_dtype() == np.float32 and img.header.get_zooms() == (1.0, 2.0, 3.0)
    mode = stat.S_IMODE(p1.stat().st_mode)
    assert mode & 0o044 == 0o044 & ~_umask()  # readable as a plain open() would make it
    with pytest.raises(ValueError, match="3-D"):
        write_nifti(tmp_path / "c.nii.gz", np.zeros((2, 2)))
    with pytest.raises(ValueError, match="either spacing or affine"):
        write_nifti(tmp_path / "c.nii.gz", a, (1, 1, 1), affine=np.eye(4))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- error cases: each names the offending file --------------------------------------------


def _edit_json(root: Path, **changes) -> None:
    info = json.loads((root / "dataset.json").read_text())
    for k, v in changes.items():
        if v is None:
            info.pop(k)
        else:
            info[k] = v
    (root / "dataset.json").write_text(json.dumps(info))


def _expect(root: Path, file: Path, match: str) -> None:
    with pytest.raises(DatasetError) as err:
        open_dataset(root)
    assert str(file) in str(err.value)
    assert match in str(err.value), str(err.value)


def test_missing_folder(tmp_path: Path):
    _expect(tmp_path / "nope", tmp_path / "nope", "dataset folder not found")


def test_missing_dataset_json(root: Path):
    (root / "dataset.json").unlink()
    _expect(root, root / "dataset.json", "file not found")


def test_invalid_json(root: Path):
    (root / "dataset.json").write_text("{not json")
    _expect(root, root / "dataset.json", "not valid JSON")


@pytest.mark.parametrize("key", ["name", "labels", "spacing", "shape"])
def test_missing_key(root: Path, key: str):
    _edit_json(root, **{key: None})
    _expect(root, root / "dataset.json", f"missing key(s) {key}")


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"labels": {"one": "a"}}, "label key 'one' is not an integer"),
        ({"labels": {"0": "background"}}, "no foreground label"),
        ({"spacing": [1.0, 2.0]}, "'spacing' must have 3 entries"),
        ({"spacing": [1.0, -2.0, 1.0]}, "must be positive"),
        ({"shape": [6, 7.5, 8]}, "'shape' must hold integers"),
    ],
)
def test_bad_dataset_json_values(root: Path, changes: dict, match: str):
    _edit_json(root, **changes)
    _expect(root, root / "dataset.json", match)


def test_missing_pairs_csv(root: Path):
    (root / "pairs.csv").unlink()
    _expect(root, root / "pairs.csv", "file not found")


def test_missing_columns(root: Path):
    (root / "pairs.csv").write_text("split,fixed,mov\ntrain,s0,s1\n")
    _expect(root, root / "pairs.csv", "missing column(s) moving")


def test_unknown_split(root: Path):
    (root / "pairs.csv").write_text("split,fixed,moving\ntrain,s0,s1\nvalidation,s2,s3\n")
    _expect(root, root / "pairs.csv", "unknown split(s) 'validation' (first at line 3)")


def test_self_pair(root: Path):
    (root / "pairs.csv").write_text("split,fixed,moving\ntrain,s0,s0\n")
    _expect(root, root / "pairs.csv", "with itself")


def test_pair_references_missing_image(root: Path):
    (root / "images" / "s3.nii.gz").unlink()
    _expect(root, root / "images" / "s3.nii.gz", "does not exist")


def test_pair_references_missing_label(root: Path):
    (root / "labels" / "s4.nii.gz").unlink()
    _expect(root, root / "labels" / "s4.nii.gz", "does not exist")


def test_header_shape_mismatch(root: Path):
    write_nifti(root / "images" / "s2.nii.gz", np.zeros((6, 7, 9), np.float32), SPACING)
    _expect(root, root / "images" / "s2.nii.gz", "array shape (6, 7, 9) differs")
    assert open_dataset(root, check_headers=False).shape == SHAPE


def test_header_spacing_mismatch(root: Path):
    write_nifti(root / "labels" / "s1.nii.gz", _labels(1), (1.0, 1.0, 1.0))
    _expect(root, root / "labels" / "s1.nii.gz", "voxel spacing")


def test_non_integer_labels(root: Path):
    write_nifti(root / "labels" / "s0.nii.gz", _labels(0) + np.float32(0.5), SPACING)
    ds = open_dataset(root)
    with pytest.raises(DatasetError, match="non-integer") as err:
        ds.load_labels("s0")
    assert str(root / "labels" / "s0.nii.gz") in str(err.value)


def test_not_a_volume(root: Path):
    four_d = nib.Nifti1Image(np.zeros((*SHAPE, 2), np.float32), np.eye(4))
    nib.save(four_d, root / "images" / "s0.nii.gz")
    _expect(root, root / "images" / "s0.nii.gz", "expected a 3-D volume")


@pytest.mark.parametrize("kind", ["images", "labels"])
def test_a_truncated_volume_is_a_one_line_error_naming_it(root: Path, kind: str):
    """nibabel opens a cut .nii.gz lazily (the header is whole); reading its voxels fails, and that
    failure names the file, in one line, as every other dataset error."""
    path = root / kind / "s1.nii.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-100]))  # a whole header, the last 100 bytes of voxels missing
    ds = open_dataset(root)  # headers only: still fine
    load = ds.load_image if kind == "images" else ds.load_labels
    with pytest.raises(DatasetError, match="its voxels cannot be read, the file is truncated or damaged") as err:
        load("s1")
    assert str(path) in str(err.value) and "\n" not in str(err.value)

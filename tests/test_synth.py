"""Tests for crd.data.synth and crd.data.phantoms: the embedded synthetic registration dataset.

The ``blobs`` control template is tested at 32^3 (its original properties); the default
``anatomy`` template at 64^3, its working size (thin structures present and thin, sizes over a
wide range, the fine deformation, determinism, enough test pairs)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from crd.data.layout import open_dataset
from crd.data.phantoms import ANATOMY_LABELS, anatomy_template
from crd.data.synth import generate_synth, jacobian_determinant, synth_pairs

# the blobs control, small but real: 32^3, 8 subjects (3 train, 2 val, 3 test), deformation
# scaled to the size, no fine deformation (the original synth)
SMALL = dict(
    template="blobs",
    n_subjects=8,
    shape=(32, 32, 32),
    n_val=2,
    n_test=3,
    deformation_voxels=4.5,
    fine_deformation_voxels=0.0,
    progress=False,
)
# the default anatomy template at its working size, few subjects
ANATOMY = dict(n_subjects=7, n_val=2, n_test=3, progress=False)


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    return generate_synth(tmp_path_factory.mktemp("synth") / "synth", seed=0, **SMALL)


def _dice(a: np.ndarray, b: np.ndarray, labels) -> float:
    scores = []
    for lab in labels:
        x, y = a == lab, b == lab
        scores.append(2.0 * np.logical_and(x, y).sum() / (x.sum() + y.sum()))
    return float(np.mean(scores))


def test_layout_and_metadata(synth_dir: Path):
    ds = open_dataset(synth_dir)  # also checks every header against dataset.json
    assert ds.name == "synth"
    assert ds.shape == (32, 32, 32) and ds.spacing == (1.5, 1.5, 1.5)
    assert len(ds.labels) == 10 and list(ds.labels) == list(range(1, 11))
    info = json.loads((synth_dir / "dataset.json").read_text())
    assert info["checksums"] == {} and info["generator"]["seed"] == 0
    assert info["intensity"] == "images scaled to [0, 1]"
    for key in ("description", "source", "license", "citation", "crd_version"):
        assert key in info
    for s in ds.all_subjects():
        img = nib.load(ds.image_path(s))
        assert img.shape == tuple(info["shape"])
        assert img.header.get_zooms() == pytest.approx(info["spacing"])
        image = ds.load_image(s)
        assert image.dtype == np.float32 and image.min() >= 0 and image.max() <= 1
    assert not [p for p in synth_dir.parent.iterdir() if p.name.startswith(".")]  # no temp dirs


def test_splits_and_pairs(synth_dir: Path):
    ds = open_dataset(synth_dir, check_headers=False)
    ids = [f"synth_{i:03d}" for i in range(8)]
    assert ds.subjects("train") == ids[:3]
    assert ds.subjects("val") == ids[3:5]
    assert ds.subjects("test") == ids[5:]
    assert len(ds.pairs_for("train")) == 3 * 2  # all ordered pairs of distinct subjects
    assert ds.pairs_for("val") == [(ids[3], ids[4])]
    assert ds.pairs_for("test") == [(f, m) for f in ids[5:8] for m in ids[5:8] if f != m]
    in_train = {s for pair in ds.pairs_for("train") for s in pair}
    assert not in_train & set(ds.subjects("test"))
    assert not in_train & set(ds.subjects("val"))


def test_synth_pairs_small_splits():
    rows = synth_pairs(["a", "b", "c", "d"], n_val=0, n_test=2)
    assert rows == [("train", "a", "b"), ("train", "b", "a"), ("test", "c", "d"), ("test", "d", "c")]


def test_labels_present_with_volume_in_every_subject(synth_dir: Path):
    ds = open_dataset(synth_dir, check_headers=False)
    assert len(ds.labels) >= 8
    for s in ds.all_subjects():
        labels = ds.load_labels(s)
        volumes = np.bincount(labels.ravel(), minlength=11)[1:]
        head = volumes.sum()
        assert set(np.unique(labels).tolist()) == set(range(11))
        # every structure keeps a reasonable share of the head (mean share is 1/10)
        assert volumes.min() >= 0.02 * head, (s, volumes)


def test_intensities_distinct_per_label(synth_dir: Path):
    ds = open_dataset(synth_dir, check_headers=False)
    medians = []  # per subject, per label: median intensity away from borders
    for s in ds.all_subjects():
        image, labels = ds.load_image(s), ds.load_labels(s)
        row = []
        for lab in ds.labels:
            core = ndimage.binary_erosion(labels == lab)
            row.append(np.median(image[core if core.any() else labels == lab]))
        medians.append(row)
    per_label = np.median(np.array(medians), axis=0)
    gaps = np.diff(np.sort(per_label))
    assert gaps.min() > 0.03, per_label  # the generating means are 0.07 apart
    background = ds.load_image(ds.all_subjects()[0])[ds.load_labels(ds.all_subjects()[0]) == 0]
    assert np.median(background) < per_label.min()


def test_registration_is_needed_but_feasible(synth_dir: Path):
    ds = open_dataset(synth_dir, check_headers=False)
    labels = list(ds.labels)
    dice = [_dice(ds.load_labels(f), ds.load_labels(m), labels) for f, m in ds.pairs_for("test")]
    assert 0.2 < np.mean(dice) < 0.85, dice


def test_deterministic_bytes(synth_dir: Path, tmp_path: Path):
    again = generate_synth(tmp_path / "again" / synth_dir.name, seed=0, **SMALL)  # same name
    other = generate_synth(tmp_path / "other", seed=1, **SMALL)
    for rel in ("images/synth_006.nii.gz", "labels/synth_002.nii.gz", "pairs.csv"):
        assert (synth_dir / rel).read_bytes() == (again / rel).read_bytes(), rel
    assert (synth_dir / "dataset.json").read_text() == (again / "dataset.json").read_text()
    assert (synth_dir / "images/synth_006.nii.gz").read_bytes() != (
        other / "images/synth_006.nii.gz"
    ).read_bytes()


def test_subjects_do_not_depend_on_n_subjects(synth_dir: Path, tmp_path: Path):
    fewer = generate_synth(tmp_path / "fewer", seed=0, **{**SMALL, "n_subjects": 7, "n_test": 2})
    rel = "images/synth_001.nii.gz"
    assert (synth_dir / rel).read_bytes() == (fewer / rel).read_bytes()


def test_refuses_non_empty_and_overwrites(tmp_path: Path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    small = {**SMALL, "shape": (16, 16, 16), "n_subjects": 4, "n_val": 0, "n_test": 2}
    with pytest.raises(FileExistsError, match="not empty"):
        generate_synth(out, **small)
    assert (out / "keep.txt").exists()
    generate_synth(out, overwrite=True, **{**small, "n_labels": 4, "deformation_voxels": 2.0})
    assert not (out / "keep.txt").exists()
    assert (out / "dataset.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temp or old folders left


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"n_test": 1}, "n_test"),
        ({"n_val": 1}, "n_val"),
        ({"n_subjects": 5}, "training subjects"),
        ({"shape": (32, 32)}, "shape"),
        ({"n_control": 3}, "n_control"),
        ({"fine_control": 3}, "fine_control"),
        ({"fine_deformation_voxels": -1.0}, "fine_deformation_voxels"),
        ({"template": "cubes"}, "template"),
        ({"template": "anatomy", "n_labels": 10}, "24 structures"),
        ({"template": "anatomy", "shape": (16, 16, 16)}, "at least 32"),
    ],
)
def test_bad_arguments(tmp_path: Path, changes: dict, match: str):
    with pytest.raises(ValueError, match=match):
        generate_synth(tmp_path / "bad", **{**SMALL, **changes})
    assert not (tmp_path / "bad").exists()


# ------------------------------------------------------------------------------ anatomy template


@pytest.fixture(scope="module")
def anatomy_dir(tmp_path_factory) -> Path:
    return generate_synth(tmp_path_factory.mktemp("anatomy") / "synth", seed=0, **ANATOMY)


def test_defaults_are_the_anatomy_template_with_enough_test_pairs(tmp_path: Path):
    import inspect

    defaults = {k: p.default for k, p in inspect.signature(generate_synth).parameters.items()}
    assert defaults["template"] == "anatomy" and defaults["shape"] == (64, 64, 64)
    assert defaults["fine_deformation_voxels"] > 0
    n_test = defaults["n_test"]
    assert n_test * (n_test - 1) >= 30  # enough pairs for paired tests


def test_anatomy_labels_names_and_metadata(anatomy_dir: Path):
    ds = open_dataset(anatomy_dir)
    assert len(ds.labels) == 24 and ds.labels == ANATOMY_LABELS
    info = json.loads((anatomy_dir / "dataset.json").read_text())
    assert info["generator"]["template"] == "anatomy"
    assert info["generator"]["fine_deformation_voxels"] == 1.5
    for s in ds.all_subjects():
        image, labels = ds.load_image(s), ds.load_labels(s)
        assert image.dtype == np.float32 and 0 <= image.min() and image.max() <= 1
        assert set(np.unique(labels).tolist()) == set(range(25)), s  # every structure in every subject


def _thickness(mask: np.ndarray) -> float:
    """Twice the largest distance from a voxel of ``mask`` to the outside: a sheet or tube k
    voxels across gives about k."""
    return 2.0 * float(ndimage.distance_transform_edt(mask).max())


def test_anatomy_has_thin_sheets_and_tubes_and_a_wide_size_range():
    template = anatomy_template((64, 64, 64), seed=0)
    by_class: dict[str, list[int]] = {}
    for value, name in template.names.items():
        by_class.setdefault(name.rsplit("_", 1)[0], []).append(value)
    cortex = np.isin(template.labels, by_class["cortex"])
    vessels = [template.labels == v for v in by_class["vessel"]]
    # the cortex-like ribbon is a sheet about 2 voxels thick; each vessel a tube about 2-3 across
    assert _thickness(cortex) <= 5.0
    assert all(_thickness(v) <= 3.5 for v in vessels)
    # ... and they are extended, not specks: the ribbon spans the brain, a vessel is long
    assert cortex.sum() > 5000 and np.ptp(np.argwhere(cortex), axis=0).min() > 30
    assert all(np.ptp(np.argwhere(v), axis=0).max() >= 10 for v in vessels)
    volumes = np.bincount(template.labels.ravel(), minlength=25)[1:]
    assert volumes.min() > 0 and volumes.max() / volumes.min() > 100  # tens to thousands of voxels
    # a thin sheet loses most of its voxels when eroded once; a large structure does not
    eroded = ndimage.binary_erosion(cortex).sum() / cortex.sum()
    white = np.isin(template.labels, by_class["white"])
    assert eroded < 0.35 < ndimage.binary_erosion(white).sum() / white.sum()


def test_anatomy_intensities_follow_tissue_classes():
    template = anatomy_template((64, 64, 64), seed=0)
    level = {name: template.levels[value - 1] for value, name in template.names.items()}
    csf = template.unlabelled_level
    for i in range(1, 5):  # T1-like: CSF < cortex < nuclei < white < vessels
        assert csf < level["cortex_1"] < level["nucleus_1"] < level[f"white_{i}"] < level["vessel_1"]


def test_anatomy_is_deterministic_and_depends_on_the_seed():
    a, b = anatomy_template((64, 64, 64), seed=3), anatomy_template((64, 64, 64), seed=3)
    c = anatomy_template((64, 64, 64), seed=4)
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.texture, b.texture)
    assert not np.array_equal(a.labels, c.labels)


def test_anatomy_dataset_bytes_are_deterministic(anatomy_dir: Path, tmp_path: Path):
    again = generate_synth(tmp_path / "synth", seed=0, **ANATOMY)
    for rel in ("images/synth_004.nii.gz", "labels/synth_006.nii.gz", "dataset.json"):
        assert (anatomy_dir / rel).read_bytes() == (again / rel).read_bytes(), rel


def test_fine_deformation_moves_thin_structures(tmp_path: Path):
    """With the fine part on, subjects differ at the scale of a few voxels: the same seed without it
    gives other label maps, and the difference is local (most voxels keep their label)."""
    kw = dict(ANATOMY, n_subjects=5, n_val=0, n_test=2)
    fine = generate_synth(tmp_path / "fine", seed=0, **kw)
    coarse = generate_synth(tmp_path / "coarse", seed=0, fine_deformation_voxels=0.0, **kw)
    a = open_dataset(fine, check_headers=False).load_labels("synth_000")
    b = open_dataset(coarse, check_headers=False).load_labels("synth_000")
    changed = (a != b).mean()
    assert 0.01 < changed < 0.3, changed


def test_one_to_one_fields_are_checked():
    import torch

    folding = torch.zeros(1, 3, 8, 8, 8)
    folding[0, 0] = -2.0 * torch.arange(8.0)[:, None, None]  # u_D = -2 d: det J = 1 - 2 < 0
    assert jacobian_determinant(folding).max() < 0
    assert np.allclose(jacobian_determinant(torch.zeros(1, 3, 8, 8, 8)), 1.0)


def test_anatomy_pairs_need_registration(anatomy_dir: Path):
    ds = open_dataset(anatomy_dir, check_headers=False)
    dice = [_dice(ds.load_labels(f), ds.load_labels(m), list(ds.labels)) for f, m in ds.pairs_for("test")]
    assert 0.2 < np.mean(dice) < 0.7, dice


def test_a_non_cubic_anatomy_is_the_central_slab_of_the_cube(tmp_path: Path):
    """shape (32, 64, 64) = the central 32 slices of the 64^3 anatomy, subject for subject: the
    structures keep their size in voxels."""
    kw = dict(ANATOMY, n_subjects=5, n_val=0, n_test=2)
    cube = open_dataset(generate_synth(tmp_path / "cube", seed=0, **kw), check_headers=False)
    slab = open_dataset(generate_synth(tmp_path / "slab", seed=0, shape=(32, 64, 64), **kw), check_headers=False)
    assert slab.shape == (32, 64, 64)
    for s in ("synth_000", "synth_004"):
        assert np.array_equal(slab.load_labels(s), cube.load_labels(s)[16:48])
        assert np.array_equal(slab.load_image(s), cube.load_image(s)[16:48])

"""baselines/ants-syn.py: ANTs' transforms as crd-bench fields (known translation and affine, checked
against ANTs' own resampling) and a registration that recovers a known shift. Needs antspyx
(`pip install -e ".[ants]"`, which the README's test command installs)."""

import runpy

import numpy as np
import pytest
import torch

from crd.models.functional import warp
from repo_paths import REPO

ants = pytest.importorskip("ants", reason="antspyx is not installed (pip install -e '.[ants]')")

ANTS_SYN = runpy.run_path(str(REPO / "baselines" / "ants-syn.py"))
field_from_ants = ANTS_SYN["field_from_ants"]
register_pair = ANTS_SYN["register_pair"]

SHAPE = (12, 14, 16)
SPACING = (1.5, 2.0, 1.0)


def _reference(direction=None, origin=(0.0, 0.0, 0.0)):
    image = ants.from_numpy(np.zeros(SHAPE, np.float32), origin=origin, spacing=SPACING)
    if direction is not None:
        image.set_direction(np.asarray(direction, dtype=np.float64))
    return image


def _write_affine(tmp_path, matrix, translation, center=(0.0, 0.0, 0.0)):
    """An ITK affine T(x) = A (x - c) + c + t (x in mm), written as ANTs writes transforms."""
    tx = ants.create_ants_transform(
        transform_type="AffineTransform", dimension=3, matrix=np.asarray(matrix, np.float64),
        translation=tuple(translation), center=tuple(center),
    )  # fmt: skip
    path = str(tmp_path / "affine.mat")
    ants.write_transform(tx, path)
    return path


def _expected_field(reference, matrix, translation, center):
    """u(p) = M^-1 (T(x(p)) - x(p)), x(p) = origin + M p, M = direction @ diag(spacing): (3, D, H, W)."""
    m = np.asarray(reference.direction) @ np.diag(reference.spacing)
    p = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), -1).reshape(-1, 3)
    x = np.asarray(reference.origin) + p @ m.T
    c = np.asarray(center)
    tx = (x - c) @ np.asarray(matrix).T + c + np.asarray(translation)
    u = (tx - x) @ np.linalg.inv(m).T
    return np.moveaxis(u.reshape(*SHAPE, 3), -1, 0)


def test_a_translation_is_a_constant_field_in_voxels(tmp_path):
    t = (3.0, -2.0, 1.5)  # mm
    path = _write_affine(tmp_path, np.eye(3), t)
    u = field_from_ants([path], _reference(), str(tmp_path / "composed_"))
    assert u.shape == (3, *SHAPE) and u.dtype == np.float32
    for axis in range(3):
        np.testing.assert_allclose(u[axis], t[axis] / SPACING[axis], atol=1e-4)


@pytest.mark.parametrize(
    "direction, origin",
    [(None, (0.0, 0.0, 0.0)), ([[0, 1, 0], [-1, 0, 0], [0, 0, 1]], (5.0, -3.0, 2.0))],
    ids=["axis-aligned", "rotated-grid"],
)
def test_an_affine_matches_its_formula(tmp_path, direction, origin):
    angle = np.deg2rad(8.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    matrix = rotation @ np.diag([1.05, 0.97, 1.02])
    translation, center = (1.0, -0.5, 2.0), (8.0, 12.0, 7.0)
    reference = _reference(direction, origin)
    path = _write_affine(tmp_path, matrix, translation, center)
    u = field_from_ants([path], reference, str(tmp_path / "composed_"))
    np.testing.assert_allclose(u, _expected_field(reference, matrix, translation, center), atol=1e-3)


def test_the_field_warps_like_ants_resamples(tmp_path):
    """crd-bench's warp with the converted field gives ANTs' own linear resampling of the moving
    image (away from the border, where the two pad differently): moving(p + u(p)), axes in order."""
    rng = np.random.default_rng(0)
    smooth = torch.nn.functional.avg_pool3d(torch.from_numpy(rng.random((1, 1, *SHAPE), np.float32)), 3, 1, 1)
    moving = smooth[0, 0].numpy()
    angle = np.deg2rad(5.0)
    matrix = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]]) * 1.03
    path = _write_affine(tmp_path, matrix, (1.2, -0.7, 0.4), (9.0, 14.0, 8.0))
    reference = _reference()
    moving_img = ants.from_numpy(moving, spacing=SPACING)
    by_ants = ants.apply_transforms(reference, moving_img, [path], interpolator="linear").numpy()
    u = field_from_ants([path], reference, str(tmp_path / "composed_"))
    ours = warp(torch.from_numpy(moving)[None, None], torch.from_numpy(u)[None])[0, 0].numpy()
    inner = (slice(3, -3),) * 3
    np.testing.assert_allclose(ours[inner], by_ants[inner], atol=1e-4)


def test_syn_recovers_a_known_shift():
    """A smooth blob image and the same moved +2 voxels along axis 1: the field inside the blob is
    about +2 there (the registered image is moving(p + u(p)) = fixed(p)) and about 0 elsewhere."""
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in (24, 28, 24)], indexing="ij"))
    centre = np.array([12.0, 13.0, 12.0])[:, None, None, None]
    fixed = np.exp(-(((grid - centre) / 4.0) ** 2).sum(0)).astype(np.float32)
    moving = np.exp(-(((grid - centre - np.array([0, 2.0, 0])[:, None, None, None]) / 4.0) ** 2).sum(0))
    u = register_pair(fixed, moving.astype(np.float32), spacing=(1.0, 1.0, 1.0), seed=0, threads=1)
    inside = fixed > 0.5
    assert u.shape == (3, 24, 28, 24) and u.dtype == np.float32
    assert np.median(u[1][inside]) == pytest.approx(2.0, abs=0.4)
    assert np.abs(np.median(u[0][inside])) < 0.3 and np.abs(np.median(u[2][inside])) < 0.3


def test_its_result_does_not_depend_on_the_seed():
    """ants-syn has no training and, with its settings (every voxel sampled, ANTs deterministic), the
    same field under every seed: why the workflow evaluates it once (crd.methods: evaluated_once)."""
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in (20, 24, 20)], indexing="ij"))
    centre = np.array([10.0, 12.0, 10.0])[:, None, None, None]
    fixed = np.exp(-(((grid - centre) / 4.0) ** 2).sum(0)).astype(np.float32)
    moving = np.exp(-(((grid - centre - np.array([1.0, 2.0, 0])[:, None, None, None]) / 4.5) ** 2).sum(0))
    fields = [register_pair(fixed, moving.astype(np.float32), spacing=(1.5, 1.5, 1.5), seed=s, threads=2)
              for s in (0, 1, 12345)]  # fmt: skip
    assert np.abs(fields[0]).max() > 0.5  # it registered something
    for other in fields[1:]:
        np.testing.assert_array_equal(other, fields[0])

"""Tests for crd.metrics against plain numpy counts, brute force and closed-form values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from crd import metrics as M

# DeepMind's ENCODE_NEIGHBOURHOOD_3D_KERNEL: the voxel at offset (a, b, c) of a 2x2x2 cell carries
# bit 2 ** (7 - (4a + 2b + c)).
DM_KERNEL = np.array([[[128, 64], [32, 16]], [[8, 4], [2, 1]]])


def _blobs(rng: np.random.Generator, shape: tuple[int, ...], n_labels: int, sigma: float = 1.0):
    noise = rng.standard_normal((n_labels,) + shape)
    noise = ndimage.gaussian_filter(noise, (0,) + (sigma,) * len(shape))
    return np.argmax(noise, axis=0)


# ---------------------------------------------------------------------------------------------
# Dice
# ---------------------------------------------------------------------------------------------


def test_dice_equals_plain_numpy_count():
    rng = np.random.default_rng(0)
    fixed = rng.integers(0, 6, (12, 13, 14)).astype(np.int16)
    warped = np.where(rng.random(fixed.shape) < 0.3, rng.integers(0, 6, fixed.shape), fixed)
    warped = warped.astype(np.int16)
    labels = [1, 2, 3, 4, 5, 9]
    got = M.dice_per_label(fixed, warped, labels)
    for lab in labels[:-1]:
        a, b = fixed == lab, warped == lab
        expected = 2.0 * np.sum(a & b) / (np.sum(a) + np.sum(b))
        assert got[lab] == pytest.approx(expected, abs=1e-12)
    assert math.isnan(got[9])  # absent from both


def test_dice_large_label_values_and_bool_maps():
    fixed = np.zeros((5, 5, 5), np.int64)
    fixed[1:3] = 40_000_000  # beyond the bincount fast path
    warped = np.zeros_like(fixed)
    warped[2:4] = 40_000_000
    assert M.dice_per_label(fixed, warped, [40_000_000])[40_000_000] == pytest.approx(0.5)
    assert M.dice_per_label(fixed > 0, warped > 0, [1])[1] == pytest.approx(0.5)


def test_float_label_maps_from_nearest_warps_are_accepted():
    rng = np.random.default_rng(10)
    fixed = rng.integers(0, 4, (6, 7, 8))
    warped = rng.integers(0, 4, (6, 7, 8))
    spacing = (1.0, 2.0, 0.5)
    assert M.dice_per_label(fixed, warped.astype(np.float32), [1, 2, 3]) == M.dice_per_label(fixed, warped, [1, 2, 3])
    assert M.hd95_per_label(fixed, warped.astype(np.float64), [1, 2], spacing) == M.hd95_per_label(
        fixed, warped, [1, 2], spacing
    )


def test_identical_masks_give_dice_one_and_hd95_zero():
    rng = np.random.default_rng(1)
    lab = _blobs(rng, (16, 17, 18), 5)
    labels = [1, 2, 3, 4]
    assert all(v == 1.0 for v in M.dice_per_label(lab, lab, labels).values())
    assert all(v == 0.0 for v in M.hd95_per_label(lab, lab, labels, (0.7, 1.0, 2.5)).values())


# ---------------------------------------------------------------------------------------------
# surface elements and HD95
# ---------------------------------------------------------------------------------------------


def _reference_codes(mask: np.ndarray) -> np.ndarray:
    """DeepMind's neighbour codes: correlate the (end-padded) mask with its 2x2x2 kernel."""
    padded = np.pad(mask.astype(np.uint8), ((0, 1),) * 3)
    return ndimage.correlate(padded, DM_KERNEL, mode="constant", cval=0)


def _surfels(mask: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Surface voxel positions (mm) and their surfel areas, DeepMind's surface definition."""
    codes = _reference_codes(mask)
    border = (codes != 0) & (codes != 255)
    return np.argwhere(border) * np.asarray(spacing), M.surfel_area_table(spacing)[codes[border]]


def _brute_force_hd(a: np.ndarray, b: np.ndarray, spacing, percent: float = 95.0) -> float:
    """All-pairs reference of DeepMind's robust Hausdorff distance (same surface definition)."""
    (pa, wa), (pb, wb) = _surfels(a, spacing), _surfels(b, spacing)
    pair = cdist(pa, pb)
    value = 0.0
    for dist, w in ((pair.min(axis=1), wa), (pair.min(axis=0), wb)):
        ranked = sorted(zip(dist.tolist(), w.tolist(), strict=True))
        total = sum(x for _, x in ranked)
        cum = 0.0
        for i, (d, x) in enumerate(ranked):
            cum += x
            if cum / total >= percent / 100.0 or i == len(ranked) - 1:
                value = max(value, d)
                break
    return value


def _brute_force_assd(a: np.ndarray, b: np.ndarray, spacing) -> float:
    """All-pairs reference of the mean of DeepMind's two area-weighted average surface distances."""
    (pa, wa), (pb, wb) = _surfels(a, spacing), _surfels(b, spacing)
    pair = cdist(pa, pb)
    ab = np.sum(pair.min(axis=1) * wa) / np.sum(wa)
    ba = np.sum(pair.min(axis=0) * wb) / np.sum(wb)
    return float((ab + ba) / 2)


def _brain_like(rng: np.random.Generator, shape: tuple[int, int, int], n_labels: int) -> np.ndarray:
    """A small anatomy-like label map: a folded ribbon (labels 1, 2) around curved Voronoi regions
    inside an ellipsoid (the benchmark's ``compact`` pair, scaled down)."""
    grid = np.indices(shape, dtype=np.float64)
    centre = (np.asarray(shape) - 1) / 2
    radii = 0.42 * np.asarray(shape)
    r = np.sqrt(sum(((grid[k] - centre[k]) / radii[k]) ** 2 for k in range(3)))
    folds = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
    depth = (r - 0.8) * radii.mean() - 2.0 * folds / folds.std()
    out = np.zeros(shape, np.int16)
    ribbon = (np.abs(depth) <= 1.5) & (r <= 1.0)
    out[ribbon] = np.where(grid[2][ribbon] < centre[2], 1, 2)
    inner = depth < -1.5
    seeds = centre + rng.uniform(-0.6, 0.6, (n_labels - 2, 3)) * radii
    bend = ndimage.gaussian_filter(rng.standard_normal((3,) + shape), (0, 4, 4, 4)) * 20
    pts = np.stack([(grid[k] + bend[k])[inner] for k in range(3)], axis=1)
    out[inner] = np.argmin(cdist(pts, seeds), axis=1) + 3
    return out


def _smooth_warp(rng: np.random.Generator, labels: np.ndarray, amplitude: float) -> np.ndarray:
    """``labels(p + u(p))`` (nearest neighbour) for a smooth random field ``u`` of about ``amplitude`` voxels."""
    u = ndimage.gaussian_filter(rng.standard_normal((3,) + labels.shape), (0, 5, 5, 5))
    u *= amplitude / np.abs(u).max()
    coords = np.indices(labels.shape, dtype=np.float64) + u
    return ndimage.map_coordinates(labels, coords, order=0, mode="constant", cval=0).astype(labels.dtype)


def test_neighbour_codes_match_deepmind_correlation():
    rng = np.random.default_rng(2)
    mask = rng.random((6, 7, 8)) < 0.4
    np.testing.assert_array_equal(M.neighbour_codes(mask), _reference_codes(mask))


def test_surfel_area_table_closed_forms():
    s = (0.8, 1.3, 2.1)
    table = M.surfel_area_table(s)
    assert table.shape == (256,) and table[0] == 0 and table[255] == 0
    np.testing.assert_allclose(table, table[::-1], rtol=0, atol=1e-12)  # code vs complement
    # four voxels on one side of a cell: a flat square perpendicular to one axis
    assert table[0b11110000] == pytest.approx(s[1] * s[2])  # voxels with a = 0
    assert table[0b11001100] == pytest.approx(s[0] * s[2])  # voxels with b = 0
    assert table[0b10101010] == pytest.approx(s[0] * s[1])  # voxels with c = 0
    # one voxel: the corner triangle through three edge midpoints
    iso = M.surfel_area_table((1.0, 1.0, 1.0))
    assert iso[0b10000000] == pytest.approx(math.sqrt(3) / 8)
    assert iso[0b00000001] == pytest.approx(math.sqrt(3) / 8)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 3])
def test_shifted_cubes_hd95_is_shift_times_spacing(axis: int, k: int):
    spacing = (0.8, 1.3, 2.1)
    n = 8
    a = np.zeros((20, 20, 20), bool)
    a[4 : 4 + n, 4 : 4 + n, 4 : 4 + n] = True
    b = np.roll(a, k, axis=axis)
    # Every surface element of A is within k * spacing[axis] of B's surface (and vice versa), and
    # the whole front face (back face for B) is at exactly that distance. The robust percentile is
    # therefore that distance as long as the face holds more than 5 % of the surface area: its
    # (n - 1)^2 flat interior cells alone do, against at most 2 n^2 sum_{i<j} s_i s_j in total.
    others = [s for i, s in enumerate(spacing) if i != axis]
    pairs = spacing[0] * spacing[1] + spacing[0] * spacing[2] + spacing[1] * spacing[2]
    assert (n - 1) ** 2 * others[0] * others[1] / (2 * n**2 * pairs) > 0.05
    expected = k * spacing[axis]
    got = M.hd95_per_label(a.astype(np.uint8), b.astype(np.uint8), [1], spacing)[1]
    assert got == pytest.approx(expected, abs=1e-9)
    assert _brute_force_hd(a, b, spacing) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_hd95_matches_brute_force_on_random_masks(seed: int):
    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in rng.integers(5, 11, 3))
    spacing = tuple(float(v) for v in rng.uniform(0.4, 3.0, 3))
    if seed % 2:  # speckle: many tiny components, touching the image border
        fixed = rng.integers(0, 4, shape).astype(np.uint8)
        warped = rng.integers(0, 4, shape).astype(np.uint8)
    else:  # blobs
        fixed = _blobs(rng, shape, 4).astype(np.int16)
        warped = _blobs(rng, shape, 4).astype(np.int16)
    labels = [0, 1, 2, 3]  # background included: any value may be scored
    for percent in (95.0, 100.0, 50.0):
        got = M.hd95_per_label(fixed, warped, labels, spacing, percent=percent)
        for lab in labels:
            a, b = fixed == lab, warped == lab
            if not (a.any() and b.any()):
                continue
            assert got[lab] == pytest.approx(_brute_force_hd(a, b, spacing, percent), abs=1e-6)
    assd = M.assd_per_label(fixed, warped, labels, spacing)
    for lab in labels:
        a, b = fixed == lab, warped == lab
        if a.any() and b.any():
            assert assd[lab] == pytest.approx(_brute_force_assd(a, b, spacing), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.1, 0.1, 10.0), (4.0, 0.3, 1.0)])
def test_far_surfaces_and_extreme_anisotropy_use_the_tree_fallback(spacing):
    # Surfaces much further apart than the neighbour search reaches (a few voxels): the distances
    # come from the k-d tree, and must still match the brute force exactly.
    rng = np.random.default_rng(11)
    fixed = np.zeros((30, 30, 30), np.uint8)
    warped = np.zeros_like(fixed)
    fixed[2:7, 3:9, 2:6] = 1
    warped[20:27, 18:28, 21:29] = 1
    fixed[rng.random(fixed.shape) < 0.01] = 2
    warped[rng.random(fixed.shape) < 0.01] = 2
    for lab in (1, 2):
        a, b = fixed == lab, warped == lab
        assert M.hd95_per_label(fixed, warped, [lab], spacing)[lab] == pytest.approx(
            _brute_force_hd(a, b, spacing), rel=1e-12
        )
        assert M.assd_per_label(fixed, warped, [lab], spacing)[lab] == pytest.approx(
            _brute_force_assd(a, b, spacing), rel=1e-12
        )


def test_neighbour_search_does_not_depend_on_the_gather_block(monkeypatch):
    rng = np.random.default_rng(12)
    fixed = _blobs(rng, (18, 19, 20), 5).astype(np.int16)
    warped = _blobs(rng, (18, 19, 20), 5).astype(np.int16)
    spacing = (0.9, 1.1, 1.7)
    ref = M.score_pair(fixed, fixed, warped, range(5), spacing)
    monkeypatch.setattr(M, "_GATHER_BLOCK", 7)  # many tiny blocks
    assert M.score_pair(fixed, fixed, warped, range(5), spacing) == ref


@pytest.mark.parametrize(
    "dtype", [np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.float32]
)
def test_compact_labels_keeps_exactly_the_scored_labels(dtype):
    rng = np.random.default_rng(13)
    if dtype == np.bool_:
        x, labels = rng.random((5, 6, 7)) < 0.5, [1, 0]
    else:
        info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
        lo = max(info.min, -3) if info is not None else -3
        x = rng.integers(lo, 9, (5, 6, 7)).astype(dtype)
        labels = [7, 0, 2, 100_000, -2] if info is None or info.min < 0 else [7, 0, 2, 300]
    wanted = np.unique(np.asarray(labels, dtype=np.int64))
    c = M._compact_labels(M._check_labels(x, "x"), wanted)
    assert c.dtype == np.uint8 and c.shape == x.shape
    for q, v in enumerate(wanted):
        np.testing.assert_array_equal(c == q + 1, x == v)
    assert np.all((c == 0) == ~np.isin(x, wanted))


def test_compact_labels_wide_ranges():
    x = np.array([[[-70_000, 5, 40_000_000, 5]]], np.int64)
    c = M._compact_labels(x, np.array([5, 40_000_000]))
    np.testing.assert_array_equal(c, [[[0, 1, 2, 1]]])
    y = np.array([[[70_000, 70_005, 70_001]]], np.int32)  # narrow range away from 0
    np.testing.assert_array_equal(M._compact_labels(y, np.array([70_001, 70_005])), [[[0, 2, 1]]])


def test_surface_distances_weights_and_symmetry():
    rng = np.random.default_rng(7)
    a = rng.random((6, 6, 7)) < 0.5
    b = rng.random((6, 6, 7)) < 0.5
    spacing = (1.0, 0.5, 2.0)
    sd = M.surface_distances(a, b, spacing)
    codes = _reference_codes(a)
    border = (codes != 0) & (codes != 255)
    np.testing.assert_allclose(sd.area_a, M.surfel_area_table(spacing)[codes[border]])
    swapped = M.surface_distances(b, a, spacing)
    np.testing.assert_array_equal(sd.dist_ab, swapped.dist_ba)
    assert M.robust_hausdorff(sd) == M.robust_hausdorff(swapped)


def test_hd95_absent_labels():
    fixed = np.zeros((6, 6, 6), np.int32)
    fixed[1:3, 1:3, 1:3] = 1
    warped = np.zeros_like(fixed)
    got = M.hd95_per_label(fixed, warped, [1, 2], (1.0, 1.0, 1.0))
    assert got[1] == math.inf  # absent from one map: DeepMind's value
    assert math.isnan(got[2])  # absent from both
    assd = M.assd_per_label(fixed, warped, [1, 2], (1.0, 1.0, 1.0))
    assert assd[1] == math.inf and math.isnan(assd[2])
    empty = M.surface_distances(fixed == 1, warped == 1, (1.0, 1.0, 1.0))
    assert empty.dist_ba.size == 0 and np.all(np.isinf(empty.dist_ab))
    assert M.average_surface_distance(empty) == math.inf


def _deepmind(sd_pkg, a: np.ndarray, b: np.ndarray, spacing) -> tuple[float, float]:
    dists = sd_pkg.compute_surface_distances(a, b, spacing)
    return (
        float(sd_pkg.compute_robust_hausdorff(dists, 95)),
        float(np.mean(sd_pkg.compute_average_surface_distance(dists))),
    )


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_surfel_areas_match_deepmind_package_when_installed():
    pytest.importorskip("surface_distance")
    from surface_distance import lookup_tables

    for spacing in [(1.0, 1.0, 1.0), (0.7, 1.3, 2.9), (3.0, 0.5, 1.1)]:
        np.testing.assert_allclose(
            M.surfel_area_table(spacing),
            lookup_tables.create_table_neighbour_code_to_surface_area(spacing),
            rtol=0,
            atol=1e-12,
        )


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 1.3, 2.9), (3.0, 0.5, 1.1)])
@pytest.mark.parametrize("kind", ["blobs", "speckle"])
def test_random_masks_match_deepmind_package_when_installed(spacing, kind: str):
    sd_pkg = pytest.importorskip("surface_distance")
    rng = np.random.default_rng(3)
    shape = (14, 15, 16)
    for _ in range(2):
        if kind == "blobs":
            fixed, warped = _blobs(rng, shape, 4), _blobs(rng, shape, 4)
        else:
            fixed, warped = rng.integers(0, 4, shape), rng.integers(0, 4, shape)
        hd = M.hd95_per_label(fixed, warped, [1, 2, 3], spacing)
        assd = M.assd_per_label(fixed, warped, [1, 2, 3], spacing)
        for lab in (1, 2, 3):
            ref_hd, ref_assd = _deepmind(sd_pkg, fixed == lab, warped == lab, spacing)
            assert hd[lab] == pytest.approx(ref_hd, rel=1e-6, abs=1e-12)
            assert assd[lab] == pytest.approx(ref_assd, rel=1e-6, abs=1e-12)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.2, 0.9, 2.5), (0.5, 2.0, 1.0)])
def test_brain_like_masks_match_deepmind_package_when_installed(spacing):
    """Anatomy-shaped labels (a folded ribbon around compact regions), warped by a smooth field,
    scored through score_pair with anisotropic spacing."""
    sd_pkg = pytest.importorskip("surface_distance")
    rng = np.random.default_rng(21)
    fixed = _brain_like(rng, (40, 46, 52), 10)
    moving = _smooth_warp(rng, fixed, 3.0)
    warped = _smooth_warp(rng, moving, 2.0)
    labels = list(range(1, 11))
    rows = {(r["metric"], r["label"]): r["value"] for r in M.score_pair(fixed, moving, warped, labels, spacing)}
    compared = 0
    for lab in labels:
        a, b = fixed == lab, warped == lab
        if not (a.any() and b.any()):  # DeepMind's package fails on an empty mask under numpy 2 (np.Inf)
            continue
        ref_hd, ref_assd = _deepmind(sd_pkg, a, b, spacing)
        assert rows[("hd95_mm", lab)] == pytest.approx(ref_hd, rel=1e-6, abs=1e-12)
        assert rows[("assd_mm", lab)] == pytest.approx(ref_assd, rel=1e-6, abs=1e-12)
        compared += 1
    assert compared == len(labels)


# ---------------------------------------------------------------------------------------------
# Jacobian determinant, folding, SDlogJ
# ---------------------------------------------------------------------------------------------


def _affine_flow(a: np.ndarray, shape: tuple[int, int, int], t=(0.0, 0.0, 0.0)) -> np.ndarray:
    """u(x) = (A - I) x + t on the voxel grid, channels in array-axis order."""
    x = np.indices(shape, dtype=np.float64)
    return np.einsum("ck,kdhw->cdhw", a - np.eye(3), x) + np.asarray(t)[:, None, None, None]


@pytest.mark.parametrize("scheme", ["central", "forward"])
def test_jacobian_of_translation_is_exactly_one(scheme: str):
    flow = np.broadcast_to(np.array([1.5, -2.25, 0.3])[:, None, None, None], (3, 7, 8, 9))
    jac = M.jacobian_determinant(flow.astype(np.float32), scheme=scheme)
    expected_shape = (7, 8, 9) if scheme == "central" else (6, 7, 8)
    assert jac.shape == expected_shape and jac.dtype == np.float64
    assert np.all(jac == 1.0)


@pytest.mark.parametrize("scheme", ["central", "forward"])
def test_jacobian_of_affine_field_is_det_a(scheme: str):
    rng = np.random.default_rng(4)
    for _ in range(3):
        a = np.eye(3) + rng.normal(0, 0.3, (3, 3))
        flow = _affine_flow(a, (9, 10, 11), t=rng.normal(0, 2, 3))
        jac = M.jacobian_determinant(flow, scheme=scheme)
        np.testing.assert_allclose(jac, np.linalg.det(a), rtol=0, atol=1e-12)
    # a reflection: every voxel folded
    flip = np.diag([1.0, -1.0, 1.0])
    jac = M.jacobian_determinant(_affine_flow(flip, (5, 6, 7)), scheme=scheme)
    np.testing.assert_allclose(jac, -1.0, rtol=0, atol=1e-12)
    assert M.folding(jac)["fold_pct"] == 100.0


def test_jacobian_does_not_depend_on_chunking():
    rng = np.random.default_rng(5)
    flow = ndimage.gaussian_filter(rng.normal(0, 3, (3, 11, 8, 9)), (0, 1, 1, 1))
    for scheme in ("central", "forward"):
        ref = M.jacobian_determinant(flow, scheme=scheme, chunk=100)
        for chunk in (1, 2, 3, 7):
            got = M.jacobian_determinant(flow, scheme=scheme, chunk=chunk)
            np.testing.assert_array_equal(got, ref)


def test_jacobian_central_matches_np_gradient_on_random_field():
    rng = np.random.default_rng(6)
    flow = rng.normal(0, 1, (3, 5, 6, 7))
    grads = np.stack([np.stack(np.gradient(flow[c]), 0) for c in range(3)], 0)  # (c, k, ...)
    jac = grads + np.eye(3)[:, :, None, None, None]
    expected = np.linalg.det(np.moveaxis(jac, (0, 1), (-2, -1)))
    np.testing.assert_allclose(M.jacobian_determinant(flow), expected, rtol=1e-12, atol=1e-12)


def test_jacobian_central_equals_learn2reg_on_the_interior():
    # Learn2Reg's evaluation: correlate with [-0.5, 0, 0.5] (zero padding), keep [2:-2] per axis.
    rng = np.random.default_rng(9)
    flow = ndimage.gaussian_filter(rng.normal(0, 2, (3, 9, 10, 11)), (0, 1, 1, 1))
    kernel = np.array([-0.5, 0.0, 0.5])
    grad = np.empty((3, 3) + flow.shape[1:])
    for k in range(3):
        shape = [1, 1, 1]
        shape[k] = 3
        for c in range(3):
            grad[c, k] = ndimage.correlate(flow[c], kernel.reshape(shape), mode="constant")
    jac = grad + np.eye(3)[:, :, None, None, None]
    inner = (slice(2, -2),) * 3
    expected = np.linalg.det(np.moveaxis(jac[(slice(None), slice(None)) + inner], (0, 1), (-2, -1)))
    got = M.jacobian_determinant(flow)[inner]
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_planted_fold_is_counted():
    shape = (12, 10, 9)
    c = 5  # fold plane along axis 0
    box = (slice(2, 6), slice(3, 8))  # a 4 x 5 patch in (H, W)
    profile = np.zeros(shape[0])
    profile[c - 1], profile[c + 1] = 3.0, -3.0  # x0 = c-1 -> c+2, c -> c, c+1 -> c-2: reversed
    flow = np.zeros((3,) + shape)
    flow[0][:, box[0], box[1]] = profile[:, None, None]
    # u1 = u2 = 0, so J is triangular and det J = 1 + du0/dx0: central differences give
    # 1 + (-3 - 3) / 2 = -2 at x0 = c and >= 1 elsewhere; forward ones give -2 at x0 = c-1 and c.
    jac = M.jacobian_determinant(flow)
    fold = M.folding(jac)
    assert fold["fold_count"] == 4 * 5
    assert fold["fold_pct"] == pytest.approx(100.0 * 20 / np.prod(shape))
    assert np.all(jac[c][box] == -2.0)
    assert M.folding(M.jacobian_determinant(flow, scheme="forward"))["fold_count"] == 2 * 4 * 5
    sd, excluded = M.sdlogj(jac)
    assert excluded == pytest.approx(fold["fold_pct"])
    assert sd > 0


@pytest.mark.parametrize("chunk", [1, 3, 4, 100])
def test_jacobian_stats_equal_folding_and_sdlogj(chunk: int):
    rng = np.random.default_rng(14)
    flow = ndimage.gaussian_filter(rng.normal(0, 4, (3, 13, 10, 11)), (0, 1, 1, 1)).astype(np.float32)
    flow[0, 6, 3:6, 3:7] += 5.0  # a planted fold
    jac = M.jacobian_determinant(flow)
    fold = M.folding(jac)
    sd, excluded = M.sdlogj(jac)
    assert fold["fold_count"] > 0
    stats = M.jacobian_stats(flow, chunk=chunk)
    assert stats.fold_count == fold["fold_count"] and stats.fold_pct == fold["fold_pct"]
    assert stats.voxels == jac.size
    assert stats.logj_excluded_pct == pytest.approx(excluded, rel=1e-15)
    assert stats.sdlogj == pytest.approx(sd, rel=1e-12)


def test_jacobian_stats_closed_forms():
    shift = np.broadcast_to(np.array([0.5, -3.0, 2.0])[:, None, None, None], (3, 6, 7, 8))
    stats = M.jacobian_stats(shift.astype(np.float32))
    assert (stats.fold_count, stats.sdlogj, stats.logj_excluded_pct) == (0, 0.0, 0.0)
    flip = M.jacobian_stats(_affine_flow(np.diag([1.0, -1.0, 1.0]), (5, 6, 7)))
    assert flip.fold_pct == 100.0 and math.isnan(flip.sdlogj) and flip.logj_excluded_pct == 100.0


def test_sdlogj_values():
    flow = np.broadcast_to(np.array([2.0, 0.0, -1.0])[:, None, None, None], (3, 6, 6, 6))
    assert M.sdlogj(M.jacobian_determinant(flow)) == (0.0, 0.0)
    sd, excluded = M.sdlogj(np.array([math.exp(-1), math.exp(1), -1.0, 0.0]))
    assert sd == pytest.approx(1.0) and excluded == pytest.approx(50.0)
    sd, excluded = M.sdlogj(np.array([-1.0, 0.0]))
    assert math.isnan(sd) and excluded == 100.0


def test_input_validation():
    lab = np.zeros((4, 4, 4), np.int32)
    with pytest.raises(TypeError, match="integer label map"):
        M.dice_per_label(lab.astype(np.complex64), lab, [1])
    with pytest.raises(ValueError, match="non-integer"):
        M.dice_per_label(lab + 0.5, lab, [1])
    with pytest.raises(ValueError, match="expected equal"):
        M.hd95_per_label(lab, lab[:3], [1], (1, 1, 1))
    with pytest.raises(ValueError, match="spacing"):
        M.hd95_per_label(lab, lab, [1], (1, 1))
    with pytest.raises(ValueError, match=r"\(3, D, H, W\)"):
        M.jacobian_determinant(np.zeros((2, 4, 4, 4)))
    with pytest.raises(ValueError, match="same grid"):
        M.score_pair(lab, lab, lab, [1], (1, 1, 1), flow=np.zeros((3, 4, 4, 5)))


# ---------------------------------------------------------------------------------------------
# score_pair
# ---------------------------------------------------------------------------------------------


def _rows_to_dict(rows):
    return {(r["metric"], r["label"]): r["value"] for r in rows}


def test_score_pair_rows_and_edge_cases():
    shape = (10, 12, 14)
    spacing = (1.0, 1.5, 2.0)
    fixed = np.zeros(shape, np.int16)
    fixed[1:5, 1:6, 1:6] = 1
    fixed[6:9, 6:10, 6:12] = 2
    fixed[1:3, 8:11, 1:4] = 3  # label 3: in fixed only -> missing
    moving = fixed.copy()
    moving[moving == 3] = 0
    warped = moving.copy()
    warped[warped == 2] = 0  # label 2: in fixed and moving, gone after warping -> vanished
    labels = [1, 2, 3, 4]  # label 4: in neither -> missing
    flow = np.zeros((3,) + shape, np.float32)
    flow[0, 4, 2:4, 2:5] = [[3.0], [3.0]]  # det J = 1 + (3 - 0) / 2 > 0 at slice 3, 1 - 3 / 2 < 0 at slice 5
    rows = M.score_pair(fixed, moving, warped, labels, spacing, flow=flow)

    assert all(set(r) == {"metric", "label", "value"} for r in rows)
    assert all(isinstance(r["value"], float) for r in rows)
    got = _rows_to_dict(rows)
    assert len(got) == len(rows)  # one row per (metric, label)

    diagonal = math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing, strict=True)))
    assert got[("dice", 1)] == 1.0 and got[("hd95_mm", 1)] == 0.0 and got[("assd_mm", 1)] == 0.0
    assert got[("dice", 2)] == 0.0 and got[("hd95_mm", 2)] == pytest.approx(diagonal)
    assert got[("assd_mm", 2)] == pytest.approx(diagonal)  # the same penalty
    for lab in (3, 4):
        for metric in ("dice", "hd95_mm", "assd_mm"):
            assert math.isnan(got[(metric, lab)])
    assert got[("dice", None)] == pytest.approx(0.5)  # mean over labels 1 and 2
    assert got[("hd95_mm", None)] == pytest.approx(diagonal / 2)
    assert got[("assd_mm", None)] == pytest.approx(diagonal / 2)
    assert got[("labels_missing", None)] == 2.0
    assert got[("labels_vanished", None)] == 1.0
    n_vox = np.prod(shape)
    assert got[("fold_count", None)] == 6.0  # slice 5, the 2 x 3 patch
    assert got[("fold_pct", None)] == pytest.approx(100 * 6 / n_vox)
    assert got[("nonpos_jac_mm3", None)] == pytest.approx(6 * 1.0 * 1.5 * 2.0)
    assert got[("logj_excluded_pct", None)] == pytest.approx(100 * 6 / n_vox)
    assert got[("sdlogj", None)] > 0


def test_score_pair_without_flow_and_without_present_labels():
    lab = np.zeros((5, 5, 5), np.uint8)
    rows = M.score_pair(lab, lab, lab, [1, 2], (1, 1, 1))
    got = _rows_to_dict(rows)
    assert not any(m in {"fold_pct", "sdlogj"} for m, _ in got)
    assert math.isnan(got[("dice", None)]) and math.isnan(got[("hd95_mm", None)])
    assert got[("labels_missing", None)] == 2.0


def test_score_pair_without_moving_labels():
    fixed = np.zeros((8, 8, 8), np.int16)
    fixed[1:4, 1:4, 1:4], fixed[5:7, 5:7, 5:7] = 1, 2
    warped = np.where(fixed == 2, 0, fixed).astype(np.int16)
    got = _rows_to_dict(M.score_pair(fixed, None, warped, [1, 2, 3], (1, 1, 1)))
    assert got[("labels_missing", None)] == 1.0  # 3: not in the fixed map
    assert got[("labels_vanished", None)] == 1.0  # 2: in the fixed map, not in the warped one
    assert got[("dice", 2)] == 0.0 and got[("hd95_mm", 2)] == pytest.approx(math.sqrt(3 * 64))


def test_score_pair_threads_do_not_change_the_result():
    rng = np.random.default_rng(15)
    fixed = _blobs(rng, (14, 15, 16), 6).astype(np.int16)
    warped = _blobs(rng, (14, 15, 16), 6).astype(np.int32)
    flow = rng.normal(0, 1, (3, 14, 15, 16)).astype(np.float32)
    one = M.score_pair(fixed, fixed, warped, range(1, 6), (1.0, 2.0, 0.5), flow=flow, threads=1)
    two = M.score_pair(fixed, fixed, warped, range(1, 6), (1.0, 2.0, 0.5), flow=flow, threads=2)
    assert one == two


def test_score_pair_matches_per_label_functions():
    rng = np.random.default_rng(8)
    fixed = _blobs(rng, (12, 12, 12), 5).astype(np.int16)
    warped = _blobs(rng, (12, 12, 12), 5).astype(np.int16)
    labels, spacing = [1, 2, 3, 4], (1.2, 1.0, 0.8)
    got = _rows_to_dict(M.score_pair(fixed, fixed, warped, labels, spacing))
    dice = M.dice_per_label(fixed, warped, labels)
    hd = M.hd95_per_label(fixed, warped, labels, spacing)
    assd = M.assd_per_label(fixed, warped, labels, spacing)
    for lab in labels:
        assert got[("dice", lab)] == dice[lab] and got[("hd95_mm", lab)] == hd[lab]
        assert got[("assd_mm", lab)] == assd[lab]
        sd = M.surface_distances(fixed == lab, warped == lab, spacing)
        assert M.average_surface_distance(sd) == pytest.approx(assd[lab], rel=1e-14)
    assert got[("dice", None)] == pytest.approx(np.mean(list(dice.values())))

"""crd.data.preprocess: resampling onto a box grid keeps world coordinates exact."""

from __future__ import annotations

import numpy as np
import pytest

from crd.data.preprocess import foreground_box, relabel, resample_box, scale_to_unit, window


def _affine(spacing, origin=(10.0, -20.0, 5.0), flip_x=False):
    a = np.diag([*spacing, 1.0])
    if flip_x:
        a[0, 0] = -a[0, 0]
    a[:3, 3] = origin
    return a


def _linear_volume(shape, affine, coef=(0.3, -0.2, 0.5), const=4.0):
    """f(world) = coef . world + const, sampled at every voxel centre."""
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).astype(float)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    return (world @ np.asarray(coef) + const).astype(np.float32)


def test_box_over_the_whole_grid_is_the_identity():
    shape, affine = (12, 10, 8), _affine((1.5, 1.0, 2.0))
    x = np.random.default_rng(0).random(shape).astype(np.float32)
    centre = (np.asarray(shape) - 1) / 2.0
    side = (np.asarray(shape) - 1) * np.array([1.5, 1.0, 2.0])
    out, out_affine = resample_box(x, affine, centre, side, shape, order=1)
    np.testing.assert_allclose(out, x, atol=1e-5)
    np.testing.assert_allclose(out_affine, affine, atol=1e-9)


@pytest.mark.parametrize("flip_x", [False, True])
def test_output_affine_maps_voxels_to_the_same_world_points(flip_x):
    shape, affine = (40, 30, 20), _affine((0.8, 0.8, 2.5), flip_x=flip_x)
    f = _linear_volume(shape, affine)
    out, out_affine = resample_box(f, affine, (19.0, 14.5, 9.0), (20.0, 16.0, 30.0), (9, 7, 6),
                                   order=1, antialias=False)
    expected = _linear_volume((9, 7, 6), out_affine)  # f at the output voxels' world points
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)
    spacing = np.linalg.norm(out_affine[:3, :3], axis=0)
    np.testing.assert_allclose(spacing, [20.0 / 8, 16.0 / 6, 30.0 / 5])


def test_antialiasing_keeps_a_linear_function_and_fill_outside():
    shape, affine = (60, 60, 20), _affine((0.5, 0.5, 1.0))
    f = _linear_volume(shape, affine)
    out, out_affine = resample_box(f, affine, (29.5, 29.5, 9.5), (20.0, 20.0, 10.0), (6, 6, 6),
                                   order=1)
    # blurring a linear function does not change it (away from the input's border)
    np.testing.assert_allclose(out, _linear_volume((6, 6, 6), out_affine), rtol=1e-4, atol=1e-3)
    far, _ = resample_box(f, affine, (500.0, 0.0, 0.0), (10.0, 10.0, 10.0), (4, 4, 4), order=1,
                          fill=-7.0)
    assert np.all(far == -7.0)


def test_nearest_keeps_label_values_and_dtype():
    labels = np.zeros((20, 20, 20), np.int16)
    labels[5:15, 5:15, 5:15] = 182
    labels[8:12, 8:12, 8:12] = 21
    out, _ = resample_box(labels, np.eye(4), (9.5, 9.5, 9.5), (19.0, 19.0, 19.0), (10, 10, 10),
                          order=0)
    assert out.dtype == np.int16 and set(np.unique(out)) == {0, 21, 182}


def test_intensity_helpers():
    np.testing.assert_allclose(window(np.array([-1000.0, -25.0, 120.0, 265.0, 3000.0]), -25, 265),
                               [0.0, 0.0, 0.5, 1.0, 1.0])
    with pytest.raises(ValueError, match="high > low"):
        scale_to_unit(np.zeros(3), 1.0, 1.0)
    assert relabel(np.array([0, 2, 63, 99]), {2: 1, 63: 35}).tolist() == [0, 1, 35, 0]
    lo, hi = foreground_box(np.pad(np.ones((2, 3, 4), bool), 1))
    assert lo.tolist() == [1, 1, 1] and hi.tolist() == [2, 3, 4]
    with pytest.raises(ValueError, match="empty"):
        foreground_box(np.zeros((3, 3, 3), bool))

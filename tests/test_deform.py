"""Tests for crd.deform: cubic B-spline FFD fields and the RandomFFD augmentation."""

from __future__ import annotations

import math

import pytest
import torch

from crd.deform import (
    RandomFFD,
    bspline_basis,
    bspline_displacement,
    crd_augmentation_magnitude,
    random_bspline_displacement,
)


def _reference_1d(control: list[float], n_out: int) -> list[float]:
    """Textbook uniform cubic B-spline by the four-point formula, control coordinate t in
    [1, n - 2] across the image (independent of the implementation's kernel form)."""
    n = len(control)
    out = []
    for x in range(n_out):
        t = 1.0 + x * (n - 3) / (n_out - 1)
        i = min(int(math.floor(t)), n - 3)  # last cell at the right end (u = 1)
        u = t - i
        w = [
            (1 - u) ** 3 / 6,
            (3 * u**3 - 6 * u**2 + 4) / 6,
            (-3 * u**3 + 3 * u**2 + 3 * u + 1) / 6,
            u**3 / 6,
        ]
        out.append(sum(wk * control[i - 1 + k] for k, wk in enumerate(w)))
    return out


def test_basis_rows_are_a_partition_of_unity():
    for n_out, n_ctrl in [(1, 4), (2, 4), (17, 5), (64, 6), (9, 12)]:
        basis = bspline_basis(n_out, n_ctrl, dtype=torch.float64)
        assert basis.shape == (n_out, n_ctrl)
        assert torch.all(basis >= 0)
        assert torch.allclose(basis.sum(1), torch.ones(n_out, dtype=torch.float64))
        assert int((basis > 0).sum(1).max()) <= 4


def test_matches_four_point_reference_1d():
    g = torch.Generator().manual_seed(0)
    control = torch.randn(7, generator=g, dtype=torch.float64)
    n_out = 23
    # a field varying along one axis only, per axis
    for axis in range(3):
        shape_c = [4, 4, 4]
        shape_c[axis] = 7
        c = control.view([1, 1] + [7 if a == axis else 1 for a in range(3)]).expand(1, 1, *shape_c)
        shape = [5, 6, 8]
        shape[axis] = n_out
        out = bspline_displacement(c.contiguous(), shape)
        line = out[0, 0].movedim(axis, 0).reshape(n_out, -1)
        ref = torch.tensor(_reference_1d(control.tolist(), n_out), dtype=torch.float64)
        assert torch.allclose(line, ref[:, None].expand_as(line), atol=1e-12)


def test_constant_control_gives_that_constant():
    control = torch.tensor([1.5, -2.0, 0.25]).view(1, 3, 1, 1, 1).expand(2, 3, 5, 6, 4)
    out = bspline_displacement(control.contiguous(), (9, 13, 7))
    assert out.shape == (2, 3, 9, 13, 7)
    for c, v in enumerate([1.5, -2.0, 0.25]):
        assert torch.allclose(out[:, c], torch.full_like(out[:, c], v), atol=1e-6)


def test_zero_control_gives_zero():
    out = bspline_displacement(torch.zeros(1, 3, 5, 5, 5), (8, 8, 8))
    assert torch.count_nonzero(out) == 0


def test_linear_control_is_reproduced_and_image_spans_1_to_n_minus_2():
    # B-splines reproduce linear functions: control value k at control point k gives t(x)
    n, size = 6, 11
    k = torch.arange(n, dtype=torch.float64)
    control = k.view(1, 1, n, 1, 1).expand(1, 1, n, 4, 4).contiguous()
    out = bspline_displacement(control, (size, 3, 3))[0, 0, :, 0, 0]
    expected = 1.0 + torch.arange(size, dtype=torch.float64) * (n - 3) / (size - 1)
    assert torch.allclose(out, expected, atol=1e-12)
    assert out[0] == pytest.approx(1.0) and out[-1] == pytest.approx(n - 2)


def test_bounded_and_smooth():
    g = torch.Generator().manual_seed(3)
    n, size = 5, 32
    control = torch.rand(2, 3, n, n, n, generator=g, dtype=torch.float64) * 6 - 3
    out = bspline_displacement(control, (size, size, size))
    assert out.abs().max() <= control.abs().max() + 1e-9
    # |dS/dt| <= max |c_{k+1} - c_k| <= 2 max |c|, and dt/dx = (n - 3) / (size - 1)
    step = 2 * float(control.abs().max()) * (n - 3) / (size - 1)
    for axis in (2, 3, 4):
        assert out.diff(dim=axis).abs().max() <= step + 1e-9


def test_dtype_and_shape_errors():
    c = torch.zeros(1, 3, 5, 5, 5, dtype=torch.float64)
    assert bspline_displacement(c, (4, 5, 6)).dtype == torch.float64
    with pytest.raises(ValueError, match="at least 4 control points"):
        bspline_displacement(torch.zeros(1, 3, 3, 5, 5), (8, 8, 8))
    with pytest.raises(ValueError, match="B, C, n0, n1, n2"):
        bspline_displacement(torch.zeros(3, 5, 5, 5), (8, 8, 8))
    with pytest.raises(ValueError, match="3 spatial dims"):
        bspline_displacement(c, (8, 8))


def test_random_field_is_deterministic_and_bounded():
    def draw(seed):
        return random_bspline_displacement(
            (12, 10, 8),
            max_displacement=2.0,
            generator=torch.Generator().manual_seed(seed),
            batch=2,
        )

    a, b, c = draw(7), draw(7), draw(8)
    assert a.shape == (2, 3, 12, 10, 8) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # batch elements are independent
    assert a.abs().max() <= 2.0
    assert a.abs().max() > 0


def test_random_field_options():
    g = torch.Generator().manual_seed(0)
    u = random_bspline_displacement(
        (8, 8, 8), n_control=(4, 5, 6), max_displacement=0.0, generator=g, dtype=torch.float64
    )
    assert u.dtype == torch.float64 and torch.count_nonzero(u) == 0
    with pytest.raises(ValueError, match="max_displacement"):
        random_bspline_displacement((8, 8, 8), max_displacement=-1.0)


def test_crd_augmentation_magnitude():
    assert crd_augmentation_magnitude((160, 192, 224)) == pytest.approx(16.0)
    assert crd_augmentation_magnitude((64, 64, 64)) == pytest.approx(6.4)
    assert RandomFFD().magnitude((64, 80, 96)) == pytest.approx(6.4)
    assert RandomFFD(max_displacement=2.5).magnitude((64, 64, 64)) == 2.5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_random_ffd_preserves_shape_and_dtype(dtype):
    image = torch.rand(2, 1, 16, 12, 10, generator=torch.Generator().manual_seed(0), dtype=dtype)
    out = RandomFFD(max_displacement=3.0)(image, torch.Generator().manual_seed(1))
    assert out.shape == image.shape and out.dtype == dtype and out.device == image.device
    assert not torch.equal(out, image)


def test_random_ffd_probability_zero_is_identity():
    image = torch.rand(3, 2, 8, 8, 8)
    out = RandomFFD(max_displacement=3.0, probability=0.0)(image, torch.Generator().manual_seed(0))
    assert torch.equal(out, image)


def test_random_ffd_is_deterministic_and_labels_stay_labels():
    image = torch.rand(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    ffd = RandomFFD(probability=0.5)
    a = ffd(image, torch.Generator().manual_seed(5))
    b = ffd(image, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    for i in range(2):  # each element is either untouched or deformed
        assert torch.equal(a[i], image[i]) or not torch.allclose(a[i], image[i])

    labels = torch.randint(0, 4, (1, 1, 12, 12, 12), generator=torch.Generator().manual_seed(0))
    warped = RandomFFD(max_displacement=2.0, mode="nearest")(labels, torch.Generator())
    assert warped.dtype == labels.dtype
    assert set(warped.unique().tolist()) <= {0, 1, 2, 3}


def test_random_ffd_rejects_bad_arguments():
    with pytest.raises(ValueError, match="probability"):
        RandomFFD(probability=1.5)
    with pytest.raises(ValueError, match="B, C, D, H, W"):
        RandomFFD()(torch.zeros(8, 8, 8))


def test_a_share_of_the_batch_is_those_elements_of_the_whole_draw():
    """sample(share=...) computes only the share's fields, from the same draws (and leaves the
    generator where the whole batch's draw leaves it): what each training process uses."""
    from crd.deform import RandomFFD

    ffd = RandomFFD(probability=0.5)
    whole_gen, part_gen = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    apply, flow = ffd.sample((12, 14, 16), 4, whole_gen)
    part_apply, part_flow = ffd.sample((12, 14, 16), 4, part_gen, share=slice(2, 4))
    assert torch.equal(part_apply, apply[2:4]) and part_flow.shape == (2, 3, 12, 14, 16)
    torch.testing.assert_close(part_flow, flow[2:4], rtol=0, atol=0)
    assert torch.equal(whole_gen.get_state(), part_gen.get_state())

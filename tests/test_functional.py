"""Warp and resize semantics (docs/conventions.md)."""

import pytest
import torch

from crd.models.functional import downsample, upsample_flow, warp


def _ramp(shape=(1, 1, 10, 12, 14)):
    d, h, w = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape[2:]], indexing="ij")
    return (d * 100 + h * 10 + w).expand(shape).clone()


def test_identity_field_gives_input_back():
    img = torch.rand(2, 3, 8, 9, 10)
    out = warp(img, torch.zeros(2, 3, 8, 9, 10))
    torch.testing.assert_close(out, img, rtol=0, atol=1e-5)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 2, -3])
def test_constant_field_shifts_by_k_voxels(axis, k):
    img = _ramp()
    flow = torch.zeros(1, 3, *img.shape[2:])
    flow[:, axis] = k
    out = warp(img, flow)
    # warped(p) = moving(p + k e_axis): compare where p + k stays inside the volume
    n = img.shape[2 + axis]
    src = [slice(None)] * 5
    dst = [slice(None)] * 5
    src[2 + axis] = slice(max(k, 0), n + min(k, 0))
    dst[2 + axis] = slice(max(-k, 0), n - max(k, 0))
    torch.testing.assert_close(out[tuple(dst)], img[tuple(src)], rtol=0, atol=1e-3)
    # outside the moving image the value is 0 (zeros padding; round-off of the normalised grid
    # leaks a few 1e-5 of the ramp's values up to ~1400)
    outside = [slice(None)] * 5
    outside[2 + axis] = slice(n - k, n) if k > 0 else slice(0, -k)
    assert out[tuple(outside)].abs().max() < 1e-2


def test_half_voxel_shift_interpolates_linearly():
    img = _ramp()
    flow = torch.zeros(1, 3, *img.shape[2:])
    flow[:, 2] = 0.5
    out = warp(img, flow)
    torch.testing.assert_close(out[..., :-1], img[..., :-1] + 0.5, rtol=0, atol=1e-3)


def test_nearest_keeps_integer_labels_and_dtype():
    labels = torch.randint(0, 5, (1, 1, 6, 7, 8), dtype=torch.int32)
    flow = torch.full((1, 3, 6, 7, 8), 0.3)
    out = warp(labels, flow, mode="nearest")
    assert out.dtype == torch.int32
    assert set(out.unique().tolist()) <= set(labels.unique().tolist()) | {0}
    torch.testing.assert_close(out[..., :-1, :-1, :-1], labels[..., :-1, :-1, :-1])


def test_warp_rejects_mismatched_field():
    with pytest.raises(ValueError, match="does not fit"):
        warp(torch.rand(1, 1, 8, 8, 8), torch.zeros(1, 3, 8, 8, 4))
    with pytest.raises(ValueError, match=r"\(B, 3, D, H, W\)"):
        warp(torch.rand(1, 1, 8, 8, 8), torch.zeros(1, 2, 8, 8, 8))


def test_upsample_flow_scales_to_full_resolution_voxels():
    flow = torch.ones(1, 3, 4, 5, 6)
    up = upsample_flow(flow, (8, 10, 12))
    assert up.shape == (1, 3, 8, 10, 12)
    torch.testing.assert_close(up, torch.full_like(up, 2.0))
    aniso = upsample_flow(flow, (8, 5, 18))
    torch.testing.assert_close(aniso[0, :, 0, 0, 0], torch.tensor([2.0, 1.0, 3.0]))


def test_downsample_halves_each_side():
    assert downsample(torch.rand(1, 2, 32, 48, 64)).shape == (1, 2, 16, 24, 32)
    const = torch.full((1, 1, 8, 8, 8), 3.0)
    torch.testing.assert_close(downsample(const, align_corners=True), torch.full((1, 1, 4, 4, 4), 3.0))


@pytest.mark.parametrize("mode, padding", [("bilinear", "zeros"), ("nearest", "border"), ("bilinear", "reflection")])
@pytest.mark.parametrize("grad", [False, True])
def test_warp_equals_monai_warp(mode, padding, grad):
    import warnings

    from monai.networks.blocks import Warp

    g = torch.Generator().manual_seed(1)
    moving = torch.rand((2, 2, 9, 10, 11), generator=g)
    flow = 3 * torch.randn((2, 3, 9, 10, 11), generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = Warp(mode=mode, padding_mode=padding)(moving, flow)
    flow.requires_grad_(grad)
    got = warp(moving, flow, mode=mode, padding_mode=padding)
    assert torch.equal(got.detach(), expected)
    if grad and mode == "bilinear":
        got.sum().backward()
        assert flow.grad is not None and flow.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_a_field_on_a_crop_samples_the_whole_moving_image(mode):
    """warp(moving, flow_crop, offset=o) = the crop at o of warp(moving, flow_full), where flow_full
    equals flow_crop on the crop: the crop is filled from the whole image (here from beyond its own
    edges, where a warp of the cropped image alone would read zeros)."""
    torch.manual_seed(0)
    moving = torch.rand(2, 1, 10, 12, 14)
    offset, size = (2, 3, 5), (6, 8, 6)
    crop = tuple(slice(o, o + s) for o, s in zip(offset, size, strict=True))
    flow_crop = 3 * (torch.rand(2, 3, *size) - 0.5)
    flow_full = torch.zeros(2, 3, 10, 12, 14)
    flow_full[(slice(None), slice(None), *crop)] = flow_crop
    expected = warp(moving, flow_full, mode=mode)[(slice(None), slice(None), *crop)]
    out = warp(moving, flow_crop, mode=mode, offset=offset)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    alone = warp(moving[(slice(None), slice(None), *crop)].contiguous(), flow_crop, mode=mode)
    assert (alone - expected).abs().max() > 0.1  # what the crop alone would have given differs


def test_a_field_on_a_crop_is_differentiable_and_checked():
    moving = torch.rand(1, 1, 8, 8, 8)
    flow = torch.zeros(1, 3, 4, 4, 4, requires_grad=True)
    warp(moving, flow, offset=(1, 2, 3)).sum().backward()
    assert flow.grad is not None and flow.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="does not lie inside"):
        warp(moving, flow.detach(), offset=(5, 0, 0))
    with pytest.raises(ValueError, match="does not lie inside"):
        warp(moving, flow.detach(), offset=(-1, 0, 0))

"""Pure tensor maths shared by every model: warping, resizing images and displacement fields.

Conventions (see docs/conventions.md): tensors are ``(B, C, D, H, W)``; a displacement field ``u`` is
``(B, 3, D, H, W)`` with channels in the order of the spatial axes (D, H, W), in voxels of the
grid it lives on, and ``warped(p) = moving(p + u(p))`` with voxel centres at integer coordinates
(``align_corners=True`` semantics).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["warp", "downsample", "upsample_flow", "check_volume", "check_flow"]


def check_volume(x: torch.Tensor, name: str = "image") -> None:
    """Raise ``ValueError`` unless ``x`` is a 5-D ``(B, C, D, H, W)`` tensor."""
    if x.ndim != 5:
        raise ValueError(f"{name}: expected a (B, C, D, H, W) tensor, got shape {tuple(x.shape)}")


def check_flow(flow: torch.Tensor, like: torch.Tensor | None = None) -> None:
    """Raise ``ValueError`` unless ``flow`` is ``(B, 3, D, H, W)`` (and matches ``like``'s grid)."""
    if flow.ndim != 5 or flow.shape[1] != 3:
        raise ValueError(f"flow: expected a (B, 3, D, H, W) tensor, got shape {tuple(flow.shape)}")
    if like is not None and (flow.shape[0] != like.shape[0] or flow.shape[2:] != like.shape[2:]):
        raise ValueError(
            f"flow of shape {tuple(flow.shape)} does not fit image of shape {tuple(like.shape)}: "
            "expected the same batch size and spatial grid"
        )


def _sampling_grid(
    flow: torch.Tensor, sizes: tuple[int, ...] | None = None, offset: tuple[int, ...] | None = None
) -> torch.Tensor:
    """The ``grid_sample`` grid ``(B, D, H, W, 3)`` (x, y, z = W, H, D, normalised to [-1, 1] with
    ``align_corners=True``) of the field ``flow`` ``(B, 3, D, H, W)`` in voxels: for each axis
    ``(o + p + u) * 2 / (n - 1) - 1``, the reference coordinate ``p`` broadcast from a 1-D ``arange``.
    ``sizes``: the sampled image's grid (default: the field's); ``offset``: where the field's
    first voxel sits on it (default 0: the same grid).

    The same arithmetic, in the same order, as MONAI's ``Warp`` (whose reference grid is rebuilt
    on every call: its cache check compares ``(3, D, H, W)`` with ``(D, H, W)``); without autograd
    the grid is the only full-size tensor made (each axis written in place into its slot).
    """
    b, _, *grid_sizes = flow.shape
    sizes = tuple(grid_sizes) if sizes is None else tuple(sizes)
    offset = (0, 0, 0) if offset is None else tuple(offset)
    differentiable = torch.is_grad_enabled() and flow.requires_grad
    grid = None if differentiable else flow.new_empty((b, *grid_sizes, 3))
    parts = []
    for axis, (m, n, o) in enumerate(zip(grid_sizes, sizes, offset, strict=True)):
        shape = [1, 1, 1]
        shape[axis] = m
        ref = torch.arange(o, o + m, dtype=flow.dtype, device=flow.device).view(shape)
        denom = max(n - 1, 1)
        if grid is None:
            parts.append((flow[:, axis] + ref) * 2 / denom - 1)
        else:
            slot = grid[..., 2 - axis]  # grid_sample's last dim is (x, y, z) = (W, H, D)
            torch.add(flow[:, axis], ref, out=slot)
            slot.mul_(2).div_(denom).sub_(1)
    if grid is None:
        grid = torch.stack(parts[::-1], dim=-1)
    return grid


def warp(
    moving: torch.Tensor,
    flow: torch.Tensor,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
    offset: tuple[int, int, int] | None = None,
) -> torch.Tensor:
    """Warp ``moving`` with the displacement ``flow``: ``warped(p) = moving(p + flow(p))``.

    Args:
        moving: ``(B, C, D, H, W)`` image or label map (labels: use ``mode="nearest"``).
        flow: ``(B, 3, D, H, W)`` displacement in voxels, channels ordered (D, H, W).
        mode: ``"bilinear"`` (trilinear in 3-D) or ``"nearest"``.
        padding_mode: value outside the moving image: ``"zeros"`` (as the CRD authors trained),
            ``"border"`` or ``"reflection"``.
        offset: for a field that covers only a region of ``moving``'s grid (training on crops,
            :class:`crd.train.TrainSettings` ``crop``): the voxel of ``moving`` where the field's
            first voxel sits; then ``warped(p) = moving(offset + p + flow(p))`` on the field's
            grid, so that the crop is filled from the whole moving image, not from zeros beyond
            the crop. ``None`` (default): the field and ``moving`` share one grid.

    Returns:
        ``(B, C, D, H, W)`` warped image on the fixed grid (the field's), same dtype as ``moving``.

    These are the semantics of MONAI's :class:`~monai.networks.blocks.Warp` (voxel-unit field in
    spatial-axis order, reference grid at integer voxel indices, ``align_corners=True``), computed
    with the same arithmetic but without its full-size reference grid and copies (see
    :func:`_sampling_grid`); the tests pin them down (identity field, constant shifts along each
    axis, equality with MONAI's Warp).
    """
    check_volume(moving, "moving")
    if offset is None:
        check_flow(flow, moving)
    else:
        _check_region(flow, moving, offset)
    dtype = moving.dtype
    image = moving if moving.is_floating_point() else moving.to(flow.dtype)
    grid = _sampling_grid(flow.to(image.dtype), tuple(moving.shape[2:]), offset)
    out = F.grid_sample(image, grid, mode=mode, padding_mode=padding_mode, align_corners=True)
    if dtype.is_floating_point:
        return out.to(dtype)
    return out.round().to(dtype)  # integer label maps come back in their own dtype


def _check_region(flow: torch.Tensor, moving: torch.Tensor, offset: tuple[int, int, int]) -> None:
    """Raise ``ValueError`` unless ``flow`` ``(B, 3, d, h, w)`` placed at ``offset`` lies inside
    ``moving``'s grid (same batch size)."""
    check_flow(flow)
    if len(offset) != 3 or flow.shape[0] != moving.shape[0]:
        raise ValueError(f"offset {tuple(offset)} / batch of flow {tuple(flow.shape)} do not fit {tuple(moving.shape)}")
    for o, m, n in zip(offset, flow.shape[2:], moving.shape[2:], strict=True):
        if o < 0 or o + m > n:
            raise ValueError(
                f"a flow of shape {tuple(flow.shape)} at offset {tuple(offset)} does not lie inside the "
                f"image grid {tuple(moving.shape[2:])}"
            )


def downsample(x: torch.Tensor, factor: int = 2, align_corners: bool = False) -> torch.Tensor:
    """Downsample a ``(B, C, D, H, W)`` image by an integer ``factor`` with trilinear interpolation.

    The output grid is ``(D // factor, H // factor, W // factor)``. ``align_corners`` selects the
    grid convention: the naive low-resolution model uses ``False`` (PyTorch's default); the
    feature-shifted teacher's low-resolution path uses ``True`` (docs/architecture.md).
    """
    check_volume(x)
    size = [s // factor for s in x.shape[2:]]
    return F.interpolate(x, size=size, mode="trilinear", align_corners=align_corners)


def upsample_flow(
    flow: torch.Tensor, size: tuple[int, int, int] | torch.Size, align_corners: bool = False
) -> torch.Tensor:
    """Resize a ``(B, 3, d, h, w)`` displacement field to ``size`` and rescale it to the new voxels.

    Each channel is resized trilinearly and multiplied by the size ratio of its own axis
    (``size[i] / flow.shape[2 + i]``), so a field in low-resolution voxels becomes a field in
    full-resolution voxels. For the x2 case this is the authors' "upsample, then multiply by 2.0".
    """
    check_flow(flow)
    size = tuple(int(s) for s in size)
    up = F.interpolate(flow, size=size, mode="trilinear", align_corners=align_corners)
    ratios = [size[i] / flow.shape[2 + i] for i in range(3)]
    # in place: the upsampled field is a fresh tensor, and interpolation's backward does not need it
    if ratios[0] == ratios[1] == ratios[2]:
        return up.mul_(ratios[0])
    scale = torch.tensor(ratios, dtype=up.dtype, device=up.device).view(1, 3, 1, 1, 1)
    return up.mul_(scale)

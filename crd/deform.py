"""Smooth random displacement fields by cubic B-spline free-form deformation (FFD).

A displacement field here follows the project conventions (docs/conventions.md): ``(B, 3, D, H, W)``,
channels in the order of the spatial axes (D, H, W), in voxels of the grid it lives on, applied as
``warped(p) = moving(p + u(p))`` by :func:`crd.models.functional.warp`.

The field is a uniform cubic B-spline of a coarse ``(n0, n1, n2)`` grid of control displacements.
Control point ``k`` along an axis sits at control coordinate ``k``; output voxel ``x`` of an axis
of ``N`` voxels sits at control coordinate ``t(x) = 1 + x * (n - 3) / (N - 1)``, so the image spans
``[1, n - 2]`` and every voxel has all four of its supporting control points inside the grid
(``n >= 4``). The weights are non-negative and sum to one there, so a constant control grid gives
that constant everywhere and ``|u| <= max |control|`` per channel.

The CRD authors augment the moving image with such a field on a 5x5x5 control grid, control values
``sign(u) * |u|**3`` with ``u ~ U(-1, 1)``, scaled by ``0.4 * (size // 4)`` voxels;
:func:`crd_augmentation_magnitude` and :class:`RandomFFD` with its defaults reproduce that (the
released code's "size" is taken here as the smallest image side, so the bound is isotropic).

Everything is device-agnostic: device and dtype come from the arguments (or the image), random
numbers are drawn on the generator's device and then moved, so a seeded CPU generator gives the
same field on any device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from crd.models.functional import check_volume, warp

__all__ = [
    "bspline_basis",
    "bspline_displacement",
    "random_bspline_displacement",
    "crd_augmentation_magnitude",
    "RandomFFD",
]


def _cubic_bspline(s: torch.Tensor) -> torch.Tensor:
    """The centred uniform cubic B-spline kernel ``beta3(s)`` (support ``|s| < 2``)."""
    a = s.abs()
    inner = 2.0 / 3.0 - a**2 + 0.5 * a**3
    outer = (2.0 - a).clamp(min=0.0) ** 3 / 6.0
    return torch.where(a < 1.0, inner, outer)


def bspline_basis(
    n_out: int,
    n_control: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The ``(n_out, n_control)`` matrix of cubic B-spline weights along one axis.

    Row ``x`` holds the weights of the control points for output voxel ``x``, which sits at
    control coordinate ``t(x) = 1 + x * (n_control - 3) / (n_out - 1)`` (``t = 1`` when
    ``n_out == 1``). Each row has at most four non-zero entries, all non-negative, summing to 1.

    Raises:
        ValueError: if ``n_control < 4`` or ``n_out < 1``.
    """
    if n_control < 4:
        raise ValueError(
            f"a cubic B-spline needs at least 4 control points per axis, got {n_control}"
        )
    if n_out < 1:
        raise ValueError(f"expected at least 1 output voxel per axis, got {n_out}")
    # built in float64 on the CPU (tiny), then moved: exact and independent of the device
    x = torch.arange(n_out, dtype=torch.float64)
    t = 1.0 + x * ((n_control - 3) / (n_out - 1)) if n_out > 1 else torch.ones_like(x)
    k = torch.arange(n_control, dtype=torch.float64)
    return _cubic_bspline(t[:, None] - k[None, :]).to(device=device, dtype=dtype)


def bspline_displacement(control: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Interpolate control displacements onto a voxel grid with a uniform cubic B-spline.

    Exact (not approximated by resizing): separable products with three ``(N_out, n_ctrl)`` basis
    matrices from :func:`bspline_basis`, i.e. ``einsum("bcijk,di,hj,wk->bcdhw", control, Bd, Bh,
    Bw)`` one axis at a time; control point layout as in the module docstring.

    Args:
        control: ``(B, C, n0, n1, n2)`` control values, each ``n_i >= 4``. For a displacement field
            ``C = 3`` (channels ordered D, H, W, values in voxels of the output grid); any ``C``
            works (e.g. ``C = 1`` for a smooth scalar field such as a bias field).
        shape: output spatial size ``(D, H, W)``.

    Returns:
        ``(B, C, D, H, W)`` field on the output grid, same device and dtype as ``control``,
        in the units of ``control`` (voxels for a displacement).
    """
    if control.ndim != 5:
        raise ValueError(
            f"control: expected a (B, C, n0, n1, n2) tensor, got shape {tuple(control.shape)}"
        )
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise ValueError(f"shape: expected 3 spatial dims (D, H, W), got {shape}")
    dtype = control.dtype if control.is_floating_point() else torch.get_default_dtype()
    control = control.to(dtype)
    b, c, n0, n1, n2 = control.shape
    bd, bh, bw = (
        bspline_basis(shape[i], control.shape[2 + i], device=control.device, dtype=dtype)
        for i in range(3)
    )
    # one axis at a time, the largest expansion last; each step is a small batched matmul
    out = torch.matmul(bd, control.reshape(b * c, n0, n1 * n2))  # (BC, D, n1 * n2)
    out = torch.matmul(bh, out.reshape(b * c, shape[0], n1, n2))  # (BC, D, H, n2)
    out = torch.matmul(out, bw.T)  # (BC, D, H, W)
    return out.reshape(b, c, *shape)


def crd_augmentation_magnitude(shape: Sequence[int]) -> float:
    """The CRD authors' largest control displacement in voxels: ``0.4 * (min(shape) // 4)``.

    E.g. 16.0 voxels for 160x192x224 and 6.4 for 64^3.
    """
    return 0.4 * (min(int(s) for s in shape) // 4)


def _as_triple(n: int | Sequence[int], name: str) -> tuple[int, int, int]:
    if isinstance(n, int):
        return (n, n, n)
    t = tuple(int(v) for v in n)
    if len(t) != 3:
        raise ValueError(f"{name}: expected an int or 3 ints, got {n!r}")
    return t  # type: ignore[return-value]


def random_bspline_displacement(
    shape: Sequence[int],
    *,
    n_control: int | Sequence[int] = 5,
    max_displacement: float,
    generator: torch.Generator | None = None,
    batch: int = 1,
    power: float = 3.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    keep: slice = slice(None),
) -> torch.Tensor:
    """Draw a smooth random displacement field by cubic B-spline FFD.

    Control values are ``sign(u) * |u|**power * max_displacement`` with ``u ~ U(-1, 1)``
    independently per control point and channel (``power=3`` is the CRD authors' shaping, which
    makes most displacements small and a few large; ``power=1`` is uniform). With
    ``max_displacement = crd_augmentation_magnitude(shape)`` and ``n_control=5`` this is the
    authors' augmentation. Fields stay one-to-one when ``max_displacement`` is below about
    0.4 control spacings, ``0.4 * (N - 1) / (n_control - 3)`` voxels (Choi and Lee, 2000).

    Args:
        shape: output spatial size ``(D, H, W)``.
        n_control: control points per axis (int or 3 ints), each >= 4.
        max_displacement: largest control displacement, in voxels (>= 0).
        generator: torch random generator (seeded for reproducibility); numbers are drawn on
            its device, then moved to ``device``. ``None`` uses the global generator.
        batch: number of independent fields ``B``.
        power: shaping exponent of the control values (> 0).
        device: device of the result (default: the generator's device, else CPU).
        dtype: floating dtype of the result.
        keep: the fields to return (all by default): the control points of all ``batch`` fields
            are drawn, so the random stream is the same, but only these are computed.

    Returns:
        ``(len(keep), 3, D, H, W)`` displacement in voxels, channels ordered (D, H, W).
    """
    if max_displacement < 0:
        raise ValueError(f"max_displacement must be >= 0 voxels, got {max_displacement}")
    if power <= 0:
        raise ValueError(f"power must be > 0, got {power}")
    n = _as_triple(n_control, "n_control")
    draw_device = generator.device if generator is not None else device
    u = torch.rand((batch, 3, *n), generator=generator, device=draw_device, dtype=torch.float32)
    u = u * 2.0 - 1.0
    control = (torch.sign(u) * u.abs() ** power * float(max_displacement))[keep]
    control = control.to(device=device if device is not None else u.device, dtype=dtype)
    return bspline_displacement(control, shape)


class RandomFFD:
    """Random cubic B-spline free-form deformation of a batch of images (training augmentation).

    Each batch element is deformed with probability ``probability`` by its own field from
    :func:`random_bspline_displacement` and warped trilinearly (``warped(p) = image(p + u(p))``,
    zeros outside); the other elements come back unchanged, bit for bit. Randomness is sampled by
    :meth:`sample` (one draw for the Bernoulli choices, then the control points of every element,
    whether used or not, so the random stream does not depend on the choices) and applied by
    :meth:`apply`; ``__call__`` does both.

    Args:
        n_control: control points per axis (int or 3 ints), default 5 as the authors.
        max_displacement: largest control displacement in voxels; ``None`` = the authors' rule
            :func:`crd_augmentation_magnitude` of the image's spatial size.
        probability: chance that an element is deformed, in [0, 1].
        power: shaping exponent of the control values (3 = the authors').
        mode: ``"bilinear"`` for images, ``"nearest"`` for label maps.
        padding_mode: value outside the image, as :func:`crd.models.functional.warp`.
    """

    def __init__(
        self,
        n_control: int | Sequence[int] = 5,
        max_displacement: float | None = None,
        probability: float = 1.0,
        *,
        power: float = 3.0,
        mode: str = "bilinear",
        padding_mode: str = "zeros",
    ) -> None:
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability must be in [0, 1], got {probability}")
        if max_displacement is not None and max_displacement < 0:
            raise ValueError(
                f"max_displacement must be >= 0 voxels or None, got {max_displacement}"
            )
        self.n_control = _as_triple(n_control, "n_control")
        self.max_displacement = max_displacement
        self.probability = float(probability)
        self.power = float(power)
        self.mode = mode
        self.padding_mode = padding_mode

    def __repr__(self) -> str:
        return (
            f"RandomFFD(n_control={self.n_control}, max_displacement={self.max_displacement}, "
            f"probability={self.probability}, power={self.power}, mode={self.mode!r})"
        )

    def magnitude(self, shape: Sequence[int]) -> float:
        """The largest control displacement (voxels) used for images of spatial size ``shape``."""
        if self.max_displacement is None:
            return crd_augmentation_magnitude(shape)
        return float(self.max_displacement)

    def sample(
        self,
        shape: Sequence[int],
        batch: int = 1,
        generator: torch.Generator | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        share: slice = slice(None),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw the random parameters for ``batch`` images of spatial size ``shape``; return those
        of the elements ``share`` (all by default; e.g. one process's share of a global batch: the
        draws, hence the random stream, are those of the whole batch, the fields only the share's).

        Returns:
            ``(apply, flow)``: a ``(b,)`` bool tensor (which elements are deformed) and the
            ``(b, 3, D, H, W)`` displacement in voxels (zero for elements not deformed),
            ``b = len(share)``.
        """
        draw_device = generator.device if generator is not None else device
        apply = (
            torch.rand((batch,), generator=generator, device=draw_device, dtype=torch.float32)
            < self.probability
        )
        flow = random_bspline_displacement(
            shape,
            n_control=self.n_control,
            max_displacement=self.magnitude(shape),
            generator=generator,
            batch=batch,
            power=self.power,
            device=device,
            dtype=dtype,
            keep=share,
        )
        apply = apply[share].to(flow.device)
        return apply, flow * apply.to(dtype).view(-1, 1, 1, 1, 1)

    def apply(self, image: torch.Tensor, apply: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        """Warp the elements of ``image`` ``(B, C, D, H, W)`` selected by ``apply`` with ``flow``.

        Returns a tensor of the same shape, dtype and device; unselected elements are untouched.
        """
        check_volume(image)
        if not bool(apply.any()):
            return image
        warped = warp(image, flow.to(image.device), mode=self.mode, padding_mode=self.padding_mode)
        return torch.where(apply.to(image.device).view(-1, 1, 1, 1, 1), warped, image)

    def __call__(
        self, image: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Deform ``image`` ``(B, C, D, H, W)``; returns the same shape, dtype and device."""
        check_volume(image)
        dtype = image.dtype if image.is_floating_point() else torch.float32
        apply, flow = self.sample(
            image.shape[2:], image.shape[0], generator, device=image.device, dtype=dtype
        )
        return self.apply(image, apply, flow)

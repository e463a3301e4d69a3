"""The x``factor`` ceiling: a trained teacher's field restricted to what a low-resolution student can output.

A student that predicts its field on the grid coarser by ``factor`` and brings it back as
:class:`crd.models.registration.LowResolutionNet` does (``upsample_flow``: trilinear,
``align_corners=False``, scaled to fine voxels) can only output fields of the form ``U c``: ``c``
a coarse field, ``U`` that upsampling. However well it is taught, it cannot hold detail finer
than its grid. :class:`GridOracle` measures that ceiling: it runs a trained teacher and replaces
its field ``f`` by the field the student's output form holds closest to it:

- ``restriction="lsq"`` (the default): the least-squares projection ``U (UᵀU)⁻¹ Uᵀ f``, i.e. the
  output of a student whose field matched the teacher's in mean squared error as well as its grid
  allows (the flow term of CRD's distillation is that error). ``U`` is separable, so the
  projection is one ``(n, n)`` matrix per axis (:func:`grid_projection`), applied to each
  component. A field the student can output is left unchanged.
- ``restriction="mean"``: the average over each ``factor``³ block (the coarse voxel's footprint on
  the fine grid), brought back by the same upsampling. A field constant on those blocks has its
  block values as its restriction; the upsampling then interpolates between them.

Detail finer than the coarse grid (e.g. a displacement alternating voxel by voxel) is lost by both.
It is an oracle, not a method: it uses the teacher's field at test time.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from crd.models.backbone import Backbone
from crd.models.functional import check_flow, upsample_flow

__all__ = ["GridOracle", "RESTRICTIONS", "coarse_field", "grid_projection", "restrict_flow"]

RESTRICTIONS = ("lsq", "mean")


@lru_cache(maxsize=1)
def _backbone_multiple() -> int:
    """The backbone's ``size_multiple`` (what the student's coarse input must be a multiple of)."""
    return int(Backbone().size_multiple)


@lru_cache(maxsize=32)
def _upsampling64(n: int, factor: int) -> torch.Tensor:
    """``U``: the ``(n, n // factor)`` float64 matrix of 1-D linear x``factor`` upsampling
    (``align_corners=False``, as ``F.interpolate`` does it): column ``j`` is coarse sample ``j``'s
    contribution to the ``n`` fine samples."""
    m = n // factor
    basis = torch.eye(m, dtype=torch.float64).unsqueeze(1)  # (m, 1, m): each coarse unit vector
    return F.interpolate(basis, size=n, mode="linear", align_corners=False)[:, 0, :].T.contiguous()


@lru_cache(maxsize=32)
def _pinv64(n: int, factor: int) -> torch.Tensor:
    return torch.linalg.pinv(_upsampling64(n, factor))


def grid_projection(n: int, factor: int) -> torch.Tensor:
    """``U pinv(U)``: the ``(n, n)`` matrix (float64) that projects a 1-D signal of ``n`` samples
    onto the signals the x``factor`` linear upsampling (``align_corners=False``) of ``n // factor``
    coarse samples can give. ``n`` must be a multiple of ``factor``."""
    if factor < 1 or n % factor:
        raise ValueError(f"grid_projection: {n} samples are not a multiple of the factor {factor}")
    return _upsampling64(int(n), int(factor)) @ _pinv64(int(n), int(factor))


def coarse_field(flow: torch.Tensor, factor: int = 2, restriction: str = "lsq") -> torch.Tensor:
    """The coarse field ``(B, 3, D / factor, H / factor, W / factor)``, in coarse voxels, that stands
    for ``flow`` ``(B, 3, D, H, W)`` (fine voxels) on the x``factor`` grid: the block means
    (``"mean"``) or the least-squares coarse field, ``pinv(U)`` along each axis (``"lsq"``), both
    divided by ``factor``. Sides must be multiples of ``factor``; same dtype and device as ``flow``."""
    check_flow(flow)
    if restriction not in RESTRICTIONS:
        raise ValueError(f"restriction must be one of {RESTRICTIONS}, got {restriction!r}")
    shape = tuple(int(s) for s in flow.shape[2:])
    if factor < 1 or any(s % factor for s in shape):
        raise ValueError(f"a field of sides {shape} cannot be restricted to a grid coarser by {factor}")
    if restriction == "mean":
        return F.avg_pool3d(flow, kernel_size=factor) / factor
    out = flow.to(torch.float64)
    for axis, n in enumerate(shape):
        pinv = _pinv64(n, int(factor)).to(out.device)  # (n // factor, n)
        out = torch.movedim(torch.tensordot(out, pinv, dims=([2 + axis], [1])), -1, 2 + axis)
    return (out / factor).to(flow.dtype)


def restrict_flow(flow: torch.Tensor, factor: int = 2, restriction: str = "lsq") -> torch.Tensor:
    """``flow`` ``(B, 3, D, H, W)`` restricted to the x``factor`` coarser grid (:func:`coarse_field`)
    and brought back to ``(D, H, W)`` exactly as the low-resolution student brings its field back
    (:func:`crd.models.functional.upsample_flow`, ``align_corners=False``)."""
    return upsample_flow(coarse_field(flow, factor, restriction), flow.shape[2:], align_corners=False)


class GridOracle(nn.Module):
    """The ceiling of an x``factor`` student: ``teacher``'s field restricted by :func:`restrict_flow`.

    ``size_multiple`` is the least common multiple of the teacher's and the student's (``factor``
    times the backbone's), so the restriction sees the grid the student would see. ``config``
    records the teacher's config; it is rebuilt from the teacher's checkpoint, never from its own.
    """

    kind = "x2-oracle"

    def __init__(self, teacher: nn.Module, factor: int = 2, restriction: str = "lsq") -> None:
        super().__init__()
        if restriction not in RESTRICTIONS:
            raise ValueError(f"restriction must be one of {RESTRICTIONS}, got {restriction!r}")
        if factor < 1 or int(factor) != factor:
            raise ValueError(f"factor must be a positive integer, got {factor}")
        self.teacher = teacher
        self.factor = int(factor)
        self.restriction = restriction

    @property
    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "factor": self.factor, "restriction": self.restriction,
                "teacher": dict(self.teacher.config)}  # fmt: skip

    @property
    def size_multiple(self) -> int:
        return math.lcm(int(self.teacher.size_multiple), self.factor * _backbone_multiple())

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        return restrict_flow(self.teacher(fixed, moving), self.factor, self.restriction)

"""Inference, written once: the field of a model for a pair of any size, and the warps.

``crd evaluate``, ``crd register`` and ``crd bench`` all time exactly :func:`infer`: the field
(on images zero-padded to the model's ``size_multiple`` and cropped back) plus the warp of the
moving image, and the nearest-neighbour warp of its labels when given. Tensors are
``(B, C, D, H, W)``; fields ``(B, 3, D, H, W)`` in voxels, channels (D, H, W) (docs/conventions.md).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from crd.models.functional import warp

__all__ = ["Inference", "pad_to_multiple", "predict_flow", "infer"]


class Inference(NamedTuple):
    """What :func:`infer` returns: the field, the warped image, the warped labels (or ``None``)."""

    flow: torch.Tensor
    warped: torch.Tensor
    warped_labels: torch.Tensor | None


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[slice, slice, slice]]:
    """Zero-pad the spatial sides of ``x`` ``(B, C, D, H, W)`` up to multiples of ``multiple``.

    Padding is split evenly between the two ends of each axis (one more voxel at the end when
    odd). Returns the padded tensor and the spatial slices that crop it back to ``x``'s grid.
    """
    pads: list[tuple[int, int]] = []
    crop: list[slice] = []
    for size in x.shape[2:]:
        total = -size % multiple
        before = total // 2
        pads.append((before, total - before))
        crop.append(slice(before, before + size))
    flat = [p for pair in reversed(pads) for p in pair]  # F.pad wants the last axis first
    return (F.pad(x, flat) if any(flat) else x), tuple(crop)  # type: ignore[return-value]


def predict_flow(
    model: nn.Module,
    fixed: torch.Tensor,
    moving: torch.Tensor,
    autocast: AbstractContextManager | None = None,
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """The model's field for normalised ``(1, 1, D, H, W)`` images of any size (the forward pass
    inside ``autocast`` when given, e.g. ``torch.autocast("cuda", torch.bfloat16)``).

    Both images are zero-padded to ``model.size_multiple`` (:mod:`crd.models.contract`), the field
    is computed on the padded grid and cropped back: ``(1, 3, D, H, W)`` in voxels, channels
    (D, H, W). Also returns the padded spatial shape.
    """
    multiple = int(model.size_multiple)
    fixed_p, crop = pad_to_multiple(fixed, multiple)
    moving_p, _ = pad_to_multiple(moving, multiple)
    with autocast if autocast is not None else nullcontext():
        flow = model(fixed_p, moving_p)
    return flow[(slice(None), slice(None), *crop)], tuple(fixed_p.shape[2:])



def infer(
    model: nn.Module,
    fixed: torch.Tensor,
    moving: torch.Tensor,
    *,
    to_warp: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    autocast: AbstractContextManager | None = None,
) -> Inference:
    """Register ``moving`` to ``fixed`` (both ``(1, 1, D, H, W)``, as the model takes them):
    the field (:func:`predict_flow`, in float32), ``to_warp`` (default ``moving``; e.g. the image
    before intensity normalisation) warped trilinearly, and ``labels`` warped nearest-neighbour."""
    flow, _ = predict_flow(model, fixed, moving, autocast)
    flow = flow.float()
    warped = warp(moving if to_warp is None else to_warp, flow)
    warped_labels = warp(labels, flow, mode="nearest") if labels is not None else None
    return Inference(flow, warped, warped_labels)

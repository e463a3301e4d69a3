"""Training losses: unsupervised similarity + smoothness, and cross-resolution distillation.

- Similarity: local (windowed) normalised cross-correlation, squared, as VoxelMorph and the CRD
  authors use it; MONAI's :class:`~monai.losses.LocalNormalizedCrossCorrelationLoss` computes
  exactly that (returned negated, so lower is better).
- Smoothness: mean squared *forward* difference of the field (VoxelMorph's ``Grad('l2')``, the
  authors' regulariser). MONAI's ``DiffusionLoss`` uses central differences, which cannot see a
  checkerboard (odd/even) pattern in the field, so it is not used here.
- Distillation: MSE between student and teacher fields plus MSE between their attention maps at
  the four scales (CRD paper; the released code weights every term 1). A teacher and its student
  give their maps on the same four grids (1/2 ... 1/16 of the input, see
  :mod:`crd.models.registration`), so maps are paired by grid and never resized.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["gradient_smoothness", "UnsupervisedLoss", "DistillationLoss"]


def gradient_smoothness(flow: torch.Tensor) -> torch.Tensor:
    """Mean squared forward difference of a ``(B, 3, D, H, W)`` field along each axis (voxels^2).

    ``(mean(dD^2) + mean(dH^2) + mean(dW^2)) / 3``, as VoxelMorph's ``Grad('l2')``.
    """
    dd = flow[:, :, 1:, :, :] - flow[:, :, :-1, :, :]
    dh = flow[:, :, :, 1:, :] - flow[:, :, :, :-1, :]
    dw = flow[:, :, :, :, 1:] - flow[:, :, :, :, :-1]
    return (dd.pow(2).mean() + dh.pow(2).mean() + dw.pow(2).mean()) / 3.0


@dataclass
class LossTerms:
    """A loss value, its weighted terms (tensors that sum to ``total``, e.g. to measure each term's
    gradient) and its named unweighted parts (floats, for logging)."""

    total: torch.Tensor
    parts: dict[str, float]
    terms: dict[str, torch.Tensor]


class UnsupervisedLoss(nn.Module):
    """``ncc_weight * (-LNCC(fixed, warped)) + smooth_weight * gradient_smoothness(flow)``.

    Args:
        ncc_weight: weight of the (negated, squared) local NCC.
        ncc_window: side of the cubic NCC window, voxels (VoxelMorph default 9).
        smooth_weight: weight of the smoothness term.
    """

    def __init__(self, ncc_weight: float = 1.0, ncc_window: int = 9, smooth_weight: float = 1.0) -> None:
        super().__init__()
        from monai.losses import LocalNormalizedCrossCorrelationLoss

        self.ncc = LocalNormalizedCrossCorrelationLoss(
            spatial_dims=3, kernel_size=ncc_window, kernel_type="rectangular"
        )
        self.ncc_weight = ncc_weight
        self.smooth_weight = smooth_weight

    def forward(self, fixed: torch.Tensor, warped: torch.Tensor, flow: torch.Tensor) -> LossTerms:
        sim = self.ncc(warped, fixed)
        smooth = gradient_smoothness(flow)
        terms = {"ncc": self.ncc_weight * sim, "smooth": self.smooth_weight * smooth}
        return LossTerms(terms["ncc"] + terms["smooth"], {"ncc": -sim.item(), "smooth": smooth.item()}, terms)


class DistillationLoss(nn.Module):
    """``flow_weight * MSE(flow_s, flow_t) + attention_weight * sum_k MSE(map_s[k], map_t[k])``.

    Fields are ``(B, 3, D, H, W)`` in full-resolution voxels; maps are four ``(B, d, h, w)``
    tensors per model on matching grids (student decode_1x..8x, teacher fuse2..fuse5).
    """

    def __init__(self, flow_weight: float = 1.0, attention_weight: float = 1.0) -> None:
        super().__init__()
        self.flow_weight = flow_weight
        self.attention_weight = attention_weight

    def forward(
        self,
        student_flow: torch.Tensor,
        teacher_flow: torch.Tensor,
        student_maps: Sequence[torch.Tensor],
        teacher_maps: Sequence[torch.Tensor],
    ) -> LossTerms:
        if len(student_maps) != len(teacher_maps):
            raise ValueError(f"{len(student_maps)} student maps vs {len(teacher_maps)} teacher maps")
        flow_term = F.mse_loss(student_flow, teacher_flow)
        att_terms = []
        for s, t in zip(student_maps, teacher_maps, strict=True):
            if s.shape != t.shape:
                raise ValueError(
                    f"attention maps on different grids: student {tuple(s.shape)}, teacher {tuple(t.shape)}"
                )
            att_terms.append(F.mse_loss(s, t))
        att = torch.stack(att_terms).sum()
        terms = {"flow": self.flow_weight * flow_term, "attention": self.attention_weight * att}
        parts = {"flow_mse": flow_term.item(), "attention_mse": att.item()}
        return LossTerms(terms["flow"] + terms["attention"], parts, terms)

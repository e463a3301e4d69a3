"""Helpers for tests that need an untrained crd-bench network with a visible field.

A fresh network starts from the identity transform (its flow heads at ``Normal(0, 1e-5)``,
:func:`crd.models.backbone.initialise_weights`), so its field is ~1e-5 voxels: too small for a test
that checks that a field is padded, cropped, warped or reordered right.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def with_visible_field(model: nn.Module, std: float = 0.05, seed: int = 0) -> nn.Module:
    """Redraw ``model``'s flow heads (``flow``, ``flow_f``) from ``Normal(0, std)`` with ``seed``, so
    that its field is of the order of a voxel; returns ``model``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, conv in model.named_modules():
            if isinstance(conv, nn.Conv3d) and name.split(".")[-1] in ("flow", "flow_f"):
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * std)
    return model

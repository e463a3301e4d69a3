"""A method without a network (a classical tool, ``MODEL = None``) called as a model.

Its method file's ``register_pair(fixed, moving, *, spacing, seed, threads)`` (:mod:`crd.methods`)
takes ``(D, H, W)`` float32 arrays on the CPU and returns the field ``(3, D, H, W)`` in voxels of
the fixed grid; :class:`ExternalRegistration` wraps it as ``model(fixed, moving) -> field`` on
tensors, so ``crd evaluate``, the working-set measurement and ``crd register`` call one code path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from crd.errors import CrdError

__all__ = ["ExternalMethodError", "ExternalRegistration", "checked_field"]


class ExternalMethodError(CrdError, ValueError):
    """A method without a network failed: its tool is missing, or its field is malformed."""


def checked_field(field: Any, shape: tuple[int, ...], source: str) -> np.ndarray:
    """``field`` as a float32 ``(3, D, H, W)`` array on the grid ``shape``, every value finite;
    otherwise an :class:`ExternalMethodError` (a ``ValueError``) naming ``source``."""
    try:
        array = np.asarray(field, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ExternalMethodError(
            f"{source}: register_pair returned {type(field).__name__}, not an array: {exc}") from None
    if array.shape != (3, *shape):
        raise ExternalMethodError(
            f"{source}: register_pair returned a field of shape {array.shape}, expected {(3, *shape)} "
            "(3 displacement components in voxels, on the fixed image's grid)"
        )
    if not np.isfinite(array).all():
        raise ExternalMethodError(f"{source}: register_pair returned a field with non-finite values")
    return np.ascontiguousarray(array)


class ExternalRegistration(nn.Module):
    """``register_pair`` called as a model: ``(1, 1, D, H, W)`` images in, passed to it on the CPU
    as numpy with ``spacing`` (mm), ``seed`` and ``threads``; its field checked
    (:func:`checked_field`) and returned as ``(1, 3, D, H, W)`` on the images' device. A tool that
    is not installed (``ImportError``) becomes one line naming ``source``."""

    size_multiple = 1

    def __init__(self, register_pair: Callable[..., Any], spacing: tuple[float, ...], threads: int, source: str,
                 seed: int = 0) -> None:  # fmt: skip
        super().__init__()
        self.register_pair, self.spacing, self.threads, self.source, self.seed = (
            register_pair, spacing, threads, source, seed)  # fmt: skip

    @property
    def config(self) -> dict[str, Any]:
        return {"kind": "external", "method_file": self.source}

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        try:
            field = self.register_pair(
                fixed[0, 0].float().cpu().numpy(), moving[0, 0].float().cpu().numpy(),
                spacing=self.spacing, seed=self.seed, threads=self.threads,
            )  # fmt: skip
        except ImportError as exc:
            raise ExternalMethodError(f"{self.source}: {exc}") from None
        return torch.from_numpy(checked_field(field, tuple(fixed.shape[2:]), self.source))[None].to(fixed.device)

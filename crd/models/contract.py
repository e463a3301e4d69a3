"""The model contract: what train, evaluate, register and bench may ask of a registration model.

Written once, as typing Protocols (checked at run time by :func:`build_model`), instead of
``getattr``/``hasattr`` probes scattered over the callers:

- :class:`RegistrationModel`: called as ``model(fixed, moving)`` on ``(B, 1, D, H, W)`` images,
  returns the displacement field ``(B, 3, D, H, W)`` in voxels of the fixed grid, channels
  (D, H, W), the moving image warped as ``moving(p + u(p))`` (docs/conventions.md); input sides
  must be multiples of ``size_multiple`` (callers pad, :func:`crd.models.inference.infer`);
  ``config`` is the JSON-able dict that rebuilds it (stored in checkpoints);
- :class:`DistillableModel`: also ``forward_with_maps(fixed, moving)`` -> ``(field, maps)``, a
  list of four attention maps (per-voxel sum over channels of the squared features), fine to
  coarse, on the grids 1/2, 1/4, 1/8 and 1/16 of the input, so that any teacher's maps pair with
  the x2 student's;
- :class:`SchemeBackbone`: a network the CRD scheme (:mod:`crd.models.scheme`) can wrap into a
  naive low-resolution model, a feature-shifted teacher and a distilled student: called on a pair
  ``x = cat([fixed, moving], 1)`` ``(B, 2, D, H, W)`` it gives the field, and
  ``forward_features(x, field=True)`` gives ``(field, features)``: its decoder features fine to
  coarse, feature ``k`` on the grid ``1/2**k`` of ``x`` with ``feature_channels[k]`` channels (two
  levels at least; the field may be ``None`` when ``field`` is false). crd-bench's
  :class:`~crd.models.backbone.Backbone` implements it; a method file's network joins by naming
  its feature modules (``feature_modules``, :class:`crd.models.scheme.HookedFeatures`).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["RegistrationModel", "DistillableModel", "SchemeBackbone", "check_model"]


@runtime_checkable
class RegistrationModel(Protocol):
    """A registration network (see the module docstring)."""

    size_multiple: int
    config: dict[str, Any]

    def __call__(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class DistillableModel(RegistrationModel, Protocol):
    """A registration network that also gives its attention maps (teacher or student)."""

    def forward_with_maps(
        self, fixed: torch.Tensor, moving: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]: ...


@runtime_checkable
class SchemeBackbone(Protocol):
    """A backbone the CRD scheme can wrap (see the module docstring)."""

    size_multiple: int
    feature_channels: tuple[int, ...]

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def forward_features(
        self, x: torch.Tensor, field: bool = True
    ) -> tuple[torch.Tensor | None, list[torch.Tensor]]: ...


def check_model(model: Any, what: str) -> RegistrationModel:
    """Raise ``ValueError`` (a one-line user error) naming ``what`` and the missing members unless
    ``model`` follows :class:`RegistrationModel`; returns it."""
    if not isinstance(model, RegistrationModel):
        missing = [m for m in ("size_multiple", "config", "__call__") if not hasattr(model, m)]
        raise ValueError(f"{what}: not a registration model (missing {', '.join(missing)})")
    return model

"""Registration models built from the one :class:`~crd.models.backbone.Backbone`.

Every model follows :mod:`crd.models.contract`: it maps ``(fixed, moving)``, each
``(B, 1, D, H, W)``, to a displacement field ``(B, 3, D, H, W)`` on the fixed grid, in voxels of
that grid (docs/conventions.md). Models that take part in distillation also implement
``forward_with_maps`` returning the field and four
attention maps (per-voxel sum over channels of the squared features) on the grids 1/2, 1/4, 1/8
and 1/16 of the input, fine to coarse, so that any teacher's maps pair with the x2 student's.

- :class:`FullResolutionNet` - the backbone at full resolution (methods ``hr`` and, at width 0.5,
  ``hr-half``).
- :class:`LowResolutionNet` - the backbone on the input downsampled x``factor`` (trilinear,
  ``align_corners=False``), flow upsampled trilinearly and scaled (methods ``lr`` and ``crd``).
- :class:`FeatureShiftedTeacher` - one backbone run on the full- and the half-resolution input,
  features fused by a second decoder (method ``fst``).
- :class:`IdentityNet` - the zero field (method ``identity``: the score before registration).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from crd.models.backbone import Backbone, conv3, initialise_weights, leaky, scaled
from crd.models.contract import check_model
from crd.models.functional import check_volume, downsample, upsample_flow

__all__ = [
    "FullResolutionNet",
    "LowResolutionNet",
    "FeatureShiftedTeacher",
    "IdentityNet",
    "attention_map",
    "MODEL_KINDS",
    "PLUGIN_KINDS",
    "use_method_models",
    "build_model",
]


def attention_map(features: torch.Tensor) -> torch.Tensor:
    """Attention map of ``(B, C, d, h, w)`` features: ``(f * f).sum(1)``, shape ``(B, d, h, w)``."""
    return (features * features).sum(dim=1)


def _pair(fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
    check_volume(fixed, "fixed")
    check_volume(moving, "moving")
    if fixed.shape != moving.shape:
        raise ValueError(f"fixed {tuple(fixed.shape)} and moving {tuple(moving.shape)} must have the same shape")
    return torch.cat([fixed, moving], dim=1)


class FullResolutionNet(nn.Module):
    """The backbone on the full-resolution pair. ``width`` scales every layer's channels."""

    kind = "fullres"

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        self.backbone = Backbone(width)

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments; ``build_model(model.config)`` rebuilds the architecture."""
        return {"kind": self.kind, "width": self.backbone.width}

    @property
    def size_multiple(self) -> int:
        """Input sides should be multiples of this (16): the backbone's."""
        return self.backbone.size_multiple

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        """``(B, 3, D, H, W)`` field in full-resolution voxels."""
        return self.backbone(_pair(fixed, moving))

    def forward_with_maps(self, fixed: torch.Tensor, moving: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Field and the attention maps of decode_2x, decode_4x, decode_8x, decode_16x (grids 1/2,
        1/4, 1/8, 1/16 of the input: those of the x2 student's four maps, so this model can be
        the teacher of plain distillation, method ``kd-hr``, with no resizing)."""
        feats = self.backbone.features(_pair(fixed, moving))
        flow = self.backbone.flow(feats["decode_1x"])
        maps = [attention_map(feats[k]) for k in ("decode_2x", "decode_4x", "decode_8x", "decode_16x")]
        return flow, maps


class LowResolutionNet(nn.Module):
    """The naive low-resolution model: predict at 1/``factor`` resolution, upsample the field.

    1. ``x = cat([fixed, moving])`` downsampled to ``(D, H, W) // factor`` (trilinear,
       ``align_corners=False``);
    2. the backbone's field at that resolution;
    3. upsampled to ``(D, H, W)`` (trilinear, ``align_corners=False``) and multiplied by
       ``factor`` so that it is in full-resolution voxels.

    This is the CRD student's network (docs/architecture.md, "Naive low-resolution model").
    """

    kind = "lowres"

    def __init__(self, width: float = 1.0, factor: int = 2) -> None:
        super().__init__()
        if factor < 1 or int(factor) != factor:
            raise ValueError(f"factor must be a positive integer, got {factor}")
        self.factor = int(factor)
        self.backbone = Backbone(width)

    @property
    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "width": self.backbone.width, "factor": self.factor}

    @property
    def size_multiple(self) -> int:
        """Input sides should be multiples of this: ``factor`` times the backbone's (32 at x2)."""
        return self.factor * self.backbone.size_multiple

    def _low_res_input(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        return downsample(_pair(fixed, moving), self.factor, align_corners=False)

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        """``(B, 3, D, H, W)`` field in full-resolution voxels."""
        flow_lr = self.backbone(self._low_res_input(fixed, moving))
        return upsample_flow(flow_lr, fixed.shape[2:], align_corners=False)

    def forward_with_maps(self, fixed: torch.Tensor, moving: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Field and the attention maps of decode_1x, decode_2x, decode_4x, decode_8x of the
        low-resolution pass (grids 1/f, 1/(2f), 1/(4f), 1/(8f) of the input)."""
        feats = self.backbone.features(self._low_res_input(fixed, moving))
        flow = upsample_flow(self.backbone.flow(feats["decode_1x"]), fixed.shape[2:], False)
        maps = [attention_map(feats[k]) for k in ("decode_1x", "decode_2x", "decode_4x", "decode_8x")]
        return flow, maps


class FeatureShiftedTeacher(nn.Module):
    """The feature-shifted teacher (FST) of the CRD paper.

    One backbone runs on the full-resolution pair (HR path) and on the pair downsampled x2 with
    trilinear ``align_corners=True`` (LR path). LR features at LR scale 1/2^k share the grid of
    HR features at 1/2^(k+1) and are fused by ``fuse5`` ... ``fuse1`` (3x3x3 conv + LeakyReLU,
    inputs upsampled trilinearly with ``align_corners=True``); ``flow_f`` gives the field. The
    backbone's own HR ``flow`` head is kept (unused) so the authors' weights load; at width 1 the
    model has 605,254 parameters. Input sides must be multiples of 32.
    """

    kind = "fst"

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        self.backbone = Backbone(width)
        c16, c32 = scaled(16, width), scaled(32, width)
        self.fuse5 = conv3(c32 + c32, c32)  # [LR decode_8x, HR decode_16x]
        self.fuse4 = conv3(c32 + c32 + c32, c32)  # [up(fuse5), LR decode_4x, HR decode_8x]
        self.fuse3 = conv3(c32 + c16 + c32, c32)  # [up(fuse4), LR decode_2x, HR decode_4x]
        self.fuse2 = conv3(c32 + c16 + c16, c32)  # [up(fuse3), LR decode_1x, HR decode_2x]
        self.fuse1 = conv3(c32 + c16, c16)  # [up(fuse2), HR decode_1x]
        self.flow_f = conv3(c16, 3)
        # the fusing decoder as the backbone (its weights usually come from a trained hr)
        fusing = ("fuse5", "fuse4", "fuse3", "fuse2", "fuse1", "flow_f")
        initialise_weights(nn.ModuleDict({name: getattr(self, name) for name in fusing}))

    @property
    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "width": self.backbone.width}

    @property
    def size_multiple(self) -> int:
        """Input sides must be multiples of this (32): the backbone's, on the x2 LR path."""
        return 2 * self.backbone.size_multiple

    def forward_with_maps(self, fixed: torch.Tensor, moving: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Field ``(B, 3, D, H, W)`` and the attention maps of fuse2, fuse3, fuse4, fuse5 (grids
        1/2, 1/4, 1/8, 1/16 of the input: those of the x2 student's four maps)."""
        x = _pair(fixed, moving)
        if any(s % 32 for s in x.shape[2:]):
            raise ValueError(
                f"the feature-shifted teacher needs sides that are multiples of 32, got {tuple(x.shape[2:])}"
            )
        hr = self.backbone.features(x)
        lr = self.backbone.features(downsample(x, 2, align_corners=True))

        def up(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
            return F.interpolate(t, size=like.shape[2:], mode="trilinear", align_corners=True)

        f5 = leaky(self.fuse5(torch.cat([lr["decode_8x"], hr["decode_16x"]], 1)))
        f4 = leaky(self.fuse4(torch.cat([up(f5, hr["decode_8x"]), lr["decode_4x"], hr["decode_8x"]], 1)))
        f3 = leaky(self.fuse3(torch.cat([up(f4, hr["decode_4x"]), lr["decode_2x"], hr["decode_4x"]], 1)))
        f2 = leaky(self.fuse2(torch.cat([up(f3, hr["decode_2x"]), lr["decode_1x"], hr["decode_2x"]], 1)))
        f1 = leaky(self.fuse1(torch.cat([up(f2, hr["decode_1x"]), hr["decode_1x"]], 1)))
        return self.flow_f(f1), [attention_map(f) for f in (f2, f3, f4, f5)]

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        """``(B, 3, D, H, W)`` field in full-resolution voxels (the fused head ``flow_f``)."""
        return self.forward_with_maps(fixed, moving)[0]


class IdentityNet(nn.Module):
    """No registration: the zero field. Scores the pair as it is before registration."""

    kind = "identity"

    @property
    def config(self) -> dict[str, Any]:
        return {"kind": self.kind}

    #: any input size works
    size_multiple = 1

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        x = _pair(fixed, moving)
        return x.new_zeros((x.shape[0], 3, *x.shape[2:]))


MODEL_KINDS: dict[str, type[nn.Module]] = {
    cls.kind: cls for cls in (FullResolutionNet, LowResolutionNet, FeatureShiftedTeacher, IdentityNet)
}


#: model kinds brought by method files (``build_model`` in ``baselines/<name>.py``), by kind:
#: (builder, method file). Filled by :func:`use_method_models`, never from a checkpoint.
PLUGIN_KINDS: dict[str, tuple[Callable[[dict[str, Any]], nn.Module], Path]] = {}


def use_method_models(specs: Iterable[Any]) -> None:
    """Make the networks that method files bring buildable in this process: for each method spec
    (:class:`crd.methods.MethodSpec`) with a ``build_model``, its ``MODEL['kind']`` (the latest
    files given define a kind). A kind that is crd-bench's own, or that two different files given
    together define, is an error naming both."""
    given: dict[str, Path] = {}
    for spec in specs:
        if spec.builder is None or spec.model is None:
            continue
        kind, path = spec.model["kind"], Path(spec.path)
        if kind in MODEL_KINDS:
            raise ValueError(f"{path}: model kind {kind!r} is crd-bench's own; give your network another kind")
        if kind in given and given[kind].resolve() != path.resolve():
            raise ValueError(f"{path}: model kind {kind!r} is also defined by {given[kind]}")
        given[kind] = path
        PLUGIN_KINDS[kind] = (spec.builder, path)


def build_model(config: dict[str, Any]) -> nn.Module:
    """Build a model from its config, e.g. ``{"kind": "lowres", "width": 1.0, "factor": 2}``.

    Raises ``ValueError`` naming the known kinds or the unexpected arguments.
    """
    if not isinstance(config, dict) or "kind" not in config:
        raise ValueError(f"a model config is a mapping with a 'kind' key, got {config!r}")
    kind = config["kind"]
    if kind in PLUGIN_KINDS:
        builder, source = PLUGIN_KINDS[kind]
        try:
            model = builder(dict(config))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source}: build_model({config}) failed: {exc}") from None
        check_model(model, f"{source}: build_model({config})")
        return model
    if kind not in MODEL_KINDS:
        raise ValueError(
            f"unknown model kind {kind!r}; known kinds: {', '.join([*MODEL_KINDS, *PLUGIN_KINDS])} (a network "
            "that a method file brings is known once that file is given, e.g. with --method-file)"
        )
    kwargs = {k: v for k, v in config.items() if k != "kind"}
    try:
        model = MODEL_KINDS[kind](**kwargs)
    except TypeError as exc:
        raise ValueError(f"bad arguments for model kind {kind!r}: {kwargs} ({exc})") from None
    check_model(model, f"model kind {kind!r}")
    return model

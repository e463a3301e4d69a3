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

from crd.models.backbone import Backbone
from crd.models.contract import check_model
from crd.models.scheme import (
    FeatureShiftedScheme,
    LowResolutionScheme,
    attention_map,
    pair_input,
    scheme_backbone,
)

__all__ = [
    "FullResolutionNet",
    "LowResolutionNet",
    "FeatureShiftedTeacher",
    "IdentityNet",
    "attention_map",
    "MODEL_KINDS",
    "SCHEME_KINDS",
    "PLUGIN_KINDS",
    "use_method_models",
    "build_model",
]


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
        return self.backbone(pair_input(fixed, moving))

    def forward_with_maps(self, fixed: torch.Tensor, moving: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Field and the attention maps of decode_2x, decode_4x, decode_8x, decode_16x (grids 1/2,
        1/4, 1/8, 1/16 of the input: those of the x2 student's four maps, so this model can be
        the teacher of plain distillation, method ``kd-hr``, with no resizing)."""
        feats = self.backbone.features(pair_input(fixed, moving))
        flow = self.backbone.flow(feats["decode_1x"])
        maps = [attention_map(feats[k]) for k in ("decode_2x", "decode_4x", "decode_8x", "decode_16x")]
        return flow, maps


class LowResolutionNet(LowResolutionScheme):
    """The naive low-resolution model over crd-bench's backbone: predict at 1/``factor``
    resolution, upsample the field (:class:`crd.models.scheme.LowResolutionScheme` over
    :class:`~crd.models.backbone.Backbone`).

    1. ``x = cat([fixed, moving])`` downsampled to ``(D, H, W) // factor`` (trilinear,
       ``align_corners=False``);
    2. the backbone's field at that resolution;
    3. upsampled to ``(D, H, W)`` (trilinear, ``align_corners=False``) and multiplied by
       ``factor`` so that it is in full-resolution voxels.

    Its attention maps are those of decode_1x, decode_2x, decode_4x, decode_8x of the
    low-resolution pass (grids 1/f, 1/(2f), 1/(4f), 1/(8f) of the input). This is the CRD
    student's network (docs/architecture.md, "Naive low-resolution model").
    """

    kind = "lowres"

    def __init__(self, width: float = 1.0, factor: int = 2) -> None:
        if factor < 1 or int(factor) != factor:
            raise ValueError(f"factor must be a positive integer, got {factor}")
        super().__init__(Backbone(width), factor)

    @property
    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "width": self.backbone.width, "factor": self.factor}


class FeatureShiftedTeacher(FeatureShiftedScheme):
    """The feature-shifted teacher (FST) of the CRD paper over crd-bench's backbone
    (:class:`crd.models.scheme.FeatureShiftedScheme` over :class:`~crd.models.backbone.Backbone`).

    One backbone runs on the full-resolution pair (HR path) and on the pair downsampled x2 with
    trilinear ``align_corners=True`` (LR path). LR features at LR scale 1/2^k share the grid of
    HR features at 1/2^(k+1) and are fused by ``fuse5`` ... ``fuse1`` (3x3x3 conv + LeakyReLU,
    inputs upsampled trilinearly with ``align_corners=True``): ``fuse5`` [LR decode_8x, HR
    decode_16x], ``fuse4`` [up(fuse5), LR decode_4x, HR decode_8x], ``fuse3`` [up(fuse4), LR
    decode_2x, HR decode_4x], ``fuse2`` [up(fuse3), LR decode_1x, HR decode_2x], ``fuse1``
    [up(fuse2), HR decode_1x]; ``flow_f`` gives the field. The backbone's own HR ``flow`` head is
    kept (unused) so the authors' weights load; at width 1 the model has 605,254 parameters. Input
    sides must be multiples of 32.
    """

    kind = "fst"

    def __init__(self, width: float = 1.0) -> None:
        super().__init__(Backbone(width))

    @property
    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "width": self.backbone.width}


class IdentityNet(nn.Module):
    """No registration: the zero field. Scores the pair as it is before registration."""

    kind = "identity"

    @property
    def config(self) -> dict[str, Any]:
        return {"kind": self.kind}

    #: any input size works
    size_multiple = 1

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        x = pair_input(fixed, moving)
        return x.new_zeros((x.shape[0], 3, *x.shape[2:]))


MODEL_KINDS: dict[str, type[nn.Module]] = {
    cls.kind: cls for cls in (FullResolutionNet, LowResolutionNet, FeatureShiftedTeacher, IdentityNet)
}

#: the CRD scheme over another network's config (``{"kind": "scheme-lr", "backbone": {...},
#: "factor": 2}``, ``{"kind": "scheme-fst", "backbone": {...}}``; :mod:`crd.models.scheme`)
SCHEME_KINDS: dict[str, type[nn.Module]] = {cls.kind: cls for cls in (LowResolutionScheme, FeatureShiftedScheme)}


#: model kinds brought by method files (``build_model`` in ``baselines/<name>.py``), by kind:
#: (builder, method file). Filled by :func:`use_method_models`, never from a checkpoint.
PLUGIN_KINDS: dict[str, tuple[Callable[[dict[str, Any]], nn.Module], Path]] = {}


def use_method_models(specs: Iterable[Any]) -> None:
    """Make the networks that method files bring buildable in this process: for each method spec
    (:class:`crd.methods.MethodSpec`) with a ``build_model``, its ``MODEL['kind']`` (the latest
    files given define a kind). A kind that is crd-bench's own, or that two different files given
    together define, is an error naming both."""
    given: dict[str, Path] = {}
    specs = list(specs)
    specs += [s.backbone for s in specs if getattr(s, "backbone", None) is not None]  # the CRD scheme's networks
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
    if kind in SCHEME_KINDS:
        return _build_scheme(config)
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
            f"unknown model kind {kind!r}; known kinds: {', '.join([*MODEL_KINDS, *SCHEME_KINDS, *PLUGIN_KINDS])} "
            "(a network "
            "that a method file brings is known once that file is given, e.g. with --method-file)"
        )
    kwargs = {k: v for k, v in config.items() if k != "kind"}
    try:
        model = MODEL_KINDS[kind](**kwargs)
    except TypeError as exc:
        raise ValueError(f"bad arguments for model kind {kind!r}: {kwargs} ({exc})") from None
    check_model(model, f"model kind {kind!r}")
    return model


def _build_scheme(config: dict[str, Any]) -> nn.Module:
    """A :data:`SCHEME_KINDS` model: the backbone built from ``config["backbone"]`` (any kind,
    e.g. one a method file brings), made a scheme backbone (:func:`crd.models.scheme.scheme_backbone`)."""
    kind = config["kind"]
    backbone_config = config.get("backbone")
    if not isinstance(backbone_config, dict):
        raise ValueError(f"model kind {kind!r} needs a 'backbone' model config, got {backbone_config!r}")
    extra = {k: v for k, v in config.items() if k not in ("kind", "backbone")}
    source = PLUGIN_KINDS.get(backbone_config.get("kind"), (None, None))[1]
    what = f"{source or 'model kind ' + repr(backbone_config.get('kind'))}"
    backbone = scheme_backbone(build_model(backbone_config), what)
    try:
        model = SCHEME_KINDS[kind](backbone, backbone_config=backbone_config, **extra)
    except TypeError as exc:
        raise ValueError(f"bad arguments for model kind {kind!r}: {extra} ({exc})") from None
    check_model(model, f"model kind {kind!r}")
    return model

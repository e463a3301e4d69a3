"""Cross-resolution distillation as a scheme over any backbone that gives its decoder features.

The CRD paper reduces the input resolution of an *existing* registration network and recovers
its accuracy by distillation. Given a backbone that follows
:class:`crd.models.contract.SchemeBackbone` (``backbone(x)`` -> field and
``backbone.forward_features(x, field=True)`` -> ``(field or None, [features fine to coarse])`` for a pair
``x = cat([fixed, moving])``, feature ``k`` on the grid ``1/2**k`` of ``x``, with
``feature_channels`` and ``size_multiple``), this module builds, with no copy of the network:

- :class:`LowResolutionScheme`: the naive low-resolution model: the pair downsampled
  x``factor`` (trilinear, ``align_corners=False``), the backbone's field at that resolution,
  upsampled trilinearly and multiplied by ``factor``; its attention maps are those of the
  low-resolution pass's features 0 .. L-2 (the CRD student, trained then distilled);
- :class:`FeatureShiftedScheme`: the feature-shifted teacher: one backbone on the full- and the
  half-resolution pair (trilinear, ``align_corners=True``); the half-resolution features at
  level ``k - 1`` share the grid of the full-resolution features at level ``k`` and are fused by
  ``fuse{L}`` ... ``fuse1`` (3x3x3 convolution + LeakyReLU(0.2), coarse to fine, each fed the
  previous fuse's output upsampled trilinearly with ``align_corners=True``, the shifted
  half-resolution features and the full-resolution ones); ``flow_f`` gives the field. The fuse at
  level ``k`` has as many output channels as the full-resolution feature at level ``k + 1`` (the
  coarsest, as its own level). Its attention maps are those of ``fuse2`` ... ``fuse{L}``, on the
  grids of the student's.

With L feature levels both give L - 1 attention maps on the grids 1/2 .. 1/2**(L-1) of the input,
fine to coarse, so teacher and student pair up by grid. crd-bench's own ``lr`` and ``fst``
(:mod:`crd.models.registration`) are these two over :class:`crd.models.backbone.Backbone`
(L = 5), parameter for parameter and bit for bit the networks they were before the scheme was
generic. A network that a method file brings joins by naming its feature modules
(:class:`HookedFeatures`); one that cannot is refused in one line naming what is missing.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from crd.models.backbone import conv3, initialise_weights, leaky
from crd.models.contract import SchemeBackbone
from crd.models.functional import check_volume, downsample, upsample_flow

__all__ = [
    "attention_map",
    "pair_input",
    "HookedFeatures",
    "scheme_backbone",
    "LowResolutionScheme",
    "FeatureShiftedScheme",
]


def attention_map(features: torch.Tensor) -> torch.Tensor:
    """Attention map of ``(B, C, d, h, w)`` features: ``(f * f).sum(1)``, shape ``(B, d, h, w)``."""
    return (features * features).sum(dim=1)


def pair_input(fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
    """``cat([fixed, moving], 1)``, ``(B, 2, D, H, W)``, after checking both are volumes of one shape."""
    check_volume(fixed, "fixed")
    check_volume(moving, "moving")
    if fixed.shape != moving.shape:
        raise ValueError(f"fixed {tuple(fixed.shape)} and moving {tuple(moving.shape)} must have the same shape")
    return torch.cat([fixed, moving], dim=1)


class HookedFeatures(nn.Module):
    """A method file's network as a :class:`~crd.models.contract.SchemeBackbone`: its decoder
    features are the outputs of the modules it names, fine to coarse, in ``feature_modules``
    (e.g. ``["net.decode_convs.2", "net.decode_convs.1", "net.decode_convs.0", "net.bottom_block"]``),
    caught with forward hooks during its own ``forward(fixed, moving)``.

    At construction the network is run once on zeros of sides 2, 3 and 4 times its
    ``size_multiple`` (in eval mode, without gradients) to read each feature's channels and check
    that feature ``k`` lies on the grid ``1/2**k`` of the input; a name that is no module, a
    feature on another grid, or fewer than two levels is a ``ValueError`` of one line.
    """

    def __init__(self, net: nn.Module, what: str = "the network") -> None:
        super().__init__()
        self.net = net
        names = list(getattr(net, "feature_modules", None) or [])
        modules = dict(net.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise ValueError(f"{what}: feature_modules names {', '.join(map(repr, missing))}, which are not modules "
                             f"of the network (named_modules())")  # fmt: skip
        if len(names) < 2:
            raise ValueError(f"{what}: the CRD scheme needs decoder features at two scales at least (1 and 1/2 of "
                             f"the input); feature_modules names {len(names)}")  # fmt: skip
        self.feature_names = names
        self._hooked = [modules[n] for n in names]  # a plain list: looked up once, not registered again
        self.size_multiple = int(net.size_multiple)
        self.feature_channels = self._probe(what)

    def _capture(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        found: dict[str, torch.Tensor] = {}

        def keep(name: str):
            def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
                found[name] = output[0] if isinstance(output, (tuple, list)) else output

            return hook

        handles = [m.register_forward_hook(keep(n)) for n, m in zip(self.feature_names, self._hooked, strict=True)]
        try:
            field = self.net(x[:, :1], x[:, 1:])
        finally:
            for handle in handles:
                handle.remove()
        return field, [found[n] for n in self.feature_names]

    def _probe(self, what: str) -> tuple[int, ...]:
        m = self.size_multiple
        shape = (2 * m, 3 * m, 4 * m)
        was_training = self.net.training
        self.net.eval()
        try:
            with torch.no_grad():
                _, feats = self._capture(torch.zeros(1, 2, *shape))
        finally:
            self.net.train(was_training)
        for k, (name, f) in enumerate(zip(self.feature_names, feats, strict=True)):
            expected = tuple(s // 2**k for s in shape)
            if f.dim() != 5 or tuple(f.shape[2:]) != expected:
                raise ValueError(f"{what}: feature {k} ({name!r}) has shape {tuple(f.shape)} for a "
                                 f"{'x'.join(map(str, shape))} input; feature k must lie on 1/2**k of the input grid "
                                 f"({'x'.join(map(str, expected))} here), fine to coarse")  # fmt: skip
        return tuple(int(f.shape[1]) for f in feats)

    def forward_features(self, x: torch.Tensor, field: bool = True) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The network's field for the pair ``x`` ``(B, 2, D, H, W)`` and its named features (the
        field is computed either way: the features come from the network's own forward)."""
        return self._capture(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network's field for the pair ``x`` ``(B, 2, D, H, W)``."""
        return self.net(x[:, :1], x[:, 1:])


def scheme_backbone(net: nn.Module, what: str = "the network") -> nn.Module:
    """``net`` itself when it follows :class:`~crd.models.contract.SchemeBackbone`, else
    :class:`HookedFeatures` around it when it names ``feature_modules``; otherwise a one-line
    ``ValueError`` saying what is missing."""
    if isinstance(net, SchemeBackbone):
        return net
    if getattr(net, "feature_modules", None) is not None:
        return HookedFeatures(net, what)
    raise ValueError(
        f"{what}: the CRD scheme cannot wrap it: it names no decoder features (give its class a "
        f"feature_modules list: the modules whose outputs are its features at 1, 1/2, 1/4, ... of the input, "
        f"fine to coarse) and has no forward_features (crd/models/contract.py, SchemeBackbone)"
    )


class LowResolutionScheme(nn.Module):
    """The naive low-resolution model over ``backbone`` (see the module docstring)."""

    kind = "scheme-lr"

    def __init__(self, backbone: nn.Module, factor: int = 2, backbone_config: dict[str, Any] | None = None) -> None:
        super().__init__()
        if factor < 1 or int(factor) != factor:
            raise ValueError(f"factor must be a positive integer, got {factor}")
        self.factor = int(factor)
        self.backbone = backbone
        self._backbone_config = backbone_config

    @property
    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "backbone": dict(self._backbone_config or {}), "factor": self.factor}

    @property
    def size_multiple(self) -> int:
        """Input sides should be multiples of this: ``factor`` times the backbone's."""
        return self.factor * int(self.backbone.size_multiple)

    def _low_res_input(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        return downsample(pair_input(fixed, moving), self.factor, align_corners=False)

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        """``(B, 3, D, H, W)`` field in full-resolution voxels."""
        flow_lr = self.backbone(self._low_res_input(fixed, moving))
        return upsample_flow(flow_lr, fixed.shape[2:], align_corners=False)

    def forward_with_maps(self, fixed: torch.Tensor, moving: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Field and the attention maps of the low-resolution pass's features 0 .. L-2 (grids
        1/f, 1/(2f), ... of the input)."""
        flow_lr, feats = self.backbone.forward_features(self._low_res_input(fixed, moving))
        flow = upsample_flow(flow_lr, fixed.shape[2:], False)
        return flow, [attention_map(f) for f in feats[:-1]]


class FeatureShiftedScheme(nn.Module):
    """The feature-shifted teacher over ``backbone`` (see the module docstring)."""

    kind = "scheme-fst"

    def __init__(self, backbone: nn.Module, backbone_config: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self._backbone_config = backbone_config
        channels = tuple(int(c) for c in backbone.feature_channels)
        levels = len(channels)
        if levels < 2:
            raise ValueError(f"the feature-shifted teacher needs features at two scales at least, got {levels}")
        self.levels = levels
        for k in range(levels - 1, -1, -1):  # coarse to fine: fuse{L} ... fuse1
            inputs = channels[k] + (channels[k - 1] if k >= 1 else 0)  # full-res level k + shifted half-res k-1
            if k < levels - 1:
                inputs += channels[min(k + 2, levels - 1)]  # the coarser fuse's output, upsampled
            out = channels[min(k + 1, levels - 1)]
            self.add_module(f"fuse{k + 1}", conv3(inputs, out))
        self.flow_f = conv3(channels[min(1, levels - 1)], 3)
        # the fusing decoder as the backbone (its weights usually come from the trained backbone)
        fusing = [f"fuse{k + 1}" for k in range(levels - 1, -1, -1)] + ["flow_f"]
        initialise_weights(nn.ModuleDict({name: getattr(self, name) for name in fusing}))

    @property
    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "backbone": dict(self._backbone_config or {})}

    @property
    def size_multiple(self) -> int:
        """Input sides must be multiples of this: the backbone's, on the x2 half-resolution path."""
        return 2 * int(self.backbone.size_multiple)

    def forward_with_maps(self, fixed: torch.Tensor, moving: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Field ``(B, 3, D, H, W)`` and the attention maps of fuse2 ... fuse{L} (grids 1/2 ...
        1/2**(L-1) of the input: those of the x2 student's maps)."""
        x = pair_input(fixed, moving)
        multiple = self.size_multiple
        if any(s % multiple for s in x.shape[2:]):
            raise ValueError(
                f"the feature-shifted teacher needs sides that are multiples of {multiple}, got {tuple(x.shape[2:])}"
            )
        _, hr = self.backbone.forward_features(x, field=False)
        _, lr = self.backbone.forward_features(downsample(x, 2, align_corners=True), field=False)

        def up(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
            return F.interpolate(t, size=like.shape[2:], mode="trilinear", align_corners=True)

        fused: list[torch.Tensor] = []
        previous: torch.Tensor | None = None
        for k in range(self.levels - 1, -1, -1):
            parts = [] if previous is None else [up(previous, hr[k])]
            if k >= 1:
                parts.append(lr[k - 1])
            parts.append(hr[k])
            previous = leaky(getattr(self, f"fuse{k + 1}")(torch.cat(parts, 1)))
            fused.append(previous)
        fused.reverse()  # fine to coarse: fuse1, fuse2, ...
        return self.flow_f(fused[0]), [attention_map(f) for f in fused[1:]]

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        """``(B, 3, D, H, W)`` field in full-resolution voxels (the fused head ``flow_f``)."""
        return self.forward_with_maps(fixed, moving)[0]

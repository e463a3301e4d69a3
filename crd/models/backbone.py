"""The registration backbone: the CRD authors' VoxelMorph-style 3-D U-Net, with a width multiplier.

Layer for layer the authors' network as docs/architecture.md restates it: every convolution is 3x3x3 with
padding 1 and a bias, followed by LeakyReLU(0.2) except the flow head; the decoder upsamples with
nearest-neighbour interpolation to the skip connection's grid. Module names equal the authors'
checkpoint keys (``conv1`` ... ``decode1``, ``flow``), so their weights map one to one.

At ``width=1`` the backbone has 320,419 parameters; at ``width=0.5`` (the shrunk ``hr-half``
baseline) 80,723.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["Backbone", "conv3", "leaky", "scaled", "initialise_weights", "FEATURE_NAMES", "FLOW_HEAD_STD"]

#: decoder outputs exposed by :meth:`Backbone.features`, from coarsest to finest. ``decode_16x`` is
#: ``decode5``'s output at 1/16 of the input grid, ``decode_8x`` ``decode4``'s at 1/8, ``decode_4x``
#: ``decode3``'s at 1/4, ``decode_2x`` ``decode2_1``'s at 1/2, ``decode_1x`` ``decode1``'s at 1/1.
FEATURE_NAMES = ("decode_16x", "decode_8x", "decode_4x", "decode_2x", "decode_1x")

NEGATIVE_SLOPE = 0.2

#: standard deviation of a flow head's initial weights (voxels per unit feature): VoxelMorph's
#: ``Normal(0, 1e-5)``, so that every model starts from (almost) the identity transform.
FLOW_HEAD_STD = 1e-5


def scaled(channels: int, width: float) -> int:
    """Number of channels of a layer that has ``channels`` at width 1 (at least 1)."""
    return max(1, round(channels * width))


def initialise_weights(module: nn.Module, heads: tuple[str, ...] = ("flow", "flow_f")) -> nn.Module:
    """Initialise every 3-D convolution of ``module`` for the LeakyReLU(0.2) that follows it, and
    its flow heads for a near-zero field; returns ``module``.

    - a convolution followed by LeakyReLU(0.2): He (Kaiming) normal, fan-in, gain
      ``sqrt(2 / (1 + 0.2**2))``, bias 0, so the activations keep their scale through the ten
      layers of the U-Net;
    - a flow head (a convolution whose name ends in one of ``heads``): ``Normal(0, FLOW_HEAD_STD)``,
      bias 0 (VoxelMorph's initialisation), so training starts from the identity transform.

    Why not PyTorch's default (``kaiming_uniform_(a=sqrt(5))``, the authors' network under
    PyTorch 1.1): its weight scale (gain 0.58 against LeakyReLU(0.2)'s 1.39) shrinks each
    layer's output about 2.4x, so at initialisation ``conv5`` (1/16 of the grid) gets 3e-4 of
    ``conv1``'s gradient (5.6e-2 with this one) and the field comes from the finest features
    alone. Measured on the default synth dataset (``hr``, seed 0, Adam 1e-3,
    the 12 validation pairs; README, "Training to the plateau"): with the default, validation
    Dice stays near its start (0.418) for 100 steps and is 0.447 at 180; with this one it rises
    from step 20 and is 0.503 at 180.
    """
    for name, child in module.named_modules():
        if not isinstance(child, nn.Conv3d):
            continue
        if name.split(".")[-1] in heads:
            nn.init.normal_(child.weight, 0.0, FLOW_HEAD_STD)
        else:
            nn.init.kaiming_normal_(child.weight, a=NEGATIVE_SLOPE, mode="fan_in", nonlinearity="leaky_relu")
        if child.bias is not None:
            nn.init.zeros_(child.bias)
    return module


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # older torch: no device argument
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


class Conv3d(nn.Conv3d):
    """:class:`torch.nn.Conv3d` (same parameters, same state-dict keys) that, for float32 inference
    on the CPU, always takes oneDNN's convolution. PyTorch's heuristic sends a 5-D input with
    ``N * C * D * H < 20480`` to its slow reference kernel: the 2-channel first layer of the x2
    student at 160x192x224 (80x96x112) takes 104 ms there and 35 ms in oneDNN (2 cores), and the
    coarse decoder layers of every model are affected likewise. Same maths; the sums' rounding
    differs (~1e-6 relative). Training (autograd), autocast, ``torch.compile``, other dtypes and
    memory formats keep PyTorch's own dispatch."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if (
            not _compiling()  # first: dynamo must not trace the checks below
            and input.device.type == "cpu"
            and input.dtype == torch.float32
            and weight.dtype == torch.float32
            and bias is not None
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
            and input.is_contiguous()
            and _MKLDNN
            and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled
            and not (torch.is_grad_enabled() and (input.requires_grad or weight.requires_grad))
            and not _autocast_on("cpu")
        ):
            return torch.mkldnn_convolution(
                input, weight, bias, list(self.padding), list(self.stride), list(self.dilation), self.groups
            )
        return super()._conv_forward(input, weight, bias)


_MKLDNN = hasattr(torch, "mkldnn_convolution")


def _compiling() -> bool:
    """Under ``torch.compile`` the standard convolution is traced (inductor picks its own kernel;
    ``torch.mkldnn_convolution`` cannot be traced)."""
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling())


def conv3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv3d:
    """3x3x3 convolution with padding 1 and a bias (the only layer type of the network)."""
    return Conv3d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=True)


def leaky(x: torch.Tensor) -> torch.Tensor:
    """LeakyReLU(0.2), the activation after every convolution except the flow heads."""
    return F.leaky_relu(x, NEGATIVE_SLOPE)


def _up_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour upsampling of ``x`` to the spatial grid of ``like`` (as the authors do)."""
    return F.interpolate(x, size=like.shape[2:], mode="nearest")


class Backbone(nn.Module):
    """U-Net that maps a ``(B, 2, D, H, W)`` pair (fixed, moving) to a ``(B, 3, D, H, W)`` field.

    Args:
        width: channel multiplier; 1.0 is the authors' network (16/32 channels).
        in_channels: input channels (2: fixed and moving concatenated in that order).

    The field is in voxels of the input grid; its channel order is whatever the training
    convention makes it (crd-bench trains in (D, H, W) order). Sides that are multiples of 16 keep
    every skip connection aligned.
    """

    def __init__(self, width: float = 1.0, in_channels: int = 2) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        self.width = float(width)
        c16, c32 = scaled(16, width), scaled(32, width)
        self.conv1 = conv3(in_channels, c16)
        self.conv2 = conv3(c16, c32, stride=2)
        self.conv3 = conv3(c32, c32, stride=2)
        self.conv4 = conv3(c32, c32, stride=2)
        self.conv5 = conv3(c32, c32, stride=2)
        self.decode5 = conv3(c32, c32)
        self.decode4 = conv3(2 * c32, c32)
        self.decode3 = conv3(2 * c32, c32)
        self.decode2 = conv3(2 * c32, c32)
        self.decode2_1 = conv3(c32, c16)
        self.decode1 = conv3(2 * c16, c16)
        self.flow = conv3(c16, 3)
        #: channels of the decoder features, fine to coarse (decode_1x ... decode_16x)
        self.feature_channels = (c16, c16, c32, c32, c32)
        initialise_weights(self)

    @property
    def size_multiple(self) -> int:
        """Input sides must be multiples of this (2 ** number of stride-2 encoder convs: 16) to
        keep every skip connection aligned."""
        multiple = 1
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4, self.conv5):
            multiple *= conv.stride[0]
        return multiple

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Decoder features of ``x`` (``(B, 2, D, H, W)``), keyed by :data:`FEATURE_NAMES`."""
        e1 = leaky(self.conv1(x))
        e2 = leaky(self.conv2(e1))
        e4 = leaky(self.conv3(e2))
        e8 = leaky(self.conv4(e4))
        e16 = leaky(self.conv5(e8))
        d16 = leaky(self.decode5(e16))
        d8 = leaky(self.decode4(torch.cat([_up_to(d16, e8), e8], dim=1)))
        d4 = leaky(self.decode3(torch.cat([_up_to(d8, e4), e4], dim=1)))
        d2 = leaky(self.decode2_1(leaky(self.decode2(torch.cat([_up_to(d4, e2), e2], dim=1)))))
        d1 = leaky(self.decode1(torch.cat([_up_to(d2, e1), e1], dim=1)))
        return {"decode_16x": d16, "decode_8x": d8, "decode_4x": d4, "decode_2x": d2, "decode_1x": d1}

    def forward_features(self, x: torch.Tensor, field: bool = True) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """The field (``None`` when ``field`` is false) and the decoder features fine to coarse
        (decode_1x ... decode_16x, on the grids 1 ... 1/16 of ``x``): the contract of
        :class:`crd.models.contract.SchemeBackbone`."""
        feats = self.features(x)
        fine_to_coarse = [feats[name] for name in reversed(FEATURE_NAMES)]
        return (self.flow(feats["decode_1x"]) if field else None), fine_to_coarse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Displacement field ``(B, 3, D, H, W)`` for the concatenated pair ``x``."""
        return self.flow(self.features(x)["decode_1x"])

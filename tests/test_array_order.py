"""The array-order adapter: images into the network's order, the field back onto the stored grid."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from crd.errors import CheckpointError
from crd.models.array_order import (
    ArrayOrderAdapter,
    checkpoint_array_order,
    from_network_order,
    in_array_order,
    to_network_order,
)


class ShiftAlongFirstAxis(nn.Module):
    """A network whose field depends on the order it is fed in: a displacement of 1 voxel along
    its own first array axis, times the moving image's mean over that axis (so values vary too)."""

    size_multiple = 1
    config = {"kind": "shift-first-axis"}

    def forward(self, fixed, moving):
        flow = torch.zeros(moving.shape[0], 3, *moving.shape[2:])
        flow[:, 0] = moving[:, 0].mean(dim=1, keepdim=True)
        return flow


@pytest.mark.parametrize("shape", [(3, 5, 7), (4, 6, 5)])
def test_reversed_order_moves_along_the_last_stored_axis(shape):
    """Fed reversed, the network's first axis is the stored last axis: the displacement lands in
    channel 2, on the stored grid, with the values of the moving image's mean over that axis."""
    g = torch.Generator().manual_seed(0)
    moving = torch.rand(1, 1, *shape, generator=g)
    net = ShiftAlongFirstAxis()
    stored = in_array_order(net, "stored")(moving, moving)
    reversed_ = in_array_order(net, "reversed")(moving, moving)
    assert stored.shape == reversed_.shape == (1, 3, *shape)
    assert torch.equal(stored[:, 0], moving[0, 0].mean(dim=0, keepdim=True).expand(*shape)[None])
    assert torch.equal(reversed_[:, 2], moving[0, 0].mean(dim=2, keepdim=True).expand(*shape)[None])
    assert reversed_[:, :2].abs().max() == 0 and stored[:, 1:].abs().max() == 0


def test_to_and_from_are_inverse_for_fields_of_every_order():
    g = torch.Generator().manual_seed(1)
    flow = torch.rand(2, 3, 3, 4, 5, generator=g)
    for order in ("stored", "reversed"):
        # a field on the network's grid whose channel c displaces along the network's axis c
        net_field = to_network_order(flow, order)[:, list(_axes(order))]
        assert torch.equal(from_network_order(net_field, order), flow)


def _axes(order):
    from crd.models.array_order import ARRAY_ORDERS

    return ARRAY_ORDERS[order]


def test_the_adapter_keeps_the_model_interface():
    net = ShiftAlongFirstAxis()
    wrapped = ArrayOrderAdapter(net, "reversed")
    assert wrapped.size_multiple == 1 and wrapped.config == net.config
    assert in_array_order(net, "stored") is net


def test_an_unknown_order_is_refused_in_one_line():
    with pytest.raises(CheckpointError, match="array_order 'zyx' is unknown"):
        checkpoint_array_order({"input": {"array_order": "zyx"}}, "m.pt")
    with pytest.raises(CheckpointError, match="unknown"):
        ArrayOrderAdapter(ShiftAlongFirstAxis(), "zyx")

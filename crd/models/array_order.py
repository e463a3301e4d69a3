"""The array order a network was trained in, and the adapter that feeds it that order.

A NIfTI file holds one voxel array, but readers disagree on its axis order. nibabel returns it as
stored, ``(i, j, k)``: crd-bench's datasets, ``crd train``, and every field crd-bench reads or
writes use that order (``"stored"``). SimpleITK's ``GetArrayFromImage`` returns the same voxels
with the axes reversed, ``(k, j, i)`` (``"reversed"``): the CRD authors' data loaders read every
NIfTI so (``load_nii`` in their ``core/datasets.py``), so their released OASIS networks saw
``aligned_norm`` (160x192x224 in nibabel's order) as 224x192x160. A 3-D convolutional network is
not indifferent to that: its learnt filters are not symmetric under an exchange of axes.

A checkpoint records the order its network expects in its ``input`` entry (``"array_order"``;
absent = ``"stored"``, except in checkpoints ``crd import-official`` wrote before it recorded
the order: they come from the authors and are ``"reversed"``, with one line telling the user to
re-import). :class:`ArrayOrderAdapter` wraps such a network so that callers keep crd-bench's
conventions: images in, ``(B, 1, D, H, W)`` in the stored order, are transposed into the
network's order; its field comes out transposed back, with its channels re-ordered so that
channel ``c`` is again the displacement along stored axis ``c`` (voxels).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn as nn

from crd.errors import CheckpointError

__all__ = [
    "ARRAY_ORDERS",
    "STORED",
    "REVERSED",
    "ORDER_DESCRIPTIONS",
    "to_network_order",
    "from_network_order",
    "checkpoint_array_order",
    "ArrayOrderAdapter",
    "in_array_order",
]

log = logging.getLogger(__name__)

STORED = "stored"
REVERSED = "reversed"

#: order name -> the stored axes, in the order the network sees them
ARRAY_ORDERS: dict[str, tuple[int, int, int]] = {STORED: (0, 1, 2), REVERSED: (2, 1, 0)}

ORDER_DESCRIPTIONS = {
    STORED: "the array as stored in the file, (i, j, k): nibabel's order, crd-bench's datasets",
    REVERSED: "the axes reversed, (k, j, i): SimpleITK's GetArrayFromImage, as the CRD authors' loaders read NIfTI",
}

#: the repository the authors' weights come from (the provenance ``crd import-official`` records)
_AUTHORS_REPO = "BlaiseBrain/CRD_registration"


def _axes(order: str) -> tuple[int, int, int]:
    if order not in ARRAY_ORDERS:
        raise CheckpointError(f"array order {order!r} is unknown: expected one of {', '.join(ARRAY_ORDERS)}")
    return ARRAY_ORDERS[order]


def to_network_order(x: torch.Tensor, order: str) -> torch.Tensor:
    """``x`` ``(B, C, D, H, W)`` in the stored order, with its spatial axes in ``order``."""
    axes = _axes(order)
    return x.permute(0, 1, *(2 + a for a in axes))


def from_network_order(flow: torch.Tensor, order: str) -> torch.Tensor:
    """A field ``(B, 3, ...)`` on the grid of ``order`` whose channel ``c`` displaces along that
    grid's axis ``c`` (voxels), back on the stored grid with channel ``c`` along stored axis ``c``."""
    axes = _axes(order)
    inverse = sorted(range(3), key=lambda a: axes[a])  # argsort: network axis of each stored axis
    on_stored_grid = flow.permute(0, 1, *(2 + a for a in inverse))
    return on_stored_grid[:, inverse]


def checkpoint_array_order(payload: dict[str, Any], path: Any = "checkpoint") -> str:
    """The array order the checkpoint's network expects (its ``input`` entry's ``array_order``).

    A checkpoint imported from the authors' weights by a crd-bench that did not record the order
    yet is ``"reversed"`` (their loaders' order), and a one-line warning says to re-import it."""
    spec = payload.get("input") or {}
    order = spec.get("array_order")
    if order is None:
        training = payload.get("training") or {}
        if training.get("source") == _AUTHORS_REPO:
            log.warning(
                "%s: imported before crd-bench recorded the array order; fed in the authors' order "
                "(reversed, as SimpleITK reads NIfTI). Re-import it with crd import-official to record it",
                path,
            )
            return REVERSED
        return STORED
    if order not in ARRAY_ORDERS:
        raise CheckpointError(
            f"{path}: its input entry's array_order {order!r} is unknown: expected one of {', '.join(ARRAY_ORDERS)}"
        )
    return str(order)


class ArrayOrderAdapter(nn.Module):
    """``net`` fed in ``order``: ``forward(fixed, moving)`` takes and returns tensors in the stored
    order (fields ``(B, 3, D, H, W)``, channels along the stored axes), as every crd-bench model."""

    def __init__(self, net: nn.Module, order: str) -> None:
        super().__init__()
        _axes(order)
        self.net = net
        self.order = order

    @property
    def size_multiple(self) -> int:
        return int(self.net.size_multiple)

    @property
    def config(self) -> dict[str, Any]:
        return self.net.config

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        flow = self.net(to_network_order(fixed, self.order), to_network_order(moving, self.order))
        return from_network_order(flow, self.order)


def in_array_order(net: nn.Module, order: str) -> nn.Module:
    """``net`` itself for the stored order, else ``net`` wrapped in :class:`ArrayOrderAdapter`."""
    return net if order == STORED else ArrayOrderAdapter(net, order)

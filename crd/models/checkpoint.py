"""Self-describing checkpoints: the file holds the model config, so evaluation never restates it.

A crd-bench checkpoint is a ``torch.save``'d dict::

    {"format": "crd-bench-checkpoint", "format_version": 1,
     "method": "crd", "model": {"kind": "lowres", "width": 1.0, "factor": 2},
     "state_dict": {...}, "input": {...how images were normalised...},
     "training": {...settings, iterations, seed...}, "crd_version": "0.1.0"}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from crd.atomic import atomic_target
from crd.errors import CheckpointError
from crd.models.registration import build_model

__all__ = ["FORMAT", "save_checkpoint", "read_checkpoint", "load_model", "load_for_inference", "atomic_torch_save"]

FORMAT = "crd-bench-checkpoint"
FORMAT_VERSION = 1

#: how crd-bench datasets feed images to the networks (recorded in every checkpoint)
DEFAULT_INPUT = {"intensity": "dataset images scaled to [0, 1]", "flow_channels": "D,H,W", "array_order": "stored"}


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    with atomic_target(path) as tmp:
        torch.save(obj, tmp)


def save_checkpoint(
    path: Path,
    model: nn.Module,
    *,
    method: str,
    training: dict[str, Any] | None = None,
    input_spec: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (its config and weights, on the CPU) to ``path`` atomically."""
    from crd import __version__

    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "method": method,
        "model": dict(model.config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "input": dict(input_spec or DEFAULT_INPUT),
        "training": dict(training or {}),
        "crd_version": __version__,
    }
    atomic_torch_save(payload, Path(path))
    return Path(path)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load and validate a crd-bench checkpoint dict (weights on the CPU)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle with code, not a torch file at all
        raise CheckpointError(
            f"{path}: not a readable crd-bench checkpoint ({exc.__class__.__name__}: {exc})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a crd-bench checkpoint (expected a dict with format={FORMAT!r}); "
            "to use the CRD authors' weights, convert them first"
        )
    version = payload.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{path}: damaged checkpoint header (format_version {version!r} is not a whole number)")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {payload['format_version']} is newer than this crd-bench "
            f"reads ({FORMAT_VERSION}); upgrade crd-bench"
        )
    for key in ("model", "state_dict", "method"):
        if key not in payload:
            raise CheckpointError(f"{path}: checkpoint lacks the {key!r} entry")
    for key, kind in (("model", dict), ("state_dict", dict), ("method", str), ("input", dict), ("training", dict)):
        if key in payload and not isinstance(payload[key], kind):
            raise CheckpointError(
                f"{path}: damaged checkpoint header (its {key!r} entry is a {type(payload[key]).__name__}, "
                f"not a {kind.__name__})"
            )
    return payload


def load_model(path: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model stored in ``path``; returns ``(model in eval mode on device, payload)``."""
    payload = read_checkpoint(path)
    try:
        model = build_model(payload["model"])
        model.load_state_dict(payload["state_dict"])
    except (ValueError, RuntimeError, TypeError) as exc:
        reason = " ".join(str(exc).split())
        reason = reason if len(reason) <= 300 else reason[:297] + "..."
        raise CheckpointError(f"{path}: weights do not fit model {payload['model']}: {reason}") from None
    return model.to(device).eval(), payload


def load_for_inference(
    path: Path, device: torch.device | str = "cpu", array_order: str | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """The model of ``path`` ready to register arrays in the stored order (as nibabel reads them).

    Like :func:`load_model`, but a network that expects another array order (the checkpoint's
    ``input`` entry, :func:`crd.models.array_order.checkpoint_array_order`; ``array_order``
    overrides it) is wrapped in :class:`crd.models.array_order.ArrayOrderAdapter`, which
    transposes the images into its order and its field back. ``crd register``, ``crd evaluate``
    and ``crd bench`` load checkpoints so. The payload's ``input`` entry returned says the order
    used (``array_order``)."""
    from crd.models.array_order import checkpoint_array_order, in_array_order

    model, payload = load_model(path, device)
    order = array_order if array_order is not None else checkpoint_array_order(payload, path)
    payload["input"] = {**(payload.get("input") or {}), "array_order": order}
    return in_array_order(model, order).eval(), payload

"""Data-parallel training across processes: ``crd train`` under ``torchrun --nproc-per-node N``.

torchrun starts N copies of ``crd train`` and tells each its place through the environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``); :func:`current`
reads it (one process, rank 0, without torchrun). Each process builds the same run from the same
seed, so every process draws the same *global* batch (pair indices and augmentation) from its
generator and trains on its own share of it (:meth:`Process.share`); PyTorch's
DistributedDataParallel averages the gradients, so N processes with ``batch_size`` B take the
step that one process takes with the whole batch B (to float rounding: sums in another order).
Only rank 0 validates, logs and writes (history, resume state, checkpoint).

Backend: ``gloo`` on the CPU, ``nccl`` on CUDA, one device per local rank (``cuda:<LOCAL_RANK>``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["Process", "current", "training_device", "start", "stop", "abandon", "decide", "DataParallelStudent"]


@dataclass(frozen=True)
class Process:
    """This process's place among the training processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that validates, logs and writes."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def share(self, global_batch: int) -> slice:
        """This process's elements of a global batch of ``global_batch`` (a multiple of the world
        size, checked by :func:`start`)."""
        per = global_batch // self.world_size
        return slice(self.rank * per, (self.rank + 1) * per)


def current() -> Process:
    """The process as torchrun describes it in the environment; one process without torchrun."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise ValueError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers (as torchrun sets them): {exc}") from None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    return Process(rank=rank, world_size=world, local_rank=local)


def training_device(process: Process, device: torch.device) -> torch.device:
    """The device of this process: with several processes on CUDA, ``cuda:<LOCAL_RANK>`` (an
    explicit ``cuda:i`` cannot be shared by N processes and is refused); otherwise ``device``."""
    if not process.distributed or device.type != "cuda":
        return device
    if device.index not in (None, process.local_rank):
        raise ValueError(f"with {process.world_size} training processes give --device cuda (one GPU per process, "
                         f"cuda:<LOCAL_RANK>), not {device}")  # fmt: skip
    if process.local_rank >= torch.cuda.device_count():
        raise ValueError(f"local rank {process.local_rank} has no GPU: {torch.cuda.device_count()} visible")
    return torch.device("cuda", process.local_rank)


def start(process: Process, device: torch.device, batch_size: int) -> None:
    """Join the process group (``gloo`` on the CPU, ``nccl`` on CUDA); the global batch must split
    evenly. Nothing to do for one process."""
    if not process.distributed:
        return
    if batch_size % process.world_size:
        raise ValueError(
            f"batch_size {batch_size} (the global batch) must be a multiple of the {process.world_size} training "
            "processes"
        )
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def stop(process: Process) -> None:
    """Leave the process group (after a last barrier, so no process exits while another still
    writes)."""
    if process.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def decide(process: Process, flag: bool) -> bool:
    """Rank 0's ``flag`` in every process (a decision only rank 0 can take, e.g. the stopping rule,
    which reads the validation that rank 0 alone runs); ``flag`` itself for one process."""
    if not process.distributed:
        return bool(flag)
    box = [bool(flag)]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])


def abandon(process: Process) -> None:
    """Leave the process group after an error, without waiting for the others (torchrun stops them)."""
    if process.distributed and dist.is_initialized():
        dist.destroy_process_group()


class _WithMaps(nn.Module):
    """``forward`` = the model's ``forward_with_maps``, so that DDP sees the distillation forward."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor):
        return self.model.forward_with_maps(fixed, moving)


class DataParallelStudent:
    """The trained model as the training objective calls it (``model(fixed, moving)`` or
    ``model.forward_with_maps(fixed, moving)``), each call through DistributedDataParallel so that
    backward averages the gradients over the processes. ``maps``: the objective distills (the
    forward that DDP wraps is then ``forward_with_maps``)."""

    def __init__(self, model: nn.Module, device: torch.device, *, maps: bool) -> None:
        inner = _WithMaps(model) if maps else model
        ids = [device.index] if device.type == "cuda" else None
        self.ddp = DistributedDataParallel(inner, device_ids=ids, output_device=device.index if ids else None)
        self.maps = maps

    def __call__(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        if self.maps:
            raise RuntimeError("this student was wrapped for distillation: call forward_with_maps")
        return self.ddp(fixed, moving)

    def forward_with_maps(self, fixed: torch.Tensor, moving: torch.Tensor):
        if not self.maps:
            raise RuntimeError("this student was wrapped for unsupervised training: call it directly")
        return self.ddp(fixed, moving)

"""Process set-up shared by the stages: device choice, threads, seeds, logging."""

from __future__ import annotations

import logging
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch

__all__ = ["select_device", "use_true_fp32", "math_settings", "configure_threads", "seed_everything", "setup_logging"]


def select_device(name: str = "auto") -> torch.device:
    """``"auto"`` picks CUDA when available, else the CPU; ``"cpu"``/``"cuda"``/``"cuda:1"`` force it.

    Choosing CUDA also makes float32 arithmetic true float32 (:func:`use_true_fp32`): PyTorch lets
    cuDNN convolutions run in TF32 by default, which is not the fp32 the results claim."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else _named_device(name)
    if device.type == "cuda":
        use_true_fp32()
    return device


def use_true_fp32() -> None:
    """No TF32 in float32 convolutions (cuDNN) or matrix products (cuBLAS): reference figures are
    float32 as stated. :func:`math_settings` records what was in force."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def math_settings() -> dict[str, bool]:
    """What decides CUDA numerics and their reproducibility, for checkpoints and sidecars: TF32
    for cuDNN / cuBLAS, cuDNN autotuning (``benchmark``) and deterministic algorithms. On CUDA,
    3-D ``grid_sample`` and trilinear interpolation accumulate gradients with atomics, so training
    is not bit-reproducible there unless deterministic algorithms are enforced."""
    return {
        "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
        "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "deterministic_algorithms": bool(torch.are_deterministic_algorithms_enabled()),
    }


def _named_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available in this torch build")
    if device.type == "cuda" and device.index is not None and device.index >= (count := torch.cuda.device_count()):
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise ValueError(
            f"device {name!r} requested but {count} CUDA device(s) are visible (cuda:0 to cuda:{count - 1})"
            + (f"; CUDA_VISIBLE_DEVICES={visible}" if visible is not None else "")
        )
    return device


def configure_threads(threads: int | None) -> int:
    """Make torch use ``threads`` intra-op threads (the Snakemake rule's ``threads``)."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; returns a CPU ``torch.Generator`` seeded with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def setup_logging(log_file: Path | None = None, level: int = logging.INFO) -> logging.Logger:
    """Log to stderr and, if given, to ``log_file`` (appended, so a resumed run keeps its history)."""
    logger = logging.getLogger("crd")
    logger.setLevel(level)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(fmt)
    logger.addHandler(stream)
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file, mode="a")
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    logger.propagate = False
    return logger

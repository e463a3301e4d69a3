"""Measuring one inference: wall time and peak memory, on the CPU or on CUDA.

- CPU: peak resident set size (RSS) *above the RSS before the measured call*, in MB (2^20
  bytes). On Linux the kernel's high-water mark is reset first (``/proc/self/clear_refs`` with
  ``5``) and read back from ``VmHWM`` afterwards, so even a short peak is caught exactly. Where
  that is not possible a background thread samples RSS every millisecond (a lower bound).
- CUDA: the PyTorch allocator peak (``torch.cuda.max_memory_allocated`` after a reset) and the
  NVML per-process figure, sampled in a background thread; NVML counts everything the process
  holds on the GPU, the CUDA context (several hundred MB) and the allocator's cache included.
  A missing NVML (no NVIDIA driver, non-NVIDIA GPU) gives ``None``, not an error.
- Time: ``time.perf_counter`` around the call, after ``torch.cuda.synchronize`` on CUDA.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import torch

__all__ = ["Measurement", "measure", "device_description"]

MB = 2.0**20


@dataclass
class Measurement:
    """Wall time (s) and memory peaks (MB) of one measured call; ``None`` where not applicable."""

    seconds: float = float("nan")
    peak_rss_mb: float | None = None
    cuda_alloc_peak_mb: float | None = None
    nvml_peak_mb: float | None = None


def _read_vmhwm_kb() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_vmhwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class _Sampler(threading.Thread):
    """Calls ``read()`` every ``interval`` seconds until stopped; keeps the maximum."""

    def __init__(self, read: Callable[[], float | None], interval: float = 1e-3) -> None:
        super().__init__(daemon=True)
        self.read, self.interval = read, interval
        self.peak: float | None = None
        self._stop_event = threading.Event()

    def _sample(self) -> None:
        value = self.read()
        if value is not None and (self.peak is None or value > self.peak):
            self.peak = value

    def run(self) -> None:
        while not self._stop_event.is_set():
            self._sample()
            time.sleep(self.interval)

    def stop(self) -> float | None:
        self._stop_event.set()
        self.join()
        self._sample()
        return self.peak


def _nvml_reader(device: torch.device) -> Callable[[], float | None] | None:
    """A function returning this process's NVML-reported GPU memory (MB), or None if unavailable."""
    try:
        import pynvml

        pynvml.nvmlInit()
        index = device.index if device.index is not None else torch.cuda.current_device()
        uuid = torch.cuda.get_device_properties(index).uuid
        handle = None
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            if str(uuid).replace("GPU-", "") in str(pynvml.nvmlDeviceGetUUID(h)):
                handle = h
                break
        if handle is None:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    except Exception:  # no NVML library, no NVIDIA driver, permission problems
        return None
    pid = os.getpid()

    def read() -> float | None:
        try:
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == pid and proc.usedGpuMemory is not None:
                    return proc.usedGpuMemory / MB
        except Exception:
            return None
        return None

    return read


@contextmanager
def measure(device: torch.device) -> Iterator[Measurement]:
    """Measure the time and memory peaks of the ``with`` block on ``device``.

    Example::

        with measure(device) as m:
            flow = model(fixed, moving); warped = warp(moving, flow)
        m.seconds, m.peak_rss_mb, m.cuda_alloc_peak_mb, m.nvml_peak_mb
    """
    result = Measurement()
    cuda = device.type == "cuda"
    nvml_sampler = None
    rss_sampler = None
    process = psutil.Process()
    base_rss = process.memory_info().rss
    exact_rss = _reset_vmhwm() and _read_vmhwm_kb() is not None
    if not exact_rss:
        rss_sampler = _Sampler(lambda: process.memory_info().rss)
        rss_sampler.start()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        reader = _nvml_reader(device)
        if reader is not None:
            nvml_sampler = _Sampler(reader)
            nvml_sampler.start()
    start = time.perf_counter()
    try:
        yield result
    finally:
        if cuda:
            torch.cuda.synchronize(device)
        result.seconds = time.perf_counter() - start
        if exact_rss:
            peak = (_read_vmhwm_kb() or 0) * 1024
        else:
            peak = rss_sampler.stop() or base_rss
        result.peak_rss_mb = max(0.0, (peak - base_rss) / MB)
        if cuda:
            result.cuda_alloc_peak_mb = torch.cuda.max_memory_allocated(device) / MB
            if nvml_sampler is not None:
                result.nvml_peak_mb = nvml_sampler.stop()


def device_description(device: torch.device) -> dict[str, Any]:
    """Device name, torch/CUDA versions and thread count, for the results' sidecar."""
    info: dict[str, Any] = {
        "device": device.type,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.version.cuda,
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    else:
        import platform

        info["device_name"] = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    info["device_name"] = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        info["cpu_count"] = os.cpu_count()
    return info

"""Measuring one inference: wall time and peak memory, on the CPU or on CUDA.

- CPU: peak resident set size (RSS) *above the RSS before the measured call*, in MB (2^20
  bytes). On Linux the kernel's high-water mark is reset first (``/proc/self/clear_refs`` with
  ``5``) and read back from ``VmHWM`` afterwards, so even a short peak is caught exactly. Where
  that is not possible a background thread samples RSS every millisecond (a lower bound).
- CUDA: the PyTorch allocator peak (``torch.cuda.max_memory_allocated`` after a reset) and the
  NVML per-process figure, sampled in a background thread; NVML counts everything the process
  holds on the GPU, the CUDA context (several hundred MB) and the allocator's cache included.
  Where NVML gives no per-process figure (no NVML, a container that hides host PIDs, MIG) the
  figure is ``None``, not an error, and the reason is logged once and recorded in sidecars
  (:func:`probe_nvml`, ``device_description(...)["nvml"]``).
- Time: ``time.perf_counter`` around the call, after ``torch.cuda.synchronize`` on CUDA.

:func:`profile_inference` repeats a call: warm-up calls first (lazy initialisation, cuDNN
autotuning, allocator growth), then ``repeats`` timed calls, each timed with CUDA events on CUDA
(``perf_counter`` on the CPU); it reports the median and the spread, and the memory peaks over the
timed calls.
"""

from __future__ import annotations

import logging
import os
import re
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch

from crd.runtime import math_settings

__all__ = [
    "Measurement",
    "measure",
    "device_description",
    "NvmlProbe",
    "probe_nvml",
    "InferenceProfile",
    "profile_inference",
    "count_parameters",
    "release_freed_memory",
    "WORKING_SET_ENV",
    "working_set_support",
]

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


@dataclass
class NvmlProbe:
    """What NVML can say about GPU memory on one device, seen from this process.

    ``process_mb`` returns this process's memory on the device (MB; the CUDA context and the
    allocator's cache included) and is ``None`` where NVML has no per-process figure; ``why`` then
    says why (no NVML, a failing query, a PID that NVML does not list: containers that hide host
    PIDs, or a listed process without a memory figure: MIG or too few privileges).
    ``device_used_mb`` returns the memory used on the whole device (all processes; MB), the
    fallback that a parent process samples around an otherwise idle child (``crd bench --isolate
    process``); ``None`` without NVML.
    """

    process_mb: Callable[[], float | None] | None = None
    device_used_mb: Callable[[], float | None] | None = None
    why: str | None = None

    def summary(self) -> dict[str, Any]:
        """``{"per_process": bool, "device_level": bool, "why": str | None}`` for sidecars."""
        return {
            "per_process": self.process_mb is not None,
            "device_level": self.device_used_mb is not None,
            "why": self.why,
        }


def _nvml_handle(pynvml, device: torch.device):
    """The NVML handle of torch's ``device`` (matched by UUID, MIG instances included; by index
    when no UUID matches)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    uuid = str(torch.cuda.get_device_properties(index).uuid).replace("GPU-", "").replace("MIG-", "")
    for i in range(pynvml.nvmlDeviceGetCount()):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        if uuid and uuid in str(pynvml.nvmlDeviceGetUUID(h)):
            return h
        try:  # MIG instances of this GPU (NVML raises where MIG is unsupported or off)
            for j in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(h)):
                try:
                    mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(h, j)
                except Exception:
                    continue
                if uuid and uuid in str(pynvml.nvmlDeviceGetUUID(mig)):
                    return mig
        except Exception:
            pass
    return pynvml.nvmlDeviceGetHandleByIndex(index)


def probe_nvml(device: torch.device) -> NvmlProbe:
    """Find out which NVML memory figures this process can read for ``device`` (see
    :class:`NvmlProbe`). Call it after the process has used the device (a CUDA context exists),
    else NVML does not list the process yet. Never raises."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = _nvml_handle(pynvml, device)
    except Exception as exc:  # no NVML library, no NVIDIA driver, permission problems
        return NvmlProbe(why=f"NVML unavailable: {type(exc).__name__}: {exc}")

    def device_used_mb() -> float | None:
        try:
            return pynvml.nvmlDeviceGetMemoryInfo(handle).used / MB
        except Exception:
            return None

    pid = os.getpid()

    def process_mb() -> float | None:
        try:
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == pid and proc.usedGpuMemory is not None:
                    return proc.usedGpuMemory / MB
        except Exception:
            return None
        return None

    device_level = device_used_mb if device_used_mb() is not None else None
    try:
        procs = list(pynvml.nvmlDeviceGetComputeRunningProcesses(handle))
    except Exception as exc:
        return NvmlProbe(None, device_level, f"NVML's per-process query failed: {type(exc).__name__}: {exc}")
    mine = [p for p in procs if p.pid == pid]
    if not mine:
        listed = ", ".join(str(p.pid) for p in procs[:5]) or "none"
        return NvmlProbe(
            None,
            device_level,
            f"NVML does not list this process (PID {pid}; listed: {listed}): a container's PID namespace "
            "hides it, or the process has no CUDA context yet",
        )
    if mine[0].usedGpuMemory is None:
        return NvmlProbe(
            None, device_level, "NVML lists this process without a memory figure (MIG instance or too few privileges)"
        )
    return NvmlProbe(process_mb, device_level, None)


_NVML_WARNED: set[str] = set()


def _nvml_reader(device: torch.device) -> Callable[[], float | None] | None:
    """This process's NVML memory reader (MB) for ``device``, or ``None``; the first time a reason
    for ``None`` comes up, it is logged (logger ``crd``, warning)."""
    probe = probe_nvml(device)
    kind = re.sub(r"\d+", "N", probe.why or "")  # the reason without the PIDs it names, which change
    if probe.process_mb is None and kind not in _NVML_WARNED:
        _NVML_WARNED.add(kind)
        logging.getLogger("crd").warning("no NVML per-process GPU memory figure: %s", probe.why)
    return probe.process_mb


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
    # Linux: the baseline is the high-water mark just after its reset (= the RSS at that moment),
    # so baseline and peak come from one counter; reading RSS separately before the reset races
    # with memory freed in between (e.g. a garbage collection), which would hide the peak.
    exact_rss = _reset_vmhwm() and (hwm_kb := _read_vmhwm_kb()) is not None
    if exact_rss:
        base_rss = hwm_kb * 1024
    else:
        base_rss = process.memory_info().rss
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
    """Device name, torch/CUDA versions, thread count and the math settings in force
    (:func:`crd.runtime.math_settings`: TF32, cuDNN autotuning, determinism), for the sidecar."""
    info: dict[str, Any] = {
        "device": device.type,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.version.cuda,
        **math_settings(),
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["nvml"] = probe_nvml(device).summary()  # which NVML figures exist, and why not
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


@dataclass
class InferenceProfile:
    """Latency of ``repeats`` calls after ``warmup`` calls, and the memory peaks over the timed calls.

    Times are in seconds, memory in MB (2^20 bytes); ``None`` where not applicable (no CUDA, no
    NVML). ``spread_s`` is the interquartile range of the repeats (p75 - p25, numpy's linear
    interpolation), a robust spread; ``min_s`` and ``max_s`` are the extremes.
    """

    device: str
    timer: str  # "cuda-events" or "perf_counter"
    warmup: int
    repeats: int
    times_s: list[float] = field(default_factory=list)
    median_s: float = float("nan")
    spread_s: float = float("nan")
    min_s: float = float("nan")
    max_s: float = float("nan")
    wall_s: float = float("nan")  # the whole timed loop, synchronised
    peak_rss_mb: float | None = None
    cuda_alloc_peak_mb: float | None = None
    nvml_peak_mb: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolation quantile of an ascending list (numpy's default method)."""
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def profile_inference(
    fn: Callable[[], Any],
    device: torch.device | str,
    warmup: int = 3,
    repeats: int = 10,
    *,
    inference_mode: bool = True,
) -> InferenceProfile:
    """Time ``fn()`` on ``device``: ``warmup`` untimed calls, then ``repeats`` timed ones.

    On CUDA every repeat is timed with a pair of CUDA events recorded around the call on the
    current stream (so asynchronous kernels are counted in full, without host-side gaps); the
    device is synchronised before the first and after the last. On the CPU ``time.perf_counter``
    times each call. The memory peaks come from :func:`measure` around the timed calls: the
    PyTorch allocator peak (everything allocated at the time, weights and inputs included), NVML's
    per-process peak (sampled; includes the CUDA context; ``None`` without NVML) and the CPU RSS
    peak above the RSS before the timed calls.

    Args:
        fn: the call to time, without arguments, e.g. ``lambda: warp(moving, model(fixed, moving))``.
        device: where ``fn`` runs (``torch.device`` or a string such as ``"cuda:0"``).
        warmup: untimed calls first (>= 0).
        repeats: timed calls (>= 1).
        inference_mode: run every call under ``torch.inference_mode()``.

    Returns:
        :class:`InferenceProfile`.
    """
    device = torch.device(device)
    if warmup < 0 or repeats < 1:
        raise ValueError(f"expected warmup >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}")
    cuda = device.type == "cuda"
    mode = torch.inference_mode if inference_mode else nullcontext
    profile = InferenceProfile(
        device=str(device), timer="cuda-events" if cuda else "perf_counter", warmup=warmup, repeats=repeats
    )
    with mode():
        for _ in range(warmup):
            fn()
        with measure(device) as m:  # synchronises the device first
            times = time_calls(fn, repeats, device)
    ordered = sorted(times)
    profile.times_s = times
    profile.median_s = statistics.median(times)
    profile.spread_s = _quantile(ordered, 0.75) - _quantile(ordered, 0.25)
    profile.min_s, profile.max_s = ordered[0], ordered[-1]
    profile.wall_s = m.seconds
    profile.peak_rss_mb = m.peak_rss_mb
    profile.cuda_alloc_peak_mb = m.cuda_alloc_peak_mb
    profile.nvml_peak_mb = m.nvml_peak_mb
    return profile


def time_calls(fn: Callable[[], Any], calls: int, device: torch.device) -> list[float]:
    """Seconds of each of ``calls`` calls of ``fn``: on CUDA a pair of CUDA events recorded around
    each call on ``device``'s current stream (kernels counted in full, no host-side gaps), the
    device synchronised before the first and after the last; on the CPU ``time.perf_counter``."""
    if device.type != "cuda":
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return times
    torch.cuda.synchronize(device)
    events = []
    with torch.cuda.device(device):
        for _ in range(calls):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            events.append((start, end))
    torch.cuda.synchronize(device)
    return [start.elapsed_time(end) / 1000.0 for start, end in events]


def _libc():
    """glibc through ctypes, or ``None`` (another C library, another platform)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:
        return None


def release_freed_memory() -> bool:
    """Give memory that glibc's allocator keeps after ``free`` back to the OS (``malloc_trim``),
    so that an RSS baseline taken next holds no leftovers of earlier calls. Returns whether it
    could (``False``, a no-op, without glibc)."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


#: The environment of a process that measures working sets (:mod:`crd.working_set`): glibc gives
#: every allocation of 64 KiB or more pages of its own and returns them when freed (its
#: ``M_MMAP_THRESHOLD``, fixed from the start, so no large block is ever reused from the heap).
WORKING_SET_ENV = {"MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}


def working_set_support() -> tuple[bool, str | None]:
    """Whether this process measures working sets exactly, and if not, why not: it needs glibc
    (which honours :data:`WORKING_SET_ENV`), that environment from its start, and Linux's
    resettable RSS high-water mark (``VmHWM``)."""
    if _libc() is None:
        return False, "no glibc: the C allocator may serve a call from memory that earlier calls freed"
    missing = [k for k, v in WORKING_SET_ENV.items() if os.environ.get(k) != v]
    if missing:
        return False, f"the process was not started with {', '.join(f'{k}={WORKING_SET_ENV[k]}' for k in missing)}"
    if not (_reset_vmhwm() and _read_vmhwm_kb() is not None):
        return False, "no resettable RSS high-water mark (/proc/self/clear_refs, VmHWM): a short peak can be missed"
    return True, None


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (a tensor shared by several modules counted once; buffers
    such as batch-norm statistics excluded); with ``trainable_only``, those with ``requires_grad``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)

"""Does the memory sampler distort the latency of short calls? Latency with and without a
``crd.profiling._Sampler`` thread running, for calls short enough to be launch-bound.

``crd.profiling.measure`` samples memory in a background Python thread (``_Sampler``: one read
every ``interval`` seconds, 1 ms by default): NVML's per-process GPU memory on CUDA, and the RSS on
the CPU where ``/proc/self/status`` VmHWM is unavailable. While the timed calls run, that thread
wakes up about a thousand times a second and takes the GIL for each read; a call whose time is
spent in Python and kernel launches (small inputs, CUDA) rather than in long kernels could be
slowed by it. This script measures by how much.

Cases, each at every ``--sizes`` entry, batch 1, random inputs, under ``torch.inference_mode()``:

- ``hr``: ``crd.models.inference.infer`` with the ``hr`` network (built from ``baselines/hr.py``
  as ``crd bench`` builds it; random weights: the time does not depend on them), the field and
  the warp of the moving image, i.e. what ``crd bench`` times;
- ``warp``: ``crd.models.functional.warp`` of the moving image by a random field (a few voxels);
- ``conv``: one ``conv3d`` from 1 to 8 channels, 3x3x3 kernel (a trivially short op).

Each case is timed in ``--repeats`` pairs of blocks, one block with the sampler off and one with
it on, the order alternating from pair to pair (off/on, on/off, ...), so that a drift of the
machine's speed over the run cancels; a block is ``--calls`` calls (default: as many as fit in
its share of ``--seconds``, the target time of all timed blocks together, at least one; the time
of a call is estimated from the warm-up calls, made with the sampler off and on). Every call is timed as
``crd.profiling.profile_inference`` times a repeat: ``time.perf_counter`` on the CPU, a pair of
CUDA events on CUDA (the device synchronised at the end of each block). With the sampler on, the
thread is started before the block and stopped after it, reading RSS (psutil) on the CPU and, on
CUDA, NVML's per-process figure (``crd.profiling._nvml_reader``) where there is one, else RSS.

For each case it prints the median latency of all calls with the sampler off and on, their ratio
(on / off; 1 = no effect) and a 95 % percentile-bootstrap interval of that ratio, resampling the
block pairs (so the pairing and the within-block correlation are kept), and how many reads a
second the sampler actually made; and the load average at the start and the end (other processes
on the machine's cores change latencies far more than the sampler can: run it on a quiet machine).
``--out FILE.csv`` also writes these rows (written atomically).

Usage (CPU: about 30 s on 2 cores with the defaults; docs/gpu.md has the figures)::

    python benchmarks/sampler_overhead.py --device cpu --threads 2
    python benchmarks/sampler_overhead.py --device cuda --out sampler_cuda.csv
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import psutil
import torch
import torch.nn.functional as F

from crd.atomic import write_text_atomic
from crd.methods import load_methods
from crd.models.functional import warp
from crd.models.inference import infer
from crd.models.registration import build_model, use_method_models
from crd.profiling import MB, _nvml_reader, _Sampler, time_calls
from crd.runtime import configure_threads, select_device

REPO = Path(__file__).resolve().parents[1]
CASES = ("hr", "warp", "conv")
COLUMNS = (
    "device",
    "threads",
    "reader",
    "interval_s",
    "case",
    "size",
    "calls_per_block",
    "block_pairs",
    "median_off_s",
    "median_on_s",
    "ratio_on_off",
    "ratio_low",
    "ratio_high",
    "reads_per_s",
)


class Row(NamedTuple):
    """One case's result: latencies in seconds, the ratio on / off and its 95 % interval."""

    case: str
    size: tuple[int, int, int]
    calls_per_block: int
    block_pairs: int
    median_off_s: float
    median_on_s: float
    ratio: float
    ratio_low: float
    ratio_high: float
    reads_per_s: float


def _size(text: str) -> tuple[int, int, int]:
    try:
        parts = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) < 2:
        raise argparse.ArgumentTypeError(f"expected DxHxW (each >= 2), got {text!r}")
    return parts  # type: ignore[return-value]


def _size_name(size: Sequence[int]) -> str:
    return "x".join(str(s) for s in size)


def reader_for(device: torch.device) -> tuple[str, Callable[[], float | None]]:
    """What the sampler reads, as ``crd.profiling.measure`` would on ``device``: ``("nvml", ...)``
    on CUDA where NVML has a per-process figure (call this after the device has been used), else
    ``("rss", ...)``; the read returns MB."""
    if device.type == "cuda":
        nvml = _nvml_reader(device)
        if nvml is not None:
            return "nvml", nvml
    process = psutil.Process()
    return "rss", lambda: process.memory_info().rss / MB


def build_calls(
    cases: Sequence[str], size: tuple[int, int, int], device: torch.device, hr: torch.nn.Module | None
) -> dict[str, Callable[[], Any]]:
    """The call of each case at ``size`` on ``device``: inputs ``(1, 1, D, H, W)`` drawn once
    (seeded), the field ``(1, 3, D, H, W)`` in voxels."""
    gen = torch.Generator().manual_seed(0)
    fixed = torch.rand((1, 1, *size), generator=gen).to(device)
    moving = torch.rand((1, 1, *size), generator=gen).to(device)
    flow = (torch.randn((1, 3, *size), generator=gen) * 2.0).to(device)
    kernel = torch.randn((8, 1, 3, 3, 3), generator=gen).to(device)
    calls: dict[str, Callable[[], Any]] = {
        "warp": lambda: warp(moving, flow),
        "conv": lambda: F.conv3d(moving, kernel, padding=1),
    }
    if hr is not None:
        calls["hr"] = lambda: infer(hr, fixed, moving).warped
    return {name: calls[name] for name in cases}


def ratio_interval(
    off: np.ndarray, on: np.ndarray, resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """The ratio of medians ``median(on) / median(off)`` over all calls, and its percentile-bootstrap
    interval at ``level``, resampling the block pairs (rows of ``off`` and ``on``, shape
    ``(pairs, calls)``) with replacement, the two blocks of a pair together."""
    ratio = float(np.median(on) / np.median(off))
    if resamples < 1 or off.shape[0] < 2:
        return ratio, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, off.shape[0], size=(resamples, off.shape[0]))
    boot = np.median(on[pick].reshape(resamples, -1), axis=1) / np.median(off[pick].reshape(resamples, -1), axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(boot, [tail, 100.0 - tail])
    return ratio, float(low), float(high)


def measure_case(
    fn: Callable[[], Any],
    device: torch.device,
    read: Callable[[], float | None],
    *,
    repeats: int,
    interval: float,
    warmup: int,
    calls: int | None,
    block_seconds: float,
) -> tuple[int, np.ndarray, np.ndarray, float]:
    """``warmup`` untimed calls with the sampler off, as many with it on, then ``repeats`` pairs of
    blocks (sampler off / on, the order alternating) of ``calls`` calls each (``None``: as many as
    fit in ``block_seconds`` by the slower of the two warm-ups, at least one). Returns the
    calls per block, the times ``(repeats, calls)`` off and on (s), and the sampler's reads per
    second while on."""
    reads = 0

    def counted() -> float | None:
        nonlocal reads
        reads += 1
        return read()

    def with_sampler(calls: int) -> list[float]:
        sampler = _Sampler(counted, interval)
        sampler.start()
        try:
            return time_calls(fn, calls, device)
        finally:
            sampler.stop()

    def per_call(block: Callable[[int], list[float]], n: int) -> float:
        """Seconds a call takes: the median timed, or the wall time per call if longer (on CUDA the
        events and launches cost host time beyond the device time measured)."""
        t0 = time.perf_counter()
        times = block(n)
        return max(statistics.median(times), (time.perf_counter() - t0) / n)

    warm = max(warmup, 1)
    slower = max(per_call(lambda n: time_calls(fn, n, device), warm), per_call(with_sampler, warm))
    if calls is None:
        calls = int(min(10_000, max(1, block_seconds // max(slower, 1e-6))))
    reads = 0

    off, on = [], []
    on_seconds = 0.0
    for r in range(repeats):
        for sampler_on in (False, True) if r % 2 == 0 else (True, False):
            if not sampler_on:
                off.append(time_calls(fn, calls, device))
                continue
            t0 = time.perf_counter()
            on.append(with_sampler(calls))
            on_seconds += time.perf_counter() - t0
    return calls, np.asarray(off), np.asarray(on), reads / on_seconds if on_seconds > 0 else float("nan")


def run(args: argparse.Namespace) -> tuple[str, list[Row]]:
    """Measure every case at every size; returns the reader's name and the rows."""
    device = select_device(args.device)
    configure_threads(args.threads)
    hr = None
    if "hr" in args.cases:
        specs = load_methods(Path(args.methods_dir), ["hr"])
        use_method_models(specs.values())
        hr = build_model(specs["hr"].model).to(device).eval()
    rows: list[Row] = []
    block_seconds = args.seconds / (len(args.cases) * len(args.sizes) * 2 * args.repeats)
    reader_name: str | None = None
    read: Callable[[], float | None] = lambda: None  # noqa: E731 (chosen after the first call)
    with torch.inference_mode():
        for size in args.sizes:
            for name, fn in build_calls(args.cases, size, device, hr).items():
                fn()  # the device is in use before NVML is asked about this process
                if reader_name is None:
                    reader_name, read = reader_for(device)
                calls, off, on, reads_per_s = measure_case(
                    fn,
                    device,
                    read,
                    repeats=args.repeats,
                    interval=args.interval,
                    warmup=args.warmup,
                    calls=args.calls,
                    block_seconds=block_seconds,
                )
                ratio, low, high = ratio_interval(off, on, args.resamples)
                rows.append(
                    Row(name, size, calls, args.repeats, float(np.median(off)), float(np.median(on)),
                        ratio, low, high, reads_per_s)
                )  # fmt: skip
    return reader_name or "none", rows


def report_lines(args: argparse.Namespace, device: str, threads: int, reader: str, rows: list[Row]) -> list[str]:
    """The plain-text report: a header line, a column line and one line per case."""
    return [
        f"sampler overhead on {device} ({threads} torch threads; sampler reads {reader} every "
        f"{args.interval * 1e3:g} ms; {args.repeats} block pairs, off/on order alternating; "
        f"ratio = median on / median off, 95% bootstrap interval over block pairs)",
        f"{'case':<5} {'size':<11} {'calls':>5} {'off_ms':>9} {'on_ms':>9} {'on/off':>7} "
        f"{'95% interval':>17} {'reads/s':>8}",
        *(_row_line(row) for row in rows),
    ]


def _row_line(row: Row) -> str:
    interval = f"[{row.ratio_low:.3f}, {row.ratio_high:.3f}]"
    return (
        f"{row.case:<5} {_size_name(row.size):<11} {row.calls_per_block:>5d} {row.median_off_s * 1e3:>9.3f} "
        f"{row.median_on_s * 1e3:>9.3f} {row.ratio:>7.3f} {interval:>17} {row.reads_per_s:>8.0f}"
    )


def csv_text(device: str, threads: int, reader: str, interval: float, rows: list[Row]) -> str:
    """The rows as CSV with :data:`COLUMNS`."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow(
            [device, threads, reader, interval, row.case, _size_name(row.size), row.calls_per_block, row.block_pairs,
             f"{row.median_off_s:.6g}", f"{row.median_on_s:.6g}", f"{row.ratio:.4f}", f"{row.ratio_low:.4f}",
             f"{row.ratio_high:.4f}", f"{row.reads_per_s:.0f}"]
        )  # fmt: skip
    return buffer.getvalue()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the calls run (default cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--sizes", type=_size, nargs="+", default=[(16, 32, 32), (32, 64, 64)],
        help="input sizes DxHxW (default 16x32x32 32x64x64)",
    )  # fmt: skip
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES), help="calls timed (default all)")
    parser.add_argument("--repeats", type=int, default=10, help="pairs of blocks, sampler off and on (default 10)")
    parser.add_argument("--interval", type=float, default=1e-3, help="sampler interval, s (default 1e-3, measure's)")
    parser.add_argument("--calls", type=int, default=None, help="calls per block (default: fill --seconds)")
    parser.add_argument(
        "--seconds", type=float, default=30.0,
        help="target time of all timed blocks, s, shared equally (default 30; a block holds at least one call)",
    )  # fmt: skip
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per case, sampler off and on (default 2)")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    parser.add_argument("--methods-dir", type=Path, default=REPO / "baselines", help="method files (for hr)")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows to this CSV")
    args = parser.parse_args(argv)
    if args.repeats < 1 or (args.calls is not None and args.calls < 1) or args.interval <= 0:
        parser.error("--repeats and --calls must be >= 1 and --interval > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    load_start = os.getloadavg()[0]
    reader, rows = run(args)
    device, threads = args.device, torch.get_num_threads()
    for line in report_lines(args, device, threads, reader, rows):
        print(line)
    load_end = os.getloadavg()[0]
    print(f"{os.cpu_count()} CPUs; load average (1 min) {load_start:.2f} at the start, {load_end:.2f} at the end")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.out, csv_text(device, threads, reader, args.interval, rows))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

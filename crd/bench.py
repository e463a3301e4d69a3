"""Efficiency bench: latency and memory of every method's inference (and one training step).

Inference = :func:`crd.models.inference.infer` (the field, then the warp of the moving image), batch
1, random inputs (timing and memory do not depend on the weights; trained weights are used when
``checkpoints_dir/<method>.pt`` exists). Each (method, size, option) is one *case*:

- ``fp32`` is always measured; every option flag (``bf16`` autocast, ``channels-last`` 3-D,
  ``compile``, ``cuda-graphs``, ``tf32``) is measured as its own case, recorded in the ``options``
  column, and applied to every method alike (``hr`` included, so ratios stay fair).
- On CUDA ``fp32`` is true float32 (:func:`crd.runtime.use_true_fp32`); ``tf32`` lets cuDNN
  convolutions and cuBLAS products use TF32 for that case only, as PyTorch does by default for
  convolutions (and as a script that leaves the defaults alone runs).
- On the CPU every case runs in its own subprocess by default (``isolate="auto"``), so one model's
  allocations cannot hide another's peak RSS; the subprocess' wall time is recorded
  (``case_wall_s``) so the cost of that choice is visible. On CUDA cases run in one process, the
  allocator's peak reset and its cache emptied between cases.

Output: a tidy long CSV with columns ``size, method, options, device, metric, value, ratio_to_hr``
(the ratio is the value divided by ``hr``'s for the same size, options and metric, from the same
run) and a JSON sidecar (device description, settings, weights used, wall time).

Metrics: ``latency_median_s``, ``latency_iqr_s``, ``latency_min_s``, ``latency_max_s``,
``peak_rss_mb`` (on the CPU the working set of one call: its largest RSS rise over ``repeats``
calls measured one by one in a second, fresh process where glibc gives every block of 64 KiB or
more pages of its own, so that no freed memory hides it: :mod:`crd.working_set`; absent where that
cannot be measured exactly; on CUDA the RSS rise over the timed calls), ``base_rss_mb`` (the RSS
before the timed calls: interpreter, torch, weights, inputs), ``process_peak_rss_mb`` (absolute
RSS high-water mark during the timed calls, comparable to ``ru_maxrss``), ``cuda_alloc_peak_mb``,
``nvml_peak_mb`` (CUDA; NVML counts the CUDA context too), ``params``, ``case_wall_s``, and with
``train_step``: ``train_step_s`` (median), ``train_peak_rss_mb`` / ``train_cuda_alloc_peak_mb``.
On CUDA: for ``cuda-graphs`` ``cuda_alloc_peak_mb`` is the allocator peak during the capture and
``cuda_graph_pool_mb`` the graph's private pool (replays allocate nothing); a case in a subprocess
also gets ``nvml_device_delta_peak_mb`` (the device's used memory above its level before the case,
sampled by the parent: the fallback where NVML lists no per-process figure). A case that ran out
of memory has only ``out_of_memory`` = 1 (and ``case_wall_s``); one that failed under
``keep_going``, ``failed`` = 1; the sidecar's ``cases_not_ok`` says why.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crd.atomic import write_text_atomic

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from crd.methods import MethodSpec

__all__ = ["OPTIONS", "parse_size", "run_bench", "run_case", "COLUMNS"]

#: option flags, each measured as a separate case next to the default fp32
OPTIONS = ("bf16", "channels-last", "compile", "cuda-graphs", "tf32")
CUDA_ONLY = frozenset({"cuda-graphs", "tf32"})
COLUMNS = ("size", "method", "options", "device", "metric", "value", "ratio_to_hr")
BASELINE = "hr"
_RESULT_TAG = "CRD-BENCH-RESULT "


def parse_size(text: str) -> tuple[int, int, int]:
    """``"160x192x224"`` -> ``(160, 192, 224)``; a single number means a cube."""
    parts = text.lower().split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"size {text!r}: expected DxHxW (e.g. 160x192x224) or one integer") from None
    if len(dims) == 1:
        dims = dims * 3
    if len(dims) != 3 or min(dims) < 1:
        raise ValueError(f"size {text!r}: expected three positive integers DxHxW")
    return dims  # type: ignore[return-value]


def _size_name(size: tuple[int, int, int]) -> str:
    return "x".join(str(s) for s in size)


# --------------------------------------------------------------------------------------------
# one case, in this process


def _build(model_config: dict[str, Any], checkpoint: str | None, device):
    from crd.models.checkpoint import load_for_inference
    from crd.models.registration import build_model

    if checkpoint and Path(checkpoint).is_file():
        model, _ = load_for_inference(Path(checkpoint), device)
        return model, "trained"
    return build_model(model_config).to(device).eval(), "random"


def _peak_abs_rss_mb() -> float | None:
    from crd.profiling import _read_vmhwm_kb

    kb = _read_vmhwm_kb()
    return None if kb is None else kb / 1024.0


def _train_step_profile(case: dict[str, Any], model, device, fixed, moving) -> dict[str, float]:
    """Median time of ``repeats`` optimiser steps after one warm-up, and the memory peaks."""
    import torch

    from crd.profiling import measure
    from crd.train import TrainingObjective, TrainSettings, optimiser_step

    model.train().requires_grad_(True)
    settings = TrainSettings()  # the default loss weights, NCC window and clipping of crd train
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
    teacher = None
    if case["training"] == "distill":
        teacher, _ = _build(case["teacher_model"], case.get("teacher_checkpoint"), device)
        teacher.requires_grad_(False)
    objective = TrainingObjective(settings, teacher)
    cuda = device.type == "cuda"

    def step() -> None:
        optimiser_step(objective, model, opt, fixed, moving, settings.grad_clip)
        if cuda:
            torch.cuda.synchronize(device)

    step()  # warm-up (lazy state, Adam buffers)
    times = []
    with measure(device) as m:
        for _ in range(max(1, case["repeats"])):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    out = {"train_step_s": statistics.median(times), "train_peak_rss_mb": m.peak_rss_mb}
    if cuda:
        out["train_cuda_alloc_peak_mb"] = m.cuda_alloc_peak_mb
        out["train_nvml_peak_mb"] = m.nvml_peak_mb
    model.eval()
    return out


def _random_pair(size: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed and moving inputs: uniform noise in [0, 1), float32 ``(1, 1, D, H, W)`` on ``device``,
    drawn from one generator seeded 0 (fixed first)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    fixed = torch.rand((1, 1, *size), generator=gen).to(device)
    moving = torch.rand((1, 1, *size), generator=gen).to(device)
    return fixed, moving


def _to_channels_last(
    model: torch.nn.Module, fixed: torch.Tensor, moving: torch.Tensor
) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The model and both ``(1, 1, D, H, W)`` inputs in channels-last 3-D memory format."""
    import torch

    model = model.to(memory_format=torch.channels_last_3d)
    fixed = fixed.contiguous(memory_format=torch.channels_last_3d)
    moving = moving.contiguous(memory_format=torch.channels_last_3d)
    return model, fixed, moving


def _inference_call(
    model: torch.nn.Module, fixed: torch.Tensor, moving: torch.Tensor, option: str, device: torch.device
) -> tuple[Callable[[], Any], dict[str, float]]:
    """The call that is timed: one inference (field + warp) as ``option`` asks, compiled
    (``compile``), under bf16 autocast (``bf16``), or captured once and replayed as a CUDA graph
    (``cuda-graphs``, after three warm-up calls on a side stream); and metrics known before timing.

    A graph's replay allocates nothing (its tensors live in the graph's private memory pool), so
    the allocator peak of the replays would count weights, inputs and output but no activations.
    For ``cuda-graphs`` the memory metrics therefore come from the capture, where every tensor of
    one call is allocated from that pool: ``cuda_alloc_peak_mb`` = the allocator peak while
    capturing (weights and inputs included, like every other case's peak) and
    ``cuda_graph_pool_mb`` = the memory the pool reserved (what the graph holds while it exists).
    Run under ``torch.cuda.device(device)`` so that capture and replay use ``device``'s streams.
    """
    import torch

    from crd.models.inference import infer

    net = torch.compile(model) if option == "compile" else model
    autocast = (
        (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if option == "bf16" else (lambda: nullcontext())
    )

    def run() -> torch.Tensor:
        return infer(net, fixed, moving, autocast=autocast()).warped

    if option != "cuda-graphs":
        return run, {}
    with torch.inference_mode():
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(3):
                run()
        torch.cuda.current_stream(device).wait_stream(side)
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        reserved_before = torch.cuda.memory_reserved(device)
        torch.cuda.reset_peak_memory_stats(device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = run()
        torch.cuda.synchronize(device)
        capture = {
            "cuda_alloc_peak_mb": torch.cuda.max_memory_allocated(device) / 2.0**20,
            "cuda_graph_pool_mb": (torch.cuda.memory_reserved(device) - reserved_before) / 2.0**20,
        }

    def replay(_keep: torch.Tensor = static_out) -> None:  # the default keeps the graph's output alive
        graph.replay()

    return replay, capture


def _inference_metrics(
    fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int
) -> dict[str, float | None]:
    """``warmup`` untimed calls of ``fn``, then the latency (seconds) and memory (MiB) metrics of
    ``repeats`` timed ones; ``None`` where a value is unavailable."""
    import psutil
    import torch

    from crd.profiling import profile_inference, release_freed_memory

    with torch.inference_mode():
        for _ in range(warmup):
            fn()
    release_freed_memory()  # so that the RSS baseline of the timed calls holds no warm-up leftovers
    metrics: dict[str, float | None] = {"base_rss_mb": psutil.Process().memory_info().rss / 2.0**20}
    prof = profile_inference(fn, device, warmup=0, repeats=repeats)
    metrics.update(
        latency_median_s=prof.median_s,
        latency_iqr_s=prof.spread_s,
        latency_min_s=prof.min_s,
        latency_max_s=prof.max_s,
        peak_rss_mb=prof.peak_rss_mb,
        process_peak_rss_mb=_peak_abs_rss_mb(),
    )
    if device.type == "cuda":
        metrics.update(cuda_alloc_peak_mb=prof.cuda_alloc_peak_mb, nvml_peak_mb=prof.nvml_peak_mb)
    return metrics


def _working_set_metrics(fn: Callable[[], Any], case: dict[str, Any]) -> dict[str, float]:
    """In a process started with :data:`crd.profiling.WORKING_SET_ENV`: ``warmup`` (at least one)
    untimed calls, then the largest RSS rise of ``repeats`` calls, each measured on its own
    (``peak_rss_mb``, the working set; :mod:`crd.working_set`). Empty where it cannot be measured
    exactly (:func:`crd.profiling.working_set_support`)."""
    import torch

    from crd.profiling import measure, working_set_support

    if not working_set_support()[0]:
        return {}
    peaks = []
    with torch.inference_mode():
        for _ in range(max(1, int(case["warmup"]))):
            fn()
        for _ in range(int(case["repeats"])):
            with measure(torch.device("cpu")) as m:
                fn()
            peaks.append(m.peak_rss_mb)
    return {"peak_rss_mb": max(peaks)}


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    """Measure one (method, size, option) case in this process; returns ``{metrics, weights}``.
    On CUDA the whole case runs with ``case["device"]`` as the current device (``cuda:N``: its
    streams, its graph capture)."""
    import torch

    from crd.runtime import select_device

    device = select_device(case["device"])  # on CUDA: true fp32 (no TF32)
    with torch.cuda.device(device) if device.type == "cuda" else nullcontext(), _tf32(case["option"] == "tf32"):
        return _run_case_on(case, device)


@contextmanager
def _tf32(allowed: bool) -> Iterator[None]:
    """With ``allowed``, TF32 for float32 cuDNN convolutions and cuBLAS matrix products while the
    block runs (the ``tf32`` case), the previous settings restored after; otherwise nothing."""
    import torch

    if not allowed:
        yield
        return
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _run_case_on(case: dict[str, Any], device: torch.device) -> dict[str, Any]:
    import torch

    from crd.profiling import count_parameters
    from crd.runtime import configure_threads

    t_case = time.perf_counter()
    if case.get("method_files"):
        from crd.methods import load_method
        from crd.models.registration import use_method_models

        use_method_models(load_method(Path(p)) for p in case["method_files"])
    configure_threads(case.get("threads"))
    option = case["option"]
    if option in CUDA_ONLY and device.type != "cuda":
        raise ValueError(f"option {option!r} needs a CUDA device, not {device}")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model, weights = _build(case["model"], case.get("checkpoint"), device)
    fixed, moving = _random_pair(tuple(case["size"]), device)
    if option == "channels-last":
        model, fixed, moving = _to_channels_last(model, fixed, moving)
    fn, known = _inference_call(model, fixed, moving, option, device)
    if case.get("working_set"):
        return {"metrics": _working_set_metrics(fn, case), "weights": weights}
    metrics: dict[str, Any] = {"params": float(count_parameters(model))}
    metrics.update(_inference_metrics(fn, device, case["warmup"], case["repeats"]))
    metrics.update(known)  # cuda-graphs: the capture's memory replaces the replays' allocator peak
    if case.get("train_step") and case.get("training") and option == "fp32" and count_parameters(model) > 0:
        metrics.update(_train_step_profile(case, model, device, fixed, moving))
    metrics["in_process_case_s"] = time.perf_counter() - t_case
    result = {"metrics": {k: v for k, v in metrics.items() if v is not None}, "weights": weights}
    if device.type == "cuda":  # as this case's process had them: math settings (cuDNN autotuning is set here), NVML
        from crd.profiling import probe_nvml
        from crd.runtime import math_settings

        result["process"] = {**math_settings(), "nvml": probe_nvml(device).summary()}
    return result


class CaseOutOfMemory(Exception):
    """A case ran out of (GPU or host) memory: a result of the case, not a crash of the bench."""


def _is_out_of_memory(exc: BaseException) -> bool:
    """True for PyTorch's CUDA OOM error and the CPU allocator's "can't allocate memory"."""
    import torch

    return isinstance(exc, (CaseOutOfMemory, torch.cuda.OutOfMemoryError, MemoryError)) or _says_out_of_memory(str(exc))


def _says_out_of_memory(text: str) -> bool:
    """Whether an error message (an exception's, or a subprocess case's output) is about memory."""
    text = text.lower()
    return "out of memory" in text or "can't allocate memory" in text


def _run_case_subprocess(case: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``case`` in ``python -m crd.bench``; on CUDA, sample the device's used memory (NVML)
    from here while the child runs, so that ``nvml_device_delta_peak_mb`` = its peak above the
    level before the child started: the child's whole footprint (CUDA context, cache, peak) when
    nothing else runs on the GPU, available where NVML has no per-process figure."""
    from crd.errors import CrdError

    sampler, base = None, None
    if str(case["device"]).startswith("cuda"):
        import torch

        from crd.profiling import _Sampler, probe_nvml

        probe = probe_nvml(torch.device(case["device"]))
        if probe.device_used_mb is not None and (base := probe.device_used_mb()) is not None:
            sampler = _Sampler(probe.device_used_mb, interval=2e-3)
            sampler.start()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "crd.bench", json.dumps(case)], capture_output=True, text=True,
            env={**os.environ, **(env or {})},
        )  # fmt: skip
    finally:
        peak = sampler.stop() if sampler is not None else None
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_RESULT_TAG):
            result = json.loads(line[len(_RESULT_TAG) :])
            if peak is not None and base is not None:
                result["metrics"]["nvml_device_delta_peak_mb"] = max(0.0, peak - base)
            return result
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    message = (
        f"bench case {case['method']} {_size_name(tuple(case['size']))} {case['option']} failed "
        f"(exit {proc.returncode}): " + " | ".join(tail)
    )
    if proc.returncode == -9:  # SIGKILL: most likely the kernel's OOM killer
        raise CaseOutOfMemory(f"killed by SIGKILL (likely the kernel's OOM killer): {message}")
    if _says_out_of_memory(" ".join(tail)):
        raise CaseOutOfMemory(message)
    raise CrdError(message)


# --------------------------------------------------------------------------------------------
# the whole bench


def _checked_options(options: list[str] | None, dev: torch.device) -> list[str]:
    """The option flags in order, duplicates dropped; ``ValueError`` for an unknown one or one that
    ``dev`` cannot run."""
    options = list(dict.fromkeys(options or []))
    for opt in options:
        if opt not in OPTIONS:
            raise ValueError(f"unknown option {opt!r}; known: {', '.join(OPTIONS)}")
        if opt in CUDA_ONLY and dev.type != "cuda":
            raise ValueError(f"--{opt} needs a CUDA device; this run's device is {dev}")
    return options


def _isolated(isolate: str, dev: torch.device) -> bool:
    """Whether each case runs in its own subprocess: ``process``, or ``auto`` on the CPU."""
    if isolate not in ("auto", "process", "none"):
        raise ValueError(f"isolate must be auto, process or none, got {isolate!r}")
    return isolate == "process" or (isolate == "auto" and dev.type == "cpu")


def _benchable_specs(methods_dir: Path, methods: list[str]) -> dict[str, MethodSpec]:
    """The specs of ``methods`` (teachers included); ``ValueError`` for a method without a model."""
    from crd.methods import load_methods
    from crd.models.registration import use_method_models

    specs = load_methods(Path(methods_dir), list(methods))
    use_method_models(specs.values())
    for name in methods:
        if specs[name].model is None:
            raise ValueError(f"method {name!r} brings its own rules and no model config: it cannot be benched")
        teacher = specs[name].oracle_of
        if teacher is not None:
            raise ValueError(f"method {name!r} is an oracle: it has no latency of its own (it runs {teacher}, "
                             f"then restricts its field); bench {teacher!r}")  # fmt: skip
    return specs


def _checkpoint(checkpoints_dir: Path | None, name: str) -> str | None:
    """``checkpoints_dir/<name>.pt`` as a string when that file exists, else ``None``."""
    if checkpoints_dir is None:
        return None
    path = Path(checkpoints_dir) / f"{name}.pt"
    return str(path) if path.is_file() else None


def _cases(
    specs: dict[str, MethodSpec],
    methods: list[str],
    sizes: list[tuple[int, int, int]],
    options: list[str],
    checkpoints_dir: Path | None,
    settings: dict[str, Any],
) -> Iterator[dict[str, Any]]:
    """The cases in bench order (size, then ``fp32`` and each option, then method), each a JSON-able
    dict; ``settings`` holds the keys every case shares (device, repeats, warmup, threads,
    train_step). Lazy: a size that a method's ``size_multiple`` does not divide raises
    ``ValueError`` when that case is reached."""
    from crd.models.registration import build_model

    for size in sizes:
        multiples: dict[str, int] = {}  # each model's size_multiple (padding would change what is timed)
        for option in ["fp32", *options]:
            for name in methods:
                spec = specs[name]
                if name not in multiples:
                    multiples[name] = int(build_model(spec.model).size_multiple)
                multiple = multiples[name]
                if any(s % multiple for s in size):
                    raise ValueError(
                        f"size {_size_name(size)}: method {name!r} needs sides that are multiples of {multiple}"
                    )
                yield {
                    "method": name,
                    "model": spec.model,
                    "checkpoint": _checkpoint(checkpoints_dir, name),
                    "size": list(size),
                    "option": option,
                    **settings,
                    "training": spec.training,
                    "teacher_model": specs[spec.teacher].model if spec.teacher else None,
                    "teacher_checkpoint": _checkpoint(checkpoints_dir, spec.teacher) if spec.teacher else None,
                    # method files that bring their own network, so a case in a subprocess can build it
                    "method_files": [str(s.path) for s in specs.values()
                                     if s.builder is not None or s.backbone is not None],  # fmt: skip
                }


def _measure(case: dict[str, Any], in_subprocess: bool, dev: torch.device, keep_going: bool) -> dict[str, Any]:
    """Run one case (in a subprocess or here) and add its wall time ``case_wall_s`` (seconds) to the
    metrics; on CUDA in-process, free the case's cached memory (and graph pool) afterwards.

    Running out of memory is a result: the metrics are ``{"out_of_memory": 1}`` and ``status``
    says so. Any other error is raised, or with ``keep_going`` recorded as ``{"failed": 1}`` with
    the error in ``status``. Returns ``{metrics, weights, status}`` (``status`` ``"ok"`` or why not)."""
    t0 = time.perf_counter()
    status = "ok"
    try:
        result = _run_case_subprocess(case) if in_subprocess else run_case(case)
    except Exception as exc:
        if _is_out_of_memory(exc):
            status = "out of memory: " + " ".join(str(exc).split())[:300]
            result = {"metrics": {"out_of_memory": 1.0}, "weights": None}
        elif keep_going:
            status = f"failed: {type(exc).__name__}: " + " ".join(str(exc).split())[:300]
            result = {"metrics": {"failed": 1.0}, "weights": None}
        else:
            raise
    if not in_subprocess:  # free what this case held (cycles too), and on CUDA its cache and graph pool
        import gc

        gc.collect()
        if dev.type == "cuda":
            import torch

            torch.cuda.empty_cache()
    metrics = dict(result["metrics"])
    metrics["case_wall_s"] = time.perf_counter() - t0
    if status == "ok" and dev.type == "cpu":
        metrics.pop("peak_rss_mb", None)  # the timed calls' RSS rise: not the working set
        metrics.update(_working_set(case))
    return {"metrics": metrics, "weights": result["weights"], "status": status, "process": result.get("process")}


def _working_set(case: dict[str, Any]) -> dict[str, float]:
    """``peak_rss_mb`` of a CPU case: its working set, from the same call in a fresh process started
    with :data:`crd.profiling.WORKING_SET_ENV` (see :mod:`crd.working_set`); empty where it cannot
    be measured exactly."""
    from crd.profiling import WORKING_SET_ENV

    try:
        return dict(_run_case_subprocess({**case, "working_set": True}, env=WORKING_SET_ENV)["metrics"])
    except Exception as exc:  # the latency stands; the memory figure is left out, and why is logged
        logging.getLogger("crd").warning("bench %s: no working-set figure: %s", case["method"], exc)
        return {}


def _rows(case: dict[str, Any], device_type: str, metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One tidy row per metric of a case (every column but ``ratio_to_hr``)."""
    size = _size_name(tuple(case["size"]))
    return [
        {
            "size": size,
            "method": case["method"],
            "options": case["option"],
            "device": device_type,
            "metric": metric,
            "value": float(value),
        }
        for metric, value in metrics.items()
    ]


def _table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The tidy table of ``rows`` with ``ratio_to_hr``: each value over ``hr``'s for the same size,
    options and metric (NaN where ``hr`` has none, or a zero)."""
    import pandas as pd

    table = pd.DataFrame(rows, columns=list(COLUMNS[:-1]))
    base = table[table.method == BASELINE].set_index(["size", "options", "metric"])["value"]

    def ratio(r) -> float:
        b = base.get((r["size"], r["options"], r["metric"]), math.nan)
        return r["value"] / b if b and not math.isnan(b) else math.nan

    table["ratio_to_hr"] = table.apply(ratio, axis=1) if len(table) else []
    return table


def _sidecar(
    dev: torch.device,
    methods: list[str],
    sizes: list[tuple[int, int, int]],
    options: list[str],
    settings: dict[str, Any],
    in_subprocess: bool,
    weights: dict[str, str],
    t_start: float,
    *,
    statuses: dict[str, str],
    process: dict[str, Any] | None,
    complete: bool,
) -> dict[str, Any]:
    """The JSON sidecar of the table: the device (with the threads configured now; on CUDA the math
    settings and NVML status ``process`` of the first fp32 case, the reference: a ``tf32`` case ran
    with TF32 on), the settings, the weights each method used, each case's status that is not ``ok`` (``"<size> <option>
    <method>": "out of memory: ..."``), whether every case has run (``complete``), and the bench's
    wall time in seconds since ``t_start``."""
    from crd.profiling import device_description

    device = device_description(dev)
    if process is not None:  # as the fp32 cases' processes had them (a parent of subprocess cases differs)
        device.update(process)
    return {
        "kind": "bench",
        "complete": complete,
        "cases_not_ok": {k: v for k, v in statuses.items() if v != "ok"},
        "device": device,
        "methods": list(methods),
        "sizes": [_size_name(s) for s in sizes],
        "options": ["fp32", *options],
        "repeats": settings["repeats"],
        "warmup": settings["warmup"],
        "batch": 1,
        "train_step": settings["train_step"],
        "isolation": "subprocess per case" if in_subprocess else "one process",
        "weights": weights,
        "wall_s": time.perf_counter() - t_start,
        "baseline": BASELINE,
    }


def run_bench(
    methods_dir: Path,
    methods: list[str],
    sizes: list[tuple[int, int, int]],
    out: Path,
    *,
    device: str = "auto",
    repeats: int = 5,
    warmup: int = 1,
    options: list[str] | None = None,
    checkpoints_dir: Path | None = None,
    train_step: bool = False,
    threads: int | None = None,
    isolate: str = "auto",
    keep_going: bool = False,
    log=print,
) -> Path:
    """Measure every (method, size, option) case; write the tidy CSV ``out`` and its sidecar.

    The table and sidecar are rewritten (atomically) after every case, the sidecar's ``complete``
    false until the last, so a bench stopped by a time limit keeps every case it finished. A case
    that runs out of memory is recorded (metric ``out_of_memory`` = 1, its status in the sidecar)
    and the bench goes on; with ``keep_going`` any other failing case is recorded likewise
    (``failed`` = 1) instead of stopping the bench.

    Raises ``ValueError`` for unknown methods/options, options the device cannot run, methods
    without a model, or bad repeat counts.
    """
    from crd.runtime import configure_threads, select_device

    if repeats < 1 or warmup < 0:
        raise ValueError(f"expected repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    dev = select_device(device)
    options = _checked_options(options, dev)
    in_subprocess = _isolated(isolate, dev)
    specs = _benchable_specs(methods_dir, methods)
    if not sizes:
        raise ValueError("no size to bench")

    settings = {"device": str(dev), "repeats": repeats, "warmup": warmup, "threads": threads, "train_step": train_step}
    rows: list[dict[str, Any]] = []
    weights: dict[str, str] = {}
    statuses: dict[str, str] = {}
    process: dict[str, Any] | None = None
    t_start = time.perf_counter()
    out = Path(out)

    def write(complete: bool) -> None:  # after every case, so a killed bench keeps what it measured
        write_text_atomic(out, _table(rows).to_csv(index=False))
        sidecar = _sidecar(
            dev, methods, sizes, options, settings, in_subprocess, weights, t_start,
            statuses=statuses, process=process, complete=complete,
        )  # fmt: skip
        write_text_atomic(out.with_suffix(".json"), json.dumps(sidecar, indent=2) + "\n")

    for case in _cases(specs, methods, sizes, options, checkpoints_dir, settings):
        result = _measure(case, in_subprocess, dev, keep_going)
        metrics = result["metrics"]
        name = f"{_size_name(tuple(case['size']))} {case['option']} {case['method']}"
        statuses[name] = result["status"]
        if case["option"] == "fp32":  # the reference settings (a tf32 case runs with TF32 on)
            process = process or result.get("process")
        if result["weights"] is not None:
            weights[case["method"]] = result["weights"]
        what = (
            f"median {metrics['latency_median_s']:.4f} s" if result["status"] == "ok" else result["status"].upper()
        )
        log(
            f"bench {_size_name(tuple(case['size']))} {case['option']:13s} {case['method']:8s} "
            f"{what}, case {metrics['case_wall_s']:.1f} s"
        )
        rows.extend(_rows(case, dev.type, metrics))
        write(complete=False)
    configure_threads(threads)
    write(complete=True)
    return out


def summary(table_path: Path) -> str:
    """Plain-text table: per size and options, median latency, peak RSS / allocator peak, ratios;
    on CUDA also NVML's figure (per process, or the device-level delta of a subprocess case);
    ``OUT OF MEMORY`` / ``FAILED`` for such cases."""
    import pandas as pd

    t = pd.read_csv(table_path)
    lines = []
    mem_metric = "cuda_alloc_peak_mb" if (t.metric == "cuda_alloc_peak_mb").any() else "peak_rss_mb"
    cuda = mem_metric == "cuda_alloc_peak_mb"
    fallback_used = False
    for (size, options), g in t.groupby(["size", "options"], sort=False):
        lines.append(f"{size} {options} ({g.device.iloc[0]})")
        lines.append(
            f"  {'method':11s} {'median s':>10s} {'x hr':>6s} {mem_metric:>18s} {'x hr':>6s} "
            + (f"{'NVML MB':>9s} " if cuda else f"{'proc peak RSS MB':>17s} ")
            + f"{'params':>9s}"
        )
        for method, m in g.groupby("method", sort=False):
            v = m.set_index("metric")

            def val(k: str, col: str = "value", v=v) -> float:
                return float(v[col][k]) if k in v.index else math.nan

            if "out_of_memory" in v.index or "failed" in v.index:
                lines.append(f"  {method:11s} {'OUT OF MEMORY' if 'out_of_memory' in v.index else 'FAILED'}")
                continue
            nvml, mark = val("nvml_peak_mb"), " "
            if math.isnan(nvml) and not math.isnan(val("nvml_device_delta_peak_mb")):
                nvml, mark = val("nvml_device_delta_peak_mb"), "*"  # the device-level fallback, marked
                fallback_used = True
            lines.append(
                f"  {method:11s} {val('latency_median_s'):10.4f} {val('latency_median_s', 'ratio_to_hr'):6.2f} "
                f"{val(mem_metric):18.1f} {val(mem_metric, 'ratio_to_hr'):6.2f} "
                + (f"{nvml:8.0f}{mark} " if cuda else f"{val('process_peak_rss_mb'):17.1f} ")
                + f"{val('params'):9.0f}"
            )
            if "train_step_s" in v.index:
                train_mem = "train_cuda_alloc_peak_mb" if cuda else "train_peak_rss_mb"
                step, step_ratio = val("train_step_s"), val("train_step_s", "ratio_to_hr")
                lines.append(
                    f"  {'':11s} train step {step:.4f} s ({step_ratio:.2f} x hr),"
                    f" {train_mem} {val(train_mem):.1f} ({val(train_mem, 'ratio_to_hr'):.2f} x hr)"
                )
    if fallback_used:
        lines.append("* NVML MB: the device's used memory above its level before the case (no per-process figure)")
    return "\n".join(lines)


if __name__ == "__main__":  # worker: python -m crd.bench '<case json>'
    _result = run_case(json.loads(sys.argv[1]))
    print(_RESULT_TAG + json.dumps(_result), flush=True)

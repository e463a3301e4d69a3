"""crd.profiling on the CPU: latency statistics, memory peaks, parameter counts, NVML fallbacks."""

from __future__ import annotations

import itertools
import os
import statistics
import sys
import time
import types

import numpy as np
import pytest
import torch

from crd import profiling as P


def test_profile_inference_counts_calls_and_summarises_the_repeats():
    calls = []

    def fn():
        calls.append(torch.is_inference_mode_enabled())
        time.sleep(0.002)

    prof = P.profile_inference(fn, "cpu", warmup=2, repeats=5)
    assert len(calls) == 7 and all(calls)  # warm-up + repeats, under inference mode
    assert prof.timer == "perf_counter" and prof.device == "cpu"
    assert (prof.warmup, prof.repeats, len(prof.times_s)) == (2, 5, 5)
    assert all(t >= 0.002 for t in prof.times_s)
    assert prof.median_s == statistics.median(prof.times_s)
    assert prof.min_s == min(prof.times_s) and prof.max_s == max(prof.times_s)
    p25, p75 = np.percentile(prof.times_s, [25, 75])
    assert prof.spread_s == pytest.approx(p75 - p25, abs=1e-12)
    assert prof.wall_s >= sum(prof.times_s)
    assert prof.peak_rss_mb is not None and prof.peak_rss_mb >= 0
    assert prof.cuda_alloc_peak_mb is None and prof.nvml_peak_mb is None
    assert set(prof.as_dict()) >= {"median_s", "spread_s", "peak_rss_mb", "cuda_alloc_peak_mb", "nvml_peak_mb"}


def test_profile_inference_without_inference_mode_and_bad_arguments():
    seen = []
    P.profile_inference(
        lambda: seen.append(torch.is_inference_mode_enabled()), "cpu", warmup=0, repeats=1, inference_mode=False
    )
    assert seen == [False]
    with pytest.raises(ValueError, match="repeats >= 1"):
        P.profile_inference(lambda: None, "cpu", repeats=0)
    with pytest.raises(ValueError, match="warmup >= 0"):
        P.profile_inference(lambda: None, "cpu", warmup=-1)


def test_profile_inference_sees_the_peak_rss_of_the_repeats():
    def fn():
        block = np.ones(64 * 2**20 // 8)  # 64 MB, touched
        return float(block[::4096].sum())

    prof = P.profile_inference(fn, "cpu", warmup=0, repeats=2)
    assert prof.peak_rss_mb >= 48  # a sampled fallback might miss a little, never most of it


def test_count_parameters():
    model = torch.nn.Sequential(torch.nn.Conv3d(2, 4, 3), torch.nn.BatchNorm3d(4), torch.nn.Conv3d(4, 3, 1))
    expected = (2 * 4 * 27 + 4) + (4 + 4) + (4 * 3 + 3)
    assert P.count_parameters(model) == expected
    model[0].weight.requires_grad_(False)
    assert P.count_parameters(model, trainable_only=True) == expected - 2 * 4 * 27
    shared = torch.nn.Linear(3, 3)
    assert P.count_parameters(torch.nn.Sequential(shared, shared)) == 12  # counted once


def test_nvml_missing_module_gives_none(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # "import pynvml" now raises ImportError
    assert P._nvml_reader(torch.device("cuda", 0)) is None


def test_nvml_failing_init_gives_none(monkeypatch):
    fake = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    def fail():
        raise NVMLError("Driver Not Loaded")

    fake.nvmlInit = fail
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert P._nvml_reader(torch.device("cuda", 0)) is None


def _fake_nvml(monkeypatch, processes, *, query_fails=False, used_bytes=7 * 2**20):
    """A stand-in pynvml with one GPU whose process list is ``processes`` (pid, bytes or None)."""
    fake = types.ModuleType("pynvml")
    fake.nvmlInit = lambda: None
    fake.nvmlDeviceGetCount = lambda: 1
    fake.nvmlDeviceGetHandleByIndex = lambda i: "handle0"
    fake.nvmlDeviceGetUUID = lambda h: "GPU-0000"
    fake.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=used_bytes)

    def running(handle):
        if query_fails:
            raise RuntimeError("insufficient permissions")
        return [types.SimpleNamespace(pid=pid, usedGpuMemory=b) for pid, b in processes]

    fake.nvmlDeviceGetComputeRunningProcesses = running
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: types.SimpleNamespace(uuid="0000"))
    P._NVML_WARNED.clear()


def test_nvml_reader_failing_query_gives_none_and_says_why(monkeypatch, caplog):
    """NVML initialises but the per-process query fails (e.g. no permission): no reader, a logged
    reason, and the device-level figure still available as the labelled fallback."""
    _fake_nvml(monkeypatch, [], query_fails=True)
    probe = P.probe_nvml(torch.device("cuda"))
    assert probe.process_mb is None and "insufficient permissions" in probe.why
    assert probe.device_used_mb() == 7.0
    with caplog.at_level("WARNING", logger="crd"):
        assert P._nvml_reader(torch.device("cuda")) is None
    assert "insufficient permissions" in caplog.text


def test_nvml_hidden_pid_is_reported_not_silent(monkeypatch):
    """In a container NVML lists host PIDs: this process is not among them."""
    _fake_nvml(monkeypatch, [(os.getpid() + 100000, 5 * 2**20)])
    probe = P.probe_nvml(torch.device("cuda"))
    assert probe.process_mb is None
    assert f"PID {os.getpid()}" in probe.why and str(os.getpid() + 100000) in probe.why
    assert probe.summary() == {"per_process": False, "device_level": True, "why": probe.why}


def test_nvml_listed_without_memory_figure(monkeypatch):
    _fake_nvml(monkeypatch, [(os.getpid(), None)])
    probe = P.probe_nvml(torch.device("cuda"))
    assert probe.process_mb is None and "without a memory figure" in probe.why


def test_nvml_per_process_reader(monkeypatch):
    _fake_nvml(monkeypatch, [(1, 2**20), (os.getpid(), 300 * 2**20)])
    probe = P.probe_nvml(torch.device("cuda"))
    assert probe.why is None and probe.process_mb() == 300.0
    read = P._nvml_reader(torch.device("cuda"))
    sampler = P._Sampler(read, interval=1e-3)
    sampler.start()
    time.sleep(0.01)
    assert sampler.stop() == 300.0


def test_sampler_keeps_the_maximum():
    values = itertools.chain([1.0, 5.0, 3.0], itertools.repeat(2.0))
    sampler = P._Sampler(lambda: next(values), interval=1e-4)
    sampler.start()
    time.sleep(0.02)
    assert sampler.stop() == 5.0


def test_measure_and_device_description_on_cpu():
    with P.measure(torch.device("cpu")) as m:
        x = torch.ones(2**20)
        del x
    assert m.seconds >= 0 and m.peak_rss_mb is not None
    assert m.cuda_alloc_peak_mb is None and m.nvml_peak_mb is None
    info = P.device_description(torch.device("cpu"))
    assert info["device"] == "cpu" and info["torch"] == torch.__version__
    assert info["threads"] == torch.get_num_threads() and "device_name" in info and "cuda" in info


def test_the_nvml_reason_is_logged_once_though_the_listed_pids_change(monkeypatch, caplog):
    listed = [(1000001, 2**20)]
    _fake_nvml(monkeypatch, listed)
    with caplog.at_level("WARNING", logger="crd"):
        for other in (1000001, 1000002, 1000003):  # other jobs come and go on the GPU
            listed[:] = [(other, 2**20)]
            assert P._nvml_reader(torch.device("cuda")) is None
    assert len(caplog.records) == 1 and "1000001" in caplog.text

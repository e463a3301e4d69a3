"""crd.runtime: device selection refuses what cannot run, naming it."""

import pytest
import torch

from crd.runtime import select_device


def test_a_cuda_index_beyond_the_visible_devices_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert select_device("cuda:1") == torch.device("cuda", 1) and select_device("cuda") == torch.device("cuda")
    expected = r"'cuda:2' requested but 2 CUDA device\(s\) are visible .*CUDA_VISIBLE_DEVICES=3,5"
    with pytest.raises(ValueError, match=expected):
        select_device("cuda:2")


def test_cuda_without_cuda_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        select_device("cuda:0")
    assert select_device("auto") == torch.device("cpu")


def test_choosing_cuda_makes_fp32_true_fp32_and_the_settings_are_recorded(monkeypatch):
    from crd.profiling import device_description
    from crd.runtime import math_settings

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True  # both on, whatever the defaults
        _check_true_fp32(monkeypatch, device_description, math_settings)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _check_true_fp32(monkeypatch, device_description, math_settings):
    select_device("cpu")
    assert math_settings()["cudnn_allow_tf32"] is True  # the CPU path changes nothing
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    select_device("cuda")
    settings = math_settings()
    assert settings["cudnn_allow_tf32"] is False and settings["matmul_allow_tf32"] is False
    assert set(settings) == {"cudnn_allow_tf32", "matmul_allow_tf32", "cudnn_benchmark", "deterministic_algorithms"}
    assert settings.items() <= device_description(torch.device("cpu")).items()  # in every sidecar

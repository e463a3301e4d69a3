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

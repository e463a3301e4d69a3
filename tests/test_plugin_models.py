"""The model route for networks crd-bench did not write: one method file with ``build_model``, no
edit under ``crd/``; trained, evaluated, registered and benched like any method, and its
checkpoints rebuilt only where the method file is given (never from code a checkpoint names)."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import pandas as pd
import pytest

from crd.cli import main
from crd.methods import MethodError, load_method
from repo_paths import REPO

TINY_NET = '''"""tiny-net: a two-layer convolutional network predicting the field directly (a test plugin)."""

MODEL = {"kind": "tiny-net", "channels": 4}
TRAINING = "unsupervised"


def build_model(config):
    import torch
    import torch.nn as nn

    class TinyNet(nn.Module):
        size_multiple = 1

        def __init__(self, channels):
            super().__init__()
            self.body = nn.Sequential(nn.Conv3d(2, channels, 3, padding=1), nn.LeakyReLU(0.2),
                                      nn.Conv3d(channels, 3, 3, padding=1))
            nn.init.zeros_(self.body[-1].weight)
            nn.init.zeros_(self.body[-1].bias)
            self.config = dict(config)

        def forward(self, fixed, moving):
            return self.body(torch.cat([fixed, moving], dim=1))

    return TinyNet(config["channels"])
'''


@pytest.fixture()
def plugin(tmp_path):
    folder = tmp_path / "baselines"
    folder.mkdir()
    path = folder / "tiny-net.py"
    path.write_text(TINY_NET)
    return path


def test_a_method_file_brings_its_network_through_every_stage(tiny_synth, plugin, tmp_path, capsys):
    ckpt, table = tmp_path / "tiny-net.pt", tmp_path / "eval" / "tiny-net.csv"
    assert main(["train", "--data", str(tiny_synth), "--method-file", str(plugin), "--out", str(ckpt),
                 "--iterations", "2", "--settings", json.dumps({"checkpoint_every": 1, "val_pairs": 1}),
                 "--device", "cpu", "--threads", "1", "--no-progress"]) == 0  # fmt: skip
    assert main(["evaluate", "--data", str(tiny_synth), "--method-file", str(plugin), "--checkpoint", str(ckpt),
                 "--out", str(table), "--device", "cpu", "--no-progress"]) == 0  # fmt: skip
    rows = pd.read_csv(table)
    n_params = (2 * 4 * 27 + 4) + (4 * 3 * 27 + 3)
    assert set(rows.method) == {"tiny-net"} and rows[rows.metric == "params"]["value"].item() == n_params
    assert rows[rows.metric == "dice"]["value"].between(0, 1).all()
    image = tiny_synth / "images" / "synth_000.nii.gz"
    out = tmp_path / "w.nii.gz"
    assert main(["register", "--checkpoint", str(ckpt), "--method-file", str(plugin), "--fixed", str(image),
                 "--moving", str(image), "--out-warped", str(out), "--device", "cpu"]) == 0  # fmt: skip
    assert nib.load(str(out)).shape == nib.load(str(image)).shape
    bench = tmp_path / "bench.csv"
    assert main(["bench", "--methods", "tiny-net", "--methods-dir", str(plugin.parent), "--sizes", "16x16x16",
                 "--repeats", "1", "--warmup", "0", "--device", "cpu", "--out", str(bench)]) == 0  # fmt: skip
    assert "tiny-net" in set(pd.read_csv(bench)["method"])


def test_a_checkpoint_never_names_code_to_run(tiny_synth, plugin, tmp_path):
    """Without the method file the checkpoint's kind is unknown: one line saying how to give it."""
    ckpt = tmp_path / "tiny-net.pt"
    assert main(["train", "--data", str(tiny_synth), "--method-file", str(plugin), "--out", str(ckpt),
                 "--iterations", "1", "--device", "cpu", "--no-progress"]) == 0  # fmt: skip
    image = tiny_synth / "images" / "synth_000.nii.gz"
    run = subprocess.run(
        [sys.executable, "-m", "crd", "register", "--checkpoint", str(ckpt), "--fixed", str(image), "--moving",
         str(image), "--out-warped", str(tmp_path / "w.nii.gz"), "--device", "cpu"],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert run.returncode == 2 and run.stderr.count("\n") == 1
    assert "unknown model kind 'tiny-net'" in run.stderr and "--method-file" in run.stderr
    assert not (tmp_path / "w.nii.gz").exists()


def test_a_plugin_cannot_take_a_built_in_kind_or_break_the_contract(tiny_synth, tmp_path, capsys):
    folder = tmp_path / "baselines"
    folder.mkdir()
    (folder / "fake-hr.py").write_text(TINY_NET.replace('"kind": "tiny-net"', '"kind": "fullres"'))
    (folder / "no-config.py").write_text(TINY_NET.replace("self.config = dict(config)", "pass"))
    (folder / "not-callable.py").write_text(TINY_NET + "\nbuild_model = 3\n")
    data = tiny_synth
    for name, message in [("fake-hr", "model kind 'fullres' is crd-bench's own"),
                          ("no-config", "not a registration model (missing config)")]:  # fmt: skip
        assert main(["evaluate", "--data", str(data), "--method-file", str(folder / f"{name}.py"),
                     "--out", str(tmp_path / f"{name}.csv")]) == 2  # fmt: skip
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    with pytest.raises(MethodError, match="build_model must be a function"):
        load_method(folder / "not-callable.py")


def test_crd_methods_shows_each_route(plugin, capsys):
    (plugin.parent / "hr.py").write_text((REPO / "baselines" / "hr.py").read_text())
    assert main(["methods", "--folder", str(plugin.parent)]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "own network" in lines["tiny-net"] and "crd-bench model" in lines["hr"]


def test_fourier_net_decoder_is_band_limited_interpolation():
    """baselines/fourier-net.py: zero-padding the centred spectrum keeps a constant and reproduces
    a sinusoid below the small grid's Nyquist frequency on the full grid (to float precision)."""
    import math
    import runpy

    import torch

    upsample = runpy.run_path(str(REPO / "baselines" / "fourier-net.py"))["band_limited_upsample"]
    constant = torch.full((1, 3, 8, 16, 12), 2.5)
    assert torch.allclose(upsample(constant, (32, 64, 48)), torch.full((1, 3, 32, 64, 48), 2.5), atol=1e-5)
    w = torch.arange(48) / 48
    wave = torch.sin(2 * math.pi * 3 * w) + 0.5 * torch.cos(2 * math.pi * 1 * w)
    small = wave[::4].view(1, 1, 1, 1, 12).expand(1, 1, 8, 16, 12)
    assert torch.allclose(upsample(small, (32, 64, 48))[0, 0, 5, 7], wave, atol=1e-5)


def test_fourier_net_is_an_own_network_smaller_than_hr():
    from crd.models.registration import build_model, use_method_models

    spec = load_method(REPO / "baselines" / "fourier-net.py")
    use_method_models([spec])
    model = build_model(spec.model)
    hr = build_model(load_method(REPO / "baselines" / "hr.py").model)
    assert spec.builder is not None and model.size_multiple == 16
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in hr.parameters())

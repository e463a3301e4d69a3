"""Training: the loss goes down, checkpoints describe themselves, interrupted runs resume."""

import pytest
import torch

from crd.losses import UnsupervisedLoss
from crd.models.checkpoint import load_model, read_checkpoint, save_checkpoint
from crd.models.functional import warp
from crd.models.registration import FeatureShiftedTeacher, FullResolutionNet, LowResolutionNet
from crd.train import TrainSettings, initialise_from, train

FAST = {"iterations": 4, "checkpoint_every": 2, "val_pairs": 1, "ncc_window": 5, "lr": 1e-3}


def test_training_steps_lower_the_loss_on_a_pair():
    torch.manual_seed(0)
    from crd.deform import random_bspline_displacement

    fixed = torch.nn.functional.avg_pool3d(torch.rand(1, 1, 32, 32, 32), 5, 1, 2)
    true = random_bspline_displacement((32, 32, 32), max_displacement=2.0, generator=torch.Generator().manual_seed(0))
    moving = warp(fixed, true)
    model = LowResolutionNet()
    loss_fn = UnsupervisedLoss(ncc_window=5, smooth_weight=0.1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(25):
        flow = model(fixed, moving)
        terms = loss_fn(fixed, warp(moving, flow), flow)
        opt.zero_grad()
        terms.total.backward()
        opt.step()
        losses.append(terms.total.item())
    assert sum(losses[-5:]) / 5 < losses[0] - 0.01


def test_train_writes_a_self_describing_checkpoint(tiny_synth, tmp_path):
    out = train(
        tiny_synth,
        tmp_path / "hr.pt",
        method="hr",
        model_config={"kind": "fullres", "width": 0.5},
        settings=TrainSettings.from_dict(FAST),
        threads=2,
        log_file=tmp_path / "hr.log",
        progress=False,
    )
    payload = read_checkpoint(out)
    assert payload["method"] == "hr" and payload["model"] == {"kind": "fullres", "width": 0.5}
    assert payload["training"]["settings"]["iterations"] == 4
    assert [h["iteration"] for h in payload["training"]["history"]] == [2, 4]
    assert "val_dice" in payload["training"]["history"][-1]
    assert not (tmp_path / ".hr.pt.resume").exists()
    assert "wrote" in (tmp_path / "hr.log").read_text()
    model, _ = load_model(out)
    assert isinstance(model, FullResolutionNet)


def test_interrupted_training_resumes_to_the_same_weights(tiny_synth, tmp_path, monkeypatch):
    settings = TrainSettings.from_dict(FAST)
    kwargs = dict(method="lr", model_config={"kind": "lowres"}, settings=settings, threads=1, progress=False)
    reference = train(tiny_synth, tmp_path / "ref.pt", **kwargs)

    calls = {"n": 0}
    real_step = torch.optim.Adam.step

    def flaky_step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", flaky_step)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_synth, tmp_path / "run.pt", **kwargs)
    assert (tmp_path / ".run.pt.resume").is_file() and not (tmp_path / "run.pt").exists()
    monkeypatch.setattr(torch.optim.Adam, "step", real_step)
    resumed = train(tiny_synth, tmp_path / "run.pt", **kwargs)
    assert read_checkpoint(resumed)["training"]["resumed_at"] == 2
    a, b = read_checkpoint(reference)["state_dict"], read_checkpoint(resumed)["state_dict"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_fst_starts_from_hr_backbone_and_crd_distills(tiny_synth, tmp_path):
    hr = save_checkpoint(tmp_path / "hr.pt", FullResolutionNet(), method="hr")
    fst = FeatureShiftedTeacher()
    assert "backbone" in initialise_from(fst, hr)
    torch.testing.assert_close(fst.backbone.conv1.weight, load_model(hr)[0].backbone.conv1.weight)
    save_checkpoint(tmp_path / "fst.pt", fst, method="fst")
    lr = save_checkpoint(tmp_path / "lr.pt", LowResolutionNet(), method="lr")
    out = train(
        tiny_synth,
        tmp_path / "crd.pt",
        method="crd",
        model_config={"kind": "lowres", "width": 1.0, "factor": 2},
        objective="distill",
        settings=TrainSettings.from_dict({**FAST, "iterations": 2}),
        init=lr,
        teacher=tmp_path / "fst.pt",
        threads=2,
        progress=False,
    )
    history = read_checkpoint(out)["training"]["history"]
    assert {"flow_mse", "attention_mse"} <= set(history[-1])


def test_settings_reject_unknown_keys():
    with pytest.raises(ValueError, match="unknown train settings \\['iters'\\]"):
        TrainSettings.from_dict({"iters": 3})

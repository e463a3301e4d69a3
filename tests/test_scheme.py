"""The CRD scheme over any backbone (crd.models.scheme): the contract, the shifted features' grids,
crd-bench's own lr / fst unchanged by the refactor, and a two-step distillation for each outside
network (MONAI's VoxelMorph U-Net and LocalNet) through crd train."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from crd.cli import main
from crd.methods import MethodError, load_method, load_methods
from crd.models.registration import FeatureShiftedTeacher, LowResolutionNet, build_model, use_method_models
from crd.models.scheme import FeatureShiftedScheme, HookedFeatures, LowResolutionScheme, scheme_backbone
from repo_paths import REPO


class TinyUNet(nn.Module):
    """A two-level U-Net-style network that names its features (it follows the contract)."""

    size_multiple = 2
    config = {"kind": "tiny-unet"}
    feature_modules = ["fine", "coarse"]

    def __init__(self) -> None:
        super().__init__()
        self.coarse = nn.Conv3d(2, 6, 3, stride=2, padding=1)
        self.fine = nn.Conv3d(2 + 6, 4, 3, padding=1)
        self.head = nn.Conv3d(4, 3, 3, padding=1)

    def forward(self, fixed, moving):
        x = torch.cat([fixed, moving], 1)
        c = torch.relu(self.coarse(x))
        up = nn.functional.interpolate(c, size=x.shape[2:])
        return self.head(torch.relu(self.fine(torch.cat([x, up], 1))))


def test_a_network_that_names_its_features_gets_lr_and_fst():
    torch.manual_seed(0)
    backbone = scheme_backbone(TinyUNet(), "tiny")
    assert isinstance(backbone, HookedFeatures) and backbone.feature_channels == (4, 6)
    lr, fst = LowResolutionScheme(backbone), FeatureShiftedScheme(scheme_backbone(TinyUNet(), "tiny"))
    fixed, moving = torch.rand(1, 1, 8, 12, 16), torch.rand(1, 1, 8, 12, 16)
    flow, maps = lr.forward_with_maps(fixed, moving)
    t_flow, t_maps = fst.forward_with_maps(fixed, moving)
    assert flow.shape == t_flow.shape == (1, 3, 8, 12, 16)
    assert [m.shape for m in maps] == [m.shape for m in t_maps] == [(1, 4, 6, 8)]  # one map, at 1/2
    assert torch.equal(lr(fixed, moving), flow) and torch.equal(fst(fixed, moving), t_flow)
    assert lr.size_multiple == fst.size_multiple == 4


class NoFeatures(TinyUNet):
    feature_modules = None


class WrongGrid(TinyUNet):
    feature_modules = ["fine", "fine"]


class NotAModule(TinyUNet):
    feature_modules = ["fine", "decoder.3"]


@pytest.mark.parametrize(
    "net, message",
    [
        (NoFeatures(), "the CRD scheme cannot wrap it: it names no decoder features"),
        (WrongGrid(), "feature 1 ('fine') has shape (1, 4, 4, 6, 8) for a 4x6x8 input; feature k must lie on 1/2**k"),
        (NotAModule(), "feature_modules names 'decoder.3', which are not modules"),
    ],
)
def test_a_network_that_does_not_follow_the_contract_is_refused_in_one_line(net, message):
    with pytest.raises(ValueError) as info:
        scheme_backbone(net, "tiny.py")
    assert message in str(info.value) and "\n" not in str(info.value) and str(info.value).startswith("tiny.py: ")


@pytest.mark.parametrize("shape", [(96, 160, 224), (32, 96, 160)])
def test_shifted_features_pair_with_the_students_maps_for_odd_multiples(shape):
    """Sides 32 x odd: the half-resolution path's coarsest grids are odd; every map of the teacher
    lies on the grid of the student's map it is distilled into (1/2 ... 1/16 of the input)."""
    torch.manual_seed(0)
    fst, lr = FeatureShiftedTeacher(width=0.25), LowResolutionNet(width=0.25)
    x = torch.rand(1, 1, *shape)
    with torch.no_grad():
        _, t_maps = fst.forward_with_maps(x, x)
        _, s_maps = lr.forward_with_maps(x, x)
    expected = [tuple(s // 2**k for s in shape) for k in range(1, 5)]
    assert [tuple(m.shape[1:]) for m in t_maps] == [tuple(m.shape[1:]) for m in s_maps] == expected


# Fingerprints of lr, fst and two distillation steps, measured with the classes as they were before
# the scheme was made generic (commit f441d7b's crd.models.registration, on this project's CPU
# torch 2.13): initial weights (exactly), fields and maps on a fixed pair, losses and weights after
# two distillation steps (to float32 rounding).
BEFORE = {
    "lr_init": (-5.734761104762177, 291.6284482817308),
    "fst_init": (2.039775575804252, 433.25821688881797),
    "lr_flow": (-45.312824727991654, 53.471107806669295),
    "lr_maps": (23743.646628178656, 4976.071769727394, 207.372699059546, 25.75081740319729),
    "fst_flow": (-15.55853056188515, 18.63399202979056),
    "fst_maps": (28907.409894011915, 4079.3327432610095, 352.01153753325343, 18.55493924021721),
    "distill": ((9.218929619692062e-09, 1.693509578704834), (0.003298108698800206, 1.5983821153640747)),
    "lr_after": (-10.077468485010286, 291.72205273389886),
}


def _sums(model):
    with torch.no_grad():
        return (float(sum(p.double().sum() for p in model.parameters())),
                float(sum((p.double() ** 2).sum() for p in model.parameters())))  # fmt: skip


def _pair(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 1, *shape, generator=g), torch.rand(1, 1, *shape, generator=g)


def test_crd_benchs_lr_fst_and_crd_are_those_of_before_the_scheme():
    from crd.recipes import DISTILLATION
    from crd.train import TrainingObjective, TrainSettings, optimiser_step

    torch.manual_seed(0)
    lr = LowResolutionNet(width=0.5, factor=2)
    torch.manual_seed(1)
    fst = FeatureShiftedTeacher(width=0.5)
    assert _sums(lr) == BEFORE["lr_init"] and _sums(fst) == BEFORE["fst_init"]
    assert list(lr.state_dict())[:2] == ["backbone.conv1.weight", "backbone.conv1.bias"]
    assert list(fst.state_dict())[-12:-10] == ["fuse5.weight", "fuse5.bias"]
    fixed, moving = _pair((32, 64, 96), 2)
    with torch.no_grad():
        for name, model in (("lr", lr), ("fst", fst)):
            flow, maps = model.forward_with_maps(fixed, moving)
            got = (float(flow.double().sum()), float(flow.double().abs().sum()))
            assert got == pytest.approx(BEFORE[f"{name}_flow"], rel=1e-6)
            assert [float(m.double().sum()) for m in maps] == pytest.approx(BEFORE[f"{name}_maps"], rel=1e-6)
            assert torch.equal(model(fixed, moving), flow)
    settings = TrainSettings(**{k: v for k, v in DISTILLATION.items() if k in TrainSettings.__dataclass_fields__})
    objective = TrainingObjective(settings, fst.requires_grad_(False).eval())
    opt = torch.optim.Adam(lr.parameters(), lr=1e-3)
    lr.train()
    for step, expected in enumerate(BEFORE["distill"]):
        terms, _ = optimiser_step(objective, lr, opt, *_pair((32, 32, 64), 10 + step), settings.grad_clip)
        assert (terms.parts["flow_mse"], terms.parts["attention_mse"]) == pytest.approx(expected, rel=1e-4, abs=1e-9)
    assert _sums(lr) == pytest.approx(BEFORE["lr_after"], rel=1e-5)


OUTSIDE = ("monai-voxelmorph", "monai-localnet")


@pytest.mark.parametrize("backbone", OUTSIDE)
def test_the_scheme_methods_derive_from_one_method_file(backbone):
    specs = load_methods(REPO / "baselines", [f"crd@{backbone}"])
    crd, lr, fst = specs[f"crd@{backbone}"], specs[f"lr@{backbone}"], specs[f"fst@{backbone}"]
    net = specs[backbone]
    assert (crd.training, crd.init, crd.teacher) == ("distill", f"lr@{backbone}", f"fst@{backbone}")
    assert crd.model == lr.model == {"kind": "scheme-lr", "backbone": net.model, "factor": 2}
    assert fst.model == {"kind": "scheme-fst", "backbone": net.model} and fst.init == backbone
    assert crd.backbone.path == net.path and crd.scheme == "crd"


def test_a_scheme_file_is_checked(tmp_path):
    (tmp_path / "net.py").write_text('MODEL = {"kind": "fullres", "width": 1.0}\nTRAINING = "unsupervised"\n')
    (tmp_path / "lr@net.py").write_text('SCHEME = "lr"\nBACKBONE = "net"\n')
    with pytest.raises(MethodError, match="must bring its own trained network"):
        load_method(tmp_path / "lr@net.py")
    (tmp_path / "kd@net.py").write_text('SCHEME = "kd"\nBACKBONE = "net"\n')
    with pytest.raises(MethodError, match="SCHEME must be one of lr, fst, crd"):
        load_method(tmp_path / "kd@net.py")
    (tmp_path / "fst@other.py").write_text('SCHEME = "fst"\nBACKBONE = "net"\n')
    with pytest.raises(MethodError, match="named <SCHEME>@<BACKBONE>.py: fst@net.py"):
        load_method(tmp_path / "fst@other.py")


@pytest.mark.parametrize("backbone", OUTSIDE)
def test_two_step_distillation_over_an_outside_network(backbone, tiny_synth, tmp_path):
    """The network, its lr and fst (initialised from it), and crd distilled from them: two steps
    each through crd train; the teacher's and the student's maps pair up (2 for VoxelMorph's U-Net
    at these widths, 3 for LocalNet); fst@ starts from the trained network's weights."""
    settings = '{"iterations": 2, "batch_size": 1, "checkpoint_every": 2, "val_pairs": 1}'
    ckpt = {}
    for method in (backbone, f"lr@{backbone}", f"fst@{backbone}", f"crd@{backbone}"):
        ckpt[method] = tmp_path / f"{method}.pt"
        args = ["train", "--data", str(tiny_synth), "--method-file", str(REPO / "baselines" / f"{method}.py"),
                "--out", str(ckpt[method]), "--settings", settings, "--no-progress", "--device", "cpu"]  # fmt: skip
        if method.startswith("fst@"):
            args += ["--init", str(ckpt[backbone])]
        if method.startswith("crd@"):
            args += ["--init", str(ckpt[f"lr@{backbone}"]), "--teacher", str(ckpt[f"fst@{backbone}"])]
        assert main(args) == 0, method
    import pandas as pd

    history = pd.read_csv(ckpt[f"crd@{backbone}"].with_suffix(".history.csv"))
    distilled = history[history.metric.isin(["flow_mse", "attention_mse"])]
    assert len(distilled) and all(math.isfinite(v) and v > 0 for v in distilled.value)
    from crd.models.checkpoint import load_model

    use_method_models([load_method(REPO / "baselines" / f"crd@{backbone}.py")])
    net, _ = load_model(ckpt[backbone])
    fst, _ = load_model(ckpt[f"fst@{backbone}"])
    start = build_model(fst.config)  # not trained: what the init copied in is the network's weights
    from crd.train import initialise_from

    initialise_from(start, ckpt[backbone])
    for a, b in zip(net.state_dict().values(), start.backbone.net.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    student, _ = load_model(ckpt[f"crd@{backbone}"])
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        s_maps = student.forward_with_maps(x, x)[1]
        t_maps = fst.forward_with_maps(x, x)[1]
    assert [m.shape for m in s_maps] == [m.shape for m in t_maps]
    assert len(s_maps) == {"monai-voxelmorph": 2, "monai-localnet": 3}[backbone]


@pytest.mark.parametrize("backbone", OUTSIDE)
def test_an_outside_networks_shifted_features_pair_with_its_students_for_odd_multiples(backbone):
    """Sides 16 x odd (48, 80, 112) for MONAI's networks: the teacher's maps and the x2 student's
    lie on the same grids, 1/2, 1/4, ... of the input."""
    specs = load_methods(REPO / "baselines", [f"crd@{backbone}"])
    use_method_models(specs.values())
    torch.manual_seed(0)
    lr, fst = build_model(specs[f"lr@{backbone}"].model), build_model(specs[f"fst@{backbone}"].model)
    shape = (48, 80, 112)
    x = torch.rand(1, 1, *shape)
    with torch.no_grad():
        s_flow, s_maps = lr.forward_with_maps(x, x)
        t_flow, t_maps = fst.forward_with_maps(x, x)
    levels = {"monai-voxelmorph": 2, "monai-localnet": 3}[backbone]
    expected = [tuple(s // 2**k for s in shape) for k in range(1, levels + 1)]
    assert [tuple(m.shape[1:]) for m in s_maps] == [tuple(m.shape[1:]) for m in t_maps] == expected
    assert s_flow.shape == t_flow.shape == (1, 3, *shape)

"""The one backbone and the models built from it: sizes, shapes, maps, checkpoints."""

import re

import pytest
import torch

from crd.errors import CheckpointError
from crd.models.backbone import FEATURE_NAMES, Backbone
from crd.models.checkpoint import load_model, read_checkpoint, save_checkpoint
from crd.models.registration import (
    FeatureShiftedTeacher,
    FullResolutionNet,
    IdentityNet,
    LowResolutionNet,
    build_model,
)
from repo_paths import SHARED


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_match_the_authors_network():
    assert n_params(Backbone()) == 320_419
    assert n_params(FullResolutionNet()) == 320_419
    assert n_params(LowResolutionNet()) == 320_419
    assert n_params(FeatureShiftedTeacher()) == 605_254  # includes the unused HR flow head
    assert n_params(FullResolutionNet(width=0.5)) == 80_723
    assert n_params(IdentityNet()) == 0


def test_backbone_features_grids_and_channels():
    net = Backbone()
    feats = net.features(torch.rand(1, 2, 32, 64, 96))
    assert list(feats) == list(FEATURE_NAMES)
    for name, div in zip(FEATURE_NAMES, (16, 8, 4, 2, 1), strict=True):
        assert feats[name].shape[2:] == (32 // div, 64 // div, 96 // div)
    field, fine_to_coarse = net.forward_features(torch.rand(1, 2, 32, 64, 96))
    assert [f.shape[1] for f in fine_to_coarse] == list(net.feature_channels) == [16, 16, 32, 32, 32]
    assert field.shape == (1, 3, 32, 64, 96) and net.forward_features(torch.rand(1, 2, 32, 64, 96), False)[0] is None


@pytest.mark.parametrize(
    "config",
    [
        {"kind": "fullres"},
        {"kind": "fullres", "width": 0.5},
        {"kind": "lowres"},
        {"kind": "lowres", "factor": 4},
        {"kind": "fst"},
        {"kind": "identity"},
    ],
)
def test_every_model_maps_a_pair_to_a_full_resolution_field(config):
    model = build_model(config)
    fixed, moving = torch.rand(2, 1, 64, 32, 64), torch.rand(2, 1, 64, 32, 64)
    assert model(fixed, moving).shape == (2, 3, 64, 32, 64)
    assert build_model(model.config).config == model.config


def test_student_and_teacher_attention_maps_share_grids():
    fixed, moving = torch.rand(1, 1, 64, 64, 32), torch.rand(1, 1, 64, 64, 32)
    s_flow, s_maps = LowResolutionNet().forward_with_maps(fixed, moving)
    t_flow, t_maps = FeatureShiftedTeacher().forward_with_maps(fixed, moving)
    assert s_flow.shape == t_flow.shape == (1, 3, 64, 64, 32)
    assert [m.shape for m in s_maps] == [m.shape for m in t_maps]
    assert [tuple(m.shape[1:]) for m in s_maps] == [(32, 32, 16), (16, 16, 8), (8, 8, 4), (4, 4, 2)]
    assert all((m >= 0).all() for m in s_maps + t_maps)


def test_lowres_forward_with_maps_gives_the_forward_field():
    model = LowResolutionNet()
    x, y = torch.rand(1, 1, 32, 32, 32), torch.rand(1, 1, 32, 32, 32)
    torch.testing.assert_close(model.forward_with_maps(x, y)[0], model(x, y))


def test_lowres_field_is_the_upsampled_low_resolution_field_times_two():
    model = LowResolutionNet()
    x, y = torch.rand(1, 1, 32, 32, 32), torch.rand(1, 1, 32, 32, 32)
    small = torch.nn.functional.interpolate(torch.cat([x, y], 1), size=(16, 16, 16), mode="trilinear")
    expected = 2.0 * torch.nn.functional.interpolate(model.backbone(small), size=(32, 32, 32), mode="trilinear")
    torch.testing.assert_close(model(x, y), expected)


def test_fst_refuses_sides_that_are_not_multiples_of_32():
    with pytest.raises(ValueError, match="multiples of 32"):
        FeatureShiftedTeacher()(torch.rand(1, 1, 48, 64, 64), torch.rand(1, 1, 48, 64, 64))


def test_build_model_errors_are_explicit():
    with pytest.raises(ValueError, match="unknown model kind 'unet'"):
        build_model({"kind": "unet"})
    with pytest.raises(ValueError, match="bad arguments"):
        build_model({"kind": "fullres", "depth": 3})
    with pytest.raises(ValueError, match="fixed .* and moving .* must have the same shape"):
        FullResolutionNet()(torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 32))


def test_checkpoint_round_trip_rebuilds_the_model_from_the_file_alone(tmp_path):
    model = LowResolutionNet(width=0.5)
    path = save_checkpoint(tmp_path / "m.pt", model, method="lr", training={"iterations": 3})
    loaded, payload = load_model(path)
    assert payload["model"] == {"kind": "lowres", "width": 0.5, "factor": 2}
    assert payload["method"] == "lr" and payload["training"]["iterations"] == 3
    x = torch.rand(1, 1, 32, 32, 32)
    torch.testing.assert_close(loaded(x, x), model.eval()(x, x))
    assert not loaded.training


def test_bad_checkpoints_are_refused_with_the_file_name(tmp_path):
    missing = tmp_path / "missing.pt"
    with pytest.raises(CheckpointError, match="missing.pt: checkpoint file not found"):
        read_checkpoint(missing)
    plain = tmp_path / "plain.pt"
    torch.save(FullResolutionNet().state_dict(), plain)
    with pytest.raises(CheckpointError, match="plain.pt: not a crd-bench checkpoint"):
        read_checkpoint(plain)
    good = save_checkpoint(tmp_path / "good.pt", FullResolutionNet(), method="hr")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated.pt: not a readable"):
        read_checkpoint(truncated)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"state_dict": "weights"}, "its 'state_dict' entry is a str, not a dict"),
        ({"model": ["fullres"]}, "its 'model' entry is a list, not a dict"),
        ({"format_version": "1"}, "format_version '1' is not a whole number"),
        ({"input": "minmax"}, "its 'input' entry is a str, not a dict"),
        ({"method": 3}, "its 'method' entry is a int, not a str"),
        ({"model": {"kind": "fullres", "width": "big"}}, "weights do not fit model"),
        ({"state_dict": {"backbone.conv1.weight": torch.zeros(1)}}, "weights do not fit model"),
    ],
)
def test_a_damaged_checkpoint_header_is_one_line(tmp_path, change, message):
    good = save_checkpoint(tmp_path / "good.pt", FullResolutionNet(width=0.25), method="hr")
    payload = torch.load(good, map_location="cpu", weights_only=True)
    bad = tmp_path / "bad.pt"
    torch.save({**payload, **change}, bad)
    with pytest.raises(CheckpointError, match="bad.pt: .*" + re.escape(message)) as err:
        load_model(bad)
    assert "\n" not in str(err.value)


@pytest.mark.skipif(
    not (SHARED / "crd-official").is_dir(), reason="../shared/crd-official (the authors' weights) is not present"
)
@pytest.mark.parametrize(
    "name, model",
    [
        ("oasis_lr_student_init.pth", LowResolutionNet),
        ("oasis_fst_teacher.pth", FeatureShiftedTeacher),
    ],
)
def test_the_authors_weights_fit_our_modules_key_for_key(name, model):
    state = torch.load(SHARED / "crd-official" / name, map_location="cpu", weights_only=True)
    prefix = "module.defnet_0."
    ours = model()
    mapped = {}
    for key, value in state.items():
        key = key.removeprefix(prefix)
        mapped[key if key.split(".")[0].startswith(("fuse", "flow_f")) else "backbone." + key] = value
    ours.load_state_dict(mapped, strict=True)


def test_backbone_conv_matches_torch_conv3d_in_inference_and_training():
    from crd.models.backbone import Conv3d

    g = torch.Generator().manual_seed(0)
    ours = Conv3d(2, 16, kernel_size=3, stride=1, padding=1)
    ref = torch.nn.Conv3d(2, 16, kernel_size=3, stride=1, padding=1)
    ref.load_state_dict(ours.state_dict())
    x = torch.rand((1, 2, 16, 20, 24), generator=g)  # small: torch itself takes its slow kernel
    with torch.inference_mode():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)
    xs = torch.rand((1, 16, 8, 10, 12), generator=g)
    strided = Conv3d(16, 32, kernel_size=3, stride=2, padding=1)
    ref2 = torch.nn.Conv3d(16, 32, kernel_size=3, stride=2, padding=1)
    ref2.load_state_dict(strided.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(strided(xs), ref2(xs), rtol=1e-5, atol=1e-5)
    out = ours(x.requires_grad_(True))  # autograd: torch's own dispatch, gradients flow
    out.sum().backward()
    assert ours.weight.grad is not None and x.grad is not None


def test_models_trace_under_torch_compile():
    """torch.compile (dynamo) must trace the CPU convolution dispatch (bench --compile)."""
    from crd.models.registration import build_model

    model = build_model({"kind": "lowres", "width": 0.25, "factor": 2}).eval()
    fixed, moving = torch.rand(1, 1, 32, 32, 32), torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        expected = model(fixed, moving)
        torch._dynamo.reset()
        traced = torch.compile(model, backend="eager", fullgraph=True)(fixed, moving)
    torch.testing.assert_close(traced, expected, rtol=1e-4, atol=1e-5)


def test_every_network_starts_he_initialised_with_a_near_zero_field():
    """He initialisation for LeakyReLU(0.2) (std sqrt(2 / 1.04) / sqrt(fan_in)), zero biases, flow
    heads at Normal(0, 1e-5): the field of a fresh model is ~0 and the coarse levels keep their
    scale (crd.models.backbone.initialise_weights; README, "Training to the plateau")."""
    import math

    from crd.models.backbone import FLOW_HEAD_STD
    from crd.models.registration import FeatureShiftedTeacher, FullResolutionNet

    torch.manual_seed(0)
    for model in (FullResolutionNet(), FeatureShiftedTeacher()):
        for name, conv in model.named_modules():
            if not isinstance(conv, torch.nn.Conv3d):
                continue
            assert torch.count_nonzero(conv.bias) == 0, name
            if name.split(".")[-1] in ("flow", "flow_f"):
                assert conv.weight.std().item() == pytest.approx(FLOW_HEAD_STD, rel=0.1), name
            else:
                fan_in = conv.weight[0].numel()
                expected = math.sqrt(2 / (1 + 0.2**2)) / math.sqrt(fan_in)
                assert conv.weight.std().item() == pytest.approx(expected, rel=0.1), name
    x = torch.rand(1, 1, 32, 32, 32)
    assert FullResolutionNet()(x, x).abs().max() < 1e-2

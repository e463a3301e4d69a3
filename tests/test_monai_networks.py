"""MONAI's registration networks as method files (baselines/monai-*.py): their output is crd-bench's
field as it is, checked against MONAI's own warping; they start from a near-zero field."""

import pytest
import torch

from crd.methods import load_method
from crd.models.functional import warp
from crd.models.registration import build_model, use_method_models
from repo_paths import REPO

monai_nets = pytest.importorskip("monai.networks.nets")
from monai.networks.blocks import Warp  # noqa: E402

SPECS = {name: load_method(REPO / "baselines" / f"{name}.py") for name in ("monai-voxelmorph", "monai-localnet")}
use_method_models(SPECS.values())


def _perturbed(name: str) -> torch.nn.Module:
    """The method's network with every weight randomised (a trained network's field is not ~0)."""
    torch.manual_seed(0)
    model = build_model(SPECS[name].model).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.05)
    return model


def _pair(shape=(16, 24, 16)):
    torch.manual_seed(1)
    smooth = torch.nn.functional.avg_pool3d(torch.rand(2, 1, *shape), 5, 1, 2)
    return smooth[:1], smooth[1:]


@pytest.mark.filterwarnings("ignore:monai.networks.blocks.Warp. Using PyTorch native grid_sample")
@pytest.mark.parametrize("name", list(SPECS))
def test_the_output_is_crd_benchs_field_as_monai_warps_it(name):
    model = _perturbed(name)
    fixed, moving = _pair()
    with torch.no_grad():
        flow = model(fixed, moving)
        assert flow.shape == (1, 3, 16, 24, 16) and flow.abs().max() > 0
        flow = flow * (2.5 / flow.abs().max())  # its shape and pattern, scaled to move voxels
        by_monai = Warp(mode="bilinear", padding_mode="zeros")(moving, flow)
        ours = warp(moving, flow)
    torch.testing.assert_close(ours, by_monai, atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:monai.networks.blocks.Warp. Using PyTorch native grid_sample")
def test_voxelmorph_is_monais_voxelmorph_without_integration():
    """MONAI's VoxelMorph wrapper (integration off) around the same U-Net: same field, same warped image."""
    model = _perturbed("monai-voxelmorph")
    fixed, moving = _pair()
    wrapper = monai_nets.VoxelMorph(backbone=model.unet, integration_steps=0).eval()
    with torch.no_grad():
        warped, ddf = wrapper(moving, fixed)  # MONAI: moving first
        flow = model(fixed, moving)  # crd-bench: fixed first
        torch.testing.assert_close(flow, ddf)
        torch.testing.assert_close(warp(moving, flow), warped, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(SPECS))
def test_training_starts_from_a_near_zero_field(name):
    torch.manual_seed(0)
    model = build_model(SPECS[name].model).eval()
    fixed, moving = _pair()
    with torch.no_grad():
        assert model(fixed, moving).abs().max() < 1e-2

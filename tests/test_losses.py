"""Training losses."""

import pytest
import torch

from crd.losses import DistillationLoss, UnsupervisedLoss, gradient_smoothness


def test_ncc_is_one_for_identical_and_affinely_related_images():
    loss = UnsupervisedLoss(ncc_window=5)
    img = torch.rand(1, 1, 16, 16, 16)
    zero = torch.zeros(1, 3, 16, 16, 16)
    assert loss(img, img, zero).parts["ncc"] == pytest.approx(1.0, abs=1e-3)
    assert loss(img, 3 * img, zero).parts["ncc"] == pytest.approx(1.0, abs=1e-3)  # scale-invariant
    other = torch.rand(1, 1, 16, 16, 16)
    assert loss(img, other, zero).parts["ncc"] < 0.2


def test_smoothness_zero_for_constant_and_known_for_linear_fields():
    assert float(gradient_smoothness(torch.full((1, 3, 6, 7, 8), 2.5))) == 0.0
    d = torch.arange(6, dtype=torch.float32).view(1, 1, 6, 1, 1).expand(1, 3, 6, 7, 8)
    # forward difference along D is 0.5 everywhere, 0 along H and W: (0.25 + 0 + 0) / 3
    assert float(gradient_smoothness(0.5 * d)) == pytest.approx(0.25 / 3)


def test_unsupervised_total_combines_weights():
    loss = UnsupervisedLoss(ncc_weight=2.0, ncc_window=3, smooth_weight=10.0)
    a, b = torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 8)
    flow = torch.randn(1, 3, 8, 8, 8)
    terms = loss(a, b, flow)
    assert float(terms.total) == pytest.approx(-2.0 * terms.parts["ncc"] + 10.0 * terms.parts["smooth"], rel=1e-5)


def test_distillation_is_zero_for_a_perfect_student_and_weighs_terms():
    flow = torch.randn(1, 3, 8, 8, 8)
    maps = [torch.rand(1, 4, 4, 4), torch.rand(1, 2, 2, 2)]
    assert float(DistillationLoss()(flow, flow, maps, maps).total) == 0.0
    terms = DistillationLoss(flow_weight=2.0, attention_weight=3.0)(flow + 1, flow, [m + 1 for m in maps], maps)
    assert terms.parts["flow_mse"] == pytest.approx(1.0)
    assert terms.parts["attention_mse"] == pytest.approx(2.0)
    assert float(terms.total) == pytest.approx(2.0 + 6.0)
    with pytest.raises(ValueError, match="different grids"):
        DistillationLoss()(flow, flow, [maps[0]], [maps[1]])

"""The x2 ceiling (crd.models.oracle, baselines/x2-oracle@*.py): the restriction's semantics, the
oracle as a model, its method files, and its evaluation path (the evaluation's own)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from crd.evaluate import evaluate
from crd.methods import MethodError, load_method, load_methods
from crd.models.checkpoint import save_checkpoint
from crd.models.functional import upsample_flow
from crd.models.oracle import GridOracle, coarse_field, grid_projection, restrict_flow
from crd.models.registration import FullResolutionNet, LowResolutionNet
from model_helpers import with_visible_field
from repo_paths import REPO


def _blocks(coarse: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """A fine field constant on factor**3 blocks, holding ``coarse``'s values."""
    out = coarse
    for axis in (2, 3, 4):
        out = out.repeat_interleave(factor, dim=axis)
    return out


# ------------------------------------------------------------------------------ the restriction


def test_block_mean_of_a_block_constant_field_is_its_blocks():
    values = torch.randn(1, 3, 4, 5, 6, generator=torch.Generator().manual_seed(0))
    field = _blocks(values)  # fine voxels
    # in coarse voxels: nothing changed (to float32 rounding of the block sums)
    assert torch.allclose(coarse_field(field, 2, "mean"), values / 2, rtol=1e-6, atol=0)
    # brought back as the student brings its field back
    assert torch.allclose(restrict_flow(field, 2, "mean"), upsample_flow(values / 2, field.shape[2:]), atol=1e-6)


def test_least_squares_leaves_a_field_the_student_can_output_unchanged():
    coarse = torch.randn(2, 3, 4, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    student_field = upsample_flow(coarse, (8, 10, 12))
    assert torch.allclose(coarse_field(student_field, 2, "lsq"), coarse, atol=1e-10)
    assert torch.allclose(restrict_flow(student_field, 2, "lsq"), student_field, atol=1e-10)
    assert restrict_flow(student_field.float()).dtype == torch.float32


@pytest.mark.parametrize("restriction", ["lsq", "mean"])
def test_detail_finer_than_the_coarse_grid_is_lost(restriction):
    field = torch.zeros(1, 3, 32, 16, 16)
    field[:, :, 0::2] = 1.0  # alternating voxel by voxel along axis 0: no coarse field can hold it
    field[:, :, 1::2] = -1.0
    restricted = restrict_flow(field, 2, restriction)
    # the least-squares projection's border effect decays by 3x every two voxels inwards
    interior = restricted[:, :, 10:22]
    assert interior.abs().max() < 1e-3
    assert restricted.norm() < 0.15 * field.norm()
    if restriction == "mean":
        assert torch.count_nonzero(restricted) == 0


def test_least_squares_is_the_closest_field_the_student_can_output():
    g = torch.Generator().manual_seed(2)
    field = F.avg_pool3d(torch.randn(1, 3, 20, 24, 28, generator=g), 3, stride=1, padding=1)  # smooth-ish
    lsq, mean = restrict_flow(field, 2, "lsq"), restrict_flow(field, 2, "mean")
    assert (lsq - field).norm() < (mean - field).norm()
    # and it is an orthogonal projection, axis by axis
    p = grid_projection(12, 2)
    assert torch.allclose(p @ p, p, atol=1e-12) and torch.allclose(p, p.T, atol=1e-12)


def test_restriction_refuses_sides_the_factor_does_not_divide():
    with pytest.raises(ValueError, match="cannot be restricted"):
        restrict_flow(torch.zeros(1, 3, 9, 8, 8))
    with pytest.raises(ValueError, match="restriction must be one of"):
        restrict_flow(torch.zeros(1, 3, 8, 8, 8), 2, "median")


# ------------------------------------------------------------------------------ the oracle model


def test_grid_oracle_restricts_its_teachers_field():
    teacher = with_visible_field(FullResolutionNet(width=0.25)).eval()
    oracle = GridOracle(teacher).eval()
    assert oracle.config == {"kind": "x2-oracle", "factor": 2, "restriction": "lsq", "teacher": teacher.config}
    assert oracle.size_multiple == 32  # the x2 student's: 2 x the backbone's 16
    fixed, moving = torch.rand(1, 1, 32, 32, 32), torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.allclose(oracle(fixed, moving), restrict_flow(teacher(fixed, moving)), atol=1e-6)


def test_grid_oracle_follows_the_model_contract_through_the_one_inference():
    from crd.models.contract import RegistrationModel
    from crd.models.inference import infer

    oracle = GridOracle(with_visible_field(FullResolutionNet(width=0.25))).eval()
    assert isinstance(oracle, RegistrationModel)
    odd = (1, 1, 37, 29, 33)  # padded to the oracle's multiple (32) and cropped back
    with torch.no_grad():
        result = infer(oracle, torch.rand(odd), torch.rand(odd))
    assert result.flow.shape == (1, 3, 37, 29, 33) and torch.isfinite(result.flow).all()


# ------------------------------------------------------------------------------ method files


def test_the_oracle_method_files():
    specs = load_methods(REPO / "baselines", ["x2-oracle@fst", "x2-oracle@hr"])
    for name, teacher in (("x2-oracle@fst", "fst"), ("x2-oracle@hr", "hr")):
        spec = specs[name]
        assert spec.is_oracle and spec.oracle_of == teacher and spec.training is None
        assert not spec.has_checkpoint and spec.evaluated_with == teacher and teacher in spec.needs
    assert specs["fst"].evaluated_with == "fst" and not specs["fst"].is_oracle


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('MODEL = {"kind": "x2-oracle"}\nTRAINING = None\n', "needs ORACLE_OF"),
        ('MODEL = {"kind": "x2-oracle"}\nTRAINING = "unsupervised"\nORACLE_OF = "hr"\n', "ORACLE_OF is for an oracle"),
        ('MODEL = {"kind": "lowres"}\nTRAINING = None\nORACLE_OF = "hr"\n', "ORACLE_OF is for an oracle"),
        ('MODEL = {"kind": "x2-oracle"}\nTRAINING = None\nORACLE_OF = 3\n', "must be a method name"),
    ],
)  # fmt: skip
def test_a_malformed_oracle_file_is_named(tmp_path, body, message):
    path = tmp_path / "bad-oracle.py"
    path.write_text(body)
    with pytest.raises(MethodError, match=message):
        load_method(path)


# ------------------------------------------------------------------------------ evaluation


@pytest.fixture()
def lr_checkpoint(tmp_path) -> Path:
    torch.manual_seed(0)
    model = with_visible_field(LowResolutionNet(width=0.25), std=0.2)
    return save_checkpoint(tmp_path / "lr.pt", model, method="lr")


def _dice(table: pd.DataFrame) -> pd.Series:
    rows = table[(table.metric == "dice") & table.label.isna()]
    return rows.set_index(["fixed", "moving"])["value"]


def test_an_oracle_is_scored_by_the_evaluation_itself(tiny_synth, tmp_path, lr_checkpoint):
    """lr's field is already one an x2 student outputs: its oracle scores exactly as lr does
    (the scoring path is crd evaluate's), with no time or memory of its own."""
    lr = pd.read_csv(evaluate(tiny_synth, tmp_path / "eval" / "lr.csv", method="lr", checkpoint=lr_checkpoint,
                              model_config={"kind": "lowres", "width": 0.25, "factor": 2}, device="cpu",
                              progress=False))  # fmt: skip
    out = evaluate(tiny_synth, tmp_path / "eval" / "x2-oracle@lr.csv", method="x2-oracle@lr", checkpoint=lr_checkpoint,
                   model_config={"kind": "x2-oracle", "factor": 2, "restriction": "lsq"}, oracle_of="lr",
                   device="cpu", progress=False)  # fmt: skip
    oracle = pd.read_csv(out)
    assert _dice(lr).gt(0).all()
    pd.testing.assert_series_equal(_dice(oracle), _dice(lr), atol=1e-6, check_names=False)
    assert not set(oracle.metric) & {"time_s", "peak_rss_mb", "params"}
    assert {"time_s", "peak_rss_mb"} <= set(lr.metric)
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["oracle_of"] == "lr" and sidecar["model"]["teacher"]["kind"] == "lowres"
    assert json.loads((tmp_path / "eval" / "lr.json").read_text())["oracle_of"] is None


def test_an_oracle_of_a_full_resolution_field_changes_it(tiny_synth, tmp_path):
    hr = with_visible_field(FullResolutionNet(width=0.25), std=0.5)
    ckpt = save_checkpoint(tmp_path / "hr.pt", hr, method="hr")
    oracle = evaluate(tiny_synth, tmp_path / "o.csv", method="x2-oracle@hr", checkpoint=ckpt,
                      model_config={"kind": "x2-oracle"}, oracle_of="hr", device="cpu", progress=False)  # fmt: skip
    plain = evaluate(tiny_synth, tmp_path / "hr.csv", method="hr", checkpoint=ckpt, device="cpu", progress=False)
    fold = [pd.read_csv(p).query("metric == 'sdlogj'")["value"].mean() for p in (oracle, plain)]
    assert fold[0] < fold[1]  # a smoother field: the finest detail is gone


def test_an_oracle_is_refused_without_its_teachers_checkpoint(tiny_synth, tmp_path, lr_checkpoint):
    with pytest.raises(ValueError, match="is an oracle: give the checkpoint"):
        evaluate(tiny_synth, tmp_path / "o.csv", method="x2-oracle@fst", model_config={"kind": "x2-oracle"},
                 device="cpu", progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="holds method 'lr', but this oracle restricts 'fst'"):
        evaluate(tiny_synth, tmp_path / "o.csv", method="x2-oracle@fst", checkpoint=lr_checkpoint,
                 model_config={"kind": "x2-oracle"}, oracle_of="fst", device="cpu", progress=False)  # fmt: skip
    assert not (tmp_path / "o.csv").exists()


def test_the_command_line_evaluates_an_oracle_file_and_bench_refuses_it(tiny_synth, tmp_path, capsys):
    from crd.cli import main

    fst = with_visible_field(FullResolutionNet(width=0.25))
    ckpt = save_checkpoint(tmp_path / "hr.pt", fst, method="hr")
    out = tmp_path / "eval" / "x2-oracle@hr.csv"
    argv = ["evaluate", "--data", str(tiny_synth), "--method-file", str(REPO / "baselines" / "x2-oracle@hr.py"),
            "--checkpoint", str(ckpt), "--out", str(out), "--device", "cpu", "--no-progress"]  # fmt: skip
    assert main(argv) == 0 and out.is_file()
    assert json.loads(out.with_suffix(".json").read_text())["oracle_of"] == "hr"
    assert main(["bench", "--methods", "x2-oracle@hr", "--sizes", "32x32x32", "--out", str(tmp_path / "b.csv")]) == 2
    assert "is an oracle: it has no latency of its own" in capsys.readouterr().err
    assert np.isfinite(pd.read_csv(out).query("metric == 'dice'")["value"]).all()

"""``crd metrics``: scoring a registration result from NIfTI files, and its errors."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest

from crd import metrics as M
from crd.cli import main
from crd.data.layout import write_nifti

SPACING = (1.0, 1.5, 2.0)
SHAPE = (12, 14, 16)


def _labels() -> tuple[np.ndarray, np.ndarray]:
    fixed = np.zeros(SHAPE, np.int16)
    fixed[2:7, 2:9, 3:12] = 1
    fixed[7:11, 3:10, 4:13] = 2
    fixed[1:3, 10:13, 1:4] = 5  # vanishes in the warped map
    warped = np.roll(fixed, 1, axis=0)
    warped[warped == 5] = 0
    return fixed, warped


def _write_flow(path, flow_dhw3: np.ndarray, spacing=SPACING, shape5: bool = False):
    data = flow_dhw3[:, :, :, None, :] if shape5 else flow_dhw3
    nib.save(nib.Nifti1Image(data, np.diag([*spacing, 1.0])), str(path))
    return path


@pytest.fixture()
def files(tmp_path):
    fixed, warped = _labels()
    flow = np.zeros(SHAPE + (3,), np.float32)
    flow[5, 4:6, 4:7, 0] = 3.0  # det J < 0 at slice 6 (central differences): 2 x 3 voxels
    return {
        "fixed": write_nifti(tmp_path / "fixed.nii.gz", fixed, SPACING),
        "warped": write_nifti(tmp_path / "warped.nii.gz", warped, SPACING),
        "flow": _write_flow(tmp_path / "flow.nii.gz", flow),
        "arrays": (fixed, warped, flow),
    }


def _run_json(capsys, *argv: str) -> dict:
    assert main(["metrics", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_matches_score_pair(files, capsys):
    out = _run_json(
        capsys,
        "--fixed-labels",
        str(files["fixed"]),
        "--warped-labels",
        str(files["warped"]),
        "--flow",
        str(files["flow"]),
    )
    fixed, warped, flow = files["arrays"]
    rows = {
        (r["metric"], r["label"]): r["value"]
        for r in M.score_pair(fixed, None, warped, [1, 2, 5], SPACING, flow=np.moveaxis(flow, -1, 0))
    }
    assert out["labels"] == [1, 2, 5]  # every nonzero label of either map
    assert out["spacing_mm"] == list(SPACING) and out["spacing_from"] == "fixed labels header"
    for key, metric in (("dice", "dice"), ("hd95", "hd95_mm"), ("assd", "assd_mm")):
        assert set(out[key]) == {"mean", "per_label"}
        assert out[key]["mean"] == pytest.approx(rows[(metric, None)])
        for lab in (1, 2, 5):
            assert out[key]["per_label"][str(lab)] == pytest.approx(rows[(metric, lab)])
    assert out["dice"]["per_label"]["5"] == 0.0
    diagonal = math.sqrt(sum((n * s) ** 2 for n, s in zip(SHAPE, SPACING, strict=True)))
    assert out["hd95"]["per_label"]["5"] == pytest.approx(diagonal)
    assert out["labels_vanished"] == 1 and out["vanished"] == [5]
    assert out["labels_missing"] == 0 and out["missing"] == []
    assert out["fold_count"] == 6
    assert out["fold_pct"] == pytest.approx(100 * 6 / np.prod(SHAPE))
    assert out["nonpos_jac_mm3"] == pytest.approx(6 * 3.0)
    assert out["sdlogj"] == pytest.approx(rows[("sdlogj", None)])


def test_without_flow_no_jacobian_keys(files, capsys):
    out = _run_json(capsys, "--fixed-labels", str(files["fixed"]), "--warped-labels", str(files["warped"]))
    assert "fold_pct" not in out and "sdlogj" not in out and out["flow"] is None


def test_labels_and_spacing_options(files, capsys):
    out = _run_json(
        capsys,
        "--fixed-labels", str(files["fixed"]),
        "--warped-labels", str(files["warped"]),
        "--labels", "2,1,9",
        "--spacing", "1", "1", "1",
    )  # fmt: skip
    assert out["labels"] == [2, 1, 9] and out["spacing_from"] == "given"
    assert out["dice"]["per_label"]["9"] is None  # missing: JSON null
    assert out["labels_missing"] == 1 and out["missing"] == [9]
    assert out["hd95"]["per_label"]["1"] == pytest.approx(1.0)  # shifted by one voxel along axis 0
    header = _run_json(
        capsys, "--fixed-labels", str(files["fixed"]), "--warped-labels", str(files["warped"]), "--spacing-from-header"
    )
    assert header["spacing_mm"] == list(SPACING)


def test_table_output(files, capsys):
    argv = ["metrics", "--fixed-labels", str(files["fixed"]), "--warped-labels", str(files["warped"])]
    assert main([*argv, "--flow", str(files["flow"])]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["label", "dice", "hd95_mm", "assd_mm"]
    assert "mean" in out and "vanished" in out and "SDlogJ" in out


def test_flow_in_nifti_vector_layout(files, tmp_path, capsys):
    _, _, flow = files["arrays"]
    path = _write_flow(tmp_path / "flow5.nii.gz", flow, shape5=True)
    out = _run_json(
        capsys, "--fixed-labels", str(files["fixed"]), "--warped-labels", str(files["warped"]), "--flow", str(path)
    )
    assert out["fold_count"] == 6


def _error(capsys, argv: list[str]) -> str:
    assert main(["metrics", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("crd metrics: error: ")
    return err[0]


def test_mismatched_shapes(files, tmp_path, capsys):
    fixed, _ = _labels()
    other = write_nifti(tmp_path / "small.nii.gz", fixed[:-1], SPACING)
    err = _error(capsys, ["--fixed-labels", str(files["fixed"]), "--warped-labels", str(other)])
    assert "not on the grid" in err and "(11, 14, 16)" in err


def test_mismatched_spacing(files, tmp_path, capsys):
    _, warped = _labels()
    other = write_nifti(tmp_path / "coarse.nii.gz", warped, (1.0, 1.5, 2.5))
    err = _error(capsys, ["--fixed-labels", str(files["fixed"]), "--warped-labels", str(other)])
    assert "not on the grid" in err and "2.5" in err


def test_non_integer_labels(files, tmp_path, capsys):
    _, warped = _labels()
    image = write_nifti(tmp_path / "image.nii.gz", warped.astype(np.float32) + 0.25, SPACING)
    err = _error(capsys, ["--fixed-labels", str(files["fixed"]), "--warped-labels", str(image)])
    assert "non-integer" in err and "image rather than a label map" in err


def test_whole_numbers_stored_as_float_are_labels(files, tmp_path, capsys):
    _, warped = _labels()
    as_float = write_nifti(tmp_path / "float.nii.gz", warped.astype(np.float32), SPACING)
    out = _run_json(capsys, "--fixed-labels", str(files["fixed"]), "--warped-labels", str(as_float))
    ref = _run_json(capsys, "--fixed-labels", str(files["fixed"]), "--warped-labels", str(files["warped"]))
    assert out["dice"] == ref["dice"] and out["hd95"] == ref["hd95"]


def test_bad_flow(files, tmp_path, capsys):
    _, _, flow = files["arrays"]
    two = _write_flow(tmp_path / "two.nii.gz", flow[..., :2])
    err = _error(
        capsys, ["--fixed-labels", str(files["fixed"]), "--warped-labels", str(files["warped"]), "--flow", str(two)]
    )
    assert "(D, H, W, 3)" in err
    small = _write_flow(tmp_path / "small.nii.gz", flow[:-2])
    err = _error(
        capsys, ["--fixed-labels", str(files["fixed"]), "--warped-labels", str(files["warped"]), "--flow", str(small)]
    )
    assert "not on the grid" in err


def test_missing_file_and_bad_labels_option(files, tmp_path, capsys):
    err = _error(capsys, ["--fixed-labels", str(tmp_path / "nope.nii.gz"), "--warped-labels", str(files["warped"])])
    assert "nope.nii.gz" in err and "not found" in err
    err = _error(
        capsys, ["--fixed-labels", str(files["fixed"]), "--warped-labels", str(files["warped"]), "--labels", "1,x"]
    )
    assert "--labels" in err
    not_nifti = tmp_path / "bad.nii.gz"
    not_nifti.write_text("not a volume")
    err = _error(capsys, ["--fixed-labels", str(not_nifti), "--warped-labels", str(files["warped"])])
    assert "cannot be read by nibabel" in err


@pytest.mark.parametrize("which", ["fixed", "warped", "flow"])
def test_a_truncated_file_is_one_line_naming_it(files, tmp_path, capsys, which):
    path = files[which]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    err = _error(capsys, ["--fixed-labels", str(files["fixed"]), "--warped-labels", str(files["warped"]),
                          "--flow", str(files["flow"])])  # fmt: skip
    assert str(path) in err and "truncated or damaged" in err

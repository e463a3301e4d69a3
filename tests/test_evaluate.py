"""Evaluation on constructed pairs whose scores are known exactly."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from crd.data.layout import dataset_info, write_dataset_json, write_nifti, write_pairs
from crd.evaluate import evaluate
from crd.models.checkpoint import save_checkpoint
from crd.models.registration import FullResolutionNet
from crd.tidy import TABLE_COLUMNS

SPACING = (2.0, 1.0, 1.5)
SHIFT = 2  # voxels along axis 0


@pytest.fixture()
def cube_dataset(tmp_path):
    """Subject a: two boxes (labels 1, 2); b: the same boxes moved SHIFT voxels along axis 0;
    c: an exact copy of a."""
    root = tmp_path / "cubes"
    shape = (32, 32, 32)
    for sid, offset in (("a", 0), ("b", SHIFT), ("c", 0)):
        lab = np.zeros(shape, np.int16)
        lab[8 + offset : 18 + offset, 6:16, 6:20] = 1  # 10 voxels thick along axis 0
        lab[8 + offset : 18 + offset, 18:26, 6:20] = 2
        write_nifti(root / "labels" / f"{sid}.nii.gz", lab, SPACING)
        write_nifti(root / "images" / f"{sid}.nii.gz", (lab / 2.0).astype(np.float32), SPACING)
    write_pairs(root, [("train", "a", "b"), ("val", "b", "a"), ("test", "a", "b"), ("test", "a", "c")])
    write_dataset_json(
        root, dataset_info(name="cubes", labels={1: "left", 2: "right", 3: "absent"}, spacing=SPACING, shape=shape)
    )
    return root


def _values(table, metric, fixed="a", moving="b", label=None):
    rows = table[(table.metric == metric) & (table.fixed == fixed) & (table.moving == moving)]
    rows = rows[rows.label.isna()] if label is None else rows[rows.label == label]
    return rows["value"].tolist()


def test_identity_scores_the_pair_as_it_is(cube_dataset, tmp_path):
    out = evaluate(
        cube_dataset,
        tmp_path / "eval" / "identity.csv",
        method="identity",
        model_config={"kind": "identity"},
        device="cpu",
        threads=1,
        progress=False,
    )
    table = pd.read_csv(out)
    assert tuple(table.columns) == TABLE_COLUMNS and set(table["seed"]) == {0}
    assert set(table.dataset) == {"cubes"} and set(table.method) == {"identity"}
    # boxes 10 voxels thick shifted by 2: overlap 8 of 10 -> Dice 0.8 for both labels
    assert _values(table, "dice", label=1) == pytest.approx([0.8])
    assert _values(table, "dice") == pytest.approx([0.8])
    assert _values(table, "hd95_mm") == pytest.approx([SHIFT * SPACING[0]])
    assert _values(table, "dice", "a", "c") == pytest.approx([1.0])
    assert _values(table, "hd95_mm", "a", "c") == pytest.approx([0.0])
    assert _values(table, "labels_missing") == [1]  # label 3 is in neither image: excluded, counted
    assert _values(table, "fold_pct") == [0.0] and _values(table, "sdlogj") == [0.0]
    assert len(_values(table, "time_s")) == 1 and _values(table, "peak_rss_mb")[0] >= 0
    assert table[table.metric == "params"]["value"].tolist() == [0]
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["device"] == "cpu" and sidecar["n_pairs"] == 2 and sidecar["threads"] == 1
    assert sidecar["example"]["fixed"] == "a" and sidecar["example"]["moving"] == "b"
    assert (tmp_path / "eval" / "identity.example.nii.gz").is_file()


def test_checkpoint_methods_are_rebuilt_from_the_file(cube_dataset, tmp_path):
    ckpt = save_checkpoint(tmp_path / "hr.pt", FullResolutionNet(width=0.25), method="hr")
    out = evaluate(cube_dataset, tmp_path / "hr.csv", method="hr", checkpoint=ckpt, device="cpu", progress=False)
    table = pd.read_csv(out)
    assert table[table.metric == "params"]["value"].item() == sum(
        p.numel() for p in FullResolutionNet(width=0.25).parameters()
    )
    assert len(_values(table, "dice")) == 1 and 0 <= _values(table, "dice")[0] <= 1
    assert json.loads(out.with_suffix(".json").read_text())["seed_independent"] is False
    with pytest.raises(ValueError, match="hr.pt: a trained network's result depends on its training seed"):
        evaluate(cube_dataset, tmp_path / "hr2.csv", method="hr", checkpoint=ckpt, device="cpu", progress=False,
                 seed_independent=True)  # fmt: skip
    assert not (tmp_path / "hr2.csv").exists()


def _files(*folders):
    return {p: p.read_bytes() for f in folders for p in sorted(f.rglob("*")) if p.is_file()}


def test_a_checkpoint_of_another_architecture_is_refused_in_one_line(cube_dataset, tmp_path, capsys):
    """hr weights given as crd: refused (exit 2, one line naming both models), nothing written."""
    from crd.cli import main
    from repo_paths import REPO

    ckpt = save_checkpoint(tmp_path / "hr.pt", FullResolutionNet(width=0.25), method="hr")
    argv = ["evaluate", "--data", str(cube_dataset), "--method-file", str(REPO / "baselines" / "crd.py"),
            "--checkpoint", str(ckpt), "--out", str(tmp_path / "eval" / "crd.csv"), "--device", "cpu"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(ckpt) in err[0] and "'fullres'" in err[0] and "method 'crd'" in err[0]
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("clash", ["checkpoint", "sidecar over dataset.json", "inside the dataset", "log"])
def test_outputs_never_replace_inputs(cube_dataset, tmp_path, clash):
    ckpt = save_checkpoint(tmp_path / "hr.pt", FullResolutionNet(width=0.25), method="hr")
    log = tmp_path / "hr.log"
    log.write_text("an earlier run\n")
    out = {"checkpoint": ckpt, "sidecar over dataset.json": cube_dataset / "dataset.csv",
           "inside the dataset": cube_dataset / "labels" / "hr.csv", "log": log}[clash]  # fmt: skip
    before = _files(cube_dataset, tmp_path)
    with pytest.raises(ValueError, match=f"{out.name}"):
        evaluate(cube_dataset, out, method="hr", checkpoint=ckpt, device="cpu", progress=False, log_file=log)
    assert _files(cube_dataset, tmp_path) == before


def test_a_failure_part_way_leaves_no_output(cube_dataset, tmp_path, monkeypatch):
    import crd.evaluate

    calls = []

    def fail_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return real(*args, **kwargs)

    real = crd.evaluate.score_pair
    monkeypatch.setattr(crd.evaluate, "score_pair", fail_on_second)
    out = tmp_path / "eval" / "identity.csv"
    with pytest.raises(RuntimeError, match="out of memory"):
        evaluate(cube_dataset, out, method="identity", model_config={"kind": "identity"}, device="cpu", progress=False)
    assert not out.parent.exists() or not any(out.parent.iterdir())


# --- a method without a network (a classical tool): its method file's register_pair -------------
def _shift_along_axis0(fixed, moving, *, spacing, seed, threads):
    """A toy classical method: the moving image's shift along axis 0 (difference of centroids),
    as a constant field in voxels."""
    calls.append({"shape": fixed.shape, "dtype": fixed.dtype, "spacing": spacing, "seed": seed, "threads": threads})
    axis0 = np.arange(fixed.shape[0])[:, None, None]
    shift = (moving * axis0).sum() / moving.sum() - (fixed * axis0).sum() / fixed.sum()
    field = np.zeros((3, *fixed.shape), np.float32)
    field[0] = round(float(shift))
    return field


calls: list[dict] = []


def test_a_method_without_network_is_scored_through_register_pair(cube_dataset, tmp_path):
    calls.clear()
    out = evaluate(cube_dataset, tmp_path / "eval" / "shift.csv", method="shift", seed=4, device="cpu", threads=1,
                   progress=False, register_pair=_shift_along_axis0, method_file=tmp_path / "shift.py")  # fmt: skip
    table = pd.read_csv(out)
    # the field moves b's boxes back onto a's (2 voxels along axis 0); c is a's copy (no shift)
    assert _values(table, "dice") == pytest.approx([1.0])
    assert _values(table, "dice", moving="c") == pytest.approx([1.0])
    assert _values(table, "fold_pct") == pytest.approx([0.0])
    assert {"time_s", "hd95_mm"} <= set(table.metric)
    assert "params" not in set(table.metric) and set(table.seed) == {4}  # no network: no parameter count
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["params"] is None
    # a function that no method file holds cannot be measured in a fresh process: no figure, and why
    assert "peak_rss_mb" not in set(table.metric)
    assert not sidecar["cpu_memory"]["exact"] and "no method file" in sidecar["cpu_memory"]["why"]
    assert sidecar["model"] == {"kind": "external", "method_file": str(tmp_path / "shift.py")}
    # warm-up + 2 pairs; CPU float32 (D, H, W) arrays, the dataset's spacing, the seed and threads passed on
    assert len(calls) == 3 and {c["shape"] for c in calls} == {(32, 32, 32)}
    assert {c["dtype"] for c in calls} == {np.dtype(np.float32)}
    assert {(c["spacing"], c["seed"], c["threads"]) for c in calls} == {(SPACING, 4, 1)}


@pytest.mark.parametrize(
    "returned, message",
    [
        (np.zeros((3, 32, 32)), r"shape \(3, 32, 32\), expected \(3, 32, 32, 32\)"),
        (np.full((3, 32, 32, 32), np.nan), "non-finite"),
        ("a field", "not an array"),
    ],
)
def test_a_bad_field_from_register_pair_is_one_line_naming_the_method_file(cube_dataset, tmp_path, returned, message):
    def register_pair(fixed, moving, **kwargs):
        return returned

    out = tmp_path / "eval" / "bad.csv"
    with pytest.raises(ValueError, match=rf"bad\.py: register_pair returned .*{message}"):
        evaluate(cube_dataset, out, method="bad", device="cpu", threads=1, progress=False,
                 register_pair=register_pair, method_file=tmp_path / "bad.py")  # fmt: skip
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_a_missing_tool_is_one_line_from_the_command_line(cube_dataset, tmp_path, capsys):
    """A method file whose tool is not installed: exit 2, one line naming the file; nothing written."""
    from crd.cli import main

    method_file = tmp_path / "needs-tool.py"
    method_file.write_text(
        '"""needs-tool: a classical tool that is not installed."""\nMODEL = None\n\n\n'
        "def register_pair(fixed, moving, *, spacing, seed, threads):\n"
        "    import crd_bench_no_such_tool  # noqa: F401\n"
    )
    method_file.with_suffix(".smk").write_text("")
    out = tmp_path / "eval" / "needs-tool.csv"
    code = main(["evaluate", "--data", str(cube_dataset), "--method-file", str(method_file), "--out", str(out),
                 "--device", "cpu", "--threads", "1", "--no-progress"])  # fmt: skip
    err = [line for line in capsys.readouterr().err.splitlines() if " INFO " not in line]  # the progress log aside
    assert code == 2 and len(err) == 1 and err[0].startswith("crd evaluate: error: "), err
    assert str(method_file) in err[0] and "crd_bench_no_such_tool" in err[0]
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_a_pair_is_measured_without_the_previous_pairs_tensors(cube_dataset):
    """Each pair's memory peak counts its own field and images only: the previous pair's are
    released before the next registration starts (on CUDA, max_memory_allocated would count them)."""
    import weakref

    from crd.data.layout import open_dataset
    from crd.evaluate import _score_pairs

    alive = []

    def register(fixed, moving):
        assert all(ref() is None for ref in alive), "a previous pair's field is still alive"
        flow = torch.zeros(1, 3, *fixed.shape[2:])
        alive.append(weakref.ref(flow))
        return flow, moving.clone()

    dataset = open_dataset(cube_dataset)
    rows, example = _score_pairs(register, dataset, dataset.pairs_for("test"), torch.device("cpu"), desc="x",
                                 progress=False)  # fmt: skip
    assert len(alive) == 3 and example.shape == (32, 32, 32)  # warm-up + 2 pairs

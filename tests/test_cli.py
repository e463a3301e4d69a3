"""The command line: every stage reachable, errors as one line with exit status 2."""

import subprocess
import sys

import pytest

from crd.cli import main
from repo_paths import REPO


def test_help_lists_every_stage():
    out = subprocess.run([sys.executable, "-m", "crd", "--help"], capture_output=True, text=True, check=True)
    for stage in ("generate", "train", "evaluate", "report", "methods"):
        assert stage in out.stdout


def test_methods_lists_the_plugins(capsys):
    assert main(["methods", "--folder", str(REPO / "baselines")]) == 0
    out = capsys.readouterr().out
    assert "crd" in out and "needs lr, fst" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["train", "--data", "/nonexistent/ds", "--method-file", str(REPO / "baselines/hr.py"), "--out", "x.pt"],
            "/nonexistent/ds",
        ),
        (
            [
                "evaluate",
                "--data",
                "/nonexistent/ds",
                "--method-file",
                str(REPO / "baselines/hr.py"),
                "--checkpoint",
                "/nonexistent/hr.pt",
                "--out",
                "x.csv",
            ],
            "/nonexistent",
        ),
        (
            ["train", "--data", ".", "--model", "{not json", "--method", "m", "--out", "x.pt"],
            "--model is not a JSON object",
        ),
        (
            [
                "train",
                "--data",
                ".",
                "--method-file",
                str(REPO / "baselines/hr.py"),
                "--out",
                "x.pt",
                "--settings",
                '{"iters": 1}',
            ],
            "unknown train settings",
        ),
        (["generate", "oasis", "out"], "'synth' only"),
    ],
)
def test_bad_input_gives_one_clear_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"crd {argv[0]}: error:") and message in err[-1]
    assert "Traceback" not in "\n".join(err)
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "x.csv").exists()


def test_evaluate_refuses_a_file_that_is_not_a_checkpoint(tiny_synth, tmp_path, capsys):
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"not a checkpoint")
    argv = [
        "evaluate",
        "--data",
        str(tiny_synth),
        "--method-file",
        str(REPO / "baselines/hr.py"),
        "--checkpoint",
        str(bogus),
        "--out",
        str(tmp_path / "e.csv"),
        "--no-progress",
    ]
    assert main(argv) == 2
    assert "bogus.pt: not a readable crd-bench checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "e.csv").exists()


def test_evaluate_records_whether_a_method_is_evaluated_once(tiny_synth, tmp_path):
    """crd evaluate --method-file of a method without training writes seed_independent into its
    sidecar (the report sets that one evaluation beside every seed); a trained method's does not."""
    import json

    import torch

    from crd.methods import load_method
    from crd.models.checkpoint import save_checkpoint
    from crd.models.registration import build_model

    common = ["--data", str(tiny_synth), "--no-progress", "--threads", "1", "--device", "cpu"]
    assert main(["evaluate", "--method-file", str(REPO / "baselines/identity.py"), "--out",
                 str(tmp_path / "identity.csv"), *common]) == 0  # fmt: skip
    assert json.loads((tmp_path / "identity.json").read_text())["seed_independent"] is True
    torch.manual_seed(0)
    model = build_model(load_method(REPO / "baselines/lr.py").model)
    ckpt = save_checkpoint(tmp_path / "lr.pt", model, method="lr")
    assert main(["evaluate", "--method-file", str(REPO / "baselines/lr.py"), "--checkpoint", str(ckpt), "--out",
                 str(tmp_path / "lr.csv"), *common]) == 0  # fmt: skip
    assert json.loads((tmp_path / "lr.json").read_text())["seed_independent"] is False

"""benchmarks/gpu.sh and benchmarks/train_check.py, dry-run on the CPU (``--cpu``: the same steps
and files as on a GPU, tiny sizes), so the script a lent GPU runs once is known to work end to end:
steps, limits, skipping, the packed results, and the train / evaluate / resume checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile

import pandas as pd
import pytest
import yaml

from repo_paths import REPO

pytestmark = pytest.mark.slow


def _run_gpu_script(tmp_path, steps: str, budget: int = 600) -> tuple[subprocess.CompletedProcess, str]:
    env = {**os.environ, "OUT": str(tmp_path / "out"), "STEPS": steps, "BUDGET": str(budget), "TMPDIR": str(tmp_path)}
    env["PYTHON"] = sys.executable
    proc = subprocess.run(["bash", "benchmarks/gpu.sh", "--cpu"], cwd=REPO, env=env, capture_output=True, text=True)
    return proc, (tmp_path / "out" / "gpu.log").read_text()


def test_the_gpu_script_dry_run_writes_every_steps_results(tmp_path):
    proc, log = _run_gpu_script(tmp_path, "paper resume isolated")
    assert proc.returncode == 0, log
    for name in ("paper", "resume", "isolated"):
        assert f"== {name}: exit 0" in log
    assert "== options" not in log  # not among STEPS
    assert "RESUMED: resumed_at" in log
    with tarfile.open(tmp_path / "out" / "gpu-results.tar.gz") as tar:
        names = {n.removeprefix("./") for n in tar.getnames()}
        assert {"paper.csv", "paper.json", "isolated.csv", "resume.txt", "nvidia-smi.txt"} <= names
        assert not any(n.endswith((".pt", ".nii.gz")) for n in names)  # no weights or images come back
        paper = pd.read_csv(tar.extractfile("./paper.csv"))
        sidecar = json.load(tar.extractfile("./paper.json"))
    assert set(paper.method) == {"hr", "lr", "crd"} and set(paper["size"]) == {"32x64x64"}
    assert sidecar["complete"] is True and sidecar["cases_not_ok"] == {}


def test_a_spent_budget_skips_the_steps_and_says_so(tmp_path):
    proc, log = _run_gpu_script(tmp_path, "paper mid", budget=0)
    assert proc.returncode == 1
    assert "== paper: SKIPPED (the 0 s budget is spent)" in log and "== mid: SKIPPED" in log
    assert "failed or skipped: paper(skipped) mid(skipped)" in log
    assert (tmp_path / "out" / "gpu-results.tar.gz").is_file()  # packed anyway (the machine's description)


def test_an_unknown_step_is_refused(tmp_path):
    proc, log = _run_gpu_script(tmp_path, "paper,resume")
    assert proc.returncode == 2 and "unknown step 'paper,resume' in STEPS" in log


def test_train_check_runs_trains_evaluates_and_reports(tmp_path):
    overlay = tmp_path / "three.yaml"
    overlay.write_text(yaml.safe_dump({"methods": ["identity", "hr", "lr"]}))
    work = tmp_path / "work"
    argv = [sys.executable, "benchmarks/train_check.py", "run", "--device", "cpu", "--work", str(work)]
    argv += ["--iterations", "2", "--jobs", "2", "--config", "config.yaml", "config/smoke.yaml", str(overlay)]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for job in ("generate synth", "train hr seed 0 (at most 2 it)", "train lr seed 0 (at most 2 it)",
                "evaluate identity seed 0", "evaluate lr seed 0", "report"):
        assert any(line.startswith(job) and "exit 0" in line for line in proc.stdout.splitlines()), job
    assert (work / "report.html").is_file()
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines()[-3:]}
    assert set(rows) == {"identity", "hr", "lr"} and all(r[2] == "6" for r in rows.values())  # 6 test pairs each


def test_train_check_as_configured_trains_every_seed_with_the_configured_rule(tmp_path):
    """--as-configured: the configuration's own dataset, train settings (the stopping rule, its
    maximum) and every seed, one report over them, and the convergence of each run."""
    overlay = tmp_path / "two.yaml"
    overlay.write_text(yaml.safe_dump({"methods": ["identity", "hr", "lr"], "seeds": [0, 1],
                                       "train": {"iterations": 6, "checkpoint_every": 2, "patience": 1}}))  # fmt: skip
    work = tmp_path / "work"
    argv = [sys.executable, "benchmarks/train_check.py", "run", "--as-configured", "--device", "cpu", "--work",
            str(work), "--jobs", "2", "--config", "config.yaml", "config/smoke.yaml", str(overlay)]  # fmt: skip
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for job in ("train hr seed 0 (at most 6 it)", "train lr seed 1 (at most 6 it)", "evaluate hr seed 1"):
        assert any(line.startswith(job) and "exit 0" in line for line in proc.stdout.splitlines()), job
    assert any(line.startswith("evaluate identity seed 0") for line in proc.stdout.splitlines())
    assert not any(line.startswith("evaluate identity seed 1") for line in proc.stdout.splitlines())  # no training
    assert (work / "report.html").is_file() and (work / "seed1" / "models" / "hr.history.csv").is_file()
    settings = json.loads(next(line for line in (work / "seed1" / "logs" / "train_hr.log").read_text().splitlines()
                               if " settings {" in line).split(" settings ", 1)[1])  # fmt: skip
    assert settings["seed"] == 1 and settings["patience"] == 1 and settings["val_pairs"] == 1  # smoke's, as configured
    runs = [line.split() for line in proc.stdout.splitlines() if line.split()[:1] in (["hr"], ["lr"])][-4:]
    assert sorted((r[0], r[1]) for r in runs) == [("hr", "0"), ("hr", "1"), ("lr", "0"), ("lr", "1")]
    assert all(r[3] == "6" for r in runs)  # the configured maximum

"""The Snakemake workflow: config validation, plugin discovery, and one tiny end-to-end run."""

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import REPO

TINY = {
    "datasets": {
        "synth": {
            "source": "synth",
            "generate": {
                "seed": 3,
                "subjects": 7,
                "shape": [32, 32, 32],
                "labels": 8,
                "val": 2,
                "test": 2,
                "deformation": 4.5,
            },
        }
    },
    "train": {"iterations": 2, "checkpoint_every": 1, "val_pairs": 1, "ncc_window": 5},
    "threads": {"train": 1, "evaluate": 1, "bench": 1},
    "bench": {"sizes": ["32x32x32"], "repeats": 1, "warmup": 0},
}


def snakemake(workdir: Path, config: dict, *args: str) -> subprocess.CompletedProcess:
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(config))
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(workdir / "tiny.yaml"),
        "--cores",
        "2",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_default_config_dry_run_builds_the_whole_dag(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(tmp_path),
        "--configfile",
        str(REPO / "config.yaml"),
        "-n",
        "--cores",
        "2",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    for rule, count in (("generate_synth", 1), ("train", 5), ("evaluate", 6), ("bench", 1), ("report", 1)):
        assert any(line.split() == [rule, str(count)] for line in text.splitlines()), (rule, text[-2000:])


def test_invalid_config_is_reported_with_its_key(tmp_path):
    bad = {**TINY, "train": {"iterations": "many"}}
    out = snakemake(tmp_path, bad, "-n")
    assert out.returncode != 0
    assert "train.iterations: 'many' is not of type 'integer'" in out.stdout + out.stderr


def test_a_new_method_is_one_file_and_one_config_entry(tmp_path):
    plugins = tmp_path / "plugins"
    shutil.copytree(REPO / "baselines", plugins)
    (plugins / "hr-quarter.py").write_text(
        '"""hr-quarter: the backbone with a quarter of the channels."""\n'
        'MODEL = {"kind": "fullres", "width": 0.25}\nTRAINING = "unsupervised"\n'
    )
    (plugins / "external.py").write_text('"""external: scored by its own rule."""\nMODEL = None\n')
    (plugins / "external.smk").write_text(
        "rule external:\n"
        '    output: eval_path("{dataset}", "external", "csv"), eval_path("{dataset}", "external", "json"),\n'
        '            eval_path("{dataset}", "external", "example.nii.gz")\n'
        '    log: "results/{dataset}/logs/external.log"\n'
        '    shell: "touch {output} {log}"\n'
    )
    config = {**TINY, "baselines": str(plugins), "methods": ["hr", "hr-quarter", "external"]}
    out = snakemake(tmp_path, config, "-n")
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    assert "results/synth/models/hr-quarter.pt" in text
    assert "rule external:" in text


@pytest.mark.slow
def test_tiny_end_to_end_run_then_nothing_to_do(tmp_path):
    out = snakemake(tmp_path, TINY)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    report = (tmp_path / "results" / "report.html").read_text()
    for method in ("identity", "hr", "lr", "hr-half", "fst", "crd"):
        table = pd.read_csv(tmp_path / "results" / "synth" / "eval" / f"{method}.csv")
        assert {"dice", "hd95_mm", "fold_pct", "sdlogj", "time_s", "peak_rss_mb"} <= set(table.metric)
        assert f">{method}<" in report
    assert "data:image/png;base64" in report
    bench = pd.read_csv(tmp_path / "results" / "bench" / "bench.csv")
    assert set(bench.method) == {"identity", "hr", "lr", "hr-half", "fst", "crd"}
    assert "Efficiency" in report
    again = snakemake(tmp_path, TINY, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr

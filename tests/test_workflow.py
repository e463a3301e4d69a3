"""The Snakemake workflow: config validation, plugin discovery, and one tiny end-to-end run."""

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from repo_paths import REPO

TINY = {
    "datasets": {
        "synth": {
            "source": "synth",
            "generate": {
                "template": "blobs",
                "fine_deformation": 0,
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


def run_snakemake(workdir: Path, configfile: Path, *args: str, cores: int = 2) -> subprocess.CompletedProcess:
    """``snakemake`` on this repository's Snakefile in ``workdir`` with ``configfile``."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(configfile), "--cores", str(cores), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def snakemake(workdir: Path, config: dict, *args: str) -> subprocess.CompletedProcess:
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(config))
    return run_snakemake(workdir, workdir / "tiny.yaml", *args)


def test_default_config_dry_run_builds_the_whole_dag(tmp_path):
    out = run_snakemake(tmp_path, REPO / "config.yaml", "-n")
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
        '    output: eval_path("{dataset}", "external", "{seed}", "csv"),\n'
        '            eval_path("{dataset}", "external", "{seed}", "json"),\n'
        '            eval_path("{dataset}", "external", "{seed}", "example.nii.gz")\n'
        '    log: log_path("{dataset}", "{seed}", "external")\n'
        '    shell: "touch {output} {log}"\n'
    )
    config = {**TINY, "baselines": str(plugins), "methods": ["hr", "hr-quarter", "external"]}
    out = snakemake(tmp_path, config, "-n")
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    assert "results/synth/seed0/models/hr-quarter.pt" in text
    assert "rule external:" in text


@pytest.mark.slow
def test_tiny_end_to_end_run_then_nothing_to_do(tmp_path):
    out = snakemake(tmp_path, TINY)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    report = (tmp_path / "results" / "report.html").read_text()
    for method in ("identity", "hr", "lr", "hr-half", "fst", "crd"):
        table = pd.read_csv(tmp_path / "results" / "synth" / "seed0" / "eval" / f"{method}.csv")
        assert {"dice", "hd95_mm", "fold_pct", "sdlogj", "time_s", "peak_rss_mb"} <= set(table.metric)
        assert set(table.seed) == {0}
        assert f">{method}<" in report
        if method != "identity":  # every trained method leaves its history beside its checkpoint
            history = pd.read_csv(tmp_path / "results" / "synth" / "seed0" / "models" / f"{method}.history.csv")
            assert {"val_dice", "loss"} <= set(history.metric) and history.iteration.min() == 0
    assert "<h3>Training curves</h3>" in report and "<h3>Comparisons</h3>" in report
    assert "crd vs lr: Dice" in report and "fst vs lr: Dice" in report
    assert "data:image/png;base64" in report
    bench = pd.read_csv(tmp_path / "results" / "bench" / "bench.csv")
    assert set(bench.method) == {"identity", "hr", "lr", "hr-half", "fst", "crd"}
    assert "Efficiency" in report
    again = snakemake(tmp_path, TINY, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.parametrize(
    ("configfile", "expected"),
    [
        ("config/paper.yaml", {"download": 4, "prepare": 4, "train": 20, "evaluate": 24}),
        ("config/paper-own.yaml", {"download": 3, "prepare": 5, "train": 15, "evaluate": 30}),
    ],
)
def test_paper_configs_dry_run_list_the_whole_dag(tmp_path, configfile, expected):
    out = run_snakemake(tmp_path, REPO / configfile, "-n", cores=8)
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    for rule, count in expected.items():
        assert any(line.split() == [rule, str(count)] for line in text.splitlines()), (rule, text[-2000:])
    assert "synth" not in text  # a --configfile replaces config.yaml; nothing merged in


def _public_config(**datasets):
    return {**TINY, "datasets": datasets, "threads": {**TINY["threads"], "prepare": 2}}


def test_download_and_prepare_rules_over_loopback(tmp_path):
    import hashlib

    from fake_archives import abdomenctct_zip
    from http_server import serve

    archive = abdomenctct_zip(tmp_path)
    sha = "sha256:" + hashlib.sha256(archive.read_bytes()).hexdigest()
    with serve({"/AbdomenCTCT.zip": archive.read_bytes()}) as srv:
        config = _public_config(abdomen={
            "source": "abdomenctct", "preprocess": {"val": 2},
            "urls": {"AbdomenCTCT.zip": f"{srv.url}/AbdomenCTCT.zip"},
            "checksums": {"AbdomenCTCT.zip": sha},
        })
        out = snakemake(tmp_path, config, "data/abdomen")
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    from crd.data.layout import open_dataset

    ds = open_dataset(tmp_path / "data" / "abdomen")
    assert ds.info["checksums"] == {"AbdomenCTCT.zip": sha}
    assert ds.name == "abdomen" and ds.info["generator"]["source"] == "abdomenctct"  # config key names it
    assert (tmp_path / "downloads" / "abdomen" / "AbdomenCTCT.zip").is_file()


def test_terms_and_missing_files_stop_with_a_message(tmp_path):
    config = _public_config(
        oasis={"source": "oasis"},
        lits={"source": "lits"},
        sliver={"source": "sliver", "train_on": "lits", "path": str(tmp_path / "nowhere")},
    )
    out = snakemake(tmp_path, config, "data/oasis", "data/sliver", "--keep-going")
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "set `accept_terms: true` under datasets.oasis" in text
    assert "sliver_val.h5 not found" in text and "datasets.sliver.path" in text
    assert "Traceback" not in text
    assert not (tmp_path / "data" / "sliver").exists()


def test_test_only_sets_need_train_on(tmp_path):
    out = snakemake(tmp_path, _public_config(sliver={"source": "sliver"}), "-n")
    assert out.returncode != 0
    assert "sliver is a test-only set; set train_on" in out.stdout + out.stderr


@pytest.mark.slow
def test_test_only_set_is_scored_with_the_models_of_train_on(tmp_path):
    import hashlib

    import fake_archives as fake

    (tmp_path / "downloads" / "lits").mkdir(parents=True)
    tar = fake.lits_tar(tmp_path / "downloads" / "lits", n=6)  # placed by hand: no download
    (tmp_path / "byo").mkdir()
    fake.rcn_h5(tmp_path / "byo" / "lspig_val.h5",
                ["p1_aftergas", "p1_pregas", "p2_aftergas", "p2_pregas"], shape=(32, 32, 32))
    config = {
        **_public_config(
            lits={"source": "lits", "checksums": {tar.name: "sha256:" + hashlib.sha256(tar.read_bytes()).hexdigest()},
                  "preprocess": {"shape": [32, 32, 32], "box_mm": [40, 40, 40], "val": 0, "test": 2}},
            lspig={"source": "lspig", "train_on": "lits", "path": str(tmp_path / "byo")},
        ),
        "methods": ["identity", "lr"],
    }
    out = snakemake(tmp_path, config)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert not (tmp_path / "results" / "lspig" / "seed0" / "models").exists()  # nothing trained on lspig
    table = pd.read_csv(tmp_path / "results" / "lspig" / "seed0" / "eval" / "lr.csv")
    table = table.dropna(subset=["fixed"])  # per-pair rows (params etc. have no pair)
    assert set(zip(table.fixed, table.moving, strict=True)) == {
        ("p1_pregas", "p1_aftergas"), ("p1_aftergas", "p1_pregas"),
        ("p2_pregas", "p2_aftergas"), ("p2_aftergas", "p2_pregas")}
    report = (tmp_path / "results" / "report.html").read_text()
    assert "models trained on another dataset (train_on): lr on lits." in report
    assert "HD95 and ASSD are in voxels, not mm" in report

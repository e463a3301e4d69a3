"""The Snakemake workflow: lint, config validation, plugin discovery, and one tiny end-to-end run."""

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import types
import typing
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


def assert_jobs_log_to_results_logs(text: str, results: str = "results") -> None:
    """In a `snakemake -n -p` listing, every job but `all` has one log under <results>/logs/, and
    its shell command sends stdout and stderr there."""
    jobs = re.findall(r"^rule (\S+):\n(.*?)(?=^\[|^rule |^Job stats|\Z)", text, flags=re.M | re.S)
    assert jobs, text[-2000:]
    for rule, block in jobs:
        if rule == "all":
            continue
        logs = re.findall(r"^    log: (.*)$", block, flags=re.M)
        assert len(logs) == 1 and logs[0].startswith(f"{results}/logs/"), (rule, block)
        (command,) = re.findall(r"^Shell command: (.*)$", block, flags=re.M)
        assert re.search(rf">>? {re.escape(logs[0])} 2>&1", command), (rule, command)


def test_default_config_dry_run_builds_the_whole_dag(tmp_path):
    out = run_snakemake(tmp_path, REPO / "config.yaml", "-n", "-p")
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    counts = (("generate_synth", 1), ("train", 6), ("evaluate", 9), ("ants_syn_evaluate", 1), ("bench", 1),
              ("report", 1))  # fmt: skip
    for rule, count in counts:
        assert any(line.split() == [rule, str(count)] for line in text.splitlines()), (rule, text[-2000:])
    assert_jobs_log_to_results_logs(text)
    # the longest chain of trainings (hr -> fst -> crd, with lr) is started first
    priorities = dict(re.findall(r"method=([\w-]+)\n    priority: (\d+)", text))
    assert priorities == {"hr": "3", "fst": "2", "lr": "2", "crd": "1", "hr-half": "1", "fourier-net": "1"}, text
    # the oracles: evaluated with the checkpoint of the network they restrict, never trained or benched
    commands = re.findall(r"^Shell command: (.*)$", text, flags=re.M)
    for oracle, teacher in (("x2-oracle@fst", "fst"), ("x2-oracle@hr", "hr")):
        (command,) = [c for c in commands if "crd evaluate" in c and f"eval/{oracle}.csv" in c]
        assert f"--checkpoint results/synth/seed0/models/{teacher}.pt" in command, command
        assert f"--method-file {REPO}/baselines/{oracle}.py" in command or f"baselines/{oracle}.py" in command
    (bench,) = [c for c in commands if "crd bench" in c]
    assert "x2-oracle" not in bench and "fst" in bench


def lints(text: str) -> list[str]:
    """The lints `snakemake --lint` printed: "<where>: <lint title>" each."""
    found, where = [], None
    for line in text.splitlines():
        if line.startswith("Lints for "):
            where = line.removeprefix("Lints for ").rstrip(":")
        elif line.startswith("    * ") and where is not None:
            found.append(f"{where}: {line[6:].rstrip(':')}")
    return found


def test_snakemake_lint_reports_nothing(tmp_path):
    # `--lint` exits 1 and prints "Lints for <snakefile or rule>:" then "    * <lint>" lines on
    # stderr when it has something to say; 0 and "Congratulations" otherwise (snakemake 9 ignores
    # `--lint json`).
    out = run_snakemake(tmp_path, REPO / "config.yaml", "--lint")
    text = out.stdout + out.stderr
    found = lints(text)
    assert not found, "snakemake --lint:\n" + "\n".join(found)
    assert out.returncode == 0 and "Congratulations" in text, text[-3000:]


def test_lint_output_is_parsed():
    text = (
        "Lints for snakefile /r/workflow/rules/data.smk:\n"
        "    * Mixed rules and functions in same snakefile.:\n"
        "      Small one-liner functions used only once should be defined as lambda\n"
        "Lints for rule train (line 17, /r/workflow/rules/train.smk):\n"
        "    * Shell command directly uses variable CRD from outside of the rule:\n"
        "      It is recommended to pass all files as input and output, and non-file\n"
    )
    assert lints(text) == [
        "snakefile /r/workflow/rules/data.smk: Mixed rules and functions in same snakefile.",
        "rule train (line 17, /r/workflow/rules/train.smk): "
        "Shell command directly uses variable CRD from outside of the rule",
    ]


def test_invalid_config_is_reported_with_its_key(tmp_path):
    bad = {**TINY, "train": {"iterations": "many"}}
    out = snakemake(tmp_path, bad, "-n")
    assert out.returncode != 0
    assert "train.iterations: 'many' is not of type 'integer'" in out.stdout + out.stderr


def test_wrong_type_in_method_train_is_refused_with_its_key(tmp_path):
    bad = {**TINY, "method_train": {"fst": {"iterations": "many"}}}
    out = snakemake(tmp_path, bad, "-n")
    assert out.returncode != 0
    text = out.stdout + out.stderr
    (line,) = [line for line in text.splitlines() if "method_train" in line]
    assert "invalid configuration: method_train.fst.iterations: 'many' is not of type 'integer'" in line, text
    assert "Traceback" not in text


def _json_type(hint) -> dict:
    """The JSON-schema `type` (and `items` type) a TrainSettings field annotation stands for."""
    scalar = {int: "integer", float: "number", bool: "boolean", str: "string"}
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        inner = [a for a in args if a is not type(None)]
        assert len(inner) == 1 and len(args) == 2, hint
        if typing.get_origin(inner[0]) is list:  # list[int] | None
            return {"type": ["array", "null"], "items": {"type": scalar[typing.get_args(inner[0])[0]]}}
        return {"type": [scalar[inner[0]], "null"]}
    if typing.get_origin(hint) is list:
        return {"type": "array", "items": {"type": scalar[args[0]]}}
    return {"type": scalar[hint]}


def test_schema_train_settings_are_crd_train_settings():
    from crd.train import TrainSettings

    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    definition = schema["$defs"]["train_settings"]
    train, method_train = schema["properties"]["train"], schema["properties"]["method_train"]
    assert train["$ref"] == "#/$defs/train_settings"
    assert method_train["additionalProperties"] == {"$ref": "#/$defs/train_settings"}
    assert definition["additionalProperties"] is False

    hints = typing.get_type_hints(TrainSettings)
    fields = {f.name: f for f in dataclasses.fields(TrainSettings) if f.name != "seed"}  # seed: the DAG's
    props = {k: v for k, v in definition["properties"].items() if k not in ("processes", "threads")}  # the workflow's
    assert list(props) == list(fields)
    for name, field in fields.items():
        declared = {"type": props[name]["type"]}
        if "items" in props[name]:
            declared["items"] = {"type": props[name]["items"]["type"]}
        assert declared == _json_type(hints[name]), name
        default = field.default_factory() if field.default is dataclasses.MISSING else field.default
        assert train["properties"][name] == {"default": default}, name
    assert list(train["properties"]) == [*fields, "processes"]
    assert train["properties"]["processes"] == {"default": 1}


def test_jobs_run_crd_from_this_checkout(tmp_path):
    # Jobs (also under --use-conda, where crd is not installed) find `python -m crd` in this
    # checkout: it comes first on their PYTHONPATH, what the caller had after it.
    plugins = tmp_path / "plugins"
    shutil.copytree(REPO / "baselines", plugins)
    (plugins / "external.py").write_text('"""external: scored by its own rule."""\nMODEL = None\n')
    (plugins / "external.smk").write_text(
        "rule external:\n"
        '    output: table=eval_path("{dataset}", "external", "{seed}", "csv"),\n'
        '            sidecar=eval_path("{dataset}", "external", "{seed}", "json"),\n'
        '            example=eval_path("{dataset}", "external", "{seed}", "example.nii.gz")\n'
        '    log: log_path("{dataset}", "{seed}", "external")\n'
        '    shell: "printenv PYTHONPATH > {output.table:q}; touch {output:q} {log:q}"\n'
    )
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump({**TINY, "baselines": str(plugins), "methods": ["external"]}))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", str(tmp_path / "tiny.yaml"), "--cores", "1", "results/synth/seed0/eval/external.csv"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": "/elsewhere"})
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    written = (tmp_path / "results" / "synth" / "seed0" / "eval" / "external.csv").read_text()
    assert written.strip() == os.pathsep.join([str(REPO), "/elsewhere"])


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
        ("config/paper-own.yaml", {"download": 1, "prepare": 4, "train": 15, "evaluate": 24}),
    ],
)
def test_paper_configs_dry_run_list_the_whole_dag(tmp_path, configfile, expected):
    out = run_snakemake(tmp_path, REPO / configfile, "-n", "-p", cores=8)
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    for rule, count in expected.items():
        assert any(line.split() == [rule, str(count)] for line in text.splitlines()), (rule, text[-2000:])
    assert_jobs_log_to_results_logs(text, yaml.safe_load((REPO / configfile).read_text())["results"])
    assert "synth" not in text  # a --configfile replaces config.yaml; nothing merged in


def test_a_dataset_made_with_other_options_stops_the_run_before_any_training(tmp_path):
    """data/synth made by hand with another shape than the config's: the check job refuses it in one
    line naming the key and both values, and no training job runs."""
    from crd.data.synth import generate_synth

    tiny = {"template": "blobs", "fine_deformation_voxels": 0, "seed": 3, "n_subjects": 7, "n_labels": 8, "n_val": 2,
            "n_test": 2, "deformation_voxels": 4.5, "progress": False}  # TINY's generate block, as arguments
    generate_synth(tmp_path / "data" / "synth", shape=(32, 32, 48), **tiny)
    out = snakemake(tmp_path, TINY, "results/synth/seed0/models/hr.pt")
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "shape is [32, 32, 48], but config datasets.synth.generate asks for [32, 32, 32]" in text, text[-3000:]
    assert f"delete {'data/synth'} and run again" in text
    assert not (tmp_path / "results" / "synth" / "seed0" / "models").exists()
    # made as the config asks: it passes, and the check is recorded
    shutil.rmtree(tmp_path / "data" / "synth")
    generate_synth(tmp_path / "data" / "synth", shape=(32, 32, 32), **tiny)
    ok = snakemake(tmp_path, TINY, "results/synth/data_check.json")
    assert ok.returncode == 0, (ok.stdout + ok.stderr)[-3000:]


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
    # the same folder asked for with other preprocessing options: refused in one line, before training
    from crd.cli import main

    asked = ["check-data", str(tmp_path / "data" / "abdomen"), "--source", "abdomenctct", "--preprocess"]
    assert main([*asked, '{"val": 2}']) == 0
    err = subprocess.run([sys.executable, "-m", "crd", *asked, '{"val": 3}', "--asker", "config datasets.abdomen"],
                         capture_output=True, text=True).stderr.strip().splitlines()  # fmt: skip
    assert len(err) == 1 and "options.val is 2, but config datasets.abdomen asks for 3" in err[0], err


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
    assert "(or preprocess: {protocol: paper}, which trains on it)" in out.stdout + out.stderr
    # under the paper's protocol SLIVER has training pairs of its own (the authors' first 270)
    paper = _public_config(sliver={"source": "sliver", "preprocess": {"protocol": "paper"}},
                           lspig={"source": "lspig", "train_on": "sliver"})  # fmt: skip
    out = snakemake(tmp_path, paper, "-n")
    assert out.returncode == 0, out.stderr
    assert "sliver/seed0/models/crd.pt" in out.stdout + out.stderr


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


@pytest.mark.parametrize(
    ("layer", "expected"),
    [("config/outside.yaml", {"train": 8, "evaluate": 9, "ants_syn_evaluate": 1}),
     ("config/converged.yaml", {"train": 30, "evaluate": 37, "ants_syn_evaluate": 1})],
)
def test_layered_configs_dry_run(tmp_path, layer, expected):
    """The documented layers on config.yaml build their DAG (fourier-net, a network its method file
    brings, among the methods). Three seeds in converged.yaml: its 10 networks train 3 times and are
    evaluated 3 times with the 2 oracles; identity and ants-syn, no training, are evaluated once."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", str(REPO / "config.yaml"), str(REPO / layer), "--cores", "2", "-n"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    assert "fourier-net" in text and "ants_syn_evaluate" in text
    for rule, count in expected.items():
        assert any(line.split() == [rule, str(count)] for line in text.splitlines()), (rule, text[-2000:])


@pytest.mark.slow
def test_the_rule_route_runs_ants_syn_end_to_end(tmp_path):
    """ants-syn (MODEL = None + baselines/ants-syn.smk): its own rule scores it through crd evaluate,
    and the report shows it like any other method, with no parameter count."""
    pytest.importorskip("ants", reason="antspyx is not installed (pip install -e '.[ants]')")
    config = {**TINY, "methods": ["identity", "ants-syn"], "report_baseline": "identity"}
    out = snakemake(tmp_path, config, "-p")
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert "rule ants_syn_evaluate:" in out.stdout + out.stderr
    table = pd.read_csv(tmp_path / "results" / "synth" / "seed0" / "eval" / "ants-syn.csv")
    identity = pd.read_csv(tmp_path / "results" / "synth" / "seed0" / "eval" / "identity.csv")
    assert set(table.metric) == set(identity.metric) - {"params"}  # the same scoring, no network
    assert table[(table.metric == "dice") & table.label.isna()].value.mean() > identity[
        (identity.metric == "dice") & identity.label.isna()
    ].value.mean()
    report = (tmp_path / "results" / "report.html").read_text()
    assert ">ants-syn<" in report
    assert "ants-syn" not in set(pd.read_csv(tmp_path / "results" / "bench" / "bench.csv").method)


def test_train_processes_become_the_launch_command_and_the_job_request(tmp_path):
    """train.processes (global) and method_train.<m>.processes: torchrun's launcher with that many
    processes, the job's threads and gpu scaled by it; the setting never reaches crd train."""
    config = {**TINY, "methods": ["hr", "lr"], "train": {**TINY["train"], "processes": 2},
              "method_train": {"lr": {"processes": 1}}, "resources": {"gpu": 1}}  # fmt: skip
    targets = ["results/synth/seed0/models/hr.pt", "results/synth/seed0/models/lr.pt"]
    out = snakemake(tmp_path, config, *targets, "-n", "-p", "--cores", "8", "--resources", "gpu=4")
    assert out.returncode == 0, out.stderr
    text = out.stdout + out.stderr
    job = r"wildcards: dataset=synth, seed=0, method=(\w+)\n(.*?)(?=^\[|^rule |\Z)"
    jobs = dict(re.findall(job, text, re.M | re.S))
    assert "python -m torch.distributed.run --standalone --nproc-per-node 2 -m crd train" in jobs["hr"]
    assert re.search(r"^    threads: 2$", jobs["hr"], re.M) and re.search(r"gpu=2", jobs["hr"])
    assert "python -m crd train" in jobs["lr"] and "torch.distributed" not in jobs["lr"]
    assert not re.search(r"^    threads:", jobs["lr"], re.M) and re.search(r"gpu=1", jobs["lr"])  # 1 is not shown
    assert '"processes"' not in text  # the launcher's, not a crd train setting


@pytest.mark.slow
def test_a_run_killed_hard_recovers_with_unlock_then_rerun_incomplete(tmp_path):
    """The README's recovery recipe ("After a crash"): snakemake and its training job SIGKILLed
    (as a power loss or an out-of-memory kill), the plain command refuses to run (incomplete
    files / lock); `--unlock`, then `--rerun-incomplete`, finishes, the training resuming from its
    last saved state."""
    import os
    import signal
    import time

    config = {**TINY, "train": {**TINY["train"], "iterations": 120, "checkpoint_every": 20}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    target = "results/synth/seed0/models/hr.pt"
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
           "--configfile", str(tmp_path / "tiny.yaml"), "--cores", "2"]  # fmt: skip
    proc = subprocess.Popen([*cmd, target], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    log = tmp_path / "results" / "logs" / "synth" / "seed0" / "train_hr.log"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (log.is_file() and "iter 40/120" in log.read_text()):
        time.sleep(0.5)
    assert log.is_file() and "iter 40/120" in log.read_text(), "the training never reached step 40"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    plain = subprocess.run([*cmd, target], capture_output=True, text=True, timeout=600)
    assert plain.returncode != 0
    assert "IncompleteFilesException" in plain.stderr or "LockException" in plain.stderr, plain.stderr[-2000:]
    assert subprocess.run([*cmd, "--unlock", target], capture_output=True, text=True, timeout=600).returncode == 0
    again = subprocess.run([*cmd, "--rerun-incomplete", target], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    text = log.read_text()
    assert "resum" in text.lower() and (tmp_path / target).is_file()

"""workflow/profiles/slurm: what each job asks sbatch for (real Snakemake, the real profile and
snakemake-executor-plugin-slurm, with a stand-in `sbatch` that records the call), and, marked
`slurm` and only with CRD_TEST_SLURM=1, the smoke DAG on a real single-node SLURM cluster
(benchmarks/slurm_cluster.sh)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from repo_paths import REPO

PROFILE = REPO / "workflow" / "profiles" / "slurm"
PLUGIN = "snakemake_executor_plugin_slurm"
NO_PLUGIN = "snakemake-executor-plugin-slurm is not installed (README 'Scaling out' says which version to install)"

# Stand-ins for the SLURM commands the plugin calls before and while submitting. `sbatch` records
# its arguments and refuses the job, so the run stops at the submission. `sinfo -o %P` names a
# default partition (cpu*) and a gpu one.
FAKE_SBATCH = """#!{python}
import json, os, sys
with open(os.environ["FAKE_SBATCH_LOG"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
print("sbatch: error: stand-in sbatch of tests/test_slurm_profile.py", file=sys.stderr)
sys.exit(1)
"""
FAKE_COMMANDS = {
    "sinfo": "#!/bin/sh\necho PARTITION\necho 'cpu*'\necho gpu\n",
    "squeue": "#!/bin/sh\nexit 0\n",
    "scontrol": "#!/bin/sh\nexit 1\n",
    "sacct": "#!/bin/sh\nexit 1\n",
    "scancel": "#!/bin/sh\nexit 0\n",
}


def _flag(args: list[str], name: str) -> str | None:
    """The value of `name` in sbatch's arguments, given as `name value` or `name=value`."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg[len(name) + 1 :]
    return None


def _mem_default(stage: str) -> int:
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text(encoding="utf-8"))
    return schema["properties"]["resources"]["properties"]["mem_mb"]["properties"][stage]["default"]


def _submissions(tmp_path: Path) -> dict[str, list[str]]:
    """Run the smoke config with the profile and one GPU a job (`resources: {gpu: 1}`, as config/paper.yaml
    has it, in a config file layered last; hr trains with 2 data-parallel processes) up to five submissions:
    train hr and lr, evaluate identity, bench, and ants-syn's evaluation (a CPU rule). Returns each
    job's sbatch arguments (without the wrapped command) by its --comment (rule and wildcards)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text(FAKE_SBATCH.format(python=sys.executable))
    for name, text in FAKE_COMMANDS.items():
        (fake / name).write_text(text)
    for exe in fake.iterdir():
        exe.chmod(0o755)
    # no conda here: everything but use-conda is the profile's own (a later --profile replaces keys)
    overlay = tmp_path / "no-conda"
    overlay.mkdir()
    (overlay / "config.yaml").write_text("use-conda: false\n")
    # a config file: `--config resources={gpu: 1}` would give the string '1' (Snakemake reads nested
    # --config values as strings), which the config schema rejects
    gpu = tmp_path / "gpu.yaml"
    gpu.write_text(yaml.safe_dump({"resources": {"gpu": 1}, "method_train": {"hr": {"processes": 2}}}))
    (tmp_path / "data" / "synth").mkdir(parents=True)  # the dataset "exists": no generate job first
    results = tmp_path / "results"
    (results / "synth").mkdir(parents=True)  # and was checked (rule check_data) after it was made
    (results / "synth" / "data_check.json").write_text("{}\n")
    targets = [
        results / "synth" / "seed0" / "models" / "hr.pt",
        results / "synth" / "seed0" / "models" / "lr.pt",
        results / "synth" / "seed0" / "eval" / "identity.csv",
        results / "synth" / "seed0" / "eval" / "ants-syn.csv",
        results / "bench" / "bench.csv",
    ]
    log = tmp_path / "sbatch.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SNAKEMAKE_PROFILE"))}
    env.update(PATH=f"{fake}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    env["FAKE_SBATCH_LOG"] = str(log)
    cmd = [
        sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
        "--profile", str(PROFILE), "--profile", str(overlay),
        "--configfile", str(REPO / "config.yaml"), str(REPO / "config" / "smoke.yaml"), str(gpu),
        "--config", f"results={results}", f"data_root={tmp_path / 'data'}",
        "--retries", "0", "--keep-going", "--slurm-init-seconds-before-status-checks", "1",
        *map(str, targets),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    by_job = {_flag(args, "--comment"): [a for a in args if not a.startswith("--wrap")] for args in calls}
    wanted = {
        "rule_train_wildcards_synth_0_hr",
        "rule_train_wildcards_synth_0_lr",
        "rule_evaluate_wildcards_synth_0_identity",
        "rule_bench",
        "rule_ants_syn_evaluate_wildcards_synth_0",
    }
    assert by_job.keys() >= wanted, (
        f"snakemake submitted {sorted(map(str, by_job))} (exit {proc.returncode}):\n"
        f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return by_job


@pytest.fixture(scope="module")
def submissions(tmp_path_factory):
    pytest.importorskip(PLUGIN, reason=NO_PLUGIN)
    return _submissions(tmp_path_factory.mktemp("slurm-profile"))


def _profile():
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text(encoding="utf-8"))
    partitions = yaml.safe_load((PROFILE / profile["slurm-partition-config"]).read_text(encoding="utf-8"))["partitions"]
    gpu = [name for name, limits in partitions.items() if limits.get("max_gpu", 0) > 0]
    cpu = [name for name, limits in partitions.items() if limits.get("max_gpu", 0) == 0]
    assert len(gpu) == 1 and len(cpu) == 1, partitions
    runtime = {rule: res["runtime"] for rule, res in profile["set-resources"].items() if "runtime" in res}
    return profile, gpu[0], cpu[0], runtime


@pytest.mark.parametrize(
    "job, rule, gpus, processes",
    [
        ("rule_train_wildcards_synth_0_hr", "train", 2, 2),  # 2 data-parallel processes, a GPU each
        ("rule_train_wildcards_synth_0_lr", "train", 1, 1),
        ("rule_evaluate_wildcards_synth_0_identity", "evaluate", 1, 1),
        ("rule_bench", "bench", 1, 1),
    ],
)
def test_gpu_jobs_ask_sbatch_for_their_gpus_in_the_gpu_partition(submissions, job, rule, gpus, processes):
    profile, gpu_partition, _, runtime = _profile()
    smoke = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text(encoding="utf-8"))
    threads = smoke["threads"]["train"] * processes if rule == "train" else profile["cores"]
    args = submissions[job]
    print(job, "->", "sbatch", " ".join(args))
    assert _flag(args, "--gpus") == str(gpus), args
    assert _flag(args, "-p") == gpu_partition, args
    assert _flag(args, "-t") == str(runtime[rule]), args
    assert _flag(args, "--mem") == str(processes * _mem_default(rule)), args  # config resources.mem_mb
    assert _flag(args, "--cpus-per-task") == str(threads), args
    assert "--gres" not in " ".join(args), args


def test_cpu_jobs_ask_for_no_gpu_and_the_cpu_partition(submissions):
    profile, _, cpu_partition, _ = _profile()
    args = submissions["rule_ants_syn_evaluate_wildcards_synth_0"]
    print("ants_syn_evaluate ->", "sbatch", " ".join(args))
    assert _flag(args, "--gpus") is None, args
    assert _flag(args, "-p") == cpu_partition, args
    assert _flag(args, "-t") == str(profile["default-resources"]["runtime"]), args
    assert _flag(args, "--mem") == str(_mem_default("evaluate")), args
    assert _flag(args, "--cpus-per-task") == str(profile["cores"]), args  # threads: workflow.cores
    assert _flag(args, "--ntasks") == "1", args


@pytest.mark.slurm
def test_the_smoke_dag_through_a_real_slurm_cluster_equals_a_local_run():
    if os.environ.get("CRD_TEST_SLURM") != "1":
        pytest.skip(
            "set CRD_TEST_SLURM=1 to run it: it starts a single-node SLURM cluster as root "
            "(apt-get installs slurm-wlm and munge if missing) and runs the smoke DAG twice (minutes)"
        )
    if os.geteuid() != 0:
        pytest.skip("benchmarks/slurm_cluster.sh needs root (it runs munged, slurmctld and slurmd)")
    pytest.importorskip(PLUGIN, reason=NO_PLUGIN)
    env = dict(os.environ, PYTHON=sys.executable)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "slurm_cluster.sh")], env=env, capture_output=True, text=True, timeout=3600
    )
    print(proc.stdout)
    if proc.returncode == 77:
        pytest.skip(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "no cluster could be started")
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert "IDENTICAL" in proc.stdout, proc.stdout[-4000:]
    assert "SLURM job ids of the DAG" in proc.stdout, proc.stdout[-4000:]

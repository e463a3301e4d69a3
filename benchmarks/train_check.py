"""A short training, evaluation and report of every default method on one device, and a
killed-and-resumed training: the checks `benchmarks/gpu.sh` runs on a lent GPU (where Snakemake is
not installed), so a first CUDA run exercises train / evaluate / resume / report, not only the bench.

It runs the same commands as the workflow's rules (``python -m crd generate|train|evaluate|report``
with the settings the rules pass: the configuration's train block merged with each method file's
``TRAIN`` and ``method_train``, by :func:`crd.workflow_config.train_block`, and the configured torch
threads), on a smaller copy of the default dataset, with a few dozen iterations (a method whose
block sets fewer keeps its share), a checkpoint every quarter and one validation pair. Its Dice figures mean
nothing (a few dozen steps); it shows that every stage runs on the device and what each costs there.

    python benchmarks/train_check.py run --device cuda --work results/gpu-check/train
    python benchmarks/train_check.py resume --device cuda --work results/gpu-check/resume

``run --as-configured`` runs the configuration itself instead: its dataset, its train settings
(the stopping rule included), every seed, one report over all seeds; ``benchmarks/gpu.sh`` runs
``config/converged.yaml`` this way, so that a first GPU run brings back a converged three-seed table:

    python benchmarks/train_check.py run --as-configured --config config.yaml config/converged.yaml \
        --device cuda --jobs 4 --work results/gpu-check/converged

With ``--jobs N`` the trainings that need no other's checkpoint run N at a time (on a GPU their
start-up, not their steps, takes most of the time); evaluations run one at a time, since they are timed
(with ``--as-configured`` also N at a time: that check is about accuracy, its timings are not clean).
``run`` prints one line per job (exit status, seconds) and a table per method: mean Dice over the
test pairs, seconds per pair, the peak memory per pair (``cuda_alloc_peak_mb`` / ``nvml_peak_mb`` on
CUDA, ``peak_rss_mb`` on the CPU). ``resume`` starts ``crd train``, kills it (SIGKILL) once it has
saved a resume state, starts it again with the same command, and checks that the second run
resumed (``resumed_at`` > 0 in the checkpoint) and finished every iteration. Exit status 1 when a
job failed or the resumed run did not resume.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from crd.workflow_config import generate_arguments, load_config, train_block  # noqa: E402

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
#: the default dataset, smaller: 12 subjects (2 validation, 3 test: 6 test pairs)
SMALL = {"subjects": 12, "val": 2, "test": 3}


def _run(name: str, argv: list[str], log: Path) -> bool:
    """Run ``argv`` with output to ``log``; print one line (exit status, seconds; the log's end on
    failure); True on success."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        rc = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO).returncode
    print(f"{name:28s} exit {rc}  {time.perf_counter() - t0:6.1f} s", flush=True)
    if rc != 0:
        print("  " + "\n  ".join(log.read_text().strip().splitlines()[-8:]), flush=True)
    return rc == 0


def _job(name: str, argv: list[str], log: Path) -> bool:
    """:func:`_run` of ``python -m crd <argv>``."""
    return _run(name, [sys.executable, "-m", "crd", *argv], log)


def _config(config_files: list[str]) -> dict:
    return load_config([REPO / f for f in config_files], SCHEMA)


def _methods(config: dict):
    from crd.methods import load_methods

    return load_methods(REPO / config["baselines"], config["methods"])


def _generate(config: dict, data: Path, *, small: bool = True) -> bool:
    """The configuration's synth dataset (``small``: with :data:`SMALL`'s subjects and splits)."""
    (name, spec), *_ = ((n, s) for n, s in config["datasets"].items() if s["source"] == "synth")
    block = {**spec.get("generate", {}), **(SMALL if small else {})}
    args = ["generate", "synth", str(data), *generate_arguments(block), "--overwrite", "--no-progress"]
    return _job(f"generate {name}", args, data.parent / "logs" / "generate.log")


def _train_args(config, spec, data: Path, models: Path, settings: dict, device: str) -> list[str]:
    args = ["train", "--data", str(data), "--method-file", str(spec.path), "--out", str(models / f"{spec.name}.pt")]
    args += ["--settings", json.dumps(settings, sort_keys=True), "--device", device, "--no-progress"]
    threads = train_block(config, spec.name, spec.train).get("threads", config["threads"]["train"])
    args += ["--threads", str(threads)]
    if spec.init:
        args += ["--init", str(models / f"{spec.init}.pt")]
    if spec.teacher:
        args += ["--teacher", str(models / f"{spec.teacher}.pt")]
    return args


def _settings(config: dict, spec, iterations: int | None, seed: int = 0) -> dict:
    """The method's train block as the workflow passes it (with ``seed``). With ``iterations``
    (a short check): that many (a method whose block sets fewer than the default keeps its share),
    checkpoints every quarter, one validation pair and no stopping rule; ``None``: as configured."""
    block = train_block(config, spec.name, spec.train)
    if iterations is not None:
        share = block["iterations"] / config["train"]["iterations"]
        block["iterations"] = max(2, round(iterations * share))
        block["checkpoint_every"] = max(1, block["iterations"] // 4)
        block["val_pairs"] = 1
        block["patience"] = 0
    block["seed"] = seed
    block.pop("processes", None)
    block.pop("threads", None)
    return block


def _waves(specs: dict, names: list[str]) -> list[list[str]]:
    """``names`` grouped by depth: a method's ``init`` / ``teacher`` are in earlier groups."""
    depth: dict[str, int] = {}

    def level(name: str) -> int:
        if name not in depth:
            depth[name] = 1 + max((level(n) for n in specs[name].needs), default=-1)
        return depth[name]

    waves: dict[int, list[str]] = {}
    for name in names:
        waves.setdefault(level(name), []).append(name)
    return [waves[k] for k in sorted(waves)]


def _summary(tables: list[Path]) -> str:
    import pandas as pd

    lines = [f"{'method':12s} {'seed':>4s} {'pairs':>5s} {'Dice':>6s} {'s/pair':>8s} {'peak MB/pair':>24s}"]
    for table in tables:
        t = pd.read_csv(table)
        per_pair = t[t.label.isna() & t.fixed.notna()]  # one row per pair and metric (Dice: the mean over labels)
        mean = per_pair.groupby("metric").value.mean()
        mem = [f"{k[:-3]} {mean[k]:.0f}" for k in ("cuda_alloc_peak_mb", "nvml_peak_mb", "peak_rss_mb") if k in mean]
        pairs = int((per_pair.metric == "dice").sum())
        lines.append(
            f"{table.stem:12s} {int(t.seed.iloc[0]):4d} {pairs:5d} {mean.get('dice', float('nan')):6.3f} "
            f"{mean.get('time_s', float('nan')):8.4f} {', '.join(mem):>24s}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Generate, train every trained method (dependencies first), evaluate every reported method
    that the generic rules handle, build the report; per seed of the configuration with
    ``--as-configured`` (else seed 0 only, shortened)."""
    config = _config(args.config)
    specs = _methods(config)
    work = Path(args.work).resolve()
    data = work / "data" / "synth"
    ok = _generate(config, data, small=not args.as_configured)
    trained = [m for m in specs if specs[m].has_checkpoint]
    skipped = [m for m in config["methods"] if specs[m].rule_file is not None]
    if skipped:
        print(f"not run here (own rule files, run on the CPU by their rules): {', '.join(skipped)}")
    seeds = [int(s) for s in config["seeds"]] if args.as_configured else [0]
    tables, histories = [], []
    for seed in seeds:
        root = work / f"seed{seed}" if args.as_configured else work
        models, evals = root / "models", root / "eval"
        for wave in _waves(specs, trained):  # a wave's methods need only earlier waves: trained side by side
            if not ok:
                break
            jobs = []
            for name in wave:
                settings = _settings(config, specs[name], None if args.as_configured else args.iterations, seed)
                argv = _train_args(config, specs[name], data, models, settings, args.device)
                jobs.append((f"train {name} seed {seed} (at most {settings['iterations']} it)", argv,
                             root / "logs" / f"train_{name}.log"))  # fmt: skip
            with ThreadPoolExecutor(max_workers=args.jobs) as pool:
                ok = all(pool.map(lambda job: _job(*job), jobs))
        evaluations = []
        for name in config["methods"]:
            spec = specs[name]
            if not ok or spec.rule_file is not None or (spec.evaluated_once and seed != seeds[0]):
                continue  # own rules; or no training: one evaluation stands for every seed, as in the workflow
            table = evals / f"{name}.csv"
            argv = ["evaluate", "--data", str(data), "--method-file", str(spec.path), "--seed", str(seed),
                    "--out", str(table), "--device", args.device, "--threads", str(config["threads"]["evaluate"]),
                    "--no-progress"]  # fmt: skip
            if spec.has_checkpoint:
                argv += ["--checkpoint", str(models / f"{name}.pt")]
            evaluations.append((f"evaluate {name} seed {seed}", argv, root / "logs" / f"evaluate_{name}.log"))
            tables.append(table)
        # timed, so one at a time; --as-configured is about accuracy: side by side
        with ThreadPoolExecutor(max_workers=args.jobs if args.as_configured else 1) as pool:
            ok = ok and all(pool.map(lambda job: _job(*job), evaluations))
        histories += [str(models / f"{m}.history.csv") for m in trained]
    if ok:
        argv = ["report", "--tables", *map(str, tables), "--histories", *histories, "--out", str(work / "report.html")]
        ok = _job("report", [*argv, "--baseline", config["report_baseline"]], work / "logs" / "report.log")
    if tables and all(t.is_file() for t in tables):
        print(_summary(tables))
    if ok and args.as_configured:
        print(_convergence_summary([Path(h) for h in histories]))
    return 0 if ok else 1


def _convergence_summary(histories: list[Path]) -> str:
    """One line per training run: where it ended and whether it was at its plateau."""
    import pandas as pd

    from crd.convergence import convergence_table
    from crd.tidy import load_history

    lines = [f"{'method':12s} {'seed':>4s} {'ended':>9s} {'max':>6s} {'selected':>8s} {'start':>6s} {'last q.':>7s} "
             f"{'share':>6s}  status"]  # fmt: skip
    for r in convergence_table(pd.concat([load_history(h) for h in histories], ignore_index=True)):
        share = f"{100 * r.late_fraction:5.0f}%" if r.late_fraction == r.late_fraction else "     —"
        lines.append(f"{r.method:12s} {r.seed:4d} {r.iterations:9d} {r.max_iterations or 0:6d} "
                     f"{r.selected_iteration or 0:8d} {r.start:6.3f} {r.late:7.3f} {share}  {r.status}")  # fmt: skip
    return "\n".join(lines)


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` and every process below it (torchrun starts its workers in sessions of
    their own, so killing the launcher's process group alone would leave them running)."""
    import psutil

    try:
        victims = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        victims = []
    for p in victims:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait()
    psutil.wait_procs(victims[1:], timeout=10)


def resume(args: argparse.Namespace) -> int:
    """Kill a training once it has saved a resume state; start it again; check it resumed."""
    import torch

    config = _config(args.config)
    specs = _methods(config)
    work = Path(args.work).resolve()
    data, models = work / "data" / "synth", work / "models"
    if not _generate(config, data):
        return 1
    spec = specs[args.method]
    settings = _settings(config, spec, args.iterations)
    settings["checkpoint_every"] = max(1, settings["iterations"] // 6)
    launcher = [sys.executable, "-m"]
    if args.processes > 1:  # data-parallel under torchrun: nccl on CUDA (one GPU per process), gloo on the CPU
        launcher += ["torch.distributed.run", "--standalone", "--nproc-per-node", str(args.processes), "-m"]
        settings["batch_size"] = args.processes * settings.get("batch_size", 1)
    argv = [*launcher, "crd", *_train_args(config, spec, data, models, settings, args.device)]
    state = models / f".{spec.name}.pt.resume"
    log = work / "logs" / "train_killed.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        # same process group as this script, so that a time limit's signal to the group reaches it;
        # SIGTERM (timeout's) also kills the whole tree (torchrun's workers have sessions of their own)
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
        signal.signal(signal.SIGTERM, lambda *_: (_kill_tree(proc), sys.exit(143)))
        deadline = time.monotonic() + args.wait
        while proc.poll() is None and not state.is_file():
            if time.monotonic() > deadline:
                _kill_tree(proc)
                print(f"no resume state after {args.wait:.0f} s; see {log}")
                return 1
            time.sleep(0.05)
        time.sleep(0.2)  # the state file appears by an atomic rename: complete once it exists
        if proc.poll() is not None:
            print(f"the first run ended (exit {proc.returncode}) before it could be killed; see {log}")
            return 1
        _kill_tree(proc)
    print(f"killed {spec.name} training after {time.perf_counter() - t0:.1f} s (resume state {state.name} saved)")
    if not _run(f"train {spec.name} again", argv, work / "logs" / "train_resumed.log"):
        return 1
    training = torch.load(models / f"{spec.name}.pt", map_location="cpu", weights_only=True)["training"]
    import pandas as pd

    history = pd.read_csv(models / f"{spec.name}.history.csv")
    resumed_at, iterations = training.get("resumed_at"), settings["iterations"]
    duplicates = int(history.duplicated(["iteration", "metric"]).sum())
    last = int(history.iteration.max())
    ok = bool(resumed_at) and not state.exists() and last == iterations and duplicates == 0
    print(
        f"{'RESUMED' if ok else 'NOT RESUMED'}: resumed_at {resumed_at} of {iterations} iterations; history up to "
        f"iteration {last}, {duplicates} duplicated rows; resume state removed: {not state.exists()}"
    )
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("check", choices=["run", "resume"], help="run: train+evaluate+report; resume: kill and resume")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    p.add_argument("--work", required=True, help="folder for the data, models, tables, logs and report")
    p.add_argument("--iterations", type=int, default=40, help="training iterations of a full-budget method")
    p.add_argument("--as-configured", action="store_true",
                   help="run: the configuration as it is (dataset, train settings, every seed), not a short check")
    p.add_argument("--config", nargs="+", default=["config.yaml"], help="configuration files, layered")
    p.add_argument("--jobs", type=int, default=1, help="run: trainings side by side (their needs first; default 1)")
    p.add_argument("--method", default="hr", help="resume: the method to kill and resume (default hr)")
    p.add_argument("--wait", type=float, default=120.0, help="resume: seconds to wait for a resume state (default 120)")
    p.add_argument("--processes", type=int, default=1, help="resume: data-parallel processes under torchrun")
    args = p.parse_args(argv)
    return run(args) if args.check == "run" else resume(args)


if __name__ == "__main__":
    sys.exit(main())

"""Check the report's CPU memory figures: each method's per-pair working set against the bench's
isolated figure at the same size, and the same method evaluated first and last in one process.

    python benchmarks/cpu_memory.py                       # the default run (results/, data/synth)
    python benchmarks/cpu_memory.py --results results/converged --seed 1 --threads 2

For every trained method of ``--methods`` whose checkpoint is in ``<results>/<dataset>/seed<seed>/
models/`` (and identity), it prints:

- ``report``: the per-pair ``peak_rss_mb`` of the evaluation table the report reads
  (``<results>/<dataset>/seed<seed>/eval/<method>.csv``): mean and median over pairs;
- ``bench``: ``crd bench`` at the dataset's image size, one process per case (its working set);
- ``one process``: in one Python process, ``crd evaluate`` of ``--first`` (lr), every other
  method, then ``--first`` again (median over pairs of each), so that whatever the others leave
  behind in the process would show as a difference between its first and its last figure;
- ``report / bench``: the ratio (the target: within 15 %).

Nothing under ``--results`` is written (evaluations of the first/last check go to a temporary
folder). Figures in MB (2^20 bytes).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from crd.bench import run_bench  # noqa: E402
from crd.data.layout import open_dataset  # noqa: E402
from crd.evaluate import evaluate  # noqa: E402
from crd.methods import load_methods  # noqa: E402
from crd.models.registration import use_method_models  # noqa: E402

DEFAULT_METHODS = ["identity", "hr", "lr", "hr-half", "fst", "crd", "fourier-net"]


def _peaks(table: Path) -> pd.Series:
    frame = pd.read_csv(table)
    return frame.loc[frame["metric"] == "peak_rss_mb", "value"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default="results", help="the run's results folder (default: results)")
    parser.add_argument("--data", default="data/synth", help="the dataset folder (default: data/synth)")
    parser.add_argument("--dataset", default="synth", help="its name under --results (default: synth)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, help="methods (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads, as the workflow's evaluate (default 2)")
    parser.add_argument("--first", default="lr", help="the method evaluated first and again last in one process "
                        "(default lr: after hr it read 0 MB when the timed call's RSS rise was recorded)")
    args = parser.parse_args(argv)

    results = Path(args.results) / args.dataset / f"seed{args.seed}"
    specs = load_methods(REPO / "baselines", args.methods)
    use_method_models(specs.values())
    methods = [m for m in args.methods if m == "identity" or (results / "models" / f"{m}.pt").is_file()]
    missing = sorted(set(args.methods) - set(methods))
    if missing:
        print(f"no checkpoint under {results / 'models'} for: {', '.join(missing)} (left out)")
    data = Path(args.data)
    shape = tuple(int(s) for s in open_dataset(data).load_image(open_dataset(data).pairs_for("test")[0][0]).shape)

    with tempfile.TemporaryDirectory(prefix="crd-cpu-memory-") as tmp:
        bench_table = run_bench(REPO / "baselines", methods, [shape], Path(tmp) / "bench.csv", device="cpu",
                                repeats=3, warmup=1, threads=args.threads, log=lambda line: None,
                                checkpoints_dir=results / "models")  # fmt: skip
        bench = pd.read_csv(bench_table)
        bench = bench[(bench["metric"] == "peak_rss_mb") & (bench["options"] == "fp32")].set_index("method")["value"]

        if args.first not in methods:
            parser.error(f"--first {args.first!r} is not among the methods measured ({', '.join(methods)})")
        order = [args.first, *[m for m in methods if m != args.first], args.first]
        in_process = []
        for i, method in enumerate(order):
            spec = specs[method]
            checkpoint = results / "models" / f"{method}.pt" if spec.has_checkpoint else None
            out = evaluate(data, Path(tmp) / f"{i}" / f"{method}.csv", method=method, checkpoint=checkpoint,
                           model_config=spec.model, device="cpu", threads=args.threads, progress=False)  # fmt: skip
            in_process.append(statistics.median(_peaks(out)))

    print(f"\nCPU working set per pair (MB), {args.dataset} seed {args.seed}, {'x'.join(map(str, shape))}, "
          f"{args.threads} threads")  # fmt: skip
    print(f"{'method':14s} {'report mean':>12s} {'(median)':>9s} {'bench':>8s} {'report/bench':>13s} "
          f"{'one process: first':>19s} {'later':>8s}")  # fmt: skip
    for method in methods:
        table = results / "eval" / f"{method}.csv"
        report = _peaks(table) if table.is_file() else pd.Series(dtype=float)
        mean = report.mean() if len(report) else float("nan")
        median = report.median() if len(report) else float("nan")
        b = float(bench.get(method, float("nan")))
        first = f"{in_process[0]:19.1f}" if method == args.first else " " * 19
        later = in_process[-1] if method == args.first else in_process[order.index(method)]
        print(f"{method:14s} {mean:12.1f} {median:9.1f} {b:8.1f} {mean / b:12.2f}x {first} {later:8.1f}")
    print(f"\n{args.first} evaluated first and last in one process (order: {', '.join(order)}): "
          f"{in_process[0]:.1f} and {in_process[-1]:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Mutation check of the report's statistics: each deliberate fault must make a test fail.

Copies this checkout's ``crd/``, ``tests/`` and ``pyproject.toml`` to a temporary folder, runs the
statistics tests there unchanged (they must pass), then once per fault below: writes the fault
into the copy (an exact text replacement that must match exactly once, so a fault that no longer
applies is an error, not a silent pass), runs the tests again and reports whether they caught it.
The checkout itself is never written.

    python benchmarks/stats_mutations.py            # all faults (about 20 s each on 2 cores)
    python benchmarks/stats_mutations.py --list     # the faults, one line each
    python benchmarks/stats_mutations.py --only holm-running-max one-sided-p

Exit status 0 when every fault was caught, 1 when one survived, 2 on a setup error.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTS = ["tests/test_stats.py", "tests/test_report.py"]


@dataclass(frozen=True)
class Fault:
    name: str
    what: str
    file: str
    old: str
    new: str


FAULTS = (
    Fault("interval-level", "a 90 % interval where 95 % is stated", "crd/stats.py",
          "CONFIDENCE = 0.95", "CONFIDENCE = 0.90"),
    Fault("interval-order-statistic", "the interval's order statistic one further in", "crd/stats.py",
          "return float(r[k - 1]), float(r[r.size - k])", "return float(r[k]), float(r[r.size - k - 1])"),
    Fault("unpaired-resampling", "A and B resampled independently (pairing lost)", "crd/stats.py",
          "        replicates = bootstrap_replicates(differences, resampling, resample_seeds=resample_seeds, "
          "n_boot=n_boot,\n                                          seed=seed)  # fmt: skip",
          "        gone = np.isnan(differences)\n"
          "        replicates = bootstrap_replicates(np.where(gone, np.nan, a_cells), resampling, "
          "resample_seeds=resample_seeds, n_boot=n_boot, seed=seed) - bootstrap_replicates(np.where(gone, np.nan, "
          "b_cells), resampling, resample_seeds=resample_seeds, n_boot=n_boot, seed=seed + 1)"),
    Fault("zero-method", "differences within float noise kept (not zeroed) in the estimand", "crd/stats.py",
          "np.nan, paired_differences(a_cells, b_cells))", "np.nan, a_cells - b_cells)"),
    Fault("tie-tolerance-none", "ties by exact equality", "crd/stats.py",
          "TIE_RTOL = 1e-9\nTIE_ATOL = 1e-12", "TIE_RTOL = 0.0\nTIE_ATOL = 0.0"),
    Fault("tie-tolerance-loose", "a tolerance that swallows a one-voxel difference", "crd/stats.py",
          "TIE_RTOL = 1e-9", "TIE_RTOL = 1e-6"),
    Fault("holm-running-max", "Holm without its running maximum", "crd/stats.py",
          "np.minimum(np.maximum.accumulate(scaled), 1.0)", "np.minimum(scaled, 1.0)"),
    Fault("bonferroni-for-holm", "Bonferroni in place of Holm", "crd/stats.py",
          "scaled = (m - np.arange(m)) * p[order]", "scaled = m * p[order]"),
    Fault("one-sided-p", "the one-sided p-value reported as two-sided", "crd/stats.py",
          "return min(1.0, 2.0 * tail / (r.size + 1))", "return min(1.0, tail / (r.size + 1))"),
    Fault("dsc30-interpolation", "DSC30 with the 'lower' quantile instead of Learn2Reg's linear one",
          "crd/stats.py", "return float(np.quantile(finite, 0.3)) if finite.size else math.nan",
          "return float(np.quantile(finite, 0.3, method='lower')) if finite.size else math.nan"),
    Fault("dsc30-tail-mean", "DSC30 as the mean of the lowest 30 %", "crd/stats.py",
          "return float(np.quantile(finite, 0.3)) if finite.size else math.nan",
          "return lowest_fraction_mean(finite) if finite.size else math.nan"),
    Fault("direction-mean-sign", "a verdict's direction from the sign of the mean", "crd/stats.py",
          "    direction = comparison.direction\n", "    direction = int(np.sign(comparison.mean_diff))\n"),
    Fault("direction-wins", "a verdict's direction from wins against losses", "crd/stats.py",
          "    direction = comparison.direction\n",
          "    direction = int(np.sign(comparison.wins - comparison.losses))\n"),
    Fault("unit-pairs", "pairs resampled where subjects are shared", "crd/stats.py",
          "    if len(set(names)) == len(names):\n", "    if True:\n"),
    Fault("unit-seeds", "seeds not resampled in the claim about the methods", "crd/stats.py",
          "_comparison(a_cells[:, keep], b_cells[:, keep], units, resample_seeds=True,",
          "_comparison(a_cells[:, keep], b_cells[:, keep], units, resample_seeds=False,"),
    Fault("headline-models", "the headline verdict from these models although seeds were trained",
          "crd/report/summary.py", "        if self.method_result is not None:\n            return self.method_result",
          "        if False:\n            return self.method_result"),
)


def _copy(dest: Path) -> None:
    shutil.copytree(REPO / "crd", dest / "crd", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "tests", dest / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "pyproject.toml", dest / "pyproject.toml")


def _run_tests(root: Path) -> tuple[int, str]:
    """pytest's exit status in ``root`` (stop at the first failure) and its last line."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *TESTS],
        cwd=root, capture_output=True, text=True, check=False,
    )  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    return proc.returncode, lines[-1] if lines else proc.stderr.strip()[-200:]


def _apply(root: Path, fault: Fault) -> None:
    path = root / fault.file
    text = path.read_text(encoding="utf-8")
    count = text.count(fault.old)
    if count != 1:
        raise SystemExit(f"{fault.name}: the text to replace occurs {count} times in {fault.file} (expected once); "
                         "update FAULTS in benchmarks/stats_mutations.py")  # fmt: skip
    path.write_text(text.replace(fault.old, fault.new), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="print the faults and exit")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="check only these faults")
    args = parser.parse_args(argv)
    if args.list:
        for f in FAULTS:
            print(f"{f.name:26s} {f.what} ({f.file})")
        return 0
    names = {f.name for f in FAULTS}
    unknown = sorted(set(args.only or ()) - names)
    if unknown:
        print(f"unknown fault(s): {', '.join(unknown)}; see --list", file=sys.stderr)
        return 2
    faults = [f for f in FAULTS if not args.only or f.name in args.only]
    with tempfile.TemporaryDirectory(prefix="crd-mutations-") as tmp:
        base = Path(tmp) / "base"
        _copy(base)
        start = time.perf_counter()
        status, last = _run_tests(base)
        took = time.perf_counter() - start
        print(f"{'(no fault)':26s} tests {'pass' if status == 0 else 'FAIL'}: {last} [{took:.0f} s]")
        if status != 0:
            print("the unmodified copy must pass its tests first", file=sys.stderr)
            return 2
        survived = []
        for fault in faults:
            root = Path(tmp) / fault.name
            _copy(root)
            _apply(root, fault)
            start = time.perf_counter()
            status, last = _run_tests(root)
            verdict = "caught" if status == 1 else ("SURVIVED" if status == 0 else f"ERROR (pytest exit {status})")
            print(f"{fault.name:26s} {verdict}: {fault.what}; {last} [{time.perf_counter() - start:.0f} s]")
            if status != 1:
                survived.append(fault.name)
            shutil.rmtree(root)
    print(f"{len(faults) - len(survived)} of {len(faults)} faults caught" + (
        f"; not caught: {', '.join(survived)}" if survived else ""))  # fmt: skip
    return 1 if survived else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""benchmarks/sampler_overhead.py runs on the CPU and reports one row per case and size."""

from __future__ import annotations

import csv
import math
import runpy

import numpy as np

from repo_paths import REPO

SCRIPT = runpy.run_path(str(REPO / "benchmarks" / "sampler_overhead.py"))


def test_sampler_overhead_smoke(tmp_path, capsys):
    out = tmp_path / "sampler.csv"
    argv = ["--device", "cpu", "--threads", "1", "--sizes", "8x16x16", "16x16x16", "--repeats", "2", "--calls", "2",
            "--warmup", "1", "--resamples", "50", "--out", str(out)]  # fmt: skip
    assert SCRIPT["main"](argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("sampler overhead on cpu (1 torch threads; sampler reads rss every 1 ms; 2 block pairs")
    assert lines[1].split() == ["case", "size", "calls", "off_ms", "on_ms", "on/off", "95%", "interval", "reads/s"]
    cases = [(case, size) for size in ("8x16x16", "16x16x16") for case in ("hr", "warp", "conv")]
    assert [tuple(line.split()[:2]) for line in lines[2:8]] == cases
    assert "CPUs; load average (1 min)" in lines[8] and lines[9] == f"wrote {out}"

    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == SCRIPT["COLUMNS"]
    assert [(r["case"], r["size"]) for r in rows] == cases
    for r in rows:
        assert r["device"] == "cpu" and r["threads"] == "1" and r["reader"] == "rss" and r["calls_per_block"] == "2"
        off, on, ratio = float(r["median_off_s"]), float(r["median_on_s"]), float(r["ratio_on_off"])
        assert off > 0 and on > 0 and math.isclose(ratio, on / off, rel_tol=1e-3)
        assert float(r["ratio_low"]) <= float(r["ratio_high"]) and float(r["reads_per_s"]) > 0
    assert not [p for p in tmp_path.iterdir() if p != out]  # no temporary file left


def test_ratio_interval_resamples_block_pairs():
    ratio_interval = SCRIPT["ratio_interval"]
    off = np.full((4, 3), 2.0)
    on = np.full((4, 3), 3.0)
    assert ratio_interval(off, on, resamples=100) == (1.5, 1.5, 1.5)
    on[0] = 30.0  # one slow block: the median over calls barely moves, the interval widens
    ratio, low, high = ratio_interval(off, on, resamples=500)
    assert ratio == 1.5 and low == 1.5 and high == 15.0
    assert math.isnan(ratio_interval(off[:1], on[:1])[1])  # one pair: no interval

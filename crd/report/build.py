"""Build the single-file HTML report from the tidy evaluation tables and training histories.

The report only *reads*: the tidy tables written by evaluation (one CSV per dataset, method and
seed, :data:`crd.tidy.TABLE_COLUMNS`), their JSON sidecars and the example images they name, the
training histories (:data:`crd.tidy.HISTORY_COLUMNS`) and the bench table. Aggregation and
statistics are :mod:`crd.report.summary` (which uses :mod:`crd.stats`), figures
:mod:`crd.report.plots`; nothing is re-measured. A value the tables do not hold is shown as "—".

Output: one self-contained HTML file (inline CSS, plots embedded as base64 PNG, no external URLs),
written atomically (temporary file in the target folder, then ``os.replace``).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from crd import stats
from crd.atomic import check_outputs, write_text_atomic
from crd.bench import COLUMNS
from crd.convergence import NO_GAIN, PLATEAU_FRACTION, Convergence, convergence_table
from crd.report import plots
from crd.report.format import DASH, fmt_mean_sd, fmt_num, fmt_p, fmt_params, fmt_ratio, fmt_signed
from crd.report.summary import (
    COMPARED_METRICS,
    FLOOR,
    CeilingRow,
    ComparisonRow,
    MethodResult,
    Stat,
    ceilings,
    compare,
    comparison_plan,
    summarise,
)
from crd.stats import CONFIDENCE, N_BOOT, TIE_ATOL, TIE_RTOL, GapFraction, PairedComparison
from crd.tidy import Table, load_history, load_table, sidecar_path

__all__ = ["build_report", "METRIC_DEFINITIONS"]

log = logging.getLogger(__name__)

#: Dice is always shown with this many decimals (the comparison sentences use the same rounding).
DICE_DECIMALS = 3

METRIC_DEFINITIONS = (
    (
        "Dice",
        "per label of the dataset spec (background excluded); a pair's score is the mean over "
        "the labels present in both the fixed and the moving label map.",
    ),
    (
        "DSC30",
        "robustness: the 30th percentile of the per-pair Dice, as Learn2Reg's evaluation script "
        "computes it (np.quantile(per-pair means, 0.3)); per seed, then averaged over seeds.",
    ),
    (
        "HD95",
        "symmetric 95th-percentile Hausdorff distance between label surfaces in millimetres "
        "(voxel spacing from the image header), as defined by DeepMind's surface-distance "
        "package (compute_robust_hausdorff(..., 95)); the pair's value is the mean over labels.",
    ),
    (
        "Fold %",
        "percentage of voxels with det(I + ∇u) ≤ 0, the Jacobian taken by central differences; "
        "the mean count of such voxels is shown beneath it.",
    ),
    (
        "SDlogJ",
        "standard deviation of log det(J) over the voxels with det(J) > 0 (no +3 offset); the "
        "percentage of voxels excluded because det(J) ≤ 0 is shown beneath it.",
    ),
    (
        "Time",
        "inference wall time per pair in seconds: predicting the field plus warping the moving "
        "image (CUDA runs synchronised).",
    ),
    (
        "Peak memory",
        "on CPU, the working set of one inference (MB): its RSS rise measured in a fresh process where "
        "glibc gives every block of 64 KiB or more pages of its own (so no memory freed by earlier calls "
        "hides it); weights, inputs and what exists before the call are not counted. Not shown where it "
        "cannot be measured so (the notes say why). On CUDA, the PyTorch allocator peak and NVML's "
        "per-process figure, which includes the CUDA context (MB).",
    ),
    ("Params", "number of trainable parameters of the method's model."),
    (
        "Edge cases",
        "totals over test pairs (per seed, averaged over seeds) of labels_missing (spec labels "
        "absent from the fixed or moving label map, hence not in that pair's mean) and "
        "labels_vanished (labels that disappear after warping; they stay in the average).",
    ),
    (
        "mean ± sd, seeds",
        "a method's value on a pair is the mean over its training seeds; mean ± sd are over test "
        "pairs (sd with ddof = 1). 'seeds' under Dice: mean ± sd over seeds of the per-seed mean "
        "Dice. 'n = k of N' marks cells where only k of the N pairs had a finite value.",
    ),
    (
        "Convergence",
        "from each training history (validation pairs only): 'last quarter' is the mean validation Dice "
        "over the checkpoints of the last quarter of the run's steps, the quarter before it likewise; "
        "gain = last quarter − the value before any step; its last-quarter share = (last quarter − the "
        f"quarter before) / gain. At its plateau: a share of at most {100 * PLATEAU_FRACTION:.0f} %; still "
        f"improving above it; no gain when the gain is at most {NO_GAIN} Dice. A comparison with a method "
        "that was still improving says so in its verdict.",
    ),
    (
        "x2 ceiling",
        "an oracle, not a method (x2-oracle@fst, x2-oracle@hr): the trained teacher's field, same seed, "
        "restricted to what an x2 student can output (least-squares projection onto the fields that the "
        "student's trilinear x2 upsampling of a coarse field gives) and scored like every method. It uses "
        "the teacher at test time: no time or memory of its own, never ranked or compared as a method. "
        "Recovered = (student − lr) / (ceiling − lr) in mean Dice, with its 95 % percentile interval from "
        "the same bootstrap as the comparisons (numerator and denominator redrawn together); defined only "
        "when the ceiling is significantly above lr.",
    ),
    (
        "Comparisons",
        "one estimand per comparison: Δ = the mean of A − B over the common test pairs (values equal within "
        f"float noise, |A − B| ≤ {TIE_ATOL:g} + {TIE_RTOL:g}·|B|, differ by 0). Its {100 * CONFIDENCE:g} % interval "
        f"and two-sided p-value come from one bootstrap ({N_BOOT:,} seeded resamples; interval: order statistics "
        f"of the replicates; p = 2·min(1 + #replicates ≤ 0, 1 + #replicates ≥ 0) / {N_BOOT + 1:,}), so "
        f"p ≤ {1 - CONFIDENCE:.2f} exactly when the interval excludes 0, "
        "and a verdict's direction is the side of 0 its interval lies on. The bootstrap redraws what is "
        "independent, chosen from the dataset's pairing: subjects when pairs share images (a pair counts as "
        "often as both its subjects are drawn), moving images when one atlas is fixed, pairs when no image is "
        "in two pairs. These models: seed-averaged values, only the test subjects redrawn: a statement about "
        "the trained models at hand. The method: with 2 or more seeds, seeds and subjects redrawn together "
        "(seed s of A against seed s of B): a statement about the training method, the headline verdict. "
        "p (Holm) = Holm's step-down correction over every row of the dataset, per level; significant when "
        "p (Holm) ≤ 0.05. W/T/L = pairs where A is higher / tied / lower (seed-averaged values).",
    ),
)


# ------------------------------------------------------------------------------------------ table


def _coverage(s: Stat | None, n_pairs: int) -> str | None:
    if s is None:
        return None
    expected = max(n_pairs, s.total)
    return f"n = {s.n} of {expected}" if s.n < expected else None


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not math.isfinite(a) or not math.isfinite(b) or b == 0:
        return None
    return a / b


def _cell(r: MethodResult, base: MethodResult | None, metric: str, places: int | None = None,
          same_device: bool = False) -> dict[str, Any]:  # fmt: skip
    s = r.stat(metric)
    cell = {"text": fmt_mean_sd(s.mean, s.sd, s.n, places) if s else DASH, "note": _coverage(s, len(r.pair))}
    if base is not None and (not same_device or base.device == r.device):
        b = base.stat(metric)
        cell["ratio"] = fmt_ratio(_ratio(s.mean if s else None, b.mean if b else None))
    return cell


def _rows(results: list[MethodResult], base: MethodResult | None) -> list[dict[str, Any]]:
    means = [round(r.stat("dice").mean, DICE_DECIMALS) for r in results
             if r.stat("dice") and r.stat("dice").n and not r.oracle_of]  # fmt: skip
    best = max(means) if means else None
    several_seeds = any(len(r.seeds) > 1 for r in results)
    rows = []
    for r in results:
        dice = _cell(r, base, "dice", DICE_DECIMALS)
        d = r.stat("dice")
        dice["bold"] = (best is not None and d is not None and d.n > 0 and not r.oracle_of
                        and round(d.mean, DICE_DECIMALS) == best)  # fmt: skip
        mean, sd, n = r.seed_spread()
        dice["sub"] = f"seeds: {fmt_mean_sd(mean, sd, n, DICE_DECIMALS)} ({n})" if n > 1 else "1 seed"
        if r.stands_for_every_seed and several_seeds:
            dice["sub"] = "no training: one evaluation for every seed"
        dsc30 = {"text": fmt_num(r.dsc30, DICE_DECIMALS)}
        if base is not None:
            dsc30["ratio"] = fmt_ratio(_ratio(r.dsc30, base.dsc30))
        fold = _cell(r, base, "fold_pct")
        if r.stat("fold_count") and r.stat("fold_count").n:
            fold["sub"] = f"count {fmt_num(r.stat('fold_count').mean)}"
        sd_cell = _cell(r, base, "sdlogj")
        if r.stat("logj_excluded_pct") and r.stat("logj_excluded_pct").n:
            sd_cell["sub"] = f"excl. {fmt_num(r.stat('logj_excluded_pct').mean)}%"
        if r.is_cuda:
            alloc, nvml = r.stat("cuda_alloc_peak_mb"), r.stat("nvml_peak_mb")
            mem = {
                "text": f"alloc {fmt_mean_sd(alloc.mean, alloc.sd, alloc.n)}" if alloc else DASH,
                "sub": f"NVML {fmt_mean_sd(nvml.mean, nvml.sd, nvml.n)}" if nvml else None,
                "note": _coverage(alloc, len(r.pair)),
            }
        else:
            mem = _cell(r, None, "peak_rss_mb")
        if base is not None:
            same = r.mem_metric and r.mem_metric == base.mem_metric
            mem["ratio"] = (
                fmt_ratio(_ratio(r.stat(r.mem_metric).mean, base.stat(base.mem_metric).mean)) if same else DASH
            )
        params = {"text": fmt_params(r.params)}
        if base is not None:
            params["ratio"] = fmt_ratio(_ratio(r.params, base.params))
        edge = " / ".join(DASH if v is None else fmt_num(v, 0 if v == int(v) else 1)
                          for v in (r.missing_total, r.vanished_total))  # fmt: skip
        rows.append(
            {
                "method": r.method,
                "oracle": f"oracle, not a method: {r.oracle_of}'s field on the x2 grid" if r.oracle_of else None,
                "device": r.device,
                "n_pairs": len(r.pair),
                "is_baseline": base is not None and r is base,
                "cells": [
                    dice,
                    dsc30,
                    _cell(r, base, "hd95_mm"),
                    fold,
                    sd_cell,
                    _cell(r, base, "time_s", same_device=True),
                    mem,
                    params,
                ],  # fmt: skip
                "edge": edge,
                "edge_flag": bool(r.missing_total) or bool(r.vanished_total),
            }
        )
    return rows


COLUMNS_SHOWN = ["Dice", "DSC30", "HD95 (mm)", "Fold %", "SDlogJ", "Time (s)", "Peak memory (MB)", "Params"]


# ------------------------------------------------------------------------------------ comparisons


def _ci(r: PairedComparison, places: int) -> str:
    """``"[−0.012, +0.004]"``; ``"—"`` when undefined."""
    if not (math.isfinite(r.ci_low) and math.isfinite(r.ci_high)):
        return DASH
    return f"[{fmt_signed(r.ci_low, places)}, {fmt_signed(r.ci_high, places)}]"


def _per_seed(c: ComparisonRow) -> str:
    """``"+0.024, −0.001, −0.001"`` (in the order of the seeds); ``"—"`` below 2 seeds."""
    if len(c.per_seed) < 2:
        return DASH
    return ", ".join(fmt_signed(d, c.places) for _, d in c.per_seed)


def _caveat(a: str, b: str, unsettled: dict[str, str]) -> str:
    """``"hr was still improving when its training ended (seed 0 of 1)"``-style clauses for the
    methods of a comparison that were not at their plateau (``unsettled``: method -> what to say),
    or ``""``."""
    return "; ".join(f"{m} {unsettled[m]}" for m in dict.fromkeys((a, b)) if m in unsettled)


def _short_caveat(a: str, b: str, unsettled: dict[str, str]) -> str:
    """The table's form of :func:`_caveat`: ``" (not at the plateau: hr)"`` or ``""``."""
    said = [m for m in dict.fromkeys((a, b)) if m in unsettled]
    return f" (not at the plateau: {', '.join(said)})" if said else ""


def _comparison_row(c: ComparisonRow, unsettled: dict[str, str]) -> dict[str, Any]:
    r, m = c.result, c.method_result
    caveat = _short_caveat(c.a, c.b, unsettled)
    return {
        "a": c.a,
        "b": c.b,
        "metric": c.name,
        "mean_a": fmt_num(r.mean_a, c.places),
        "mean_b": fmt_num(r.mean_b, c.places),
        "diff": fmt_signed(r.mean_diff, c.places),
        "ci": _ci(r, c.places),
        "p": fmt_p(r.p_value),
        "p_holm": fmt_p(c.p_holm),
        "verdict": c.verdict + caveat,
        "method_diff": fmt_signed(m.mean_diff, c.places) if m else DASH,
        "method_ci": _ci(m, c.places) if m else DASH,
        "method_p_holm": fmt_p(c.method_p_holm) if m else DASH,
        "method_verdict": (str(c.method_verdict) + caveat) if m else "one seed: cannot tell",
        "wtl": f"{r.wins}/{r.ties}/{r.losses}",
        "n": r.n,
        "per_seed": _per_seed(c),
        "better": c.better,
        "by_method": m is not None,
        "named": c.named,
    }


def _percent(x: float) -> str:
    """``"+42 %"`` / ``"−7 %"`` of a fraction; ``"—"`` when undefined."""
    return DASH if not math.isfinite(x) else ("+" if x >= 0 else "−") + f"{abs(100 * x):.0f} %"


def _fraction_text(g: GapFraction | None) -> str:
    """``"+42 % [−10 %, +90 %]"``, or why there is no fraction."""
    if g is None:
        return DASH
    if not g.defined:
        return "— (ceiling not above lr)"
    return f"{_percent(g.fraction)} [{_percent(g.ci_low)}, {_percent(g.ci_high)}]"


def _ceiling_row(c: CeilingRow) -> dict[str, Any]:
    gap = c.headline  # the gap as the headline claim measures it (as methods when seeds allow)
    return {
        "student": c.student,
        "oracle": c.oracle,
        "teacher": c.teacher,
        "student_dice": fmt_num(c.student_dice, DICE_DECIMALS),
        "floor_dice": fmt_num(c.floor_dice, DICE_DECIMALS),
        "ceiling_dice": fmt_num(c.ceiling_dice, DICE_DECIMALS),
        "gap": (f"{fmt_signed(gap.gap, DICE_DECIMALS)} [{fmt_signed(gap.gap_ci_low, DICE_DECIMALS)}, "
                f"{fmt_signed(gap.gap_ci_high, DICE_DECIMALS)}]") if gap else DASH,  # fmt: skip
        "methods": _fraction_text(c.methods) if c.methods is not None else "one seed: cannot tell",
        "models": _fraction_text(c.models),
    }


def _recovered_sentence(c: CeilingRow) -> str:
    """``"Of the lr → x2-oracle@fst gap (0.445 → 0.517), crd recovers −20 % [−60 %, +15 %] as methods ..."``."""
    text = (f"Of the {FLOOR} → {c.oracle} gap in Dice ({fmt_num(c.floor_dice, DICE_DECIMALS)} → "
            f"{fmt_num(c.ceiling_dice, DICE_DECIMALS)}; {c.oracle} is {c.teacher}'s field restricted to the x2 grid, "
            f"an oracle), {c.student} recovers ")  # fmt: skip
    if c.methods is not None:
        text += f"{_fraction_text(c.methods)} as methods, {_fraction_text(c.models)} as these trained models."
    else:
        text += f"{_fraction_text(c.models)} (these trained models; one seed)."
    return text


def _resampled(rows: list[ComparisonRow]) -> str:
    """What the dataset's bootstrap redraws, e.g. ``"6 subjects (each in 10 of 30 pairs); 3 seeds"``."""
    if not rows:
        return ""
    units = dict.fromkeys(c.result.units_description for c in rows)
    seeds = sorted({c.method_result.n_seeds for c in rows if c.method_result is not None})
    text = "; ".join(units)
    if seeds:
        text += " and " + " or ".join(str(n) for n in seeds) + " seeds (as methods)"
    return text


def _p_clause(p: float) -> str:
    """``"= 0.027"`` or ``"< 0.0001"``."""
    text = fmt_p(p)
    return text if text.startswith("<") else f"= {text}"


def _claim(r: PairedComparison, p_holm: float, verdict: str, places: int) -> str:
    """``"95 % CI −0.030 to +0.010: no significant difference (Holm-adjusted p = 0.61)"``."""
    ci = (f"95 % CI {fmt_signed(r.ci_low, places)} to {fmt_signed(r.ci_high, places)}"
          if math.isfinite(r.ci_low) and math.isfinite(r.ci_high) else "no interval")  # fmt: skip
    return f"{ci}: {verdict} (Holm-adjusted p {_p_clause(p_holm)})"


def _sentence(rows: list[ComparisonRow], a: MethodResult, b: MethodResult, unsettled: dict[str, str],
              ceiling_rows: list[CeilingRow] | None = None) -> str:  # fmt: skip
    """One plain sentence on ``a`` vs ``b``: each compared metric with its estimand, interval and
    test (about the methods when there are seeds to tell, and about these trained models), what
    ``a`` recovers of the gap to each x2 ceiling (``ceiling_rows``, when ``b`` is lr), then the
    cost ratios on the same device, then whether either was still improving when its training
    ended (``unsettled``, :func:`_unsettled`)."""
    parts = []
    for c in rows:
        r, m = c.result, c.method_result
        text = f"{c.name} {fmt_num(r.mean_a, c.places)} vs {fmt_num(r.mean_b, c.places)}"
        text += f", Δ {fmt_signed(r.mean_diff, c.places)}"
        if m is not None:
            seeds = ", ".join(f"{fmt_signed(d, c.places)}" for _, d in c.per_seed)
            text += (f"; as methods ({m.n_seeds} seeds, per seed {seeds}): "
                     f"{_claim(m, c.method_p_holm, str(c.method_verdict), c.places)}; as these trained models "
                     f"(seed-averaged): {_claim(r, c.p_holm, c.verdict, c.places)}")  # fmt: skip
        else:
            text += (f"; these trained models (one seed: nothing said about the methods): "
                     f"{_claim(r, c.p_holm, c.verdict, c.places)}")  # fmt: skip
        text += f"; {a.method} higher on {r.wins}, tied on {r.ties}, lower on {r.losses} of {r.n} pairs"
        parts.append(text)
    text = f"{a.method} vs {b.method}: " + "; ".join(parts) + "."
    for c in ceiling_rows or []:
        text += " " + _recovered_sentence(c)
    extras = []
    if a.device == b.device:
        ta, tb = a.stat("time_s"), b.stat("time_s")
        ratio = _ratio(ta.mean if ta else None, tb.mean if tb else None)
        if ratio is not None:
            extras.append(f"time {fmt_num(ta.mean)} s vs {fmt_num(tb.mean)} s ({fmt_ratio(ratio)})")
    if a.mem_metric and a.mem_metric == b.mem_metric:
        ma, mb = a.stat(a.mem_metric), b.stat(b.mem_metric)
        ratio = _ratio(ma.mean, mb.mean)
        if ratio is not None:
            extras.append(f"peak memory {fmt_num(ma.mean)} MB vs {fmt_num(mb.mean)} MB ({fmt_ratio(ratio)})")
    if extras:
        joined = "; ".join(extras)
        text += " " + joined[0].upper() + joined[1:] + "."
    caveat = _caveat(a.method, b.method, unsettled)
    if caveat:
        text += f" Not a comparison at the plateau: {caveat}."
    return text


# ------------------------------------------------------------------------------------ training


def _unsettled(runs: list[Convergence]) -> dict[str, str]:
    """Methods with a run that was not at its plateau when its training ended: method -> the
    clause the verdicts carry, e.g. ``"was still improving when its training ended (seed 0)"``."""
    out = {}
    for method in dict.fromkeys(r.method for r in runs):
        mine = [r for r in runs if r.method == method]
        improving = [str(r.seed) for r in mine if r.improving]
        short = [str(r.seed) for r in mine if r.status == "too short"]
        parts = []
        if improving:
            parts.append(f"was still improving when its training ended (seed{'s' if len(improving) > 1 else ''} "
                         f"{', '.join(improving)} of {len(mine)})")  # fmt: skip
        if short:
            parts.append(f"trained too briefly to tell whether it converged (seed{'s' if len(short) > 1 else ''} "
                         f"{', '.join(short)})")  # fmt: skip
        if parts:
            out[method] = " and ".join(parts)
    return out


def _training_rows(runs: list[Convergence]) -> list[dict[str, Any]]:
    """One row per training run (method, seed) for the report's training table."""
    rows = []
    for r in runs:
        if r.max_iterations is None:
            ended = "—"
        elif r.stopped_early:
            ended = f"stopping rule at {r.iterations:,} of {r.max_iterations:,}"
        else:
            ended = f"maximum ({r.max_iterations:,})"
        rows.append(
            {
                "method": r.method,
                "seed": r.seed,
                "ended": ended,
                "selected": DASH if r.selected_iteration is None else f"{r.selected_iteration:,}",
                "start": fmt_num(r.start, DICE_DECIMALS),
                "late": fmt_num(r.late, DICE_DECIMALS),
                "best": f"{fmt_num(r.best, DICE_DECIMALS)} @ {r.best_iteration:,}",
                "gain": fmt_signed(r.gain, DICE_DECIMALS),
                "late_gain": fmt_signed(r.late_gain, DICE_DECIMALS),
                "fraction": DASH if not math.isfinite(r.late_fraction) else f"{100 * r.late_fraction:.0f} %",
                "status": r.status,
                "flag": r.status in ("still improving", "too short"),
            }
        )
    return rows


# ---------------------------------------------------------------------------------------- report


def _environment(t: Table, r: MethodResult) -> dict[str, str]:
    sc = t.sidecar

    def g(key: str) -> str:
        v = sc.get(key)
        return DASH if v is None or v == "" else str(v)

    return {
        "dataset": t.dataset,
        "method": t.method,
        "seed": str(t.seed),
        "device": r.device,
        "device_name": g("device_name"),
        "torch": g("torch") + (f" (CUDA {sc['cuda']})" if sc.get("cuda") else ""),
        "threads": g("threads"),
        "n_pairs": g("n_pairs"),
        "checkpoint": g("checkpoint"),
        "table": str(t.path),
    }


def _template() -> jinja2.Template:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    text = resources.files("crd.report").joinpath("report.html.j2").read_text(encoding="utf-8")
    return env.from_string(text)


BENCH_COLUMNS = COLUMNS  # the bench table crd.bench writes


def _scheme_ratios(rows: list[dict[str, Any]], group: pd.DataFrame, mem: str) -> None:
    """For the CRD scheme's methods over a network (``lr@X``, ``fst@X``, ``crd@X``; crd.methods):
    their median time and memory peak as ratios to ``X``'s in the same bench run (``own_time_ratio``,
    ``own_mem_ratio``; a dash for every other method, or when ``X`` was not benched)."""
    medians = group.pivot_table(index="method", columns="metric", values="value", aggfunc="first")
    for row in rows:
        scheme, at, network = row["method"].partition("@")
        row["own_network"] = network if at and scheme in ("lr", "fst", "crd") else None
        row["own_time_ratio"] = row["own_mem_ratio"] = DASH
        if row["own_network"] is None or network not in medians.index or row["method"] not in medians.index:
            continue
        for key, metric in (("own_time_ratio", "latency_median_s"), ("own_mem_ratio", mem)):
            if metric in medians.columns:
                a, b = medians.loc[row["method"], metric], medians.loc[network, metric]
                row[key] = fmt_ratio(float(a) / float(b)) if b and not (math.isnan(a) or math.isnan(b)) else DASH


def _bench_section(path: str | os.PathLike) -> dict[str, Any]:
    """The efficiency section from a ``crd bench`` table: per (size, options), each method's median
    latency, memory peak (CUDA allocator peak on CUDA, else CPU RSS above baseline) and parameter
    count, with the ratios to hr that the table holds (measured in the same run)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: bench table not found")
    try:
        t = pd.read_csv(path)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable CSV: {exc}") from None
    missing = [c for c in BENCH_COLUMNS if c not in t.columns]
    if missing:
        raise ValueError(f"{path}: bench table lacks columns {missing}")
    sidecar = sidecar_path(path)
    meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    groups = []
    for (size, options, device), g in t.groupby(["size", "options", "device"], sort=False):
        mem = "cuda_alloc_peak_mb" if (g.metric == "cuda_alloc_peak_mb").any() else "peak_rss_mb"
        rows = []
        for method, m in g.groupby("method", sort=False):
            v = m.set_index("metric")

            def get(metric: str, col: str, v=v) -> float | None:
                if metric not in v.index:
                    return None
                x = float(v.loc[metric, col])
                return None if math.isnan(x) else x

            status = None  # a case that ran out of memory or failed has no figures, only this
            if "out_of_memory" in v.index:
                status = "out of memory"
            elif "failed" in v.index:
                status = "failed (see the bench log)"
            rows.append(
                {
                    "method": method,
                    "status": status,
                    "time": fmt_num(get("latency_median_s", "value")),
                    "spread": fmt_num(get("latency_iqr_s", "value")),
                    "time_ratio": fmt_ratio(get("latency_median_s", "ratio_to_hr")),
                    "mem": fmt_num(get(mem, "value"), 0),
                    "mem_ratio": fmt_ratio(get(mem, "ratio_to_hr")),
                    "nvml": fmt_num(get("nvml_peak_mb", "value"), 0),
                    "params": fmt_params(get("params", "value")),
                }
            )
        _scheme_ratios(rows, g, mem)
        groups.append(
            {
                "size": size,
                "options": options,
                "device": device,
                "scheme": any(r["own_time_ratio"] != DASH for r in rows),
                "mem_label": (
                    "CUDA allocator peak (MB)" if mem == "cuda_alloc_peak_mb" else "CPU RSS above baseline (MB)"
                ),
                "nvml": mem == "cuda_alloc_peak_mb",
                "rows": rows,
            }
        )
    dev = meta.get("device", {})
    return {
        "groups": groups,
        "device_name": dev.get("device_name", DASH),
        "threads": dev.get("threads", DASH),
        "repeats": meta.get("repeats", DASH),
        "warmup": meta.get("warmup", DASH),
        "table": str(path),
    }


def _load_tables(tables: list[Path]) -> dict[str, dict[str, list[Table]]]:
    """Tables grouped by dataset, then method (in order of first appearance); a (dataset, method,
    seed) given twice is an error naming both files."""
    if not tables:
        raise ValueError("build_report: no tables given")
    seen: dict[tuple[str, str, int], Path] = {}
    grouped: dict[str, dict[str, list[Table]]] = {}
    for t in (load_table(p) for p in tables):
        key = (t.dataset, t.method, t.seed)
        if key in seen:
            raise ValueError(
                f"{t.path}: dataset {t.dataset!r} method {t.method!r} seed {t.seed} is also in {seen[key]}"
            )
        seen[key] = t.path
        grouped.setdefault(t.dataset, {}).setdefault(t.method, []).append(t)
    return grouped


def _protocol(results: list[MethodResult]) -> dict[str, Any] | None:
    """The pair protocol the evaluation sidecars record for this dataset (the first one found)."""
    return next((t.sidecar["protocol"] for r in results for t in r.tables if t.sidecar.get("protocol")), None)


def _unvalidated_note(history: pd.DataFrame | None) -> list[str]:
    """A note naming the trained methods whose histories hold no validation Dice (e.g. under a
    protocol with no validation pairs): their plateau cannot be judged."""
    if history is None or history.empty:
        return []
    validated = set(history.loc[history["metric"] == "val_dice", "method"])
    blind = [m for m in dict.fromkeys(history["method"]) if m not in validated]
    if not blind:
        return []
    its = "its" if len(blind) == 1 else "their"
    return [f"{', '.join(blind)}: trained with no validation pairs (the dataset's protocol has none), so whether "
            f"{its} training had reached a plateau is not measured; comparisons may be at any point of it."]


def _dataset_notes(name: str, results: list[MethodResult], base: MethodResult | None) -> list[str]:
    notes = [f"{r.method}: {n}" for r in results for n in r.notes]
    notes += [f"{r.method}: {r.memory_note}." for r in results if r.memory_note]
    oracles = [r for r in results if r.oracle_of]
    if oracles:
        notes.append(", ".join(f"{r.method} ({r.oracle_of})" for r in oracles) + ": oracles, not methods: each "
                     "is a trained network's field restricted to the x2 grid, a ceiling for the x2 students. They "
                     "use that network at test time, so they have no time or memory of their own and are not "
                     "compared or ranked as methods.")  # fmt: skip
    once = [r for r in results if r.stands_for_every_seed]
    if once and any(len(r.seeds) > 1 for r in results):
        its = "its" if len(once) == 1 else "their"
        notes.append(", ".join(f"{r.method} (seed {r.seeds[0]})" for r in once) + f": no training, so {its} result "
                     "is the same under every seed: evaluated once, and that evaluation is set beside every seed "
                     "of the method it is compared with (as methods, only the other's seeds and the subjects "
                     "vary).")  # fmt: skip
    if all(len(r.seeds) == 1 for r in results):
        notes.append(
            "one training seed: the verdicts below are about these trained models (only the test subjects "
            "vary); whether the training methods differ cannot be told from one training run each. Train several "
            "seeds (seeds: [0, 1, 2]) for verdicts about the methods."
        )
    sidecars = [t.sidecar for r in results for t in r.tables]
    elsewhere = sorted({f"{r.method} on {t.sidecar['trained_on']}" for r in results for t in r.tables
                        if t.sidecar.get("trained_on") not in (None, name)})  # fmt: skip
    if elsewhere:
        notes.append("models trained on another dataset (train_on): " + ", ".join(elsewhere) + ".")
    if any(s.get("distance_unit") == "voxel" for s in sidecars):
        notes.append("this dataset's files carry no voxel spacing: HD95 and ASSD are in voxels, not mm.")
    pair_sets = {frozenset(r.pair.index) for r in results if len(r.pair)}
    if len(pair_sets) > 1:
        notes.append("methods were evaluated on different sets of pairs: " + ", ".join(
            f"{r.method} {len(r.pair)}" for r in results))  # fmt: skip
    if base is not None and len({r.device for r in results}) > 1:
        notes.append("methods ran on different devices; time ratios are shown only for methods on the baseline's "
                     f"device ({base.device}).")  # fmt: skip
    return notes


def _section(name: str, by_method: dict[str, list[Table]], baseline: str, colours: dict[str, Any],
             history: pd.DataFrame | None) -> dict[str, Any]:  # fmt: skip
    results = [summarise(ts) for ts in by_method.values()]
    by_name = {r.method: r for r in results}
    base = by_name.get(baseline)
    oracles = tuple(r.method for r in results if r.oracle_of)
    plan = comparison_plan(list(by_name), baseline, oracles)
    rows = compare(by_name, plan)
    ceiling_rows = ceilings(by_name)
    runs = convergence_table(history) if history is not None else []
    unsettled = _unsettled(runs)
    notes = _dataset_notes(name, results, base) + _unvalidated_note(history)
    sentences = [
        _sentence([c for c in rows if (c.a, c.b) == (a, b)], by_name[a], by_name[b], unsettled,
                  [c for c in ceiling_rows if c.student == a and b == FLOOR])
        for a, b in plan
        if any(c.named for c in rows if (c.a, c.b) == (a, b))
    ]
    mem_label = "peak memory (MB): " + ", ".join(
        sorted({"CUDA allocator peak" if r.is_cuda else "CPU working set" for r in results}))  # fmt: skip
    qual_png, qual_caption, qual_notes = plots.qualitative(results)
    seeds = sorted({s for r in results for s in r.seeds})
    return {
        "name": name,
        "anchor": "ds-" + "".join(ch if ch.isalnum() else "-" for ch in name),
        "seeds": seeds,
        "rows": _rows(results, base),
        "baseline": baseline if base is not None else None,
        "sentences": sentences,
        "comparisons": [_comparison_row(c, unsettled) for c in rows],
        "resampled": _resampled(rows),
        "ceilings": [_ceiling_row(c) for c in ceiling_rows],
        "oracles": list(oracles),
        "training": _training_rows(runs),
        "unsettled": unsettled,
        "notes": notes,
        "protocol": _protocol(results),
        "plot_pairs": plots.pair_distribution(results, colours),
        "plot_curves": plots.training_curves(history, colours, list(by_name)) if history is not None else None,
        "plot_time": plots.scatter(results, "time_s", "inference time per pair (s)", colours, "Dice vs inference time"),
        "plot_mem": plots.scatter(results, None, mem_label, colours, "Dice vs peak memory"),
        "plot_labels": plots.label_plot(results, colours),
        "qual_png": qual_png,
        "qual_caption": qual_caption,
        "qual_notes": qual_notes,
        "results": results,
    }


def _summary_across(sections: list[dict[str, Any]]) -> dict[str, Any] | None:
    """With several datasets: mean Dice per dataset and method, and the mean rank (Dice, HD95) of
    the methods present in every dataset."""
    if len(sections) < 2:
        return None
    rows = [{"dataset": s["name"], "method": r.method, "metric": metric, "value": r.stat(metric).mean}
            for s in sections for r in s["results"] for metric, *_ in COMPARED_METRICS
            if r.stat(metric) and not r.oracle_of]  # fmt: skip
    frame = pd.DataFrame(rows)
    common = set.intersection(*(set(frame.loc[frame.dataset == s["name"], "method"]) for s in sections))
    frame = frame[frame["method"].isin(common)]
    if frame.empty:
        return None
    ranks = stats.rank_methods(frame, {metric: higher for metric, _, higher, _ in COMPARED_METRICS})
    dice = frame[frame.metric == "dice"].pivot(index="method", columns="dataset", values="value")
    return {
        "datasets": [s["name"] for s in sections],
        "rows": [
            {
                "method": m,
                "dice": [fmt_num(dice.loc[m, s["name"]], DICE_DECIMALS) for s in sections],
                "rank": f"{ranks.loc[m, 'mean_rank']:.2f}",
            }
            for m in ranks.index
        ],  # fmt: skip
        "left_out": sorted(set().union(*(set(r.method for r in s["results"] if not r.oracle_of)
                                         for s in sections)) - common),  # fmt: skip
    }


def _histories_by_dataset(histories: list[Path]) -> dict[str, pd.DataFrame]:
    frames = [load_history(p) for p in histories]
    if not frames:
        return {}
    allh = pd.concat(frames, ignore_index=True)
    return {str(d): g for d, g in allh.groupby("dataset", sort=False)}


def build_report(
    tables: list[Path],
    out: Path,
    *,
    histories: list[Path] | None = None,
    title: str = "crd-bench report",
    baseline: str = "hr",
    bench: Path | None = None,
) -> Path:
    """Render the HTML report of ``tables`` (tidy evaluation CSVs, any number of seeds) to ``out``.

    Sections follow the datasets in order of first appearance; methods within a dataset follow the
    order of ``tables``. Ratios are to ``baseline``'s mean in the same dataset (time ratios only
    between runs on the same device kind, memory ratios only between the same memory metric).
    ``histories``: training histories (``crd train``), drawn as training curves in the section of
    the dataset they were trained on. ``bench``: a ``crd bench`` table, shown as the efficiency
    section (its ratios are to hr, as measured in the bench run). Raises ``ValueError`` naming the
    file for a missing or malformed table, sidecar or history, and for a (dataset, method, seed)
    given twice; nothing is written then.
    """
    import crd

    inputs = {f"table {i + 1}": t for i, t in enumerate(tables)}
    inputs |= {f"history {i + 1}": h for i, h in enumerate(histories or [])}
    inputs |= {"bench table": bench}
    inputs |= {f"sidecar of table {i + 1}": sidecar_path(Path(t)) for i, t in enumerate(tables)}
    check_outputs(inputs, {"--out": out})
    grouped = _load_tables(tables)
    by_dataset_history = _histories_by_dataset(list(histories or []))
    colours = plots.colours(list(dict.fromkeys(m for ms in grouped.values() for m in ms)))
    sections = [_section(name, by_method, baseline, colours, by_dataset_history.get(name))
                for name, by_method in grouped.items()]  # fmt: skip
    environment = [_environment(t, r) for s in sections for r in s["results"] for t in r.tables]
    html = _template().render(
        title=title,
        baseline=baseline,
        sections=sections,
        summary=_summary_across(sections),
        environment=environment,
        definitions=METRIC_DEFINITIONS,
        generated=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        version=crd.__version__,
        columns=COLUMNS_SHOWN,
        bench=_bench_section(bench) if bench is not None else None,
        oracles=sorted({m for s in sections for m in s["oracles"]}),
    )
    return write_text_atomic(Path(out), html)

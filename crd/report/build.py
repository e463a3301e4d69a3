"""Build the single-file HTML report from the tidy evaluation tables.

The report only *reads*: the tidy long tables written by evaluation (one CSV per (dataset, method),
columns ``dataset, method, fixed, moving, metric, label, value``), their JSON sidecars, and the
example images the sidecars name. No metric is recomputed here; a value the tables do not hold is
shown as "—".

Output: one self-contained HTML file (inline CSS, plots embedded as base64 PNG, no external URLs),
written atomically (temporary file in the target folder, then ``os.replace``).
"""

from __future__ import annotations

import base64
import datetime as _dt
import io
import json
import logging
import math
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd

from crd.atomic import write_text_atomic
from crd.bench import COLUMNS

__all__ = ["build_report", "load_table", "REQUIRED_COLUMNS", "PAIRS_OF_INTEREST"]

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("dataset", "method", "fixed", "moving", "metric", "label", "value")
#: (method, other) pairs for which the report writes a measured comparison sentence.
PAIRS_OF_INTEREST = (("crd", "lr"), ("crd", "hr"))
#: Dice is always shown with this many decimals (the comparison sentences use the same rounding).
DICE_DECIMALS = 3
DASH = "—"
_NAN_SPELLINGS = frozenset({"nan", "-nan", "na", "n/a", "null", "none", "<na>"})

METRIC_DEFINITIONS = (
    (
        "Dice",
        "per label of the dataset spec (background excluded); a pair's score is the mean over "
        "the labels present in both the fixed and the moving label map.",
    ),
    (
        "HD95",
        "symmetric 95th-percentile Hausdorff distance between label surfaces in millimetres "
        "(voxel spacing from the image header), as defined by DeepMind's surface-distance "
        "package (compute_robust_hausdorff(..., 95)); the pair's value is the mean over "
        "labels.",
    ),
    (
        "Fold %",
        "percentage of voxels with det(I + ∇u) ≤ 0, the Jacobian taken by central "
        "differences; the mean count of such voxels is shown beneath it.",
    ),
    (
        "SDlogJ",
        "standard deviation of log det(J) over the voxels with det(J) > 0 (no +3 offset); "
        "the percentage of voxels excluded because det(J) ≤ 0 is shown beneath it.",
    ),
    (
        "Time",
        "inference wall time per pair in seconds: predicting the field plus warping the "
        "moving image (CUDA runs synchronised).",
    ),
    (
        "Peak memory",
        "on CPU, the peak resident set size above the pre-inference baseline during "
        "inference (MB); on CUDA, the PyTorch allocator peak and NVML's per-process "
        "figure, which includes the CUDA context (MB).",
    ),
    ("Params", "number of trainable parameters of the method's model."),
    (
        "Edge cases",
        "totals over test pairs of labels_missing (spec labels absent from the fixed "
        "or moving label map, hence not in that pair's mean) and labels_vanished "
        "(labels that disappear after warping; they stay in the average).",
    ),
    (
        "mean ± std",
        "over test pairs; std is the sample standard deviation (ddof = 1). "
        "'n = k of N' marks cells where only k of the N pairs had a finite value.",
    ),
)


# ----------------------------------------------------------------------------------------- loading


@dataclass
class Table:
    """One evaluation table and its sidecar."""

    path: Path
    frame: pd.DataFrame
    sidecar: dict[str, Any]
    dataset: str
    method: str


def _sidecar_path(path: Path) -> Path:
    return path.with_suffix(".json")


def load_table(path: str | os.PathLike) -> Table:
    """Read and validate one tidy table ``X.csv`` and its sidecar ``X.json``.

    Raises ``ValueError`` naming the file when the table is missing, unreadable, lacks a required
    column, has no rows, holds a non-numeric value, or mixes several (dataset, method); and when the
    sidecar exists but is not a JSON object or names another dataset/method. A missing sidecar is
    tolerated (the report says so).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: table not found")
    try:
        frame = pd.read_csv(
            path,
            dtype={c: str for c in REQUIRED_COLUMNS if c != "value"},
            keep_default_na=False,
            na_values=[""],
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read as CSV ({err})") from err
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {missing}; expected columns {list(REQUIRED_COLUMNS)}, "
            f"got {list(frame.columns)}"
        )
    if frame.empty:
        raise ValueError(f"{path}: table has no rows")
    for col in ("dataset", "method", "metric"):
        if frame[col].isna().any():
            bad = int(frame[col].isna().idxmax()) + 2  # header is line 1
            raise ValueError(f"{path}: empty '{col}' on line {bad}")
    value = pd.to_numeric(frame["value"], errors="coerce")
    spelled_nan = frame["value"].astype(str).str.strip().str.lower().isin(_NAN_SPELLINGS)
    bad_value = value.isna() & frame["value"].notna() & ~spelled_nan
    if bad_value.any():
        i = int(bad_value.idxmax())
        raise ValueError(f"{path}: non-numeric value {frame['value'].iloc[i]!r} on line {i + 2}")
    frame = frame.assign(value=value.astype(float))
    keys = frame[["dataset", "method"]].drop_duplicates()
    if len(keys) != 1:
        raise ValueError(
            f"{path}: expected one (dataset, method) per table, got "
            f"{[tuple(r) for r in keys.itertuples(index=False)]}"
        )
    dataset, method = (str(v) for v in keys.iloc[0])

    sidecar: dict[str, Any] = {}
    side = _sidecar_path(path)
    if side.is_file():
        try:
            sidecar = json.loads(side.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{side}: sidecar is not valid JSON ({err})") from err
        if not isinstance(sidecar, dict):
            raise ValueError(f"{side}: sidecar must be a JSON object, got {type(sidecar).__name__}")
        for key, want in (("dataset", dataset), ("method", method)):
            if sidecar.get(key) not in (None, want):
                raise ValueError(
                    f"{side}: sidecar {key} {sidecar[key]!r} does not match table {path} ({want!r})"
                )
    else:
        log.warning("%s: no sidecar %s", path, side)
    return Table(path=path, frame=frame, sidecar=sidecar, dataset=dataset, method=method)


# ------------------------------------------------------------------------------------- summarising


@dataclass
class Stat:
    """Mean ± std of a metric over pairs (finite values only) and how many values went in."""

    mean: float
    std: float
    n: int  # finite values used
    total: int  # values present in the table

    @classmethod
    def of(cls, values: pd.Series) -> Stat | None:
        if values.empty:
            return None
        arr = values.to_numpy(dtype=float)
        finite = arr[np.isfinite(arr)]
        if finite.size == 0:
            return cls(float("nan"), float("nan"), 0, arr.size)
        std = float(np.std(finite, ddof=1)) if finite.size > 1 else float("nan")
        return cls(float(np.mean(finite)), std, int(finite.size), int(arr.size))


@dataclass
class MethodSummary:
    method: str
    table: Table
    device: str
    stats: dict[str, Stat | None]
    pairs: set[tuple[str, str]]
    pair_dice: pd.Series  # pair-mean Dice indexed by (fixed, moving)
    label_dice: pd.Series  # mean per-label Dice indexed by integer label
    missing_total: int | None
    vanished_total: int | None
    mem_metric: str | None  # the memory metric plotted and used for ratios
    notes: list[str] = field(default_factory=list)

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")


_PAIR_METRICS = (
    "dice",
    "hd95_mm",
    "fold_pct",
    "fold_count",
    "sdlogj",
    "logj_excluded_pct",
    "time_s",
    "peak_rss_mb",
    "cuda_alloc_peak_mb",
    "nvml_peak_mb",
    "params",
)


def _summarise(table: Table) -> MethodSummary:
    df = table.frame
    top = df[df["label"].isna()]  # pair-level (and method-level) rows
    stats = {m: Stat.of(top.loc[top["metric"] == m, "value"]) for m in _PAIR_METRICS}
    has_pair = df["fixed"].notna() & df["moving"].notna()
    pairs = set(zip(df.loc[has_pair, "fixed"], df.loc[has_pair, "moving"], strict=True))

    dice_rows = top[(top["metric"] == "dice") & top["fixed"].notna() & top["moving"].notna()]
    pair_dice = dice_rows.groupby(["fixed", "moving"])["value"].mean()

    per_label = df[(df["metric"] == "dice") & df["label"].notna()].copy()
    per_label["label_num"] = pd.to_numeric(per_label["label"], errors="coerce")
    label_dice = per_label.dropna(subset=["label_num"]).groupby("label_num")["value"].mean()
    label_dice.index = label_dice.index.astype(int)

    def total(metric: str) -> int | None:
        vals = df.loc[df["metric"] == metric, "value"]
        return None if vals.empty else int(np.nansum(vals.to_numpy()))

    device = str(table.sidecar.get("device") or "")
    if not device:
        device = "cuda" if stats["cuda_alloc_peak_mb"] is not None else "cpu"
    if device.startswith("cuda"):
        mem_metric = "cuda_alloc_peak_mb" if stats["cuda_alloc_peak_mb"] else "nvml_peak_mb"
    else:
        mem_metric = "peak_rss_mb"
    if stats.get(mem_metric) is None:
        mem_metric = None

    notes = []
    n_side = table.sidecar.get("n_pairs")
    if isinstance(n_side, int) and n_side != len(pairs):
        notes.append(f"sidecar says n_pairs = {n_side} but the table holds {len(pairs)} pairs")
    if not table.sidecar:
        notes.append(f"no sidecar {_sidecar_path(table.path)}")
    return MethodSummary(
        method=table.method,
        table=table,
        device=device,
        stats=stats,
        pairs=pairs,
        pair_dice=pair_dice,
        label_dice=label_dice,
        missing_total=total("labels_missing"),
        vanished_total=total("labels_vanished"),
        mem_metric=mem_metric,
        notes=notes,
    )


# ------------------------------------------------------------------------------------- formatting


def _decimals(x: float, sig: int = 3, cap: int = 6) -> int:
    if x == 0 or not math.isfinite(x):
        return 0
    return min(cap, max(0, sig - 1 - math.floor(math.log10(abs(x)))))


def fmt_num(x: float | None, decimals: int | None = None) -> str:
    """Format a number to 3 significant digits (or fixed ``decimals``), thousands separated."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return DASH
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    d = _decimals(x) if decimals is None else decimals
    return f"{x:,.{d}f}"


def fmt_stat(s: Stat | None, decimals: int | None = None) -> str:
    """``"mean ± std"`` using the mean's decimals for both; ``"—"`` when absent."""
    if s is None or s.n == 0:
        return DASH
    d = _decimals(s.mean) if decimals is None else decimals
    text = fmt_num(s.mean, d)
    if s.n > 1:
        text += f" ± {fmt_num(s.std, d)}"
    return text


def fmt_params(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return DASH
    for div, unit in ((1e9, " G"), (1e6, " M"), (1e3, " k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.0f}"


def fmt_ratio(r: float | None) -> str:
    """``"0.21×"``: two decimals between 0.01 and 100, otherwise scientific/integer."""
    if r is None or not math.isfinite(r):
        return DASH
    if r == 0:
        return "0×"
    if abs(r) >= 100:
        return f"{r:,.0f}×"
    if abs(r) < 0.01:
        return f"{r:.1e}×"
    return f"{r:.2f}×"


def _ratio(a: Stat | None, b: Stat | None) -> float | None:
    if a is None or b is None or a.n == 0 or b.n == 0 or b.mean == 0:
        return None
    return a.mean / b.mean


# -------------------------------------------------------------------------------------- rows


@dataclass
class Cell:
    text: str
    ratio: str | None = None
    sub: str | None = None
    bold: bool = False
    note: str | None = None


def _coverage(s: Stat | None, n_pairs: int) -> str | None:
    if s is None:
        return None
    expected = max(n_pairs, s.total)
    return f"n = {s.n} of {expected}" if s.n < expected else None


def _rows(summaries: list[MethodSummary], base: MethodSummary | None) -> list[dict[str, Any]]:
    dice_means = [
        round(s.stats["dice"].mean, DICE_DECIMALS)
        for s in summaries
        if s.stats["dice"] is not None and s.stats["dice"].n
    ]
    best = max(dice_means) if dice_means else None
    rows = []
    for s in summaries:
        st = s.stats
        n = len(s.pairs)

        def cell(
            metric: str, decimals: int | None = None, same_device: bool = False, st=st, s=s, n=n
        ) -> Cell:
            ratio = None
            if base is not None and (not same_device or base.device == s.device):
                ratio = fmt_ratio(_ratio(st[metric], base.stats[metric]))
            return Cell(fmt_stat(st[metric], decimals), ratio=ratio, note=_coverage(st[metric], n))

        dice = cell("dice", DICE_DECIMALS)
        dice.bold = (
            best is not None
            and st["dice"] is not None
            and st["dice"].n > 0
            and round(st["dice"].mean, DICE_DECIMALS) == best
        )
        fold = cell("fold_pct")
        if st["fold_count"] is not None and st["fold_count"].n:
            fold.sub = f"count {fmt_num(st['fold_count'].mean)}"
        sd = cell("sdlogj")
        if st["logj_excluded_pct"] is not None and st["logj_excluded_pct"].n:
            sd.sub = f"excl. {fmt_num(st['logj_excluded_pct'].mean)}%"

        if s.is_cuda:
            alloc, nvml = st["cuda_alloc_peak_mb"], st["nvml_peak_mb"]
            mem = Cell(
                f"alloc {fmt_stat(alloc)}" if alloc else DASH,
                sub=f"NVML {fmt_stat(nvml)}" if nvml else None,
                note=_coverage(alloc, n),
            )
        else:
            mem = Cell(fmt_stat(st["peak_rss_mb"]), note=_coverage(st["peak_rss_mb"], n))
        if base is not None and s.mem_metric and s.mem_metric == base.mem_metric:
            mem.ratio = fmt_ratio(_ratio(st[s.mem_metric], base.stats[s.mem_metric]))
        elif base is not None:
            mem.ratio = DASH

        params = Cell(fmt_params(st["params"].mean if st["params"] and st["params"].n else None))
        if base is not None:
            params.ratio = fmt_ratio(_ratio(st["params"], base.stats["params"]))

        edge = " / ".join(
            DASH if v is None else str(v) for v in (s.missing_total, s.vanished_total)
        )
        rows.append(
            {
                "method": s.method,
                "device": s.device,
                "n_pairs": n,
                "is_baseline": base is not None and s is base,
                "cells": [
                    dice,
                    cell("hd95_mm"),
                    fold,
                    sd,
                    cell("time_s", same_device=True),
                    mem,
                    params,
                ],
                "edge": edge,
                "edge_flag": bool(s.missing_total) or bool(s.vanished_total),
            }
        )
    return rows


def _compare(a: MethodSummary, b: MethodSummary) -> str | None:
    """One plain sentence comparing ``a`` with ``b`` as measured (Dice, then cost)."""
    da, db = a.stats["dice"], b.stats["dice"]
    if da is None or db is None or not da.n or not db.n:
        return None
    ra, rb = round(da.mean, DICE_DECIMALS), round(db.mean, DICE_DECIMALS)
    diff = round(ra - rb, DICE_DECIMALS)
    sign = "+" if diff >= 0 else "−"
    text = (
        f"{a.method} vs {b.method}: Dice {ra:.{DICE_DECIMALS}f} vs {rb:.{DICE_DECIMALS}f} "
        f"({sign}{abs(diff):.{DICE_DECIMALS}f}); "
    )
    if diff > 0:
        text += f"{a.method} beats {b.method} on mean Dice."
    elif diff == 0:
        text += (
            f"{a.method} does not beat {b.method} on mean Dice (equal to {DICE_DECIMALS} decimals)."
        )
    else:
        text += f"{a.method} does not beat {b.method} on mean Dice."
    common = a.pair_dice.index.intersection(b.pair_dice.index)
    if len(common):
        pa, pb = a.pair_dice[common], b.pair_dice[common]
        higher, equal = int((pa > pb).sum()), int((pa == pb).sum())
        ties = f", equal on {equal}," if equal else ""
        text += f" {a.method} is higher on {higher}{ties} of {len(common)} common test pairs."
    extras = []
    if a.device == b.device:
        r = _ratio(a.stats["time_s"], b.stats["time_s"])
        if r is not None:
            extras.append(
                f"time {fmt_num(a.stats['time_s'].mean)} s vs "
                f"{fmt_num(b.stats['time_s'].mean)} s ({fmt_ratio(r)})"
            )
    if a.mem_metric and a.mem_metric == b.mem_metric:
        r = _ratio(a.stats[a.mem_metric], b.stats[b.mem_metric])
        if r is not None:
            extras.append(
                f"peak memory {fmt_num(a.stats[a.mem_metric].mean)} MB vs "
                f"{fmt_num(b.stats[b.mem_metric].mean)} MB ({fmt_ratio(r)})"
            )
    if extras:
        joined = "; ".join(extras)
        text += " " + joined[0].upper() + joined[1:] + "."
    return text


# ----------------------------------------------------------------------------------------- plots


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, bbox_inches="tight", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _new_figure(w: float, h: float):
    from matplotlib.figure import Figure  # Agg canvas; no pyplot state, no GUI backend

    return Figure(figsize=(w, h), dpi=100, layout="constrained")


def _colours(methods: list[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {m: cmap(i % 10) for i, m in enumerate(methods)}


def _scatter(
    summaries: list[MethodSummary],
    xkey: str | None,
    xlabel: str,
    colours: dict[str, Any],
    title: str,
) -> str | None:
    pts = []
    for s in summaries:
        key = xkey if xkey is not None else s.mem_metric
        d = s.stats["dice"]
        x = s.stats.get(key) if key else None
        if d is None or x is None or not d.n or not x.n:
            continue
        pts.append((s, x, d))
    if not pts:
        return None
    fig = _new_figure(5.2, 3.8)
    ax = fig.add_subplot()
    mixed = len({s.device for s, _, _ in pts}) > 1
    xs = [x.mean for _, x, _ in pts if x.mean > 0]
    log_x = len(xs) > 1 and max(xs) / min(xs) > 10
    if log_x:
        ax.set_xscale("log")

    def norm(values: list[float], log: bool) -> list[float]:
        v = [math.log10(max(x, 1e-12)) if log else x for x in values]
        span = (max(v) - min(v)) or 1.0
        return [(a - min(v)) / span for a in v]

    nx = norm([x.mean for _, x, _ in pts], log_x)
    ny = norm([d.mean for _, _, d in pts], False)
    placed: list[tuple[float, float]] = []
    for i, (s, x, d) in enumerate(pts):
        ax.errorbar(
            x.mean,
            d.mean,
            xerr=0 if math.isnan(x.std) else x.std,
            yerr=0 if math.isnan(d.std) else d.std,
            fmt="o",
            capsize=3,
            color=colours[s.method],
            ms=6,
        )
        name = f"{s.method} ({s.device})" if mixed else s.method
        # crude de-cluttering: a label near an earlier one goes to the left of its point
        crowded = any(abs(nx[i] - px) < 0.12 and abs(ny[i] - py) < 0.08 for px, py in placed)
        placed.append((nx[i], ny[i]))
        ax.annotate(
            name,
            (x.mean, d.mean),
            xytext=(-7, 0) if crowded else (7, 0),
            textcoords="offset points",
            fontsize=9,
            va="center",
            ha="right" if crowded else "left",
        )
    ax.margins(x=0.12, y=0.08)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Dice (mean ± std over pairs)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3, which="both")
    return _png(fig)


def _label_plot(summaries: list[MethodSummary], colours: dict[str, Any]) -> str | None:
    have = [s for s in summaries if not s.label_dice.empty]
    if not have:
        return None
    labels = sorted(set().union(*(s.label_dice.index for s in have)))
    fig = _new_figure(max(6.0, min(18.0, 0.28 * len(labels) + 2)), 3.4)
    ax = fig.add_subplot()
    pos = {lab: i for i, lab in enumerate(labels)}
    for s in have:
        ax.plot(
            [pos[k] for k in s.label_dice.index],
            s.label_dice.to_numpy(),
            "o-",
            color=colours[s.method],
            label=s.method,
            ms=4,
            lw=1,
        )
    step = max(1, len(labels) // 30)
    ax.set_xticks(range(0, len(labels), step), [str(lab) for lab in labels[::step]])
    ax.set_xlabel("label")
    ax.set_ylabel("mean Dice over pairs")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _png(fig)


def _load_nifti(path: str) -> tuple[np.ndarray, tuple[float, float, float]]:
    import nibabel as nib

    img = nib.load(path)
    arr = np.asanyarray(img.dataobj)
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise ValueError(f"{path}: expected a 3-D (D, H, W) image, got shape {arr.shape}")
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return arr, zooms  # type: ignore[return-value]


def _draw_contours(ax, lab: np.ndarray) -> None:
    """Thin outlines of every foreground label of a 2-D label map, drawn at pixel centres."""
    for value in np.unique(lab):
        if value == 0:
            continue
        mask = (lab == value).astype(np.float32)
        if mask.any():
            ax.contour(mask, levels=[0.5], colors=["#ff4030"], linewidths=0.6, alpha=0.85)


def _qualitative(summaries: list[MethodSummary]) -> tuple[str | None, str | None, list[str]]:
    """Figure of middle slices: fixed, moving, warped moving of each method with an example.

    Returns ``(png_base64 or None, caption, notes)``.
    """
    notes: list[str] = []
    examples = [(s, s.table.sidecar.get("example")) for s in summaries]
    lacking = [s.method for s, ex in examples if not ex]
    if lacking:
        notes.append("no example in the sidecar for: " + ", ".join(lacking))
    examples = [(s, ex) for s, ex in examples if ex]
    if not examples:
        return None, None, notes
    ref = examples[0][1]
    pair = (str(ref.get("fixed")), str(ref.get("moving")))
    try:
        fixed, zooms = _load_nifti(ref["fixed_image"])
        moving, mzooms = _load_nifti(ref["moving_image"])
    except (KeyError, OSError, ValueError, TypeError) as err:
        notes.append(f"example pair images could not be read ({err})")
        return None, None, notes
    labels = None
    if ref.get("fixed_labels"):
        try:
            labels, _ = _load_nifti(ref["fixed_labels"])
            if labels.shape != fixed.shape:
                notes.append(
                    f"fixed labels shape {labels.shape} != fixed image {fixed.shape}; "
                    "contours omitted"
                )
                labels = None
        except (OSError, ValueError) as err:
            notes.append(f"fixed labels could not be read ({err}); contours omitted")
    panels: list[tuple[str, np.ndarray, tuple[float, float, float]]] = [
        (f"fixed {pair[0]}", fixed, zooms),
        (f"moving {pair[1]}", moving, mzooms),
    ]
    for s, ex in examples:
        if (str(ex.get("fixed")), str(ex.get("moving"))) != pair:
            notes.append(
                f"{s.method}: its example is pair ({ex.get('fixed')}, "
                f"{ex.get('moving')}), not ({pair[0]}, {pair[1]}); not shown"
            )
            continue
        try:
            warped, _ = _load_nifti(ex["warped_image"])
        except (KeyError, OSError, ValueError, TypeError) as err:
            notes.append(f"{s.method}: warped image could not be read ({err})")
            continue
        if warped.shape != fixed.shape:
            notes.append(
                f"{s.method}: warped image shape {warped.shape} != fixed {fixed.shape}; not shown"
            )
            continue
        panels.append((f"{s.method} (warped)", warped, zooms))

    fixed_f = np.asarray(fixed, dtype=np.float32)
    lo, hi = (float(v) for v in np.percentile(fixed_f, [1, 99]))
    if hi <= lo:
        lo, hi = float(fixed_f.min()), float(fixed_f.max()) or 1.0
    axes_shown = (0, 1)
    ncol = len(panels)
    # row heights follow the physical aspect of each slice so panels fill their cells
    aspects = []
    for axis in axes_shown:
        (r0, r1) = [i for i in range(3) if i != axis]
        aspects.append((fixed.shape[r0] * zooms[r0]) / (fixed.shape[r1] * zooms[r1]))
    width = 1.9
    fig = _new_figure(width * ncol, width * sum(aspects) + 0.5)
    grid = fig.subplots(
        len(axes_shown), ncol, squeeze=False, gridspec_kw={"height_ratios": aspects}
    )
    for r, axis in enumerate(axes_shown):
        for c, (name, vol, z) in enumerate(panels):
            ax = grid[r][c]
            mid = vol.shape[axis] // 2
            sl = np.asarray(np.take(vol, mid, axis=axis), dtype=np.float32)
            rest = [z[i] for i in range(3) if i != axis]
            ax.imshow(
                sl, cmap="gray", vmin=lo, vmax=hi, aspect=rest[0] / rest[1], interpolation="nearest"
            )
            if labels is not None:
                _draw_contours(ax, np.take(labels, labels.shape[axis] // 2, axis=axis))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
            if c == 0:
                ax.set_ylabel(f"axis {axis}, slice {mid}", fontsize=8)
    caption = (
        f"Example pair fixed {pair[0]}, moving {pair[1]}: middle slices along axes 0 and 1; "
        f"grayscale window [{fmt_num(lo)}, {fmt_num(hi)}] (1st–99th percentile of the fixed "
        "image) for every panel"
    )
    caption += "; red: fixed label outlines." if labels is not None else "."
    return _png(fig), caption, notes


# ---------------------------------------------------------------------------------------- report


def _environment(t: Table, s: MethodSummary) -> dict[str, str]:
    sc = t.sidecar

    def g(key: str) -> str:
        v = sc.get(key)
        return DASH if v is None or v == "" else str(v)

    return {
        "dataset": t.dataset,
        "method": t.method,
        "device": s.device,
        "device_name": g("device_name"),
        "torch": g("torch") + (f" (CUDA {sc['cuda']})" if sc.get("cuda") else ""),
        "threads": g("threads"),
        "n_pairs": g("n_pairs"),
        "checkpoint": g("checkpoint"),
        "table": str(t.path),
    }


def _template() -> jinja2.Template:
    env = jinja2.Environment(
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True
    )
    text = resources.files("crd.report").joinpath("report.html.j2").read_text(encoding="utf-8")
    return env.from_string(text)


BENCH_COLUMNS = COLUMNS  # the bench table crd.bench writes


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
    sidecar = _sidecar_path(path)
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

            rows.append(
                {
                    "method": method,
                    "time": fmt_num(get("latency_median_s", "value")),
                    "spread": fmt_num(get("latency_iqr_s", "value")),
                    "time_ratio": fmt_ratio(get("latency_median_s", "ratio_to_hr")),
                    "mem": fmt_num(get(mem, "value"), 0),
                    "mem_ratio": fmt_ratio(get(mem, "ratio_to_hr")),
                    "nvml": fmt_num(get("nvml_peak_mb", "value"), 0),
                    "params": fmt_params(get("params", "value")),
                }
            )
        groups.append(
            {
                "size": size,
                "options": options,
                "device": device,
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


def build_report(
    tables: list[Path],
    out: Path,
    *,
    title: str = "crd-bench report",
    baseline: str = "hr",
    bench: Path | None = None,
) -> Path:
    """Render the HTML report of ``tables`` (tidy evaluation CSVs) to ``out``; return ``out``.

    Sections follow the datasets in order of first appearance; methods within a dataset follow the
    order of ``tables``. Ratios are to ``baseline``'s mean in the same dataset (time ratios only
    between runs on the same device kind, memory ratios only between the same memory metric).
    Raises ``ValueError`` naming the file for a missing or malformed table or sidecar, and for two
    tables holding the same (dataset, method). ``bench``: a ``crd bench`` table, shown as the
    efficiency section (its ratios are to hr, as measured in the bench run).
    """
    import crd

    if not tables:
        raise ValueError("build_report: no tables given")
    loaded = [load_table(p) for p in tables]
    seen: dict[tuple[str, str], Path] = {}
    for t in loaded:
        key = (t.dataset, t.method)
        if key in seen:
            raise ValueError(
                f"{t.path}: dataset {t.dataset!r} method {t.method!r} is also in {seen[key]}"
            )
        seen[key] = t.path

    methods_all = list(dict.fromkeys(t.method for t in loaded))
    colours = _colours(methods_all)
    datasets: dict[str, list[Table]] = {}
    for t in loaded:
        datasets.setdefault(t.dataset, []).append(t)

    sections = []
    environment = []
    for name, ts in datasets.items():
        summaries = [_summarise(t) for t in ts]
        environment += [_environment(t, s) for t, s in zip(ts, summaries, strict=True)]
        by_name = {s.method: s for s in summaries}
        base = by_name.get(baseline)
        notes = [f"{s.method}: {n}" for s in summaries for n in s.notes]
        elsewhere = sorted({
            f"{t.method} on {t.sidecar['trained_on']}"
            for t in ts
            if t.sidecar.get("trained_on") not in (None, name)
        })
        if elsewhere:
            notes.append("models trained on another dataset (train_on): " + ", ".join(elsewhere) + ".")
        if any(t.sidecar.get("distance_unit") == "voxel" for t in ts):
            notes.append(
                "this dataset's files carry no voxel spacing: HD95 and ASSD are in voxels, not mm."
            )
        pair_sets = {frozenset(s.pairs) for s in summaries if s.pairs}
        if len(pair_sets) > 1:
            notes.append(
                "methods were evaluated on different sets of pairs: "
                + ", ".join(f"{s.method} {len(s.pairs)}" for s in summaries)
            )
        devices = {s.device for s in summaries}
        if base is not None and len(devices) > 1:
            notes.append(
                "methods ran on different devices; time ratios are shown only for "
                f"methods on the baseline's device ({base.device})."
            )
        comparisons = [
            c
            for a, b in PAIRS_OF_INTEREST
            if a in by_name and b in by_name
            if (c := _compare(by_name[a], by_name[b]))
        ]
        mem_label = "peak memory (MB): " + ", ".join(
            sorted(
                {
                    "CUDA allocator peak" if s.is_cuda else "CPU RSS above baseline"
                    for s in summaries
                }
            )
        )
        qual_png, qual_caption, qual_notes = _qualitative(summaries)
        sections.append(
            {
                "name": name,
                "anchor": "ds-" + "".join(ch if ch.isalnum() else "-" for ch in name),
                "rows": _rows(summaries, base),
                "baseline": baseline if base is not None else None,
                "comparisons": comparisons,
                "notes": notes,
                "plot_time": _scatter(
                    summaries,
                    "time_s",
                    "inference time per pair (s)",
                    colours,
                    "Dice vs inference time",
                ),
                "plot_mem": _scatter(summaries, None, mem_label, colours, "Dice vs peak memory"),
                "plot_labels": _label_plot(summaries, colours),
                "qual_png": qual_png,
                "qual_caption": qual_caption,
                "qual_notes": qual_notes,
            }
        )

    html = _template().render(
        title=title,
        baseline=baseline,
        sections=sections,
        environment=environment,
        definitions=METRIC_DEFINITIONS,
        generated=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        version=crd.__version__,
        columns=["Dice", "HD95 (mm)", "Fold %", "SDlogJ", "Time (s)", "Peak memory (MB)", "Params"],
        bench=_bench_section(bench) if bench is not None else None,
    )
    out = Path(out)
    write_text_atomic(out, html)
    return out

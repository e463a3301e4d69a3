"""The report's figures, each returned as a base64 PNG (``None`` when there is nothing to draw).

Every figure reads :class:`~crd.report.summary.MethodResult` objects or training histories; nothing
is recomputed. Matplotlib's object API on an Agg canvas (no pyplot state, no GUI backend).
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any

import numpy as np
import pandas as pd

from crd.report.format import fmt_num
from crd.report.summary import MethodResult

__all__ = ["colours", "scatter", "label_plot", "qualitative", "pair_distribution", "training_curves"]


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, bbox_inches="tight", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _new_figure(w: float, h: float):
    from matplotlib.figure import Figure  # Agg canvas; no pyplot state, no GUI backend

    return Figure(figsize=(w, h), dpi=100, layout="constrained")


def colours(methods: list[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {m: cmap(i % 10) for i, m in enumerate(methods)}


def scatter(
    results: list[MethodResult],
    xkey: str | None,
    xlabel: str,
    colours: dict[str, Any],
    title: str,
) -> str | None:
    pts = []
    for s in results:
        key = xkey if xkey is not None else s.mem_metric
        d = s.stat("dice")
        x = s.stat(key) if key else None
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
            xerr=0 if math.isnan(x.sd) else x.sd,
            yerr=0 if math.isnan(d.sd) else d.sd,
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


def label_ticks(labels: list[int], names: dict[int, str], most: int = 40) -> tuple[list[int], list[str]]:
    """Tick positions and texts of the per-label plot: the structure's name where the dataset gives
    one (its value otherwise), every ``len(labels) // most``-th label when there are many."""
    step = max(1, len(labels) // most)
    return list(range(0, len(labels), step)), [names.get(lab, str(lab)) for lab in labels[::step]]


def label_plot(results: list[MethodResult], colours: dict[str, Any]) -> str | None:
    have = [s for s in results if not s.label_dice.empty]
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
    names = {k: v for s in have for k, v in s.label_names.items()}  # the dataset's structure names
    positions, ticks = label_ticks(labels, names)
    ax.set_xticks(positions, ticks, rotation=60 if names else 0, ha="right" if names else "center",
                  fontsize=7 if names else None)  # fmt: skip
    ax.set_xlabel("label" if not names else "structure")
    ax.set_ylabel("mean Dice over pairs")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _png(fig)


def _load_nifti(path: str, what: str = "image") -> tuple[np.ndarray, tuple[float, float, float]]:
    from crd.volumes import read_volume, voxels

    img = read_volume(path, what, error=ValueError)
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return voxels(img, path, what, error=ValueError), zooms  # type: ignore[return-value]


def _draw_contours(ax, lab: np.ndarray) -> None:
    """Thin outlines of every foreground label of a 2-D label map, drawn at pixel centres."""
    for value in np.unique(lab):
        if value == 0:
            continue
        mask = (lab == value).astype(np.float32)
        if mask.any():
            ax.contour(mask, levels=[0.5], colors=["#ff4030"], linewidths=0.6, alpha=0.85)


def qualitative(results: list[MethodResult]) -> tuple[str | None, str | None, list[str]]:
    """Figure of middle slices: fixed, moving, warped moving of each method with an example (the
    first seed's).

    Returns ``(png_base64 or None, caption, notes)``.
    """
    notes: list[str] = []
    loaded = _example_panels(results, notes)
    if loaded is None:
        return None, None, notes
    pair, panels, labels = loaded
    fig, lo, hi = _slice_figure(panels, labels)
    caption = (
        f"Example pair fixed {pair[0]}, moving {pair[1]}: middle slices along axes 0 and 1; "
        f"grayscale window [{fmt_num(lo)}, {fmt_num(hi)}] (1st–99th percentile of the fixed "
        "image) for every panel"
    )
    caption += "; red: fixed label outlines." if labels is not None else "."
    return _png(fig), caption, notes


_Panel = tuple[str, np.ndarray, tuple[float, float, float]]  # title, (D, H, W) volume, spacing (mm)


def _example_panels(
    results: list[MethodResult], notes: list[str]
) -> tuple[tuple[str, str], list[_Panel], np.ndarray | None] | None:
    """Read the example pair (fixed, moving, their labels) and each method's warped image from
    the sidecars; what cannot be shown is explained in ``notes``. Returns ``(pair, panels, fixed
    labels or None)``, the fixed image first, or ``None`` when there is nothing to show."""
    examples = [(s, s.tables[0].sidecar.get("example")) for s in results]
    lacking = [s.method for s, ex in examples if not ex]
    if lacking:
        notes.append("no example in the sidecar for: " + ", ".join(lacking))
    examples = [(s, ex) for s, ex in examples if ex]
    if not examples:
        return None
    ref = examples[0][1]
    pair = (str(ref.get("fixed")), str(ref.get("moving")))
    try:
        fixed, zooms = _load_nifti(ref["fixed_image"])
        moving, mzooms = _load_nifti(ref["moving_image"])
    except (KeyError, OSError, ValueError, TypeError) as err:
        notes.append(f"example pair images could not be read ({err})")
        return None
    labels = None
    if ref.get("fixed_labels"):
        try:
            labels, _ = _load_nifti(ref["fixed_labels"])
            if labels.shape != fixed.shape:
                notes.append(f"fixed labels shape {labels.shape} != fixed image {fixed.shape}; contours omitted")
                labels = None
        except (OSError, ValueError) as err:
            notes.append(f"fixed labels could not be read ({err}); contours omitted")
    panels: list[_Panel] = [(f"fixed {pair[0]}", fixed, zooms), (f"moving {pair[1]}", moving, mzooms)]
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
            notes.append(f"{s.method}: warped image shape {warped.shape} != fixed {fixed.shape}; not shown")
            continue
        panels.append((f"{s.method} (warped)", warped, zooms))
    return pair, panels, labels


def _slice_figure(panels: list[_Panel], labels: np.ndarray | None) -> tuple[Any, float, float]:
    """Middle slices along axes 0 and 1 of every panel (one column each), one grayscale window
    (the fixed image's 1st-99th percentile) for all, label outlines when given. Returns
    ``(figure, window low, window high)``."""
    _, fixed, zooms = panels[0]
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
    grid = fig.subplots(len(axes_shown), ncol, squeeze=False, gridspec_kw={"height_ratios": aspects})
    for r, axis in enumerate(axes_shown):
        for c, (name, vol, z) in enumerate(panels):
            ax = grid[r][c]
            mid = vol.shape[axis] // 2
            sl = np.asarray(np.take(vol, mid, axis=axis), dtype=np.float32)
            rest = [z[i] for i in range(3) if i != axis]
            ax.imshow(sl, cmap="gray", vmin=lo, vmax=hi, aspect=rest[0] / rest[1], interpolation="nearest")
            if labels is not None:
                _draw_contours(ax, np.take(labels, labels.shape[axis] // 2, axis=axis))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
            if c == 0:
                ax.set_ylabel(f"axis {axis}, slice {mid}", fontsize=8)
    return fig, lo, hi


def _far_apart(have: list[MethodResult], data: list[pd.Series]) -> list[bool]:
    """Which methods go to a panel of their own: those without a network (classical, ``params``
    unknown) whose middle half of values lies wholly outside the range of the networks' values,
    so that they would squeeze the networks' boxes together on one axis."""
    learned = [d for s, d in zip(have, data, strict=True) if s.params is not None]
    if not learned:
        return [False] * len(have)
    low = min(float(d.min()) for d in learned)
    high = max(float(d.max()) for d in learned)
    return [s.params is None and not s.oracle_of and (d.quantile(0.25) > high or d.quantile(0.75) < low)
            for s, d in zip(have, data, strict=True)]  # fmt: skip


def _pair_panel(ax, have: list[MethodResult], data: list[pd.Series], colours: dict[str, Any]) -> None:
    ax.boxplot([d.to_numpy() for d in data], positions=range(len(have)), widths=0.55, showfliers=False,
               medianprops={"color": "black"})  # fmt: skip
    rng = np.random.default_rng(0)  # jitter only; the same every run
    common = data[0].index
    for d in data[1:]:
        common = common.intersection(d.index)
    if len(common) and len(have) > 1:
        lines = np.stack([d[common].to_numpy() for d in data])
        ax.plot(range(len(have)), lines, color="0.6", lw=0.4, alpha=0.35, zorder=1)
    for i, (s, d) in enumerate(zip(have, data, strict=True)):
        x = i + rng.uniform(-0.12, 0.12, len(d))
        ax.scatter(x, d.to_numpy(), s=9, color=colours[s.method], alpha=0.8, zorder=2, linewidths=0)
    ax.set_xticks(range(len(have)), [s.method for s in have], rotation=30, ha="right")
    ax.grid(True, axis="y", alpha=0.3)


def pair_distribution(results: list[MethodResult], colours: dict[str, Any], metric: str = "dice") -> str | None:
    """Box plot and strip of the per-pair (seed-averaged) values of ``metric`` for each method, with
    each pair's values joined by a faint line across methods (paired data). A method without a
    network whose values lie far from every network's (:func:`_far_apart`, e.g. a classical method
    far above) is drawn in a panel of its own on the right, with its own axis, so that the networks'
    boxes stay readable."""
    have = [s for s in results if not s.values(metric).dropna().empty]
    if not have:
        return None
    data = [s.values(metric).dropna() for s in have]
    apart = _far_apart(have, data)
    main = [i for i, a in enumerate(apart) if not a]
    side = [i for i, a in enumerate(apart) if a]
    fig = _new_figure(max(5.0, 0.9 * len(have) + 1.5 + (1.0 if side else 0.0)), 3.6)
    axes = fig.subplots(1, 2, gridspec_kw={"width_ratios": [len(main), max(1, len(side)) + 0.6]}) if side else [
        fig.add_subplot()]  # fmt: skip
    _pair_panel(axes[0], [have[i] for i in main], [data[i] for i in main], colours)
    axes[0].set_ylabel(f"{'Dice' if metric == 'dice' else metric} per test pair")
    if side:
        _pair_panel(axes[1], [have[i] for i in side], [data[i] for i in side], colours)
        axes[1].set_title("own axis", fontsize=8)
    return _png(fig)


def training_curves(history: pd.DataFrame, colours: dict[str, Any], methods: list[str]) -> str | None:
    """Validation Dice and loss against iteration for every method of one dataset's training
    histories (``crd.tidy.HISTORY_COLUMNS``): the mean over seeds, each seed a thin line; with a
    third panel of the distillation terms' magnitudes (flow and attention MSE, log scale) when a
    distilled method is present."""
    if history.empty or not (history["metric"] == "val_dice").any():
        return None  # no validation pairs (a protocol without them): nothing to draw; the notes say so
    wanted = [m for m in methods if m in set(history["method"])]
    distilled = [m for m in wanted if "flow_mse" in set(history.loc[history["method"] == m, "metric"])]
    panels = [("val_dice", "validation Dice"), ("val_loss", "validation loss (−NCC + smoothness)")]
    fig = _new_figure(4.6 * (len(panels) + bool(distilled)), 3.5)
    axes = fig.subplots(1, len(panels) + bool(distilled), squeeze=False)[0]
    for ax, (metric, title) in zip(axes, panels, strict=False):
        for m in wanted:
            rows = history[(history["method"] == m) & (history["metric"] == metric)]
            if rows.empty:
                continue
            by_seed = rows.pivot_table(index="iteration", columns="seed", values="value")
            if by_seed.shape[1] > 1:
                ax.plot(by_seed.index, by_seed.to_numpy(), color=colours[m], lw=0.6, alpha=0.35)
            ax.plot(by_seed.index, by_seed.mean(axis=1), "o-", color=colours[m], ms=3, lw=1.4, label=m)
        ax.set_xlabel("iteration")
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8, frameon=False)
    if distilled:
        ax = axes[-1]
        for m in distilled:
            for metric, style in (("flow_mse", "-"), ("attention_mse", "--")):
                rows = history[(history["method"] == m) & (history["metric"] == metric)]
                mean = rows.groupby("iteration")["value"].mean()
                ax.plot(mean.index, mean.to_numpy(), style, color=colours[m], lw=1.2, label=f"{m} {metric}")
        ax.set_yscale("log")
        ax.set_xlabel("iteration")
        ax.set_title("distillation terms (training batch)", fontsize=10)
        ax.grid(True, alpha=0.3, which="both")
        ax.legend(fontsize=7, frameon=False)
    return _png(fig)

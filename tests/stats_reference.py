"""An independent, deliberately plain reference for the report's statistics (no crd.stats code).

It follows the definitions of docs/metrics.md ("Comparisons") step by step with Python loops, so a
test can compare each figure crd.stats prints with a second implementation: the units a bootstrap
redraws, the replicates (same documented draw order from numpy's default_rng), the percentile
interval by order statistics, the bootstrap p-value, ties, and Holm's step-down correction.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

TIE_RTOL, TIE_ATOL = 1e-9, 1e-12


def is_tie(a: float, b: float) -> bool:
    return abs(a - b) <= TIE_ATOL + TIE_RTOL * abs(b)


def difference(a: float, b: float) -> float:
    return 0.0 if is_tie(a, b) else a - b


def units_of(pairs: list[tuple[str, str]]) -> tuple[list[str], list[tuple[str, ...]]]:
    """(unit names, each pair's units) by the documented rule."""
    fixed = {f for f, _ in pairs}
    moving = {m for _, m in pairs}
    if len(pairs) >= 2 and len(fixed) == 1:
        names = list(dict.fromkeys(m for _, m in pairs))
        return names, [(m,) for _, m in pairs]
    if len(pairs) >= 2 and len(moving) == 1:
        names = list(dict.fromkeys(f for f, _ in pairs))
        return names, [(f,) for f, _ in pairs]
    images = Counter([f for f, _ in pairs] + [m for _, m in pairs])
    if max(images.values()) == 1:
        names = [f"{f} → {m}" for f, m in pairs]
        return names, [(n,) for n in names]
    names = list(dict.fromkeys([f for f, _ in pairs] + [m for _, m in pairs]))
    return names, [tuple(dict.fromkeys((f, m))) for f, m in pairs]


def replicates(cells: list[list[float]], pairs: list[tuple[str, str]], *, resample_seeds: bool, n_boot: int,
               seed: int = 0) -> list[float]:  # fmt: skip
    """cells[s][p]: seed s's difference on pair p (NaN: absent). One replicate per loop turn."""
    names, pair_units = units_of(pairs)
    rng = np.random.default_rng(seed)
    n_seeds = len(cells)
    seed_draws = rng.integers(0, n_seeds, size=(n_boot, n_seeds)) if resample_seeds else None
    unit_draws = rng.integers(0, len(names), size=(n_boot, len(names)))
    out = []
    for b in range(n_boot):
        unit_count = Counter(names[i] for i in unit_draws[b])
        seed_count = Counter(seed_draws[b]) if resample_seeds else Counter(range(n_seeds))
        total = weight = 0.0
        for s, row in enumerate(cells):
            for p, value in enumerate(row):
                if math.isnan(value):
                    continue
                w = seed_count[s] * math.prod(unit_count[u] for u in pair_units[p])
                total += w * value
                weight += w
        out.append(total / weight if weight else math.nan)
    return out


def interval(reps: list[float], confidence: float = 0.95) -> tuple[float, float]:
    r = sorted(x for x in reps if not math.isnan(x))
    k = int((1 - confidence) / 2 * (len(r) + 1) + 1e-9)
    return r[k - 1], r[len(r) - k]


def p_value(reps: list[float]) -> float:
    r = [x for x in reps if not math.isnan(x)]
    below = sum(x <= 0 for x in r)
    above = sum(x >= 0 for x in r)
    return min(1.0, 2 * min(below + 1, above + 1) / (len(r) + 1))


def holm(p: list[float]) -> list[float]:
    """Holm's step-down adjustment (NaN kept out of the count)."""
    valid = [i for i, x in enumerate(p) if not math.isnan(x)]
    order = sorted(valid, key=lambda i: p[i])
    adjusted, running = [math.nan] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def verdict(ci: tuple[float, float], p_adj: float, higher_is_better: bool, p_raw: float) -> str:
    if p_adj <= 0.05 and (ci[0] > 0 or ci[1] < 0):
        higher = ci[0] > 0
        return ("significantly higher" if higher else "significantly lower") + (
            " (better)" if higher == higher_is_better else " (worse)")
    if p_raw <= 0.05:
        return "no significant difference (p ≤ 0.05 before Holm's correction)"
    return "no significant difference"

"""Statistics for a registration-benchmark report: paired method comparisons, multiple testing,
robustness figures, seed spread and a cross-dataset rank.

Pure functions on numpy arrays and pandas objects: no file I/O, no formatting of numbers.

- :func:`paired_comparison` compares two methods on the *same* test pairs: means, the mean
  difference with a percentile-bootstrap confidence interval, a two-sided paired Wilcoxon
  signed-rank p-value and win/tie/loss counts (:class:`PairedComparison`).
- :func:`holm` adjusts a family of p-values (Holm-Bonferroni); :func:`significant` applies the
  decision rule ``p_adj <= alpha``.
- :func:`dsc30` is Learn2Reg's robustness figure (the 30th percentile of per-case Dice, as the
  official evaluation script computes it); :func:`lowest_fraction_mean` is the related tail mean
  (the mean of the lowest 30 % of the values).
- :func:`seed_spread` summarises a metric over training seeds.
- :func:`describe_difference` turns a comparison and its adjusted p-value into a short phrase.
- :func:`rank_methods` ranks methods per (dataset, metric) and averages the ranks.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

__all__ = [
    "PairedComparison",
    "align_pairs",
    "bootstrap_mean_ci",
    "wilcoxon_p",
    "win_tie_loss",
    "paired_comparison",
    "holm",
    "significant",
    "dsc30",
    "lowest_fraction_mean",
    "seed_spread",
    "describe_difference",
    "rank_methods",
]

ArrayOrSeries = np.ndarray | pd.Series | Sequence[float]


# ---------------------------------------------------------------------------------------------
# Paired comparison of two methods
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairedComparison:
    """Method A against method B on the same test pairs, for one metric.

    Attributes:
        n: number of test pairs used (present for both methods, neither value NaN).
        mean_a, mean_b: means of A's and B's values over those ``n`` pairs.
        mean_diff: mean of ``a - b`` over those pairs (equals ``mean_a - mean_b``).
        ci_low, ci_high: percentile-bootstrap confidence interval of ``mean_diff`` at level
            ``confidence`` (see :func:`bootstrap_mean_ci`); NaN when ``n == 0``.
        confidence: the confidence level of the interval, e.g. 0.95.
        p_value: two-sided paired Wilcoxon signed-rank p-value of ``a - b`` (see :func:`wilcoxon_p`).
        wins, ties, losses: pairs with ``a > b``, ``a == b`` and ``a < b`` (exact comparison of the
            values as given; which one is "better" depends on the metric).
        dropped_unaligned: pairs present in only one of two Series (0 for arrays).
        dropped_nan: aligned pairs dropped because A's or B's value is NaN.
        dropped: ``dropped_unaligned + dropped_nan``.
    """

    n: int
    mean_a: float
    mean_b: float
    mean_diff: float
    ci_low: float
    ci_high: float
    confidence: float
    p_value: float
    wins: int
    ties: int
    losses: int
    dropped_unaligned: int
    dropped_nan: int
    dropped: int


def align_pairs(a: ArrayOrSeries, b: ArrayOrSeries) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Pair up two methods' per-pair values and drop incomplete pairs.

    Inputs: either two pandas Series indexed by test pair (aligned on the intersection of the
    indexes, in the order of ``a``'s index; index labels must be unique), or two 1-D array-likes
    of equal length (paired by position). Mixing a Series with an array is refused, since a
    positional pairing of a Series would silently ignore its index.

    Output: ``(a_values, b_values, dropped_unaligned, dropped_nan)`` where the arrays are float64,
    of equal length and NaN-free; ``dropped_unaligned`` counts index labels present in only one of
    the Series (0 for arrays) and ``dropped_nan`` the aligned pairs in which either value is NaN.
    """
    a_is_series, b_is_series = isinstance(a, pd.Series), isinstance(b, pd.Series)
    if a_is_series != b_is_series:
        raise TypeError("a and b must both be pandas Series (aligned on the index) or both arrays (paired by position)")
    if a_is_series:
        if not (a.index.is_unique and b.index.is_unique):
            raise ValueError("Series indexes must be unique (one value per test pair)")
        common = a.index.intersection(b.index, sort=False)
        dropped_unaligned = len(a.index.union(b.index, sort=False)) - len(common)
        a_values = a.loc[common].to_numpy(dtype=float)
        b_values = b.loc[common].to_numpy(dtype=float)
    else:
        a_values, b_values = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
        if a_values.ndim != 1 or a_values.shape != b_values.shape:
            raise ValueError(f"a and b must be 1-D of equal length, got shapes {a_values.shape} and {b_values.shape}")
        dropped_unaligned = 0
    keep = ~(np.isnan(a_values) | np.isnan(b_values))
    return a_values[keep], b_values[keep], dropped_unaligned, int((~keep).sum())


def bootstrap_mean_ci(
    values: np.ndarray, *, n_boot: int = 10_000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the mean of ``values``.

    Draws ``n_boot`` resamples of ``len(values)`` elements with replacement (indices from
    ``numpy.random.default_rng(seed).integers``), takes each resample's mean, and returns the
    ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` percentiles of those means (numpy's
    default linear interpolation). Deterministic for a fixed ``seed``. For paired data pass the
    per-pair differences, so whole pairs are resampled. Returns ``(nan, nan)`` for empty input.
    """
    values = np.asarray(values, dtype=float)
    if values.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {values.shape}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if values.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(n_boot, values.size))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.percentile(means, [100.0 * tail, 100.0 * (1.0 - tail)])
    return float(low), float(high)


def wilcoxon_p(differences: np.ndarray) -> float:
    """Two-sided paired Wilcoxon signed-rank p-value of per-pair differences ``a - b``.

    This is ``scipy.stats.wilcoxon(differences).pvalue`` with scipy's defaults:
    ``zero_method="wilcox"`` (zero differences are discarded before ranking) and
    ``method="auto"``, which computes the *exact* null distribution for up to 50 differences
    without ties or zeros (exhaustive permutations when there are ties or zeros and at most 13
    differences, the normal approximation otherwise).

    Special cases: fewer than 2 differences gives NaN; all differences zero gives 1.0 (no evidence
    of a difference; scipy itself cannot compute it); any error or non-finite result from scipy
    gives NaN.
    """
    differences = np.asarray(differences, dtype=float)
    if differences.size < 2:
        return math.nan
    if np.all(differences == 0.0):
        return 1.0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            p = float(sps.wilcoxon(differences).pvalue)
    except ValueError:
        return math.nan
    return p if math.isfinite(p) else math.nan


def win_tie_loss(a: np.ndarray, b: np.ndarray) -> tuple[int, int, int]:
    """Counts of pairs with ``a > b``, ``a == b`` and ``a < b`` (exact comparisons, no tolerance)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return int((a > b).sum()), int((a == b).sum()), int((a < b).sum())


def paired_comparison(
    a: ArrayOrSeries, b: ArrayOrSeries, *, n_boot: int = 10_000, confidence: float = 0.95, seed: int = 0
) -> PairedComparison:
    """Compare methods A and B on one metric over the same test pairs.

    Inputs: ``a`` and ``b`` hold one value per test pair (two Series aligned on their index, or two
    equal-length 1-D arrays paired by position; see :func:`align_pairs`). Pairs missing from
    either Series, or with a NaN value for either method, are dropped and counted.

    Output: a :class:`PairedComparison` with the means, ``mean_diff = mean(a - b)``, its
    percentile-bootstrap CI (pairs resampled with replacement, ``n_boot`` resamples,
    ``numpy.random.default_rng(seed)``, so the result is deterministic), the two-sided Wilcoxon
    signed-rank p-value of ``a - b`` (:func:`wilcoxon_p`: exact for small n without ties) and the
    win/tie/loss counts of A against B.
    """
    a_values, b_values, dropped_unaligned, dropped_nan = align_pairs(a, b)
    differences = a_values - b_values
    n = int(differences.size)
    ci_low, ci_high = bootstrap_mean_ci(differences, n_boot=n_boot, confidence=confidence, seed=seed)
    wins, ties, losses = win_tie_loss(a_values, b_values)
    return PairedComparison(
        n=n,
        mean_a=float(a_values.mean()) if n else math.nan,
        mean_b=float(b_values.mean()) if n else math.nan,
        mean_diff=float(differences.mean()) if n else math.nan,
        ci_low=ci_low,
        ci_high=ci_high,
        confidence=confidence,
        p_value=wilcoxon_p(differences),
        wins=wins,
        ties=ties,
        losses=losses,
        dropped_unaligned=dropped_unaligned,
        dropped_nan=dropped_nan,
        dropped=dropped_unaligned + dropped_nan,
    )


# ---------------------------------------------------------------------------------------------
# Multiple testing
# ---------------------------------------------------------------------------------------------


def holm(p_values: ArrayOrSeries) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values, in the order of the input.

    With the ``m`` non-NaN p-values sorted ascending, ``p_(1) <= ... <= p_(m)``, the adjusted value
    of the i-th smallest is ``min(1, max_{j <= i} (m - j + 1) * p_(j))`` (step-down, so the
    adjusted values are monotone in the sorted order). NaN entries stay NaN and are not counted
    in ``m``. Rejecting where the adjusted value is ``<= alpha`` controls the family-wise error
    rate at ``alpha``. Raises ``ValueError`` for values outside [0, 1] or input that is not 1-D.
    """
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1:
        raise ValueError(f"p_values must be 1-D, got shape {p.shape}")
    valid = ~np.isnan(p)
    if np.any((p[valid] < 0.0) | (p[valid] > 1.0)):
        raise ValueError("p-values must lie in [0, 1]")
    adjusted = np.full(p.shape, np.nan)
    idx = np.flatnonzero(valid)
    m = idx.size
    order = idx[np.argsort(p[idx], kind="stable")]
    scaled = (m - np.arange(m)) * p[order]
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted


def significant(p_adj: ArrayOrSeries | float, alpha: float = 0.05) -> np.ndarray:
    """Decision rule for (adjusted) p-values: ``True`` where ``p_adj <= alpha``; NaN gives ``False``.

    Returns a boolean array of the input's shape (a 0-d array for a scalar).
    """
    p = np.asarray(p_adj, dtype=float)
    return np.less_equal(p, alpha, where=~np.isnan(p), out=np.zeros(p.shape, dtype=bool))


# ---------------------------------------------------------------------------------------------
# Robustness and seed spread
# ---------------------------------------------------------------------------------------------


def _finite_values(values: ArrayOrSeries) -> np.ndarray:
    """The non-NaN values of ``values`` as a flat float64 array."""
    flat = np.asarray(values, dtype=float).ravel()
    return flat[~np.isnan(flat)]


def dsc30(values: ArrayOrSeries) -> float:
    """Learn2Reg's robustness figure DSC30: the 30th percentile of the Dice values.

    Definition, as in Learn2Reg's official evaluation script (github.com/MDL-UzL/L2R,
    ``evaluation/evaluation.py``: ``'30': np.quantile(all_means_metric, .3)``): the 0.3-quantile of
    the values with numpy's default linear interpolation, i.e. with the ``n`` values sorted
    ascending, ``v[k] + f * (v[k + 1] - v[k])`` where ``k + f = 0.3 * (n - 1)``. It is a cut-off,
    not a mean of the lowest 30 % (that is :func:`lowest_fraction_mean`).

    Learn2Reg applies it to the per-case Dice, i.e. one value per test pair (the mean over the
    pair's labels); passing per pair x label values gives a label-level variant. NaNs are ignored
    here (the official script would propagate them). Returns NaN when no value is left.
    """
    finite = _finite_values(values)
    return float(np.quantile(finite, 0.3)) if finite.size else math.nan


def lowest_fraction_mean(values: ArrayOrSeries, fraction: float = 0.3) -> float:
    """Mean of the lowest ``fraction`` of the values (by default the worst 30 % of Dice values).

    With ``n`` non-NaN values, the ``k = ceil(fraction * n)`` smallest are averaged (so at least
    one value whenever ``n >= 1``; e.g. n = 10 -> 3 values, n = 7 -> 3 values). NaNs are ignored;
    returns NaN when no value is left. ``fraction`` must lie in (0, 1].
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    finite = np.sort(_finite_values(values))
    if finite.size == 0:
        return math.nan
    k = math.ceil(fraction * finite.size)
    return float(finite[:k].mean())


def seed_spread(per_seed_means: ArrayOrSeries) -> tuple[float, float, int]:
    """Mean and sample standard deviation of a metric's per-seed means.

    Input: one value per training seed (each already the mean over test pairs). NaNs (e.g. a
    failed seed) are excluded and not counted. Output: ``(mean, std, n)`` with ``std`` the sample
    standard deviation (``ddof=1``), NaN when ``n == 1``; ``(nan, nan, 0)`` when ``n == 0``.
    """
    finite = _finite_values(per_seed_means)
    n = int(finite.size)
    mean = float(finite.mean()) if n else math.nan
    std = float(finite.std(ddof=1)) if n > 1 else math.nan
    return mean, std, n


# ---------------------------------------------------------------------------------------------
# Wording and ranking
# ---------------------------------------------------------------------------------------------


def describe_difference(
    comparison: PairedComparison,
    alpha_adjusted_p: float,
    metric_higher_is_better: bool | None = True,
    *,
    alpha: float = 0.05,
) -> str:
    """A short phrase for method A's metric relative to method B's.

    ``"significantly higher"`` or ``"significantly lower"`` when ``alpha_adjusted_p <= alpha`` (the
    :func:`significant` rule), the direction being the sign of ``comparison.mean_diff``;
    otherwise ``"no significant difference"`` (also for a NaN p-value, and for a zero or NaN mean
    difference, for which no direction can be named). With ``metric_higher_is_better`` True or
    False the significant phrases get the verdict appended, ``" (better)"`` or ``" (worse)"``
    (e.g. a significantly lower TRE is ``"significantly lower (better)"``); with ``None`` the bare
    phrase is returned.
    """
    diff = comparison.mean_diff
    if not bool(significant(alpha_adjusted_p, alpha)) or not diff or math.isnan(diff):
        return "no significant difference"
    higher = diff > 0
    phrase = "significantly higher" if higher else "significantly lower"
    if metric_higher_is_better is None:
        return phrase
    return phrase + (" (better)" if higher == metric_higher_is_better else " (worse)")


def rank_methods(table: pd.DataFrame, higher_is_better: Mapping[str, bool]) -> pd.DataFrame:
    """Rank methods per (dataset, metric) and average the ranks (Learn2Reg-style overall rank).

    Input: ``table`` with columns ``dataset, method, metric, value``, exactly one aggregate value
    per (dataset, method, metric) and every method present, non-NaN, in every (dataset, metric)
    (otherwise ``ValueError``); ``higher_is_better`` maps each metric to whether higher values are
    better (a missing metric is a ``KeyError``).

    For each (dataset, metric) the methods are ranked 1 = best, tied values sharing the average
    of their ranks (``pandas.Series.rank(method="average")``); ``mean_rank`` is the arithmetic mean
    of a method's ranks over all (dataset, metric) columns. This is the simple
    arithmetic-mean-of-ranks variant: Learn2Reg itself combines per-metric ranks by a geometric
    mean, with significance-aware ranking (methods not significantly different share a rank).

    Output: one row per method (index ``method``), one column per (dataset, metric) named
    ``"<dataset>/<metric>"`` holding the ranks, and a ``mean_rank`` column; rows sorted by
    ``mean_rank`` (ties by method name).
    """
    missing_columns = {"dataset", "method", "metric", "value"} - set(table.columns)
    if missing_columns:
        raise ValueError(f"table lacks columns {sorted(missing_columns)}")
    if table.duplicated(["dataset", "method", "metric"]).any():
        raise ValueError("table has more than one value for some (dataset, method, metric)")
    values = table.pivot(index="method", columns=["dataset", "metric"], values="value")
    if values.isna().any().any():
        raise ValueError("every method needs a non-NaN value for every (dataset, metric)")
    ranks = pd.DataFrame(index=values.index)
    for dataset, metric in values.columns:
        ascending = not higher_is_better[metric]
        ranks[f"{dataset}/{metric}"] = values[(dataset, metric)].rank(method="average", ascending=ascending)
    ranks["mean_rank"] = ranks.mean(axis=1)
    ranks.index.name = "method"
    return ranks.sort_values(["mean_rank", "method"], kind="stable")

"""Statistics for a registration-benchmark report: paired method comparisons, multiple testing,
robustness figures, seed spread and a cross-dataset rank.

Pure functions on numpy arrays and pandas objects: no file I/O, no formatting of numbers.

- One estimand per comparison: the mean difference A - B over test pairs (and seeds). Its
  interval and its p-value come from one bootstrap that redraws what is really independent
  (:func:`resampling_for`: subjects for inter-subject pairs, moving images for atlas-based sets,
  pairs when no image is shared), so a verdict's direction, interval and test always agree.
- :func:`paired_comparison` is about two *trained models* (seed-averaged values: only the test
  subjects vary); :func:`seed_comparison` is about two *training methods* (seeds and subjects
  redrawn together). Both return :class:`PairedComparison`.
- Ties: values equal within float noise (:func:`tied`) differ by 0.
- :func:`holm` adjusts a family of p-values (Holm-Bonferroni); :func:`significant` applies the
  decision rule ``p_adj <= alpha``; :func:`describe_difference` words it.
- :func:`dsc30` is Learn2Reg's robustness figure (the 30th percentile of per-case Dice, as the
  official evaluation script computes it); :func:`lowest_fraction_mean` is the related tail mean.
- :func:`seed_spread` summarises a metric over training seeds.
- :func:`rank_methods` ranks methods per (dataset, metric) and averages the ranks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = [
    "TIE_RTOL",
    "TIE_ATOL",
    "N_BOOT",
    "CONFIDENCE",
    "Resampling",
    "resampling_for",
    "tied",
    "paired_differences",
    "win_tie_loss",
    "bootstrap_replicates",
    "percentile_interval",
    "bootstrap_p",
    "PairedComparison",
    "align_pairs",
    "paired_comparison",
    "seed_comparison",
    "GapFraction",
    "gap_fraction",
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
# Paired comparison of two methods: one estimand, a subject-aware bootstrap
# ---------------------------------------------------------------------------------------------

#: Two values closer than this are equal: float64 arithmetic noise (e.g. a mean over labels summed
#: in another order, ~1e-16), far below what one voxel changes (~1e-7 of a Dice, a voxel of HD95).
TIE_RTOL = 1e-9
TIE_ATOL = 1e-12
#: Bootstrap resamples: with B = 9,999 the interval's order statistics and the p-value agree exactly
#: (see :func:`percentile_interval` and :func:`bootstrap_p`).
N_BOOT = 9_999
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Resampling:
    """Which parts of a set of test pairs are independent: the units a bootstrap redraws.

    Attributes:
        unit: ``"subject"`` (images shared between pairs: a pair is kept as often as both its
            images are drawn), ``"moving image"`` (atlas-based: one fixed image in every pair),
            ``"fixed image"`` (one moving image in every pair) or ``"pair"`` (no image is in two
            pairs, or positional data with no names).
        units: the names of the units (image names, or pair labels for ``"pair"``).
        pair_units: ``(n_pairs, 2)`` int array: the indices into ``units`` of each pair's units;
            the second column is -1 when a pair depends on one unit only.
    """

    unit: str
    units: tuple[str, ...]
    pair_units: np.ndarray

    @property
    def n_units(self) -> int:
        return len(self.units)

    def describe(self) -> str:
        """E.g. ``"6 subjects (each in 10 of 30 pairs)"`` or ``"20 moving images (atlas-based)"``."""
        n_pairs = len(self.pair_units)
        if self.unit == "subject":
            counts = np.bincount(self.pair_units[self.pair_units >= 0], minlength=self.n_units)
            lo, hi = int(counts.min()), int(counts.max())
            each = f"{lo}" if lo == hi else f"{lo} to {hi}"
            return f"{self.n_units} subjects (each in {each} of {n_pairs} pairs)"
        if self.unit == "moving image":
            return f"{self.n_units} moving images (atlas-based: one fixed image)"
        if self.unit == "fixed image":
            return f"{self.n_units} fixed images (one moving image)"
        return f"{self.n_units} pairs (no image in two pairs)"


def resampling_for(pairs: Sequence[tuple[str, str]] | int) -> Resampling:
    """The independent units of a set of test pairs ``(fixed, moving)``, chosen from its pairing.

    - one fixed image in every pair (atlas-based; at least 2 pairs): the moving images;
    - one moving image in every pair: the fixed images;
    - no image in more than one pair (e.g. intra-subject pairs): the pairs;
    - otherwise (inter-subject pairs sharing images): the subjects (every image name, in either
      role); a pair depends on both of its images.

    An ``int`` stands for that many pairs without names (positional data): the pairs are the units.
    """
    if isinstance(pairs, int):
        return Resampling("pair", tuple(str(i) for i in range(pairs)), np.stack(
            [np.arange(pairs), np.full(pairs, -1)], axis=1).reshape(pairs, 2))  # fmt: skip
    pairs = [(str(f), str(m)) for f, m in pairs]
    fixed, moving = [f for f, _ in pairs], [m for _, m in pairs]

    def by(names: list[str], unit: str) -> Resampling:
        units = tuple(dict.fromkeys(names))
        index = {u: i for i, u in enumerate(units)}
        return Resampling(unit, units, np.array([[index[n], -1] for n in names], dtype=int).reshape(-1, 2))

    if len(pairs) >= 2 and len(set(fixed)) == 1:
        return by(moving, "moving image")
    if len(pairs) >= 2 and len(set(moving)) == 1:
        return by(fixed, "fixed image")
    names = fixed + moving
    if len(set(names)) == len(names):
        return by([f"{f} → {m}" for f, m in pairs], "pair")
    units = tuple(dict.fromkeys(names))
    index = {u: i for i, u in enumerate(units)}
    pair_units = np.array([[index[f], index[m] if m != f else -1] for f, m in pairs], dtype=int)
    return Resampling("subject", units, pair_units.reshape(-1, 2))


def tied(a: ArrayOrSeries, b: ArrayOrSeries) -> np.ndarray:
    """Where ``a`` and ``b`` are equal within float noise: ``|a - b| <= TIE_ATOL + TIE_RTOL * |b|``
    (``numpy.isclose``); NaN is never tied."""
    return np.isclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=TIE_RTOL, atol=TIE_ATOL)


def paired_differences(a: ArrayOrSeries, b: ArrayOrSeries) -> np.ndarray:
    """``a - b`` with the differences of tied values (:func:`tied`) set to exactly 0."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return np.where(tied(a, b), 0.0, a - b)


def win_tie_loss(a: np.ndarray, b: np.ndarray) -> tuple[int, int, int]:
    """Counts of pairs with ``a > b``, ``a`` tied with ``b`` (:func:`tied`) and ``a < b``."""
    d = paired_differences(a, b)
    return int((d > 0).sum()), int((d == 0).sum()), int((d < 0).sum())


def bootstrap_replicates(
    differences: np.ndarray,
    resampling: Resampling,
    *,
    resample_seeds: bool = False,
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> np.ndarray:
    """Bootstrap replicates of the mean difference, redrawing independent units (and seeds).

    Input: ``differences`` of shape ``(n_seeds, n_pairs)`` (NaN where a seed lacks a pair), the
    pairs in the order of ``resampling.pair_units``. Each replicate draws, from
    ``numpy.random.default_rng(seed)`` and in this order, ``n_seeds`` seeds with replacement
    (``rng.integers(0, n_seeds, (n_boot, n_seeds))``; only with ``resample_seeds``, otherwise every
    seed counts once) and then ``n_units`` units with replacement
    (``rng.integers(0, n_units, (n_boot, n_units))``). A unit drawn ``k`` times weighs ``k``; a
    pair weighs the product of its units' weights (so an inter-subject pair is kept as often as both
    of its subjects are drawn); a cell weighs its seed's weight times its pair's. The replicate is
    the weighted mean of the non-NaN cells; NaN when that weight is zero (no pair had all its units
    drawn). Seeds and units are drawn independently: a crossed design (the same test subjects for
    every seed).

    Output: ``(n_boot,)`` float64 replicates.
    """
    d = np.asarray(differences, dtype=float)
    if d.ndim != 2 or d.shape[1] != len(resampling.pair_units):
        raise ValueError(f"differences must be (n_seeds, {len(resampling.pair_units)}), got shape {d.shape}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    valid = ~np.isnan(d)
    values = np.where(valid, d, 0.0)
    n_seeds, n_units = d.shape[0], resampling.n_units
    rng = np.random.default_rng(seed)
    seed_draws = rng.integers(0, n_seeds, size=(n_boot, n_seeds)) if resample_seeds else None
    unit_draws = rng.integers(0, n_units, size=(n_boot, n_units))
    first, second = resampling.pair_units[:, 0], resampling.pair_units[:, 1]
    out = np.empty(n_boot)
    for start in range(0, n_boot, 1000):  # blocks bound the (block, n_pairs) weights' memory
        stop = min(n_boot, start + 1000)
        rows = np.arange(stop - start)[:, None]
        unit_w = np.zeros((stop - start, n_units + 1))
        np.add.at(unit_w, (rows, unit_draws[start:stop]), 1.0)
        unit_w[:, n_units] = 1.0  # the column that index -1 reads: a pair with one unit
        pair_w = unit_w[:, first] * unit_w[:, second]  # (block, n_pairs)
        if seed_draws is None:
            seed_w = np.ones((stop - start, n_seeds))
        else:
            seed_w = np.zeros((stop - start, n_seeds))
            np.add.at(seed_w, (rows, seed_draws[start:stop]), 1.0)
        total = np.einsum("bs,sp,bp->b", seed_w, values, pair_w)
        weight = np.einsum("bs,sp,bp->b", seed_w, valid.astype(float), pair_w)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start:stop] = np.where(weight > 0, total / weight, np.nan)
    return out


def percentile_interval(replicates: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile interval of the finite ``replicates`` by order statistics.

    With ``B`` finite replicates sorted ascending and ``k = floor((1 - confidence) / 2 * (B + 1))``,
    the interval is ``(r_(k), r_(B + 1 - k))`` (1-based). For ``B = 9,999`` at 95 % that is the
    250th and 9,750th replicate. It excludes 0 exactly when :func:`bootstrap_p` is at most
    ``1 - confidence``. ``(nan, nan)`` when ``k < 1`` (too few replicates).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    r = np.sort(_finite_values(replicates))
    k = math.floor((1.0 - confidence) / 2.0 * (r.size + 1) + 1e-9)
    if k < 1:
        return math.nan, math.nan
    return float(r[k - 1]), float(r[r.size - k])


def bootstrap_p(replicates: np.ndarray) -> float:
    """Two-sided bootstrap p-value of "the mean difference is 0", by inverting the percentile interval.

    With ``B`` finite replicates: ``min(1, 2 * min(1 + #{r <= 0}, 1 + #{r >= 0}) / (B + 1))``, the
    smallest ``alpha`` at which the ``1 - alpha`` interval of :func:`percentile_interval` excludes
    0. Replicates all 0 (every difference tied) give 1. NaN without finite replicates.
    """
    r = _finite_values(replicates)
    if r.size == 0:
        return math.nan
    tail = min(1 + int((r <= 0).sum()), 1 + int((r >= 0).sum()))
    return min(1.0, 2.0 * tail / (r.size + 1))


@dataclass(frozen=True)
class PairedComparison:
    """Method A against method B on one metric: one estimand, its interval and its test.

    The estimand is the mean difference ``A - B`` over test pairs (and seeds). Its interval and its
    p-value come from the same bootstrap (:func:`bootstrap_replicates`), so the p-value is at most
    ``1 - confidence`` exactly when the interval excludes 0, and a verdict's direction is the side
    of 0 its interval lies on (:func:`describe_difference`).

    Attributes:
        n: test pairs used (present for both methods, neither value NaN).
        n_seeds: seeds in the analysis (1 for seed-averaged values).
        seeds_resampled: whether the bootstrap redrew seeds (a claim about the training method).
        mean_a, mean_b: means of A's and B's values over the cells used.
        mean_diff: the estimand: mean of ``A - B`` over the cells used (tied values differ by 0).
        ci_low, ci_high: the bootstrap percentile interval of ``mean_diff`` at ``confidence``.
        p_value: the two-sided bootstrap p-value (:func:`bootstrap_p`).
        unit, n_units, units_description: what was resampled (:class:`Resampling`).
        n_boot, n_boot_used: replicates drawn, and those with a defined mean (see
            :func:`bootstrap_replicates`).
        wins, ties, losses: cells with A above, tied with (:func:`tied`) and below B.
        dropped_unaligned, dropped_nan, dropped: pairs in one Series only, aligned pairs with a NaN
            value, and their sum (for seed-level comparisons: over all seeds).
    """

    n: int
    n_seeds: int
    seeds_resampled: bool
    mean_a: float
    mean_b: float
    mean_diff: float
    ci_low: float
    ci_high: float
    confidence: float
    p_value: float
    unit: str
    n_units: int
    units_description: str
    n_boot: int
    n_boot_used: int
    wins: int
    ties: int
    losses: int
    dropped_unaligned: int
    dropped_nan: int
    dropped: int

    @property
    def direction(self) -> int:
        """+1 when the interval lies above 0, -1 below, 0 when it holds 0 (or is undefined)."""
        if self.ci_low > 0:
            return 1
        if self.ci_high < 0:
            return -1
        return 0


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
    kept_a, kept_b, _, dropped_unaligned, dropped_nan = _align(a, b)
    return kept_a, kept_b, dropped_unaligned, dropped_nan


def _align(a: ArrayOrSeries, b: ArrayOrSeries) -> tuple[np.ndarray, np.ndarray, list, int, int]:
    """:func:`align_pairs` plus the labels of the kept pairs (positions for arrays)."""
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
        labels = list(common)
    else:
        a_values, b_values = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
        if a_values.ndim != 1 or a_values.shape != b_values.shape:
            raise ValueError(f"a and b must be 1-D of equal length, got shapes {a_values.shape} and {b_values.shape}")
        dropped_unaligned = 0
        labels = list(range(a_values.size))
    keep = ~(np.isnan(a_values) | np.isnan(b_values))
    kept = [lab for lab, k in zip(labels, keep, strict=True) if k]
    return a_values[keep], b_values[keep], kept, dropped_unaligned, int((~keep).sum())


def _resampling_of(labels: list, positional: bool) -> Resampling:
    """Units for pairs labelled ``(fixed, moving)``; pairs themselves for positions or other labels."""
    if not positional and labels and all(isinstance(x, tuple) and len(x) == 2 for x in labels):
        return resampling_for(labels)
    return resampling_for(len(labels))


def _comparison(a_cells: np.ndarray, b_cells: np.ndarray, resampling: Resampling, *, resample_seeds: bool,
                n_boot: int, confidence: float, seed: int, dropped_unaligned: int, dropped_nan: int,
                n_pairs: int) -> PairedComparison:  # fmt: skip
    """The comparison of ``(n_seeds, n_pairs)`` cells of A and B (NaN: absent)."""
    differences = np.where(np.isnan(a_cells) | np.isnan(b_cells), np.nan, paired_differences(a_cells, b_cells))
    used = ~np.isnan(differences)
    n_cells = int(used.sum())
    if n_cells and resampling.n_units >= 2:
        replicates = bootstrap_replicates(differences, resampling, resample_seeds=resample_seeds, n_boot=n_boot,
                                          seed=seed)  # fmt: skip
    else:
        replicates = np.full(n_boot, np.nan)
    ci_low, ci_high = percentile_interval(replicates, confidence)
    wins, ties, losses = (int((differences[used] > 0).sum()), int((differences[used] == 0).sum()),
                          int((differences[used] < 0).sum()))  # fmt: skip
    return PairedComparison(
        n=n_pairs,
        n_seeds=int(differences.shape[0]),
        seeds_resampled=resample_seeds,
        mean_a=float(a_cells[used].mean()) if n_cells else math.nan,
        mean_b=float(b_cells[used].mean()) if n_cells else math.nan,
        mean_diff=float(differences[used].mean()) if n_cells else math.nan,
        ci_low=ci_low,
        ci_high=ci_high,
        confidence=confidence,
        p_value=bootstrap_p(replicates),
        unit=resampling.unit,
        n_units=resampling.n_units,
        units_description=resampling.describe(),
        n_boot=n_boot,
        n_boot_used=int(np.isfinite(replicates).sum()),
        wins=wins,
        ties=ties,
        losses=losses,
        dropped_unaligned=dropped_unaligned,
        dropped_nan=dropped_nan,
        dropped=dropped_unaligned + dropped_nan,
    )


def paired_comparison(
    a: ArrayOrSeries,
    b: ArrayOrSeries,
    *,
    resampling: Resampling | None = None,
    n_boot: int = N_BOOT,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> PairedComparison:
    """Compare the models A and B on one metric over the same test pairs (the models as trained).

    Inputs: ``a`` and ``b`` hold one value per test pair: two Series aligned on their index (a
    ``(fixed, moving)`` MultiIndex lets the units be chosen from the pairing, :func:`resampling_for`),
    or two equal-length arrays paired by position (units: pairs). Pairs missing from either Series,
    or NaN for either method, are dropped and counted. ``resampling``: override the units (for the
    kept pairs, in the order of ``a``'s index).

    Output: :class:`PairedComparison`: ``mean_diff = mean(a - b)`` (tied values differ by 0), its
    bootstrap interval and p-value over the independent units (:func:`bootstrap_replicates`,
    deterministic for ``seed``), win/tie/loss counts.
    """
    a_values, b_values, labels, dropped_unaligned, dropped_nan = _align(a, b)
    units = resampling or _resampling_of(labels, not isinstance(a, pd.Series))
    return _comparison(a_values[None, :], b_values[None, :], units, resample_seeds=False, n_boot=n_boot,
                       confidence=confidence, seed=seed, dropped_unaligned=dropped_unaligned,
                       dropped_nan=dropped_nan, n_pairs=a_values.size)  # fmt: skip


def seed_comparison(
    a: Mapping[int, pd.Series],
    b: Mapping[int, pd.Series],
    *,
    n_boot: int = N_BOOT,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> PairedComparison | None:
    """Compare the training methods A and B: seeds and test subjects both as sources of variation.

    Inputs: per training seed, a Series of per-pair values indexed by ``(fixed, moving)``; only the
    seeds both have are used, seed ``s`` of A against seed ``s`` of B. ``None`` with fewer than 2
    such seeds (one seed cannot tell a method's effect from its training run's).

    The estimand is the mean over seeds and pairs of ``A - B`` (tied values differ by 0); the
    bootstrap redraws seeds and independent units together (:func:`bootstrap_replicates` with
    ``resample_seeds``). A pair missing for one seed leaves that cell out.
    """
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return None
    index = a[seeds[0]].index
    for s in seeds:
        index = index.union(a[s].index, sort=False).union(b[s].index, sort=False)
    both = [(a[s].reindex(index).to_numpy(dtype=float), b[s].reindex(index).to_numpy(dtype=float)) for s in seeds]
    a_cells, b_cells = np.stack([x for x, _ in both]), np.stack([y for _, y in both])
    present = ~(np.isnan(a_cells) | np.isnan(b_cells))
    keep = present.any(axis=0)
    in_one = sum(int(a[s].index.symmetric_difference(b[s].index).size) for s in seeds)
    nan_cells = 0
    for s in seeds:
        common = a[s].index.intersection(b[s].index)
        nan_cells += int((a[s].loc[common].isna().to_numpy() | b[s].loc[common].isna().to_numpy()).sum())
    units = _resampling_of([x for x, k in zip(index, keep, strict=True) if k], positional=False)
    return _comparison(a_cells[:, keep], b_cells[:, keep], units, resample_seeds=True, n_boot=n_boot,
                       confidence=confidence, seed=seed, dropped_unaligned=in_one, dropped_nan=nan_cells,
                       n_pairs=int(keep.sum()))  # fmt: skip


@dataclass(frozen=True)
class GapFraction:
    """How much of the gap from a floor (``lr``) to a ceiling (an oracle) a method recovers.

    ``fraction = mean(student - floor) / mean(ceiling - floor)`` over the cells all three have
    (tied values differ by 0); its interval is the percentile interval of the same ratio over
    bootstrap replicates that redraw the same units (and seeds) for numerator and denominator.
    The ratio is only defined when the ceiling is clearly above the floor: ``defined`` is False
    (fraction and interval NaN) unless the gap's interval lies above 0.

    Attributes: ``fraction, ci_low, ci_high``; the gap ``gap = mean(ceiling - floor)`` with
    ``gap_ci_low, gap_ci_high, gap_p`` (as :class:`PairedComparison`); ``n`` pairs, ``n_seeds``,
    ``seeds_resampled``, ``units_description``, ``confidence``, ``defined``.
    """

    fraction: float
    ci_low: float
    ci_high: float
    gap: float
    gap_ci_low: float
    gap_ci_high: float
    gap_p: float
    n: int
    n_seeds: int
    seeds_resampled: bool
    units_description: str
    confidence: float
    defined: bool


def gap_fraction(
    student: Mapping[int, pd.Series],
    floor: Mapping[int, pd.Series],
    ceiling: Mapping[int, pd.Series],
    *,
    resample_seeds: bool,
    n_boot: int = N_BOOT,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> GapFraction | None:
    """The fraction of the ``floor`` -> ``ceiling`` gap that ``student`` recovers (:class:`GapFraction`).

    Inputs: per seed, Series of per-pair values indexed by ``(fixed, moving)``; the seeds all three
    have are used. ``resample_seeds``: redraw seeds with the subjects (a claim about the methods;
    needs 2 or more seeds, else ``None``); without it pass one "seed" of seed-averaged values (a
    claim about these trained models). ``None`` when no seed or pair is common to all three.
    """
    seeds = sorted(set(student) & set(floor) & set(ceiling))
    if not seeds or (resample_seeds and len(seeds) < 2):
        return None
    index = student[seeds[0]].index
    for s in seeds:
        index = index.intersection(floor[s].index, sort=False).intersection(ceiling[s].index, sort=False)
    if not len(index):
        return None

    def cells(values: Mapping[int, pd.Series]) -> np.ndarray:
        return np.stack([values[s].reindex(index).to_numpy(dtype=float) for s in seeds])

    a, lo, hi = cells(student), cells(floor), cells(ceiling)
    missing = np.isnan(a) | np.isnan(lo) | np.isnan(hi)
    num = np.where(missing, np.nan, paired_differences(a, lo))
    den = np.where(missing, np.nan, paired_differences(hi, lo))
    keep = ~missing.all(axis=0)
    num, den = num[:, keep], den[:, keep]
    units = _resampling_of([x for x, k in zip(index, keep, strict=True) if k], positional=False)
    if units.n_units < 2:
        return None
    kwargs = {"resample_seeds": resample_seeds, "n_boot": n_boot, "seed": seed}
    num_r = bootstrap_replicates(num, units, **kwargs)
    den_r = bootstrap_replicates(den, units, **kwargs)  # the same draws: same seed, shapes and units
    gap = float(np.nanmean(den))
    gap_low, gap_high = percentile_interval(den_r, confidence)
    defined = bool(gap_low > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = num_r / den_r
    ratio[~np.isfinite(ratio)] = np.nan  # a replicate whose gap is exactly 0 has no ratio
    ratio_low, ratio_high = percentile_interval(ratio, confidence) if defined else (math.nan, math.nan)
    return GapFraction(
        fraction=float(np.nanmean(num)) / gap if defined else math.nan,
        ci_low=ratio_low,
        ci_high=ratio_high,
        gap=gap,
        gap_ci_low=gap_low,
        gap_ci_high=gap_high,
        gap_p=bootstrap_p(den_r),
        n=int(keep.sum()),
        n_seeds=len(seeds),
        seeds_resampled=resample_seeds,
        units_description=units.describe(),
        confidence=confidence,
        defined=defined,
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
    """A short phrase for method A's metric relative to method B's, from one estimand.

    ``"significantly higher"`` or ``"significantly lower"`` when ``alpha_adjusted_p <= alpha`` (the
    :func:`significant` rule); the direction is the side of 0 that the comparison's interval lies
    on (:attr:`PairedComparison.direction`), never a second statistic, so a verdict cannot disagree
    with its interval. Since an adjusted p-value is at least the raw one, a significant adjusted p
    (with ``alpha <= 1 - confidence``) implies an interval clear of 0. Otherwise
    ``"no significant difference"``, with ``" (p ≤ alpha before Holm's correction)"`` appended when
    only the correction for several comparisons took significance away. With
    ``metric_higher_is_better`` True or False the significant phrases get the verdict appended,
    ``" (better)"`` or ``" (worse)"`` (a significantly lower HD95 is ``"significantly lower
    (better)"``); with ``None`` the bare phrase is returned.
    """
    direction = comparison.direction
    if not bool(significant(alpha_adjusted_p, alpha)) or direction == 0:
        if bool(significant(comparison.p_value, alpha)) and direction != 0:
            return f"no significant difference (p ≤ {alpha:g} before Holm's correction)"
        return "no significant difference"
    higher = direction > 0
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

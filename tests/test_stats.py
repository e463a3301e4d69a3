"""Tests for crd.stats against an independent reference (tests/stats_reference.py), statsmodels,
hand-worked examples and simulation (coverage at the stated level and unit of replication)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests

import stats_reference as R
from crd import stats as S

# ---------------------------------------------------------------------------------------------
# Designs: which units the bootstrap redraws
# ---------------------------------------------------------------------------------------------

SUBJECTS = [f"s{i}" for i in range(6)]
ALL_ORDERED = list(itertools.permutations(SUBJECTS, 2))  # 30 pairs, each subject in 10


def _series(values, pairs) -> pd.Series:
    return pd.Series(np.asarray(values, dtype=float), index=pd.MultiIndex.from_tuples(pairs, names=["fixed", "moving"]))


def test_units_are_chosen_from_the_pairing():
    subjects = S.resampling_for(ALL_ORDERED)
    assert subjects.unit == "subject" and subjects.n_units == 6
    assert subjects.describe() == "6 subjects (each in 10 of 30 pairs)"
    atlas = S.resampling_for([("atlas", f"m{i}") for i in range(5)])
    assert atlas.unit == "moving image" and atlas.n_units == 5 and atlas.describe().startswith("5 moving images")
    disjoint = S.resampling_for([(f"f{i}", f"m{i}") for i in range(4)])
    assert disjoint.unit == "pair" and disjoint.n_units == 4
    chain = S.resampling_for([("a", "b"), ("b", "c"), ("c", "d")])  # consecutive pairs share subjects
    assert chain.unit == "subject" and chain.n_units == 4
    assert S.resampling_for(7).unit == "pair"
    # a Series indexed by (fixed, moving) is resampled by its pairing, an array by its pairs
    x = np.linspace(0, 1, 30)
    assert S.paired_comparison(_series(x, ALL_ORDERED), _series(0 * x, ALL_ORDERED), n_boot=99).unit == "subject"
    assert S.paired_comparison(x, 0 * x, n_boot=99).unit == "pair"


@pytest.mark.parametrize(
    "pairs",
    [ALL_ORDERED, [("atlas", f"m{i}") for i in range(8)], [(f"f{i}", f"m{i}") for i in range(8)],
     [("a", "b"), ("b", "c"), ("c", "d"), ("d", "e"), ("e", "a")]],
    ids=["inter-subject", "atlas", "disjoint", "ring"],
)  # fmt: skip
def test_model_comparison_equals_the_independent_reference(pairs):
    rng = np.random.default_rng(len(pairs))
    a = rng.normal(0.60, 0.05, len(pairs))
    b = a - rng.normal(0.01, 0.02, len(pairs))
    result = S.paired_comparison(_series(a, pairs), _series(b, pairs), n_boot=2_999, seed=4)
    reps = R.replicates([[R.difference(x, y) for x, y in zip(a, b, strict=True)]], pairs, resample_seeds=False,
                        n_boot=2_999, seed=4)  # fmt: skip
    assert result.mean_diff == pytest.approx(float(np.mean(a - b)), abs=1e-15)
    assert (result.ci_low, result.ci_high) == pytest.approx(R.interval(reps), abs=1e-15)
    assert result.p_value == pytest.approx(R.p_value(reps), abs=1e-15)
    assert result.n_boot_used == sum(not math.isnan(r) for r in reps)
    assert result.confidence == 0.95 and result.n_seeds == 1 and not result.seeds_resampled


def test_seed_comparison_equals_the_independent_reference():
    rng = np.random.default_rng(21)
    seeds = {0: 0.02, 1: -0.005, 2: 0.012}
    a = {s: _series(rng.normal(0.6 + off, 0.03, 30), ALL_ORDERED) for s, off in seeds.items()}
    b = {s: _series(rng.normal(0.6, 0.03, 30), ALL_ORDERED) for s in seeds}
    a[1].iloc[4] = np.nan  # a missing cell stays out
    result = S.seed_comparison(a, b, n_boot=1_999, seed=3)
    cells = [[R.difference(x, y) if not math.isnan(x) else math.nan for x, y in zip(a[s], b[s], strict=True)]
             for s in sorted(seeds)]  # fmt: skip
    reps = R.replicates(cells, ALL_ORDERED, resample_seeds=True, n_boot=1_999, seed=3)
    flat = [x for row in cells for x in row if not math.isnan(x)]
    assert result.n_seeds == 3 and result.seeds_resampled and result.dropped_nan == 1
    assert result.mean_diff == pytest.approx(float(np.mean(flat)), abs=1e-15)
    assert (result.ci_low, result.ci_high) == pytest.approx(R.interval(reps), abs=1e-15)
    assert result.p_value == pytest.approx(R.p_value(reps), abs=1e-15)
    assert S.seed_comparison({0: a[0]}, {0: b[0]}) is None  # one seed cannot tell
    assert S.seed_comparison({0: a[0], 1: a[1]}, {1: b[1], 2: b[2]}) is None  # one seed in common


# ---------------------------------------------------------------------------------------------
# One estimand: the interval, the p-value and the verdict agree
# ---------------------------------------------------------------------------------------------


def test_p_is_at_most_alpha_exactly_when_the_interval_excludes_zero():
    rng = np.random.default_rng(12)
    decided = set()
    for rep in range(300):
        shift = rng.uniform(-0.02, 0.02)  # many cases near the boundary
        d = rng.normal(shift, 0.03, 30)
        for confidence in (0.95, 0.9):
            r = S.paired_comparison(_series(d, ALL_ORDERED), _series(0 * d, ALL_ORDERED), confidence=confidence,
                                    seed=rep)  # fmt: skip
            excludes = r.ci_low > 0 or r.ci_high < 0
            assert (r.p_value <= 1 - confidence) == excludes, (rep, confidence, r)
            decided.add(excludes)
    assert decided == {True, False}


def test_a_skewed_loss_does_not_turn_29_wins_into_a_significant_loss():
    """Issue 22's constructed case: A better by 0.01 on 29 of 30 pairs, worse by 0.5 on one."""
    b = np.full(30, 0.6)
    a = b + 0.01
    a[7] = b[7] - 0.5
    for x, y in ((a, b), (_series(a, ALL_ORDERED), _series(b, ALL_ORDERED))):
        r = S.paired_comparison(x, y)
        assert r.mean_diff == pytest.approx((29 * 0.01 - 0.5) / 30)
        assert (r.wins, r.ties, r.losses) == (29, 0, 1)
        assert r.ci_low < 0 < r.ci_high and r.p_value > 0.05 and r.direction == 0
        assert S.describe_difference(r, r.p_value) == "no significant difference"


def test_float_noise_is_a_tie_not_a_win():
    a, b = np.full(30, 0.1) + 0.2, np.full(30, 0.3)  # 0.30000000000000004 vs 0.3
    assert np.all(a > b)
    r = S.paired_comparison(a, b)
    assert (r.wins, r.ties, r.losses) == (0, 30, 0)
    assert r.mean_diff == 0.0 and r.p_value == 1.0 and (r.ci_low, r.ci_high) == (0.0, 0.0)
    assert S.describe_difference(r, r.p_value) == "no significant difference"
    assert S.win_tie_loss(np.array([0.5, 0.5 + 1e-7, 0.5 - 1e-7]), np.full(3, 0.5)) == (1, 1, 1)  # a voxel counts
    assert S.tied(np.array([2.0, 2.0, 1e-13]), np.array([2.0 + 1e-9, 2.0 + 1e-8, 0.0])).tolist() == [True, False, True]


def test_the_bootstrap_is_deterministic_for_a_seed_and_varies_with_it():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=30), rng.normal(size=30)
    first = S.paired_comparison(a, b, n_boot=1000, seed=7)
    assert first == S.paired_comparison(a, b, n_boot=1000, seed=7)
    other = S.paired_comparison(a, b, n_boot=1000, seed=8)
    assert (first.ci_low, first.ci_high) != (other.ci_low, other.ci_high)
    assert first.ci_low < first.mean_diff < first.ci_high


# ---------------------------------------------------------------------------------------------
# Coverage by simulation: the level, and the unit of replication
# ---------------------------------------------------------------------------------------------


def test_pair_level_interval_covers_at_its_level_with_independent_pairs():
    rng = np.random.default_rng(0)
    covered = 0
    for rep in range(400):
        b = rng.normal(0.0, 1.0, 40)
        a = b + 0.5 + rng.normal(0.0, 1.0, 40)
        r = S.paired_comparison(a, b, n_boot=999, seed=rep)
        covered += r.ci_low <= 0.5 <= r.ci_high
    # measured 0.935 at 95 %; a 90 % interval gives 0.87
    assert 0.92 <= covered / 400 <= 0.975


def test_shared_subjects_need_subject_resampling():
    """Pairs of 10 subjects, each subject shifting every pair it is in: redrawing pairs under-covers badly."""
    rng = np.random.default_rng(0)
    subjects = [f"s{i}" for i in range(10)]
    pairs = list(itertools.permutations(subjects, 2))
    by_subject, by_pair = S.resampling_for(pairs), S.resampling_for(len(pairs))
    covered = [0, 0]
    for rep in range(200):
        effect = dict(zip(subjects, rng.normal(0, 0.02, 10), strict=True))
        d = np.array([0.01 + effect[f] + effect[m] + rng.normal(0, 0.01) for f, m in pairs])
        for k, units in enumerate((by_subject, by_pair)):
            r = S.paired_comparison(d, 0 * d, resampling=units, n_boot=999, seed=rep)
            covered[k] += r.ci_low <= 0.01 <= r.ci_high
    # measured (300 runs): 0.88 by subject, 0.34 by pair
    assert covered[0] / 200 >= 0.83 and covered[1] / 200 <= 0.6


def test_a_claim_about_the_method_redraws_seeds():
    """Training seeds shift every pair: seed-averaged (model-level) intervals under-cover the method's effect."""
    rng = np.random.default_rng(0)
    subjects = [f"s{i}" for i in range(8)]
    pairs = list(itertools.permutations(subjects, 2))
    zero = {s: _series(np.zeros(len(pairs)), pairs) for s in range(5)}
    covered = [0, 0]
    for rep in range(200):
        effect = dict(zip(subjects, rng.normal(0, 0.01, 8), strict=True))
        seed_effect = rng.normal(0, 0.02, 5)
        per_seed = {s: _series([0.01 + seed_effect[s] + effect[f] + effect[m] + rng.normal(0, 0.005)
                                for f, m in pairs], pairs) for s in range(5)}  # fmt: skip
        method = S.seed_comparison(per_seed, zero, n_boot=999, seed=rep)
        models = S.paired_comparison(sum(per_seed.values()) / 5, zero[0], n_boot=999, seed=rep)
        covered[0] += method.ci_low <= 0.01 <= method.ci_high
        covered[1] += models.ci_low <= 0.01 <= models.ci_high
    # measured (300 runs): 0.86 over seeds and subjects, 0.67 over subjects only
    assert covered[0] / 200 >= 0.8 and covered[1] / 200 <= 0.75


# ---------------------------------------------------------------------------------------------
# Means, counts, alignment
# ---------------------------------------------------------------------------------------------


def test_means_and_win_tie_loss_counts():
    a = np.array([0.8, 0.5, 0.6, 0.9, 0.7])
    b = np.array([0.7, 0.5, 0.9, 0.1, 0.7])
    result = S.paired_comparison(a, b, n_boot=100)
    assert (result.wins, result.ties, result.losses) == (2, 2, 1)
    assert result.n == 5 and result.dropped == 0
    assert result.mean_a == pytest.approx(0.7) and result.mean_b == pytest.approx(0.58)
    assert result.mean_diff == pytest.approx(0.12)


def test_series_align_on_the_index_and_nan_pairs_are_dropped():
    a = pd.Series({"p1": 0.9, "p2": 0.8, "p3": np.nan, "p4": 0.6})
    b = pd.Series({"p5": 0.1, "p4": 0.5, "p3": 0.2, "p2": 0.9})  # other order: positional pairing would be wrong
    result = S.paired_comparison(a, b, n_boot=100)
    # used: p2 (0.8 vs 0.9), p4 (0.6 vs 0.5); unaligned: p1, p5; NaN: p3
    assert result.n == 2
    assert (result.dropped_unaligned, result.dropped_nan, result.dropped) == (2, 1, 3)
    assert result.mean_a == pytest.approx(0.7) and result.mean_b == pytest.approx(0.7)
    assert result.mean_diff == pytest.approx(0.0)
    assert (result.wins, result.ties, result.losses) == (1, 0, 1)


def test_arrays_drop_nan_pairs_and_mixed_inputs_are_refused():
    result = S.paired_comparison(np.array([1.0, np.nan, 3.0, 4.0]), np.array([0.0, 1.0, np.nan, 2.0]), n_boot=100)
    assert (result.n, result.dropped_nan, result.dropped_unaligned) == (2, 2, 0)
    assert result.mean_diff == pytest.approx(1.5)
    with pytest.raises(TypeError):
        S.paired_comparison(pd.Series([1.0, 2.0]), np.array([1.0, 2.0]))
    with pytest.raises(ValueError):
        S.paired_comparison(np.array([1.0, 2.0]), np.array([1.0, 2.0, 3.0]))


def test_too_little_to_resample_gives_no_interval():
    r = S.paired_comparison(np.array([0.5]), np.array([0.4]), n_boot=100)
    assert math.isnan(r.ci_low) and math.isnan(r.p_value) and r.direction == 0
    assert S.describe_difference(r, r.p_value) == "no significant difference"


def test_paired_comparison_is_frozen():
    result = S.paired_comparison(np.array([1.0, 2.0]), np.array([0.0, 0.0]), n_boot=10)
    with pytest.raises(AttributeError):
        result.n = 3  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------
# Holm
# ---------------------------------------------------------------------------------------------


def test_holm_hand_worked_example():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    adjusted = S.holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02], rtol=1e-12)


def test_holm_caps_at_one_and_keeps_nans_out_of_the_count():
    adjusted = S.holm([0.01, np.nan, 0.02, 0.6])  # m = 3
    np.testing.assert_allclose(adjusted, [0.03, np.nan, 0.04, 0.6], rtol=1e-12)
    np.testing.assert_allclose(S.holm([0.4, 0.5, 0.9]), [1.0, 1.0, 1.0])
    assert S.holm([]).size == 0
    with pytest.raises(ValueError):
        S.holm([0.5, 1.5])


def test_holm_is_monotone_in_the_sorted_order_and_not_below_raw():
    rng = np.random.default_rng(4)
    p = rng.uniform(0, 0.2, 25)
    p[[3, 17]] = np.nan
    adjusted = S.holm(p)
    valid = ~np.isnan(p)
    assert np.array_equal(np.isnan(adjusted), ~valid)
    order = np.argsort(p[valid])
    assert np.all(np.diff(adjusted[valid][order]) >= 0)
    assert np.all(adjusted[valid] >= p[valid]) and np.all(adjusted[valid] <= 1)


def test_holm_matches_statsmodels():
    p = np.random.default_rng(9).uniform(0, 0.1, 12)
    np.testing.assert_allclose(S.holm(p), multipletests(p, method="holm")[1], rtol=1e-12)
    np.testing.assert_allclose(S.holm(p), R.holm(list(p)), rtol=1e-12)


def test_significant_rule():
    np.testing.assert_array_equal(S.significant([0.01, 0.05, 0.051, np.nan]), [True, True, False, False])
    np.testing.assert_array_equal(S.significant([0.01, 0.05], alpha=0.01), [True, False])


# ---------------------------------------------------------------------------------------------
# DSC30, tail mean, seed spread
# ---------------------------------------------------------------------------------------------


def test_dsc30_is_the_linear_30th_percentile_ignoring_nans():
    values = [0.9, 0.1, np.nan, 0.5, 0.3, 0.7]  # sorted 0.1 0.3 0.5 0.7 0.9; 0.3 * 4 = 1.2
    assert S.dsc30(values) == pytest.approx(0.3 + 0.2 * 0.2)
    ten = np.arange(1, 11) / 10  # 0.3 * 9 = 2.7 -> 0.3 + 0.7 * 0.1
    assert S.dsc30(ten) == pytest.approx(0.37)
    assert math.isnan(S.dsc30([np.nan]))


def test_lowest_fraction_mean_rounds_the_count_up():
    ten = np.arange(1, 11) / 10  # ceil(3.0) = 3 -> (0.1 + 0.2 + 0.3) / 3
    assert S.lowest_fraction_mean(ten) == pytest.approx(0.2)
    seven = np.array([0.7, 0.1, 0.6, 0.2, np.nan, 0.5, 0.3, 0.4])  # 7 values, ceil(2.1) = 3
    assert S.lowest_fraction_mean(seven) == pytest.approx(0.2)
    assert S.lowest_fraction_mean([0.8, 0.4]) == pytest.approx(0.4)  # ceil(0.6) = 1
    assert math.isnan(S.lowest_fraction_mean([]))


def test_seed_spread():
    mean, std, n = S.seed_spread([0.70, 0.74, 0.72])
    assert (mean, n) == (pytest.approx(0.72), 3)
    assert std == pytest.approx(0.02)  # sqrt((0.0004 + 0.0004) / 2)
    mean, std, n = S.seed_spread([0.6])
    assert (mean, n) == (0.6, 1) and math.isnan(std)
    assert S.seed_spread([np.nan, 0.5, 0.7])[2] == 2


# ---------------------------------------------------------------------------------------------
# Wording
# ---------------------------------------------------------------------------------------------


def _comparison(mean_diff: float, *, ci: tuple[float, float] | None = None, p: float = 0.01,
                wins: int = 5, losses: int = 5) -> S.PairedComparison:  # fmt: skip
    low, high = ci if ci is not None else (mean_diff - 0.01, mean_diff + 0.01)
    return S.PairedComparison(
        n=10, n_seeds=1, seeds_resampled=False, mean_a=0.5 + mean_diff, mean_b=0.5, mean_diff=mean_diff,
        ci_low=low, ci_high=high, confidence=0.95, p_value=p, unit="pair", n_units=10,
        units_description="10 pairs", n_boot=999, n_boot_used=999, wins=wins, ties=0, losses=losses,
        dropped_unaligned=0, dropped_nan=0, dropped=0,
    )  # fmt: skip


def test_describe_difference_phrases():
    assert S.describe_difference(_comparison(0.03), 0.01, None) == "significantly higher"
    assert S.describe_difference(_comparison(-0.03), 0.01, None) == "significantly lower"
    assert S.describe_difference(_comparison(0.03, p=0.2), 0.2, None) == "no significant difference"
    assert S.describe_difference(_comparison(0.03, p=np.nan), np.nan) == "no significant difference"
    assert S.describe_difference(_comparison(0.03, p=0.03), 0.03, alpha=0.01) == "no significant difference"


def test_describe_difference_verdict_follows_the_metric_direction():
    assert S.describe_difference(_comparison(0.03), 0.01) == "significantly higher (better)"
    lower_is_better = {"metric_higher_is_better": False}
    assert S.describe_difference(_comparison(-0.5), 0.01, **lower_is_better) == "significantly lower (better)"
    assert S.describe_difference(_comparison(0.5), 0.01, **lower_is_better) == "significantly higher (worse)"
    for phrase in (S.describe_difference(_comparison(d), p) for d in (-1, 0, 1) for p in (0.01, 0.5)):
        assert "beat" not in phrase


def test_describe_difference_takes_its_direction_from_the_interval():
    # the mean, the median or the win count could point the other way; the interval decides
    odd = _comparison(-0.001, ci=(0.002, 0.02), wins=2, losses=8)
    assert S.describe_difference(odd, 0.01) == "significantly higher (better)"
    assert S.describe_difference(_comparison(0.001, ci=(-0.02, -0.002), wins=8, losses=2), 0.01) == (
        "significantly lower (worse)")  # fmt: skip
    # an interval holding 0 is never significant, whatever p says
    assert S.describe_difference(_comparison(0.03, ci=(-0.01, 0.07)), 0.01) == "no significant difference"


def test_describe_difference_says_when_only_holm_took_significance_away():
    r = _comparison(0.03, p=0.02)
    assert S.describe_difference(r, 0.08) == "no significant difference (p ≤ 0.05 before Holm's correction)"
    assert S.describe_difference(_comparison(0.03, p=0.2), 0.6) == "no significant difference"


# ---------------------------------------------------------------------------------------------
# Ranking
# ---------------------------------------------------------------------------------------------


def test_rank_methods_with_a_tie():
    rows = [
        ("lung", "A", "dice", 0.80), ("lung", "B", "dice", 0.70), ("lung", "C", "dice", 0.70),
        ("lung", "A", "tre", 3.0), ("lung", "B", "tre", 2.0), ("lung", "C", "tre", 4.0),
        ("brain", "A", "dice", 0.60), ("brain", "B", "dice", 0.75), ("brain", "C", "dice", 0.65),
        ("brain", "A", "tre", 1.0), ("brain", "B", "tre", 1.5), ("brain", "C", "tre", 2.0),
    ]  # fmt: skip
    table = pd.DataFrame(rows, columns=["dataset", "method", "metric", "value"])
    ranks = S.rank_methods(table, {"dice": True, "tre": False})
    # lung/dice: A 1, B and C tie for 2-3 -> 2.5; lung/tre: B 1, A 2, C 3
    # brain/dice: B 1, C 2, A 3; brain/tre: A 1, B 2, C 3
    assert ranks.loc["A", "lung/dice"] == 1 and ranks.loc["B", "lung/dice"] == 2.5 == ranks.loc["C", "lung/dice"]
    assert ranks.loc["B", "lung/tre"] == 1 and ranks.loc["C", "brain/tre"] == 3
    expected = {"A": (1 + 2 + 3 + 1) / 4, "B": (2.5 + 1 + 1 + 2) / 4, "C": (2.5 + 3 + 2 + 3) / 4}
    assert list(ranks.index) == ["B", "A", "C"]
    assert ranks["mean_rank"].to_dict() == pytest.approx(expected)
    assert set(ranks.columns) == {"lung/dice", "lung/tre", "brain/dice", "brain/tre", "mean_rank"}


def test_rank_methods_refuses_incomplete_or_duplicate_tables():
    table = pd.DataFrame(
        [("d", "A", "dice", 0.8), ("d", "B", "dice", 0.7), ("e", "A", "dice", 0.6)],
        columns=["dataset", "method", "metric", "value"],
    )
    with pytest.raises(ValueError):
        S.rank_methods(table, {"dice": True})  # B has no value on e
    with pytest.raises(ValueError):
        S.rank_methods(pd.concat([table, table.iloc[:1]]), {"dice": True})
    with pytest.raises(KeyError):
        S.rank_methods(table.iloc[:2], {"tre": False})


# ---------------------------------------------------------------------------------------------
# The share of the floor -> ceiling gap a student recovers
# ---------------------------------------------------------------------------------------------


def _gap_design(student_share: float, gap: float = 0.08, seeds=(0, 1, 2), seed: int = 3):
    rng = np.random.default_rng(seed)
    effect = dict(zip(SUBJECTS, rng.normal(0, 0.02, 6), strict=True))
    base = np.array([0.5 + effect[f] + effect[m] for f, m in ALL_ORDERED])
    floor = {s: _series(base + rng.normal(0, 0.01, 30), ALL_ORDERED) for s in seeds}
    ceiling = {s: _series(base + gap + rng.normal(0, 0.01, 30), ALL_ORDERED) for s in seeds}
    student = {s: _series(base + student_share * gap + rng.normal(0, 0.01, 30), ALL_ORDERED) for s in seeds}
    return student, floor, ceiling


@pytest.mark.parametrize("resample_seeds", [True, False])
def test_gap_fraction_equals_the_independent_reference(resample_seeds):
    student, floor, ceiling = _gap_design(0.4)
    if not resample_seeds:  # these models: one "seed" of seed-averaged values
        student, floor, ceiling = ({0: sum(v.values()) / 3} for v in (student, floor, ceiling))
    g = S.gap_fraction(student, floor, ceiling, resample_seeds=resample_seeds, n_boot=1_999, seed=5)
    seeds = sorted(student)
    num = [[R.difference(a, b) for a, b in zip(student[s], floor[s], strict=True)] for s in seeds]
    den = [[R.difference(a, b) for a, b in zip(ceiling[s], floor[s], strict=True)] for s in seeds]
    kwargs = {"resample_seeds": resample_seeds, "n_boot": 1_999, "seed": 5}
    num_r, den_r = R.replicates(num, ALL_ORDERED, **kwargs), R.replicates(den, ALL_ORDERED, **kwargs)
    assert g.defined and g.n == 30 and g.n_seeds == len(seeds) and g.seeds_resampled == resample_seeds
    assert g.fraction == pytest.approx(np.mean(num) / np.mean(den), abs=1e-12)
    assert (g.ci_low, g.ci_high) == pytest.approx(R.interval([x / y for x, y in zip(num_r, den_r, strict=True)]),
                                                  abs=1e-12)  # fmt: skip
    assert (g.gap_ci_low, g.gap_ci_high) == pytest.approx(R.interval(den_r), abs=1e-15)
    assert 0.2 < g.fraction < 0.6 and g.ci_low < g.fraction < g.ci_high


def test_gap_fraction_at_the_floor_the_ceiling_and_without_a_gap():
    student, floor, ceiling = _gap_design(0.4)
    assert S.gap_fraction(floor, floor, ceiling, resample_seeds=True).fraction == 0.0
    assert S.gap_fraction(ceiling, floor, ceiling, resample_seeds=True).fraction == pytest.approx(1.0)
    no_gap = S.gap_fraction(student, floor, floor, resample_seeds=True)  # the ceiling is the floor
    assert not no_gap.defined and math.isnan(no_gap.fraction) and math.isnan(no_gap.ci_low)
    assert no_gap.gap == 0.0 and no_gap.gap_p == 1.0
    one_seed = {0: student[0]}, {0: floor[0]}, {0: ceiling[0]}
    assert S.gap_fraction(*one_seed, resample_seeds=True) is None  # a claim about methods needs seeds
    assert S.gap_fraction(*one_seed, resample_seeds=False).defined

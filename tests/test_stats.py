"""Tests for crd.stats against scipy, hand-worked examples, brute-force enumeration and simulation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from crd import stats as S

# ---------------------------------------------------------------------------------------------
# Wilcoxon signed-rank p-value
# ---------------------------------------------------------------------------------------------


def _exact_wilcoxon_p(differences: np.ndarray) -> float:
    """Two-sided exact p-value by enumerating all 2^n sign assignments of the ranks 1..n
    (distinct, nonzero |differences| only): P(|W+ - n(n+1)/4| >= |w+ - n(n+1)/4|) under H0."""
    n = differences.size
    ranks = np.argsort(np.argsort(np.abs(differences))) + 1
    w_obs = ranks[differences > 0].sum()
    centre = n * (n + 1) / 4
    w_all = np.array([np.dot(signs, ranks) for signs in itertools.product((0, 1), repeat=n)])
    return float(np.mean(np.abs(w_all - centre) >= abs(w_obs - centre) - 1e-12))


def test_wilcoxon_p_equals_scipy_on_the_differences():
    rng = np.random.default_rng(3)
    a = rng.normal(0.7, 0.1, 80)  # n > 50: scipy's normal approximation
    b = a - rng.normal(0.02, 0.05, 80)
    result = S.paired_comparison(a, b, n_boot=100)
    assert result.p_value == pytest.approx(sps.wilcoxon(a - b).pvalue, rel=1e-12)
    assert result.p_value < 0.05


@pytest.mark.parametrize("differences", [[0.3, -0.1, 0.5, 0.7, -0.25, 0.9, 1.1, 0.05], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
def test_wilcoxon_p_is_exact_for_small_n_without_ties(differences):
    d = np.array(differences)
    reference = _exact_wilcoxon_p(d)
    assert S.wilcoxon_p(d) == pytest.approx(reference, rel=1e-12)
    assert S.paired_comparison(d, np.zeros_like(d), n_boot=100).p_value == pytest.approx(reference, rel=1e-12)


def test_all_positive_six_differences_give_p_two_in_sixty_four():
    # the exact test's p (2/64), not the normal approximation's (about 0.028)
    assert S.wilcoxon_p(np.arange(1.0, 7.0)) == pytest.approx(2 / 64)


def test_wilcoxon_special_cases():
    assert S.wilcoxon_p(np.zeros(5)) == 1.0
    assert S.wilcoxon_p(np.zeros(60)) == 1.0  # scipy's normal approximation gives NaN here
    assert math.isnan(S.wilcoxon_p(np.array([0.4])))
    assert math.isnan(S.wilcoxon_p(np.array([])))
    # zero differences are discarded ("wilcox"): same p as without them
    assert S.wilcoxon_p(np.array([0.0, 0.0, 1.0, 2.0, -0.5, 3.0])) == pytest.approx(
        sps.wilcoxon(np.array([1.0, 2.0, -0.5, 3.0])).pvalue
    )


# ---------------------------------------------------------------------------------------------
# Bootstrap confidence interval
# ---------------------------------------------------------------------------------------------


def test_bootstrap_ci_covers_the_true_mean_difference():
    rng = np.random.default_rng(11)
    shift, covered, reps = 0.5, 0, 200
    for rep in range(reps):
        b = rng.normal(0.0, 1.0, 40)
        a = b + shift + rng.normal(0.0, 1.0, 40)
        result = S.paired_comparison(a, b, n_boot=1000, seed=rep)
        covered += result.ci_low <= shift <= result.ci_high
    assert 0.9 <= covered / reps <= 0.99


def test_bootstrap_ci_is_deterministic_for_a_seed_and_varies_with_it():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=30), rng.normal(size=30)
    first = S.paired_comparison(a, b, n_boot=1000, seed=7)
    assert first == S.paired_comparison(a, b, n_boot=1000, seed=7)
    other = S.paired_comparison(a, b, n_boot=1000, seed=8)
    assert (first.ci_low, first.ci_high) != (other.ci_low, other.ci_high)
    assert first.ci_low < first.mean_diff < first.ci_high


def test_bootstrap_ci_shrinks_with_n():
    rng = np.random.default_rng(2)
    small = S.bootstrap_mean_ci(rng.normal(size=20), n_boot=1000)
    large = S.bootstrap_mean_ci(rng.normal(size=500), n_boot=1000)
    assert large[1] - large[0] < (small[1] - small[0]) / 2


def test_bootstrap_ci_width_matches_the_normal_theory_interval_for_large_n():
    # for a large normal sample the 95 % percentile interval is close to mean +- 1.96 s / sqrt(n)
    values = np.random.default_rng(8).normal(1.0, 2.0, 400)
    low, high = S.bootstrap_mean_ci(values, n_boot=4000, seed=1)
    expected_half = 1.959964 * values.std() / math.sqrt(values.size)
    assert (high - low) / 2 == pytest.approx(expected_half, rel=0.05)
    assert (low + high) / 2 == pytest.approx(values.mean(), abs=0.1 * expected_half)


def test_bootstrap_ci_of_a_constant_is_that_constant_and_empty_is_nan():
    assert S.bootstrap_mean_ci(np.full(9, 0.25), n_boot=200) == pytest.approx((0.25, 0.25))
    assert all(math.isnan(v) for v in S.bootstrap_mean_ci(np.array([]), n_boot=200))


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
    multitest = pytest.importorskip("statsmodels.stats.multitest", reason="statsmodels is not installed")
    p = np.random.default_rng(9).uniform(0, 0.1, 12)
    np.testing.assert_allclose(S.holm(p), multitest.multipletests(p, method="holm")[1], rtol=1e-12)


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


def _comparison(mean_diff: float) -> S.PairedComparison:
    return S.PairedComparison(
        n=10, mean_a=0.5 + mean_diff, mean_b=0.5, mean_diff=mean_diff, ci_low=mean_diff - 0.1, ci_high=mean_diff + 0.1,
        confidence=0.95, p_value=0.01, wins=5, ties=0, losses=5, dropped_unaligned=0, dropped_nan=0, dropped=0,
    )  # fmt: skip


def test_describe_difference_phrases():
    assert S.describe_difference(_comparison(0.03), 0.01, None) == "significantly higher"
    assert S.describe_difference(_comparison(-0.03), 0.01, None) == "significantly lower"
    assert S.describe_difference(_comparison(0.03), 0.2, None) == "no significant difference"
    assert S.describe_difference(_comparison(0.03), np.nan) == "no significant difference"
    assert S.describe_difference(_comparison(0.03), 0.03, alpha=0.01) == "no significant difference"


def test_describe_difference_verdict_follows_the_metric_direction():
    assert S.describe_difference(_comparison(0.03), 0.01) == "significantly higher (better)"
    lower_is_better = {"metric_higher_is_better": False}
    assert S.describe_difference(_comparison(-0.5), 0.01, **lower_is_better) == "significantly lower (better)"
    assert S.describe_difference(_comparison(0.5), 0.01, **lower_is_better) == "significantly higher (worse)"
    for phrase in (S.describe_difference(_comparison(d), p) for d in (-1, 0, 1) for p in (0.01, 0.5)):
        assert "beat" not in phrase


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

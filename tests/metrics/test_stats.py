"""Properties of the confidence sequences and the sample-ratio e-value (hypothesis)."""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from metrics import stats
from metrics.sketch import Sketch
from metrics.summary import Summary


@st.composite
def rate_stage(draw, max_n: int = 400):
    n_c = draw(st.integers(1, max_n))
    n_b = draw(st.integers(1, max_n * 5))
    return (draw(st.integers(0, n_c)), n_c, draw(st.integers(0, n_b)), n_b)


rate_stages = st.lists(rate_stage(), min_size=1, max_size=4)
alphas = st.sampled_from([0.001, 0.01, 0.05, 0.1, 0.3])


def brute_profile(stages, a: float, theta: float) -> float:
    total = 0.0
    for k_c, n_c, k_b, n_b in stages:
        best = -math.inf
        for i in range(4001):
            p = i / 4000
            q = a * p + theta
            if 0 <= q <= 1:
                ll = (
                    stats._xlogy(k_c, q)
                    + stats._xlogy(n_c - k_c, 1 - q)
                    + stats._xlogy(k_b, p)
                    + stats._xlogy(n_b - k_b, 1 - p)
                )
                best = max(best, ll)
        total += best
    return total


@settings(max_examples=40, deadline=None)
@given(rate_stage(60), st.sampled_from([1.0, 1.2, 0.8]), st.floats(-0.6, 0.6))
def test_the_restricted_likelihood_is_the_maximum_over_the_nuisance_rate(stage, a, theta):
    ll, _, _ = stats._restricted(*stage, a, theta)
    want = brute_profile([stage], a, theta)
    assume(math.isfinite(want))
    # The grid can only fall short of the true maximum.
    assert ll >= want - 1e-9
    assert ll - want < 0.05 * max(1.0, stage[1] + stage[3]) / 100


@settings(max_examples=60, deadline=None)
@given(rate_stages, alphas, alphas)
def test_a_smaller_alpha_gives_a_wider_proportion_interval(stages, a1, a2):
    small, big = min(a1, a2), max(a1, a2)
    wide, narrow = stats.diff_proportions(stages, small), stats.diff_proportions(stages, big)
    assert wide.lower <= narrow.lower + 1e-9
    assert wide.upper >= narrow.upper - 1e-9


@settings(max_examples=60, deadline=None)
@given(rate_stages, alphas, st.sampled_from([1.0, 1.2, 0.8]))
def test_the_proportion_interval_contains_its_estimate(stages, alpha, a):
    interval = stats.diff_proportions(stages, alpha, a)
    if interval.estimate is not None:
        assert interval.lower - 1e-9 <= interval.estimate <= interval.upper + 1e-9


@settings(max_examples=60, deadline=None)
@given(rate_stages, alphas)
def test_swapping_the_arms_mirrors_the_proportion_interval(stages, alpha):
    forward = stats.diff_proportions(stages, alpha)
    swapped = stats.diff_proportions([(kb, nb, kc, nc) for kc, nc, kb, nb in stages], alpha)
    assert swapped.estimate == pytest.approx(-forward.estimate, abs=1e-7)
    assert swapped.lower == pytest.approx(-forward.upper, abs=1e-6)
    assert swapped.upper == pytest.approx(-forward.lower, abs=1e-6)


@settings(max_examples=60, deadline=None)
@given(rate_stage(200), alphas)
def test_fewer_sessions_give_a_wider_proportion_interval(stage, alpha):
    k_c, n_c, k_b, n_b = stage
    few = stats.diff_proportions([stage], alpha)
    many = stats.diff_proportions([(4 * k_c, 4 * n_c, 4 * k_b, 4 * n_b)], alpha)
    assert many.upper - many.lower < few.upper - few.lower


@settings(max_examples=80, deadline=None)
@given(rate_stages, alphas, st.floats(-0.5, 0.5), st.sampled_from([1.0, 1.2]))
def test_verdict_comparisons_agree_with_the_bounds(stages, alpha, value, a):
    interval = stats.diff_proportions(stages, alpha, a)
    assume(interval.estimate is not None)
    lower, upper = interval.lower, interval.upper
    assume(min(abs(value - lower), abs(value - upper)) > 1e-7)
    assert interval.lower_above(value) == (lower > value)
    assert interval.lower_at_least(value) == (lower >= value)
    assert interval.upper_at_most(value) == (upper <= value)
    assert interval.upper_below(value) == (upper < value)


def test_one_event_in_a_five_percent_arm_leaves_the_interval_wide():
    # 20 candidate sessions, none failed, against 380 baseline ones at 5%: a plug-in
    # variance would be 0 on the candidate's side; the null's is not.
    interval = stats.diff_proportions([(0, 20, 19, 380)], 0.05)
    assert interval.upper > 0.15
    interval = stats.diff_proportions([(1, 20, 19, 380)], 0.05)
    assert interval.lower < -0.04
    assert interval.upper > 0.2


@st.composite
def summaries(draw):
    values = draw(
        st.lists(st.floats(-1000, 1000, allow_nan=False, allow_infinity=False), min_size=2)
    )
    return Summary.of(values)


mean_stages = st.lists(st.tuples(summaries(), summaries()), min_size=1, max_size=3)


@settings(max_examples=60, deadline=None)
@given(mean_stages, alphas, alphas)
def test_mean_intervals_are_nested_in_alpha_and_contain_the_estimate(stages, a1, a2):
    wide = stats.diff_means(stages, min(a1, a2))
    narrow = stats.diff_means(stages, max(a1, a2))
    assert wide.lower <= narrow.lower + 1e-9 <= narrow.estimate + 2e-9
    assert wide.upper >= narrow.upper - 1e-9
    assert narrow.lower <= narrow.estimate <= narrow.upper


@settings(max_examples=60, deadline=None)
@given(mean_stages, alphas)
def test_swapping_the_arms_mirrors_the_mean_interval(stages, alpha):
    forward = stats.diff_means(stages, alpha)
    swapped = stats.diff_means([(b, c) for c, b in stages], alpha)
    assert swapped.lower == pytest.approx(-forward.upper, rel=1e-9, abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(summaries(), summaries(), alphas)
def test_fewer_sessions_give_a_wider_mean_interval(cand, base, alpha):
    assume((cand.variance or 0) + (base.variance or 0) > 1e-6)
    many = [tuple(Summary(4 * s.n, 4 * s.total, 4 * s.total_sq) for s in (cand, base))]
    few_i, many_i = stats.diff_means([(cand, base)], alpha), stats.diff_means(many, alpha)
    assert many_i.upper - many_i.lower < few_i.upper - few_i.lower


def test_a_stage_with_fewer_than_two_samples_per_arm_is_unbounded():
    interval = stats.diff_means([(Summary.of([1.0]), Summary.of([1.0, 2.0, 3.0]))], 0.05)
    assert interval.lower == -math.inf
    assert interval.upper == math.inf


positive = st.lists(st.floats(1, 5000, allow_nan=False), min_size=1, max_size=400)


@settings(max_examples=50, deadline=None)
@given(positive, positive, alphas, alphas)
def test_quantile_intervals_are_nested_in_alpha_and_contain_the_estimate(c, b, a1, a2):
    stages = [(Sketch.of(c), Sketch.of(b))]
    wide = stats.diff_quantiles(stages, 0.95, min(a1, a2))
    narrow = stats.diff_quantiles(stages, 0.95, max(a1, a2))
    assert wide.lower <= narrow.lower
    assert wide.upper >= narrow.upper
    assert narrow.lower <= narrow.estimate <= narrow.upper


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 5000), st.sampled_from([0.5, 0.9, 0.95]), alphas)
def test_quantile_rank_bounds_bracket_the_expected_rank(n, q, alpha):
    lo, hi = stats.quantile_rank_bounds(n, q, alpha)
    assert 0 <= lo <= int(n * q) <= hi <= n


@given(st.floats(1, 1e6), st.floats(1, 1e6))
def test_the_boundary_per_session_shrinks_as_sessions_grow(i1, i2):
    small, big = min(i1, i2), max(i1, i2)
    assume(big > small * 1.001)
    per_small = stats.mixture_boundary(small, 0.025) / math.sqrt(small)
    per_big = stats.mixture_boundary(big, 0.025) / math.sqrt(big)
    assert per_big < per_small
    assert stats.mixture_boundary(small, 0.01) > stats.mixture_boundary(small, 0.05)


def test_the_one_sided_boundary_holds_its_level_for_a_gaussian_walk():
    # A crude Monte Carlo of the normal mixture: a standard random walk crosses the
    # boundary in at most alpha of the runs (well under, since the check is discrete).
    import random

    rng = random.Random(7)
    crossed = 0
    for _ in range(400):
        s = 0.0
        for t in range(1, 2001):
            s += rng.gauss(0, 1)
            if s > stats.mixture_boundary(t, 0.1) * math.sqrt(t):
                crossed += 1
                break
    assert crossed / 400 <= 0.1


def test_srm_e_value_grows_on_a_broken_split_and_not_on_a_fair_one():
    fair = stats.srm_log_e(500, 9500, 0.05)
    broken = stats.srm_log_e(1000, 9000, 0.05)
    assert fair < 0 < math.log(1000) < broken
    assert stats.srm_log_e(1, 99, 0.0) == math.inf
    assert stats.srm_log_e(0, 99, 0.0) == 0.0

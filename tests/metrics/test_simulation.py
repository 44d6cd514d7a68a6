"""Statistical validation by simulation, with fixed seeds, through ``judge()`` with the
default gate set and the sample-ratio check.

The design (``bench.streams``): stages 5% -> 25% -> 50% -> 100%, a look every 50
sessions, and a stage that may end once both arms have 100 sessions in it. The A/A runs
advance as soon as the sessions are there: the guarantee under test is uniform over looks
and over any rule that uses only the past, and this rule takes every run through every
stage (the default tolerances need about 2,000 candidate sessions to *pass*). The
doubled-error runs follow the engine's rule: advance only when every gate passes.
"""

from __future__ import annotations

import math
from dataclasses import replace

from bench.streams import DOUBLED, HEALTHY, LATENCY_VALUES, Rollout, run_prism
from metrics import stats
from metrics.gates import DEFAULT_GATES


def binomial_cdf(k: int, n: int, p: float) -> float:
    if p <= 0:
        return 1.0
    if p >= 1:
        return 0.0 if k < n else 1.0
    total = 0.0
    for i in range(k + 1):
        log_pmf = (
            math.lgamma(n + 1)
            - math.lgamma(i + 1)
            - math.lgamma(n - i + 1)
            + i * math.log(p)
            + (n - i) * math.log1p(-p)
        )
        total += math.exp(log_pmf)
    return total


def clopper_pearson_upper(k: int, n: int, confidence: float = 0.95) -> float:
    lo, hi = k / n, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if binomial_cdf(k, n, mid) > (1 - confidence) / 2:
            lo = mid
        else:
            hi = mid
    return hi


def test_clopper_pearson_matches_a_known_value():
    # 0 of 100: the exact 95% upper bound is 1 - 0.025 ** (1 / 100).
    assert clopper_pearson_upper(0, 100) == __import__("pytest").approx(1 - 0.025**0.01, rel=1e-6)


def test_identical_arms_are_wrongly_halted_in_at_most_five_percent_of_rollouts():
    runs = 2000
    outcomes = [run_prism(seed, DEFAULT_GATES, HEALTHY, advance="schedule") for seed in range(runs)]
    halted = sum(o.halted for o in outcomes)
    assert all(o.promoted or o.halted for o in outcomes)  # every run saw all four stages
    assert halted / runs <= 0.05
    assert clopper_pearson_upper(halted, runs) <= 0.055


def test_a_doubled_error_rate_is_halted_within_4000_candidate_sessions():
    runs = 100
    outcomes = [
        run_prism(10_000 + seed, DEFAULT_GATES, DOUBLED, horizon=4000) for seed in range(runs)
    ]
    halted = [o for o in outcomes if o.halted]
    assert len(halted) >= 0.95 * runs
    assert all(o.exposure <= 4000 for o in halted)
    assert all(o.reason == "critical gate failed: error_rate" for o in halted)


def true_p95(probs: tuple[float, ...]) -> float:
    seen = 0.0
    for value, p in zip(LATENCY_VALUES, probs, strict=True):
        seen += p
        if seen >= 0.95 - 1e-12:
            return value
    raise AssertionError


def coverage(candidate, baseline, runs: int, seed0: int) -> dict[str, float]:
    """The share of runs in which each confidence sequence (at alpha = 0.05) covered the
    true difference at every look, through all stages."""
    truth = {
        "error_rate": candidate.error - baseline.error,
        "cost_usd": candidate.cost[0] - baseline.cost[0],
        "latency_ms": true_p95(candidate.latency) - true_p95(baseline.latency),
    }
    covered = dict.fromkeys(truth, 0)
    for run in range(runs):
        rollout = Rollout(seed0 + run, candidate, baseline, sorted(truth))
        ok = dict.fromkeys(truth, True)
        while True:
            rollout.look()
            strata = rollout.strata()
            intervals = {
                "error_rate": stats.diff_proportions(
                    [
                        (s.candidate.total, s.candidate.n, s.baseline.total, s.baseline.n)
                        for s in strata["error_rate"]
                    ],
                    0.05,
                ),
                "cost_usd": stats.diff_means(
                    [(s.candidate, s.baseline) for s in strata["cost_usd"]], 0.05
                ),
                "latency_ms": stats.diff_quantiles(
                    [(s.candidate.sketch, s.baseline.sketch) for s in strata["latency_ms"]],
                    0.95,
                    0.05,
                ),
            }
            for metric, interval in intervals.items():
                ok[metric] = ok[metric] and interval.contains(truth[metric])
            if rollout.stage_done() and rollout.advance():
                break
        for metric in truth:
            covered[metric] += ok[metric]
    return {metric: count / runs for metric, count in covered.items()}


def test_confidence_sequences_cover_at_every_look_even_with_very_few_errors():
    # A 5% arm at a 1% error rate: the candidate's first 100 sessions hold one error on
    # average, often none.
    rare = replace(HEALTHY, error=0.01)
    shares = coverage(rare, rare, runs=150, seed0=50_000)
    assert min(shares.values()) >= 0.95, shares


def test_confidence_sequences_cover_a_real_difference_at_every_look():
    worse = replace(HEALTHY, error=0.08, cost=(0.026, 0.012))
    shares = coverage(worse, HEALTHY, runs=150, seed0=60_000)
    assert min(shares.values()) >= 0.95, shares

"""The verdict function: orientation, missing data, the error budget and the stored form."""

from __future__ import annotations

import json

import pytest

from metrics import judge as judge_mod
from metrics.gates import DEFAULT_GATES, validate_gate
from metrics.judge import SrmStratum, Stratum, judge
from metrics.summary import Summary


def rate(n: int, events: int) -> Summary:
    return Summary(n, float(events), float(events))


def gate(**spec):
    return validate_gate(spec)


FAIR_SRM = [SrmStratum(1000, 9000, 1000, 9000)]


def one(strata, gates, **kwargs):
    return judge(gates, strata, FAIR_SRM, **kwargs)


def test_a_clearly_worse_error_rate_fails_and_halts():
    verdict = one(
        {"error_rate": [Stratum(rate(1000, 200), rate(9000, 450))]},
        [gate(metric="error_rate", max_increase=0.02)],
    )
    result = verdict.gates[0]
    assert result.verdict == "fail"
    assert result.lower > 0.02
    assert verdict.any_critical_fail
    assert verdict.halt_reason == "critical gate failed: error_rate"
    assert verdict.blocking == ["error_rate"]


def test_a_drop_in_a_higher_is_better_metric_fails_on_the_lower_side():
    verdict = one(
        {"success_rate": [Stratum(rate(1000, 700), rate(9000, 8100))]},
        [gate(metric="success_rate", max_decrease=0.02)],
    )
    result = verdict.gates[0]
    assert result.verdict == "fail"
    assert result.upper < -0.02
    assert result.tolerance == -0.02


def test_an_equal_candidate_passes_a_tolerance_but_never_max_increase_zero():
    strata = {"error_rate": [Stratum(rate(20000, 1000), rate(20000, 1000))]}
    assert one(strata, [gate(metric="error_rate", max_increase=0.02)]).gates[0].verdict == "pass"
    strict = one(strata, [gate(metric="error_rate", max_increase=0)]).gates[0]
    assert strict.verdict == "inconclusive"
    assert strict.upper > 0


def test_a_pass_needs_min_samples_per_arm():
    strata = {"error_rate": [Stratum(rate(40, 0), rate(40000, 0))]}
    gates = [gate(metric="error_rate", max_increase=0.5)]
    assert one(strata, gates, min_samples=30).gates[0].verdict == "pass"
    result = one(strata, gates, min_samples=41).gates[0]
    assert result.verdict == "inconclusive"
    assert "fewer than 41" in result.detail


def test_neither_arm_reporting_is_not_reported_and_does_not_block():
    verdict = one(
        {"cost_usd": [Stratum(Summary(), Summary())]},
        [gate(metric="cost_usd", max_relative_change=0.2)],
    )
    assert verdict.gates[0].verdict == "not_reported"
    assert verdict.blocking == []
    assert verdict.all_pass


def test_a_metric_missing_from_the_strata_is_not_reported():
    verdict = one({}, [gate(metric="feedback_score", max_decrease=0.1)])
    assert verdict.gates[0].verdict == "not_reported"


def test_the_baseline_reporting_alone_is_inconclusive_and_blocks():
    verdict = one(
        {"cost_usd": [Stratum(Summary(), Summary.of([1.0, 2.0, 3.0]))]},
        [gate(metric="cost_usd", max_relative_change=0.2)],
    )
    assert verdict.gates[0].verdict == "inconclusive"
    assert verdict.blocking == ["cost_usd"]
    assert not verdict.all_pass


def test_a_source_error_is_inconclusive_even_on_data_that_would_pass():
    strata = {"error_rate": [Stratum(rate(20000, 1000), rate(20000, 1000))]}
    gates = [gate(metric="error_rate", max_increase=0.02)]
    verdict = one(strata, gates, source_errors={"error_rate": "HTTP 502"})
    assert verdict.gates[0].verdict == "inconclusive"
    assert "HTTP 502" in verdict.gates[0].detail


def test_relative_change_is_an_interval_for_candidate_minus_scaled_baseline():
    cand = Summary.of([1.3, 1.1, 1.2, 1.25, 1.15] * 40)
    base = Summary.of([1.0, 0.9, 1.1, 1.05, 0.95] * 400)
    result = one(
        {"cost_usd": [Stratum(cand, base)]}, [gate(metric="cost_usd", max_relative_change=0.1)]
    ).gates[0]
    assert result.contrast == "candidate - 1.1 x baseline"
    assert result.tolerance == 0.0
    assert result.estimate == pytest.approx(1.2 - 1.1 * 1.0)
    assert result.verdict == "fail"
    higher = one(
        {"feedback_score": [Stratum(base, cand)]},
        [gate(metric="feedback_score", max_relative_change=0.1)],
    ).gates[0]
    assert higher.contrast == "candidate - 0.9 x baseline"
    assert higher.verdict == "fail"  # 1.0 is below 0.9 x 1.2


def test_p95_gates_read_the_sketches_and_need_them():
    slow = Summary.of([100.0] * 90 + [900.0] * 10, sketched=True)
    fast = Summary.of([100.0] * 900 + [300.0] * 100, sketched=True)
    spec = gate(metric="latency_ms", stat="p95", max_relative_change=0.2)
    result = one({"latency_ms": [Stratum(slow, fast)] * 1}, [spec]).gates[0]
    assert result.estimate == pytest.approx(900 - 1.2 * 300, rel=0.03)
    no_sketch = Summary.of([100.0] * 100)
    missing = one({"latency_ms": [Stratum(no_sketch, fast)]}, [spec]).gates[0]
    assert missing.verdict == "inconclusive"
    assert "sketch" in missing.detail


def test_the_budget_is_split_over_critical_gates_and_the_srm_check():
    gates = [dict(g) for g in DEFAULT_GATES]
    gates[0]["critical"] = False  # advisory: it never halts, so it spends nothing
    verdict = judge(gates, {}, [], alpha=0.05)
    srm_alpha = 0.05 * judge_mod.SRM_SHARE
    assert verdict.srm.alpha == pytest.approx(srm_alpha)
    for result in verdict.gates:
        assert result.alpha == pytest.approx((0.05 - srm_alpha) / 6)


def test_a_broken_split_is_a_sample_ratio_mismatch_and_halts():
    strata = {"error_rate": [Stratum(rate(1000, 50), rate(9000, 450))]}
    gates = [gate(metric="error_rate", max_increase=0.02)]
    broken = judge(gates, strata, [SrmStratum(1500, 8500, 1000, 9000)])
    assert broken.srm.verdict == "mismatch"
    assert broken.halt_reason == "sample ratio mismatch"
    fair = judge(gates, strata, [SrmStratum(1010, 8990, 1000, 9000)])
    assert fair.srm.verdict == "ok"
    assert fair.halt_reason is None
    assert fair.srm.expected["candidate"] == pytest.approx(1000)
    assert judge(gates, strata, []).srm.verdict == "inconclusive"


def test_srm_evidence_multiplies_over_stages():
    mild = SrmStratum(560, 9440, 500, 9500)
    one_stage = judge([], {}, [mild]).srm
    two_stages = judge([], {}, [mild, SrmStratum(2800, 7200, 2500, 7500)]).srm
    assert two_stages.e_value > one_stage.e_value
    assert len(two_stages.stages) == 2


def test_the_judgement_is_json_serialisable_with_unbounded_intervals_as_null():
    strata = {
        "error_rate": [Stratum(rate(3, 0), rate(60, 3))],
        "cost_usd": [Stratum(Summary.of([1.0]), Summary.of([1.0, 2.0]))],
    }
    verdict = judge(DEFAULT_GATES, strata, FAIR_SRM)
    data = json.loads(json.dumps(verdict.to_dict(), allow_nan=False))
    cost = next(g for g in data["gates"] if g["metric"] == "cost_usd")
    assert cost["lower"] is None
    assert cost["upper"] is None
    assert data["summary"]["blocking"] == verdict.blocking
    assert set(data["srm"]) >= {"verdict", "e_value", "p_value", "counts", "expected"}
    assert {g["metric"] for g in data["gates"]} == {g["metric"] for g in DEFAULT_GATES}


def test_stages_are_compared_within_themselves_not_pooled():
    # The baseline's error rate drifts from 2% to 10% between stages while the candidate
    # tracks it exactly. Pooled, the candidate (mostly in the late, bad stage) looks much
    # worse; stratified, it is no worse.
    strata = [
        Stratum(rate(500, 10), rate(9500, 190)),  # 5%: both 2%
        Stratum(rate(5000, 500), rate(5000, 500)),  # 50%: both 10%
    ]
    gates = [gate(metric="error_rate", max_increase=0.01)]
    stratified = one({"error_rate": strata}, gates).gates[0]
    assert stratified.estimate == pytest.approx(0.0, abs=1e-6)
    assert stratified.verdict != "fail"
    pooled = Stratum(rate(5500, 510), rate(14500, 690))
    assert one({"error_rate": [pooled]}, gates).gates[0].verdict == "fail"

"""Gate specs: validation, the abandon rate, and the default gate set."""

from __future__ import annotations

import pytest

from metrics.gates import DEFAULT_GATES, METRICS, GateError, validate_gate, validate_gates


def test_abandon_rate_is_a_lower_is_better_rate():
    gate = validate_gate({"metric": "abandon_rate", "max_increase": 0.02})
    assert gate == {
        "metric": "abandon_rate",
        "critical": True,
        "stat": "mean",
        "max_increase": 0.02,
    }
    with pytest.raises(GateError) as exc:
        validate_gate({"metric": "abandon_rate", "max_decrease": 0.02})
    assert "max_decrease" in exc.value.errors


def test_the_defaults_cover_every_metric_and_are_valid_and_critical():
    assert {g["metric"] for g in DEFAULT_GATES} == set(METRICS)
    assert validate_gates(DEFAULT_GATES) == DEFAULT_GATES
    assert all(g["critical"] for g in DEFAULT_GATES)
    by_metric = {g["metric"]: g for g in DEFAULT_GATES}
    assert by_metric["latency_ms"]["stat"] == "p95"
    assert by_metric["error_rate"]["max_increase"] == 0.02
    assert by_metric["feedback_score"]["max_decrease"] == 0.1


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"metric": "nope", "max_increase": 1}, "metric"),
        ({"metric": ["error_rate"], "max_increase": 1}, "metric"),
        ({"metric": "error_rate"}, "tolerance"),
        ({"metric": "error_rate", "max_increase": 1, "max_relative_change": 1}, "tolerance"),
        ({"metric": "error_rate", "max_increase": -1}, "max_increase"),
        ({"metric": "error_rate", "max_increase": True}, "max_increase"),
        ({"metric": "success_rate", "max_increase": 0.1}, "max_increase"),
        ({"metric": "error_rate", "stat": "p95", "max_increase": 0.1}, "stat"),
        ({"metric": "error_rate", "max_increase": 0, "critical": "yes"}, "critical"),
        ({"metric": "error_rate", "max_increase": 0, "colour": "red"}, "colour"),
    ],
)
def test_bad_gates_name_the_field(spec, field):
    with pytest.raises(GateError) as exc:
        validate_gate(spec)
    assert field in exc.value.errors


def test_two_gates_on_one_metric_and_stat_are_refused():
    with pytest.raises(GateError):
        validate_gates(
            [
                {"metric": "error_rate", "max_increase": 0},
                {"metric": "error_rate", "max_increase": 0.1},
            ]
        )
    both = validate_gates(
        [
            {"metric": "latency_ms", "max_relative_change": 0.1},
            {"metric": "latency_ms", "stat": "p95", "max_relative_change": 0.2},
        ]
    )
    assert [g["stat"] for g in both] == ["mean", "p95"]

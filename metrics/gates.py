"""Gate specifications: what a gate *is* (its metric, direction and tolerance).

The statistics that turn per-stage summaries into a verdict live in ``metrics.judge``
(pure). ``evaluate`` is the engine's older seam: until the engine reads rollups and calls
``judge``, it answers ``inconclusive`` (never ``pass``), so a rollout with gates cannot
advance on missing evidence.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"

HIGHER, LOWER = "higher", "lower"


@dataclass(frozen=True)
class Metric:
    name: str
    field: str
    better: str
    kind: str  # "rate" (a boolean outcome) or "value" (a number)


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("success_rate", "success", HIGHER, "rate"),
        Metric("error_rate", "error", LOWER, "rate"),
        Metric("latency_ms", "latency_ms", LOWER, "value"),
        Metric("cost_usd", "cost_usd", LOWER, "value"),
        Metric("hallucination_rate", "hallucination", LOWER, "rate"),
        Metric("feedback_score", "feedback", HIGHER, "value"),
        # Derived, not reported: the share of ended sessions that were abandoned, expired
        # or ended without an outcome. A crashing candidate reports no outcomes at all,
        # and this is the metric that counts that against it. Its summary: n = ended
        # sessions, total = those abandoned, expired or without an outcome.
        Metric("abandon_rate", "abandoned", LOWER, "rate"),
    )
}
TOLERANCES = ("max_increase", "max_decrease", "max_relative_change")


class GateError(ValueError):
    """A gate spec that cannot be evaluated; ``errors`` maps field to message."""

    def __init__(self, errors: dict[str, Any]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def validate_gate(spec: Any) -> dict[str, Any]:
    """Check one gate spec and return it normalised, or raise GateError."""
    if not isinstance(spec, dict):
        raise GateError({"gate": "Expected an object {metric, tolerance, critical?, stat?}."})
    unknown = set(spec) - {"metric", "critical", "stat", *TOLERANCES}
    if unknown:
        raise GateError({key: "Unknown gate field." for key in sorted(unknown)})
    name = spec.get("metric")
    # Not a lookup with any JSON value: a list or an object is unhashable.
    metric = METRICS.get(name) if isinstance(name, str) else None
    if metric is None:
        raise GateError({"metric": f"Unknown metric; expected one of {sorted(METRICS)}."})
    tolerances = [key for key in TOLERANCES if key in spec]
    if len(tolerances) != 1:
        raise GateError({"tolerance": f"Give exactly one of {', '.join(TOLERANCES)}."})
    key = tolerances[0]
    value = spec[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise GateError({key: "Expected a number >= 0."})
    if key == "max_increase" and metric.better != LOWER:
        raise GateError({key: f"{metric.name} is higher-is-better; use max_decrease."})
    if key == "max_decrease" and metric.better != HIGHER:
        raise GateError({key: f"{metric.name} is lower-is-better; use max_increase."})
    stat = spec.get("stat", "mean")
    if stat not in ("mean", "p95"):
        raise GateError({"stat": "Expected 'mean' or 'p95'."})
    if stat == "p95" and metric.name not in ("latency_ms", "cost_usd"):
        raise GateError({"stat": "p95 applies to latency_ms and cost_usd only."})
    critical = spec.get("critical", True)
    if not isinstance(critical, bool):
        raise GateError({"critical": "Expected true or false."})
    return {"metric": metric.name, "critical": critical, "stat": stat, key: float(value)}


def _defaults() -> list[dict[str, Any]]:
    return [
        validate_gate(spec)
        for spec in (
            {"metric": "error_rate", "max_increase": 0.02},
            {"metric": "success_rate", "max_decrease": 0.02},
            {"metric": "latency_ms", "stat": "p95", "max_relative_change": 0.2},
            {"metric": "cost_usd", "max_relative_change": 0.2},
            {"metric": "hallucination_rate", "max_increase": 0.01},
            {"metric": "feedback_score", "max_decrease": 0.1},
            {"metric": "abandon_rate", "max_increase": 0.02},
        )
    ]


DEFAULT_GATES: list[dict[str, Any]] = _defaults()
"""The gates a rollout gets when it names none: every built-in metric, all critical.

| metric | stat | tolerance (how much worse the candidate may be) |
|---|---|---|
| ``error_rate`` | mean | +2 percentage points (``max_increase: 0.02``) |
| ``success_rate`` | mean | -2 percentage points (``max_decrease: 0.02``) |
| ``latency_ms`` | p95 | +20% of the baseline's p95 (``max_relative_change: 0.2``) |
| ``cost_usd`` | mean | +20% of the baseline's mean cost (``max_relative_change: 0.2``) |
| ``hallucination_rate`` | mean | +1 percentage point (``max_increase: 0.01``) |
| ``feedback_score`` | mean | -0.1 on the [-1, 1] scale (``max_decrease: 0.1``) |
| ``abandon_rate`` | mean | +2 percentage points (``max_increase: 0.02``) |

All are critical: each is a regression a release manager would roll back for, and a
metric that no arm reports is ``not_reported``, which never blocks, so an agent that does
not report cost or feedback loses nothing by these defaults. The price of seven critical
gates is that each gets a seventh of the error budget, which slows detection only
logarithmically (a doubled error rate is still halted within a few hundred candidate
sessions). Copy the list to change a tolerance or to make a gate advisory
(``critical: false``).
"""


def validate_gates(specs: Any) -> list[dict[str, Any]]:
    if not isinstance(specs, list):
        raise GateError({"gates": "Expected a list of gates."})
    gates, errors = [], []
    for spec in specs:
        try:
            gates.append(validate_gate(spec))
            errors.append({})
        except GateError as exc:
            errors.append({key: [message] for key, message in exc.errors.items()})
    if any(errors):
        # DRF's shape for a list of objects: one error object per gate, in order, so a
        # client can tell which gate is wrong.
        raise GateError({"gates": errors})
    seen = set()
    for gate in gates:
        key = (gate["metric"], gate["stat"])
        if key in seen:
            raise GateError({"gates": f"Two gates on {gate['metric']} ({gate['stat']})."})
        seen.add(key)
    return gates


def evaluate(
    gates: list[dict[str, Any]], *, candidate_id: int, baseline_id: int, since: datetime
) -> list[dict[str, Any]]:
    """Evaluate each gate, candidate against baseline, over sessions started since
    ``since``. Returns one result per gate: ``{metric, critical, verdict, detail}``."""
    return [
        {
            "metric": gate["metric"],
            "stat": gate["stat"],
            "critical": gate["critical"],
            "verdict": INCONCLUSIVE,
            "detail": "no statistical test is configured for gates yet",
        }
        for gate in gates
    ]

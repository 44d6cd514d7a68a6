"""Gate specifications and their evaluation (DESIGN §7).

This module owns what a gate *is*: its metric, direction and tolerance. The statistics
that turn samples into a verdict arrive with the metrics issue; until then every gate
evaluates ``inconclusive`` (never ``pass``), so a rollout with gates cannot advance on
missing evidence. ``evaluate`` is the one seam the rollout engine calls.
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

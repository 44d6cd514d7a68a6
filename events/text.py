"""The one-line summary every event body carries as ``text``, so that a Slack-compatible
incoming webhook shows a readable message as it is. Pure functions of the event's data."""

from __future__ import annotations

from typing import Any


def _number(value: Any, scale: float = 1.0, unit: str = "") -> str:
    """Signed: one decimal in a unit (percentage points), else three significant digits."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "?"
    return f"{value * scale:+.1f}{unit}" if unit else f"{value:+.3g}"


def gate_line(gate: dict[str, Any]) -> str:
    """A gate's result in the metric's units: a rate's difference in percentage points,
    anything else as the contrast the judge computed."""
    metric = str(gate.get("metric", "?"))
    contrast = gate.get("contrast", "")
    in_points = (
        metric.endswith("_rate")
        and contrast == "candidate - baseline"
        and gate.get("stat") != "p95"
    )
    scale, unit = (100.0, " pts") if in_points else (1.0, "")
    estimate = _number(gate.get("estimate"), scale, unit)
    lower = _number(gate.get("lower"), scale, unit)
    upper = _number(gate.get("upper"), scale, unit)
    where = "" if in_points else f" ({contrast})"
    return f"{metric} {estimate}{where} (CI {lower} to {upper})"


def _why_halted(data: dict[str, Any]) -> str:
    evaluation = data.get("evaluation") or {}
    failed = [g for g in evaluation.get("gates", []) if g.get("verdict") == "fail"]
    if failed:
        return "; ".join(gate_line(g) for g in failed)
    return str(data.get("reason") or "halted")


def _at(data: dict[str, Any]) -> str:
    percent = data.get("percent")
    return f" at {percent:g}%" if isinstance(percent, int | float) else ""


def _label(version: Any) -> str:
    if isinstance(version, dict):
        return str(version.get("label") or f"#{version.get('id')}")
    return f"#{version}"


def summary(event_type: str, agent: str, data: dict[str, Any]) -> str:
    """``"research: rollout 12 halted at 25% — error_rate +3.1 pts (CI +1.2 pts to ...)"``."""
    rollout = f"rollout {data.get('rollout')}"
    reason = data.get("reason") or ""
    because = f" — {reason}" if reason else ""
    candidate = _label(data.get("candidate"))
    texts = {
        "rollout.started": f"{rollout} started: {candidate}{_at(data)}, "
        f"baseline {_label(data.get('baseline'))}",
        "rollout.advanced": f"{rollout} advanced{_at(data)}",
        "rollout.paused": f"{rollout} paused{_at(data)}{because}",
        "rollout.resumed": f"{rollout} resumed{_at(data)}",
        "rollout.halted": f"{rollout} halted{_at(data)} — {_why_halted(data)}",
        "rollout.rolled_back": f"{rollout} rolled back{_at(data)}{because}",
        "rollout.promoted": f"{rollout} promoted: {candidate} is the stable",
        "rollout.superseded": f"{rollout} superseded{_at(data)}{because}",
        "rollout.sample_ratio_mismatch": f"{rollout} has a sample ratio mismatch{_at(data)}: "
        f"sessions {data.get('counts')}, expected {data.get('expected')}",
        "version.draining": f"version {_label(data.get('version'))} is draining "
        f"({data.get('live_sessions', 0)} live sessions)",
        "version.force_drained": f"version {_label(data.get('version'))} force-drained{because}",
        "version.drained": f"version {_label(data.get('version'))} is drained: no live "
        "sessions left, its infrastructure can scale down",
        "metric_source.failing": f"metric source {data.get('source')} ({data.get('kind')}) "
        f"is failing: {data.get('error', '')}",
        "metric_source.recovered": f"metric source {data.get('source')} ({data.get('kind')}) "
        f"recovered after {data.get('failed_polls', '?')} failed polls",
    }
    return f"{agent}: {texts.get(event_type, event_type)}"

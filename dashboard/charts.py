"""The dashboard's Plotly figures, built on the server from read models.

Each function returns a figure (``data`` and ``layout``) that the page hands to
``Plotly.react`` as it is, so what a chart draws is decided, and tested, here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.utils import timezone

from dashboard.services import PALETTE, colour, tolerance_text, version_name, versions_of
from rollouts import snapshots
from rollouts.models import Evaluation, Rollout, RolloutEvent, RolloutState
from versions.models import Agent, AuditEntry, Version

# --- charts -----------------------------------------------------------------------------

WINDOWS = {
    "1h": timedelta(hours=1),
    "6h": timedelta(hours=6),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}
DEFAULT_WINDOW = "6h"
_FONT = {"family": "system-ui, sans-serif", "size": 12, "color": "#1b1f24"}


def plot_text(text: str) -> str:
    """Plotly reads a little HTML in names and labels; version labels are user data."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def chart_time(at: datetime) -> str:
    """Plotly reads dates without a zone; every chart is in UTC and says so."""
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


@dataclass(frozen=True)
class Marker:
    at: datetime
    kind: str  # deploy, rollback, promote, halt
    label: str


def chart_markers(agent: Agent, since: datetime, versions: dict[int, Version]) -> list[Marker]:
    """Deploys, rollbacks, promotions and halts since ``since``: the rollouts' events,
    and the agent-level stable changes and rollbacks from the audit trail."""
    markers = []
    events = (
        RolloutEvent.objects.filter(rollout__agent=agent, at__gte=since)
        .select_related("rollout")
        .order_by("at", "id")
    )
    for event in events:
        candidate = version_name(versions, event.rollout.candidate_id)
        if event.action == "start" and event.to_state == RolloutState.PROMOTED:
            markers.append(Marker(event.at, "promote", f"cut over to {candidate}"))
        elif event.action == "start":
            markers.append(Marker(event.at, "deploy", f"deploy {candidate}"))
        elif event.action in ("rollback", "auto_rollback"):
            markers.append(Marker(event.at, "rollback", f"roll back {candidate}"))
        elif event.to_state == RolloutState.PROMOTED:
            markers.append(Marker(event.at, "promote", f"promote {candidate}"))
        elif event.action == "halt":
            markers.append(Marker(event.at, "halt", f"halt {candidate}"))
    entries = AuditEntry.objects.filter(
        agent=agent, at__gte=since, action__in=("agent.rollback", "agent.stable_set")
    ).only("at", "action", "after")
    for entry in entries:
        target = version_name(versions, (entry.after or {}).get("stable"))
        if entry.action == "agent.rollback":
            markers.append(Marker(entry.at, "rollback", f"roll back to {target}"))
        else:
            markers.append(Marker(entry.at, "deploy", f"stable set to {target}"))
    return sorted(markers, key=lambda marker: marker.at)


_MARKER_DASH = {"deploy": "dot", "rollback": "solid", "promote": "dash", "halt": "dashdot"}


def rainbow_figure(agent: Agent, window: str, now: datetime | None = None) -> dict[str, Any]:
    """The rainbow chart: live sessions per version over time, stacked, from the fleet
    snapshots, with a vertical line per deploy, rollback, promotion and halt.

    Returns a Plotly figure (``data``, ``layout``) plus a written ``summary``.
    """
    now = now or timezone.now()
    since = now - WINDOWS[window]
    rows = snapshots.series(agent, since)
    versions, ordinal = versions_of([agent.pk])
    ids = sorted({int(vid) for _, live in rows for vid in live})
    xs = [chart_time(at) for at, _ in rows]
    data = []
    for vid in ids:
        name = plot_text(version_name(versions, vid))
        tint = colour(ordinal.get(vid, vid))
        data.append(
            {
                "type": "scatter",
                "mode": "lines",
                "stackgroup": "live",
                "name": name,
                "x": xs,
                "y": [live.get(str(vid), 0) for _, live in rows],
                "line": {"color": tint, "width": 1},
                "fillcolor": tint,
                "hovertemplate": f"%{{y}} live<extra>{name}</extra>",
            }
        )
    markers = chart_markers(agent, since, versions)
    layout: dict[str, Any] = {
        "height": 320,
        "margin": {"l": 56, "r": 16, "t": 48, "b": 48},
        "font": _FONT,
        "paper_bgcolor": "#ffffff",
        "plot_bgcolor": "#ffffff",
        "showlegend": True,
        "legend": {"orientation": "h", "y": 1.16, "x": 0},
        "xaxis": {
            "type": "date",
            "title": {"text": "time (UTC)"},
            "gridcolor": "#e3e6ea",
        },
        "yaxis": {
            "title": {"text": "live sessions"},
            "rangemode": "tozero",
            "gridcolor": "#e3e6ea",
        },
        "shapes": [
            {
                "type": "line",
                "xref": "x",
                "yref": "paper",
                "x0": chart_time(marker.at),
                "x1": chart_time(marker.at),
                "y0": 0,
                "y1": 1,
                "line": {"color": "#1b1f24", "width": 1, "dash": _MARKER_DASH[marker.kind]},
            }
            for marker in markers
        ],
        "annotations": [
            {
                "x": chart_time(marker.at),
                "y": 1,
                "xref": "x",
                "yref": "paper",
                "text": plot_text(marker.label),
                "showarrow": False,
                "textangle": -90,
                "xanchor": "right",
                "yanchor": "top",
                "font": {"size": 11, "color": "#1b1f24"},
            }
            for marker in markers
        ],
    }
    if not rows:
        layout["annotations"].append(
            {
                "text": "No fleet snapshots in this window yet",
                "xref": "paper",
                "yref": "paper",
                "x": 0.5,
                "y": 0.5,
                "showarrow": False,
            }
        )
    latest = rows[-1][1] if rows else {}
    now_text = ", ".join(f"{version_name(versions, vid)} {latest.get(str(vid), 0)}" for vid in ids)
    summary = (
        f"Live sessions per version over the last {window}, from {len(rows)} snapshots"
        + (f"; latest: {now_text}" if now_text else "")
        + (f"; {len(markers)} deploys, rollbacks or promotions marked" if markers else "")
        + "."
    )
    return {
        "data": data,
        "layout": layout,
        "summary": summary,
        "markers": [{"at": chart_time(m.at), "kind": m.kind, "label": m.label} for m in markers],
    }


#: The most looks a rollout page draws: the beat looks every few seconds, and a chart of
#: the latest few hundred shows the trend without reading the whole history.
MAX_EVALUATIONS = 500


def evaluations(rollout: Rollout) -> list[dict[str, Any]]:
    """The rollout's latest gate evaluations, oldest first: one report per look, as the
    evaluation service records it (``{at, stage, verdict, reason, min_sessions, gates:
    [{metric, stat, verdict, estimate, lower, upper, tolerance, ...}], srm}``)."""
    latest = Evaluation.objects.filter(rollout=rollout).order_by("-at", "-id")
    reports = [report for report in latest.values_list("report", flat=True)[:MAX_EVALUATIONS]]
    return sorted(reports, key=lambda report: str(report.get("at", "")))


def evaluation_rows(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The evaluations as table rows: when, at which stage, the decision, the sample
    counts and each gate's verdict."""
    rows = []
    for report in reports:
        counts = report.get("min_sessions") or {}
        percent = report.get("percent")
        rows.append(
            {
                "at": _report_time(report),
                "percent": f"{percent:g}%" if isinstance(percent, int | float) else "",
                "verdict": str(report.get("verdict", "")),
                "reason": str(report.get("reason", "")),
                "candidate": counts.get("candidate", "—"),
                "baseline": counts.get("baseline", "—"),
                "gates": [
                    (
                        result.get("metric", "?")
                        + (f" ({result['stat']})" if result.get("stat", "mean") != "mean" else ""),
                        result.get("verdict", ""),
                    )
                    for result in report.get("gates", [])
                ],
            }
        )
    return rows


def _report_time(report: dict[str, Any]) -> str:
    try:
        return chart_time(datetime.fromisoformat(str(report.get("at"))))
    except ValueError:
        return str(report.get("at", ""))


def _base_layout(y_title: str) -> dict[str, Any]:
    return {
        "height": 260,
        "margin": {"l": 96, "r": 16, "t": 40, "b": 48},
        "font": _FONT,
        "paper_bgcolor": "#ffffff",
        "plot_bgcolor": "#ffffff",
        "legend": {"orientation": "h", "y": 1.2, "x": 0},
        "xaxis": {"type": "date", "title": {"text": "evaluated at (UTC)"}, "gridcolor": "#e3e6ea"},
        "yaxis": {"title": {"text": y_title}, "gridcolor": "#e3e6ea"},
    }


def samples_figure(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Ended sessions per arm at each evaluation, against the stage's minimum."""
    xs = [_report_time(report) for report in reports]
    counts = [report.get("min_sessions") or {} for report in reports]
    data = [
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": arm,
            "x": xs,
            "y": [count.get(arm) for count in counts],
            "line": {"color": tint, "dash": dash},
            "marker": {"symbol": symbol, "size": 8},
        }
        for arm, tint, dash, symbol in (
            ("candidate", PALETTE[1], "solid", "circle"),
            ("baseline", PALETTE[0], "dot", "square"),
        )
    ]
    data.append(
        {
            "type": "scatter",
            "mode": "lines",
            "name": "required",
            "x": xs,
            "y": [count.get("required") for count in counts],
            "line": {"color": "#57606a", "dash": "dash", "shape": "hv"},
        }
    )
    layout = _base_layout("ended sessions")
    layout["yaxis"]["rangemode"] = "tozero"
    return {"data": data, "layout": layout}


VERDICT_ORDER = ["fail", "inconclusive", "not_reported", "pass"]


def _reach(bound: float | None, estimate: float) -> float | None:
    return abs(bound - estimate) if isinstance(bound, int | float) else None


@dataclass(frozen=True)
class StageBoundary:
    at: datetime
    stage: int
    label: str


def stage_boundaries(rollout: Rollout) -> list[StageBoundary]:
    """When the rollout entered each stage: its events that changed the stage (the start
    enters the first one), labelled with the traffic share of the stage entered."""
    events = (
        rollout.events.exclude(to_stage=None)
        .only("at", "from_stage", "to_stage")
        .order_by("at", "id")
    )
    boundaries = []
    for event in events:
        if event.to_stage == event.from_stage or event.to_stage >= len(rollout.stages):
            continue
        percent = rollout.stages[event.to_stage]["percent"]
        boundaries.append(StageBoundary(event.at, event.to_stage, f"{percent:g}%"))
    return boundaries


def _boundary_marks(boundaries: list[StageBoundary]) -> tuple[list[dict], list[dict]]:
    """Plotly shapes (a vertical line each) and their labels for the stage boundaries."""
    shapes = [
        {
            "type": "line",
            "xref": "x",
            "yref": "paper",
            "x0": chart_time(boundary.at),
            "x1": chart_time(boundary.at),
            "y0": 0,
            "y1": 1,
            "line": {"color": "#57606a", "width": 1, "dash": "dot"},
        }
        for boundary in boundaries
    ]
    labels = [
        {
            "x": chart_time(boundary.at),
            "y": 1,
            "xref": "x",
            "yref": "paper",
            "text": plot_text(boundary.label),
            "showarrow": False,
            # Inside the plot, clear of the legend above it.
            "xanchor": "left",
            "yanchor": "top",
            "font": {"size": 11, "color": "#57606a"},
        }
        for boundary in boundaries
    ]
    return shapes, labels


def gate_figures(rollout: Rollout, reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One chart per gate: its verdict at each evaluation and, where a result carries
    numbers, the candidate - baseline estimate with its interval and the tolerance;
    a dotted line where each stage began, labelled with its percent."""
    charts = []
    shapes, labels = _boundary_marks(stage_boundaries(rollout)) if rollout.gates else ([], [])
    for index, gate in enumerate(rollout.gates):
        key = (gate["metric"], gate.get("stat", "mean"))
        points = []
        for report in reports:
            for result in report.get("gates", []):
                if (result.get("metric"), result.get("stat", "mean")) == key:
                    points.append((_report_time(report), result))
        xs = [at for at, _ in points]
        data: list[dict[str, Any]] = [
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": "verdict",
                "x": xs,
                "y": [result.get("verdict") for _, result in points],
                "line": {"color": "#57606a", "shape": "hv"},
                "marker": {"size": 9, "color": PALETTE[0]},
                "yaxis": "y",
            }
        ]
        numeric = [(at, r) for at, r in points if isinstance(r.get("estimate"), int | float)]
        if numeric:
            data.append(
                {
                    "type": "scatter",
                    "mode": "lines+markers",
                    "name": "candidate - baseline",
                    "x": [at for at, _ in numeric],
                    "y": [r["estimate"] for _, r in numeric],
                    "error_y": {
                        "type": "data",
                        "symmetric": False,
                        # An unbounded side (too few samples yet) draws no bar.
                        "array": [_reach(r.get("upper"), r["estimate"]) for _, r in numeric],
                        "arrayminus": [_reach(r.get("lower"), r["estimate"]) for _, r in numeric],
                    },
                    "line": {"color": PALETTE[1]},
                    "yaxis": "y2",
                }
            )
            tolerances = [(at, r["tolerance"]) for at, r in numeric if "tolerance" in r]
            if tolerances:
                data.append(
                    {
                        "type": "scatter",
                        "mode": "lines",
                        "name": "tolerance",
                        "x": [at for at, _ in tolerances],
                        "y": [value for _, value in tolerances],
                        "line": {"color": "#c62828", "dash": "dash"},
                        "yaxis": "y2",
                    }
                )
        layout = _base_layout("verdict")
        layout["shapes"] = [dict(shape) for shape in shapes]
        layout["annotations"] = [dict(label) for label in labels]
        layout["yaxis"].update(
            {
                "type": "category",
                "categoryorder": "array",
                "categoryarray": VERDICT_ORDER,
                # Every verdict keeps its row, whichever ones occurred.
                "range": [-0.5, len(VERDICT_ORDER) - 0.5],
            }
        )
        if numeric:
            layout["yaxis2"] = {
                "title": {"text": "candidate - baseline"},
                "overlaying": "y",
                "side": "right",
            }
            layout["margin"]["r"] = 72
        charts.append(
            {
                "id": f"gate-chart-{index}",
                "data_id": f"gate-chart-{index}-data",
                "numeric": bool(numeric),
                "metric": gate["metric"],
                "stat": gate.get("stat", "mean"),
                "tolerance": tolerance_text(gate),
                "points": len(points),
                "figure": {"data": data, "layout": layout},
            }
        )
    return charts


def forecast_figure(forecast: dict[str, Any]) -> dict[str, Any]:
    """The drain forecast's curves: expected live versions (left axis) and old-version
    session-hours (right axis) against hours from now, with a dotted line per deploy."""
    points = forecast["points"]
    xs = [point["t_h"] for point in points]
    data = [
        {
            "type": "scatter",
            "mode": "lines",
            "name": "expected live versions",
            "x": xs,
            "y": [point["live_versions"] for point in points],
            "line": {"color": PALETTE[0], "width": 2},
            "hovertemplate": "%{y:.2f} versions at +%{x:.1f} h<extra></extra>",
        },
        {
            "type": "scatter",
            "mode": "lines",
            "name": "old-version session-hours",
            "x": xs,
            "y": [point["old_session_hours"] for point in points],
            "line": {"color": PALETTE[1], "width": 2, "dash": "dash"},
            "yaxis": "y2",
            "hovertemplate": "%{y:.1f} session-hours at +%{x:.1f} h<extra></extra>",
        },
    ]
    layout: dict[str, Any] = {
        "height": 300,
        "margin": {"l": 64, "r": 72, "t": 40, "b": 48},
        "font": _FONT,
        "paper_bgcolor": "#ffffff",
        "plot_bgcolor": "#ffffff",
        "legend": {"orientation": "h", "y": 1.18, "x": 0},
        "xaxis": {"title": {"text": "hours from now"}, "gridcolor": "#e3e6ea"},
        "yaxis": {
            "title": {"text": "live versions"},
            "rangemode": "tozero",
            "gridcolor": "#e3e6ea",
        },
        "yaxis2": {
            "title": {"text": "old-version session-hours"},
            "rangemode": "tozero",
            "overlaying": "y",
            "side": "right",
        },
        "shapes": [
            {
                "type": "line",
                "xref": "x",
                "yref": "paper",
                "x0": at,
                "x1": at,
                "y0": 0,
                "y1": 1,
                "line": {"color": "#57606a", "width": 1, "dash": "dot"},
            }
            for at in forecast["deploys_h"]
        ],
    }
    return {"data": data, "layout": layout}

"""``dashboard.charts``: the figures the pages hand to Plotly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from dashboard import charts
from rollouts import engine
from rollouts.models import FleetSnapshot
from tests.dashboard.conftest import start

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)


def test_the_rainbow_reads_only_the_window_and_fills_absent_versions_with_zero(agent, make_version):
    v1, v2 = make_version(agent, "v1"), make_version(agent, "v2")
    FleetSnapshot.objects.bulk_create(
        [
            FleetSnapshot(agent=agent, at=NOW - timedelta(hours=2), live={str(v1.pk): 9}),
            FleetSnapshot(agent=agent, at=NOW - timedelta(minutes=30), live={str(v1.pk): 5}),
            FleetSnapshot(
                agent=agent, at=NOW - timedelta(minutes=10), live={str(v1.pk): 4, str(v2.pk): 2}
            ),
        ]
    )
    figure = charts.rainbow_figure(agent, "1h", now=NOW)
    assert [t["name"] for t in figure["data"]] == ["v1", "v2"]
    assert figure["data"][0]["y"] == [5, 4]
    assert figure["data"][1]["y"] == [0, 2]
    assert figure["data"][0]["x"] == ["2026-05-04 11:30:00", "2026-05-04 11:50:00"]
    # Consecutive versions get different colours, the same on every chart.
    assert figure["data"][0]["line"]["color"] != figure["data"][1]["line"]["color"]
    assert "latest: v1 4, v2 2" in figure["summary"]


def test_an_empty_window_says_so(agent):
    figure = charts.rainbow_figure(agent, "1h", now=NOW)
    assert figure["data"] == []
    assert figure["layout"]["annotations"][-1]["text"] == "No fleet snapshots in this window yet"


def test_gate_results_with_numbers_get_their_interval_and_tolerance(agent, make_version):
    """The seam for a stored evaluation history: results carrying an estimate."""
    v1, v2 = make_version(agent, "v1"), make_version(agent, "v2")
    engine.set_stable(agent, v1, actor="ci")
    rollout = start(agent, v2, gates=[{"metric": "error_rate", "max_increase": 0.02}])
    reports = [
        {
            "at": (NOW + timedelta(minutes=n)).isoformat(),
            "min_sessions": {"candidate": 10 * n, "baseline": 40 * n, "required": 100},
            "gates": [
                {
                    "metric": "error_rate",
                    "stat": "mean",
                    "verdict": verdict,
                    "estimate": 0.01 * n,
                    "lower": 0.01 * n - 0.005,
                    "upper": 0.01 * n + 0.005,
                    "tolerance": 0.02,
                }
            ],
        }
        for n, verdict in ((1, "inconclusive"), (2, "pass"), (3, "fail"))
    ]
    (chart,) = charts.gate_figures(rollout, reports)
    verdicts, estimate, tolerance = chart["figure"]["data"]
    assert verdicts["y"] == ["inconclusive", "pass", "fail"]
    assert estimate["y"] == pytest.approx([0.01, 0.02, 0.03])
    assert estimate["error_y"]["array"] == pytest.approx([0.005] * 3)
    assert tolerance["y"] == [0.02] * 3
    assert chart["numeric"] is True
    samples = charts.samples_figure(reports)
    assert [t["y"] for t in samples["data"]] == [[10, 20, 30], [40, 80, 120], [100, 100, 100]]


def test_version_labels_reach_plotly_escaped(agent, make_version):
    version = make_version(agent, '<a href="x">v1</a>')
    FleetSnapshot.objects.create(
        agent=agent, at=NOW - timedelta(minutes=1), live={str(version.pk): 1}
    )
    figure = charts.rainbow_figure(agent, "1h", now=NOW)
    assert figure["data"][0]["name"] == '&lt;a href="x"&gt;v1&lt;/a&gt;'


def test_gate_charts_mark_each_stage_boundary_with_its_percent(agent, make_version):
    v1, v2 = make_version(agent, "v1"), make_version(agent, "v2")
    engine.set_stable(agent, v1, actor="ci")
    rollout = start(
        agent,
        v2,
        stages=[{"percent": 5}, {"percent": 25}, {"percent": 100}],
        gates=[
            {"metric": "error_rate", "max_increase": 0.02},
            {"metric": "latency_ms", "stat": "p95", "max_relative_change": 0.1},
        ],
    )
    engine.transition(rollout.pk, "advance", actor="ci", expect_stage=0)
    # Pausing and resuming stay on the stage: no boundary for them.
    engine.transition(rollout.pk, "pause", actor="ci", expect_stage=1)
    engine.transition(rollout.pk, "resume", actor="ci", expect_stage=1)
    engine.transition(rollout.pk, "advance", actor="ci", expect_stage=1)
    rollout.refresh_from_db()
    changes = [e for e in rollout.events.order_by("at", "id") if e.to_stage != e.from_stage]
    assert [e.to_stage for e in changes] == [0, 1, 2]
    gate_charts = charts.gate_figures(rollout, [])
    assert len(gate_charts) == 2
    for chart in gate_charts:
        layout = chart["figure"]["layout"]
        xs = [shape["x0"] for shape in layout["shapes"]]
        assert xs == [charts.chart_time(e.at) for e in changes]
        assert [shape["x1"] for shape in layout["shapes"]] == xs
        assert [label["text"] for label in layout["annotations"]] == ["5%", "25%", "100%"]
        assert [label["x"] for label in layout["annotations"]] == xs


def test_the_stage_boundaries_cost_one_query_whatever_the_gates(agent, make_version):
    engine.set_stable(agent, make_version(agent, "v1"), actor="ci")
    metrics = ["error_rate", "latency_ms", "cost_usd", "abandon_rate", "hallucination_rate"]
    gates = [{"metric": name, "max_increase": 0.1} for name in metrics]
    rollout = start(agent, make_version(agent, "v2"), gates=gates)
    with CaptureQueriesContext(connection) as queries:
        gate_charts = charts.gate_figures(rollout, [])
    assert len(gate_charts) == 5
    assert len(queries) == 1
    assert all(len(c["figure"]["layout"]["shapes"]) == 1 for c in gate_charts)

"""``dashboard.charts``: the figures the pages hand to Plotly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

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

"""``/rollouts/{id}/``: the stage timeline, the gate evaluations and a chart per gate."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from django.utils import timezone

from rollouts import engine
from tests.dashboard.conftest import htmx, start
from versions.audit import SYSTEM

pytestmark = pytest.mark.django_db

POLLING = re.compile(r"every \d+s")


def figures(html: str) -> dict[str, dict]:
    return {
        found.group(1): json.loads(found.group(2))
        for found in re.finditer(
            r'<script id="([\w-]+)" type="application/json">(.*?)</script>', html, re.S
        )
    }


@pytest.fixture
def halted_twice(agent, make_version):
    """A rollout halted as inconclusive twice (each halt keeps its evaluation), resumed
    in between by a person."""
    v1, v2 = make_version(agent, "v1"), make_version(agent, "v2")
    engine.set_stable(agent, v1, actor="ci")
    rollout = start(
        agent,
        v2,
        stages=[{"percent": 20, "min_duration_s": 0, "max_duration_s": 1}, {"percent": 100}],
        actor="ci",
    )
    now = timezone.now()
    engine.transition(rollout.pk, "evaluate", actor=SYSTEM, now=now + timedelta(seconds=5))
    engine.transition(rollout.pk, "resume", actor="alice", reason="retry", now=now)
    engine.transition(rollout.pk, "evaluate", actor=SYSTEM, now=now + timedelta(seconds=9))
    rollout.refresh_from_db()
    return rollout


def test_the_timeline_says_who_moved_it_when_and_why(viewer_browser, halted_twice):
    html = viewer_browser.get(f"/rollouts/{halted_twice.pk}/").content.decode()
    rows = re.findall(
        r'<tr data-event="(\w+)">\s*<td><time[^>]*>[^<]+</time></td>\s*<td>([^<]+)</td>', html
    )
    assert rows == [("start", "ci"), ("halt", "system"), ("resume", "alice"), ("halt", "system")]
    assert "running → halted" in html
    assert "inconclusive: stage 0 ran past max_duration_s=1 without passing" in html
    assert "(evaluation: halt)" in html
    assert "retry" in html


def test_it_charts_every_gate_over_the_evaluations_kept(viewer_browser, halted_twice):
    html = viewer_browser.get(f"/rollouts/{halted_twice.pk}/").content.decode()
    reports = [e.evaluation for e in halted_twice.events.all() if e.evaluation]
    assert len(reports) == 2
    found = figures(html)
    samples = found["samples-figure"]
    assert [t["name"] for t in samples["data"]] == ["candidate", "baseline", "required"]
    assert [len(t["x"]) for t in samples["data"]] == [2, 2, 2]
    gates = [found[f"gate-chart-{i}-data"] for i in range(len(halted_twice.gates))]
    assert len(gates) == 2
    for figure in gates:
        assert figure["data"][0]["name"] == "verdict"
        assert figure["data"][0]["y"] == ["not_reported", "not_reported"]
    assert 'id="gate-history"' in html
    # The same evaluations as a table.
    assert html.count("<tr data-evaluation>") == 2
    assert 'error_rate: <span class="verdict verdict-not_reported">not_reported</span>' in html
    assert "2 evaluations kept for this rollout" in html


def test_the_partials_are_not_whole_pages(viewer_browser, halted_twice):
    url = f"/rollouts/{halted_twice.pk}/"
    progress = viewer_browser.get(url, **htmx("progress")).content.decode()
    assert "<html" not in progress
    assert progress.strip().startswith('<section id="progress"')
    assert "samples-figure" not in progress
    charts = viewer_browser.get(url, **htmx("rollout-charts")).content.decode()
    assert "<html" not in charts
    assert charts.strip().startswith('<div id="rollout-charts"')
    assert 'data-event="start"' not in charts


def test_an_open_rollout_polls_and_a_closed_one_stops(viewer_browser, halted_twice):
    url = f"/rollouts/{halted_twice.pk}/"
    response = viewer_browser.get(url, **htmx("progress"))
    assert response.status_code == 200
    assert "every 2s" in response.content.decode()

    engine.transition(halted_twice.pk, "rollback", actor="ci")
    for target in ("progress", "rollout-charts"):
        response = viewer_browser.get(url, **htmx(target))
        assert response.status_code == 286
        assert not POLLING.search(response.content.decode())
    assert not POLLING.search(viewer_browser.get(url).content.decode())


def test_the_stepper_marks_where_it_stopped(viewer_browser, halted_twice):
    html = viewer_browser.get(f"/rollouts/{halted_twice.pk}/").content.decode()
    assert re.search(
        r'<li class="step step-stopped" aria-current="step">.*?halted here', html, re.S
    )
    assert '<li class="step step-next">' in html


def test_an_unknown_rollout_is_a_404(viewer_browser, db):
    assert viewer_browser.get("/rollouts/424242/").status_code == 404

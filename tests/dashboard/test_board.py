"""``/agents/{slug}/``: the fleet board, its live partial and its rainbow chart."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from controlplane.health import record_tick
from rollouts import engine, sessions, snapshots
from rollouts.models import Session
from tests.dashboard.conftest import htmx, open_sessions, start
from versions.models import Agent

pytestmark = pytest.mark.django_db

POLLING = re.compile(r"every \d+s")

BOARD = "/agents/research/"


def figure(html: str) -> dict:
    found = re.search(
        r'<script id="rainbow-figure" type="application/json">(.*?)</script>', html, re.S
    )
    assert found, "no rainbow figure on the page"
    return json.loads(found.group(1))


def test_the_page_shows_every_version_with_its_numbers(viewer_browser, rollout_fleet):
    v1, v2 = rollout_fleet["v1"], rollout_fleet["v2"]
    response = viewer_browser.get(BOARD)
    html = response.content.decode()
    assert response.status_code == 200
    assert "<html" in html
    for version in (v1, v2):
        live = Session.objects.filter(version=version, state="live").count()
        row = re.search(rf'<tr data-version="{version.pk}">(.*?)</tr>', html, re.S).group(1)
        assert version.short_fingerprint in row
        assert '<span class="state state-active">active</span>' in row
        assert "<td data-weight>50%</td>" in row
        assert f"<td data-live>{live} " in row
    # The running rollout: the stepper and the latest verdict of every gate.
    assert '<li class="step step-current" aria-current="step">' in html
    assert re.search(r'step-percent">50%</span>\s*<span class="step-status">current', html)
    assert re.search(r'step-percent">100%</span>\s*<span class="step-status">next', html)
    assert '<th scope="row">error_rate</th>' in html
    assert "latency_ms (p95)" in html
    # No session has reported anything on either arm yet: shown, and not blocking.
    assert html.count('<span class="verdict verdict-not_reported">not_reported</span>') == 2
    assert "<td data-samples-candidate>0</td>" in html
    # The drain policy and the fragmentation it allows.
    assert "at most 4 versions may have live sessions" in html
    assert "2 of at most 4 versions are live now" in html
    assert "the oldest live session is" in html
    # The chart and its data, from the snapshots.
    assert figure(html)["data"][0]["name"] == "v1"


def test_a_draining_version_shows_its_progress_and_eta(viewer_browser, agent, make_version):
    v1, v2 = make_version(agent, "v1"), make_version(agent, "v2")
    engine.set_stable(agent, v1, actor="ci")
    open_sessions(agent, 4)
    # A history of ended sessions gives the survival curve its events.
    for i in range(6):
        sessions.assign(agent.slug, f"old-{i}")
        sessions.end(agent.slug, f"old-{i}", {})
    engine.set_stable(agent, v2, actor="ci")
    sessions.end(agent.slug, "s-0", {})

    html = viewer_browser.get(BOARD).content.decode()
    row = re.search(rf'<tr data-version="{v1.pk}">(.*?)</tr>', html, re.S).group(1)
    assert '<span class="state state-draining">draining</span>' in row
    assert '<progress max="100" value="25"' in row
    assert "25% drained, ETA" in row


def test_the_fleet_partial_is_not_a_whole_page(viewer_browser, rollout_fleet):
    response = viewer_browser.get(BOARD, **htmx("fleet"))
    html = response.content.decode()
    assert response.status_code == 200
    assert "<html" not in html
    assert html.strip().startswith('<section id="fleet"')
    assert 'hx-trigger="every 2s, prism:refresh from:body"' in html
    assert "rainbow-figure" not in html


def test_the_chart_partial_is_only_the_chart_data(viewer_browser, rollout_fleet):
    response = viewer_browser.get(BOARD + "?window=1h", **htmx("rainbow-data"))
    html = response.content.decode()
    assert response.status_code == 200
    assert "<html" not in html
    assert html.strip().startswith('<div id="rainbow-data"')
    assert 'id="fleet"' not in html
    assert 'aria-pressed="true"' in html
    assert "over the last 1h" in html
    assert len(figure(html)["data"]) == 2


def test_an_unknown_window_is_a_400(viewer_browser, rollout_fleet):
    assert viewer_browser.get(BOARD + "?window=forever").status_code == 400
    assert viewer_browser.get(BOARD + "?window=forever", **htmx("rainbow-data")).status_code == 400


def test_an_unknown_agent_is_a_404(viewer_browser, db):
    assert viewer_browser.get("/agents/nobody/").status_code == 404


def test_the_chart_stacks_the_snapshots_and_marks_the_events(viewer_browser, rollout_fleet):
    agent, v1, v2 = rollout_fleet["agent"], rollout_fleet["v1"], rollout_fleet["v2"]
    series = snapshots.series(agent, timezone.now() - timedelta(hours=6))
    data = figure(viewer_browser.get(BOARD).content.decode())
    assert [trace["name"] for trace in data["data"]] == ["v1", "v2"]
    for trace, version in zip(data["data"], (v1, v2), strict=True):
        assert trace["stackgroup"] == "live"
        assert trace["y"] == [live.get(str(version.pk), 0) for _, live in series]
        assert len(trace["x"]) == len(series) == 4
    assert [m["label"] for m in data["markers"]] == ["stable set to v1", "deploy v2"]
    assert len(data["layout"]["shapes"]) == 2

    engine.rollback_agent(agent, actor="ci")
    data = figure(viewer_browser.get(BOARD).content.decode())
    assert data["markers"][-1]["label"] == "roll back v2"
    assert data["markers"][-1]["kind"] == "rollback"


def test_it_stops_polling_once_nothing_is_live(viewer_browser, agent, make_version):
    record_tick()  # a late beat would keep the fleet polling until it is back
    engine.set_stable(agent, make_version(agent, "v1"), actor="ci")
    page = viewer_browser.get(BOARD).content.decode()
    assert "every 2s" not in page
    assert "every 10s" not in page
    assert 'id="fleet-refresh"' in page

    for target in ("fleet", "rainbow-data"):
        response = viewer_browser.get(BOARD, **htmx(target))
        assert response.status_code == 286, target
        assert not POLLING.search(response.content.decode())

    open_sessions(agent, 1)
    response = viewer_browser.get(BOARD, **htmx("fleet"))
    assert response.status_code == 200
    assert "every 2s" in response.content.decode()


def test_a_viewer_sees_no_action_buttons(viewer_browser, rollout_fleet):
    html = viewer_browser.get(BOARD).content.decode()
    assert 'id="rollback-open"' not in html
    assert "/rollouts/" + str(rollout_fleet["rollout"].pk) + "/pause/" not in html
    assert "Advance now" not in html


def test_a_release_manager_gets_the_buttons_with_the_epoch_and_stage_shown(manager, rollout_fleet):
    rollout = rollout_fleet["rollout"]
    html = manager.get(BOARD).content.decode()
    epoch = re.search(r"<dd data-epoch>(\d+)</dd>", html).group(1)
    assert f'hx-get="/agents/research/rollback/?epoch={epoch}"' in html
    assert f'hx-get="/rollouts/{rollout.pk}/pause/?stage=0"' in html
    assert f'hx-get="/rollouts/{rollout.pk}/advance/?stage=0"' in html
    # Rollback from the board is the agent's one-click rollback, not a second button.
    assert f"/rollouts/{rollout.pk}/rollback/" not in html


def make_fleet(agent: Agent, make_version, count: int) -> None:
    """``count`` versions, each stable in turn with live sessions left behind, so all
    but the last are draining; then a rollout of one more version."""
    for n in range(count):
        version = make_version(agent, f"v{n}")
        engine.set_stable(agent, version, actor="ci")
        open_sessions(agent, 2, prefix=f"n{n}")
    for n in range(3):
        sessions.assign(agent.slug, f"ended-{n}")
        sessions.end(agent.slug, f"ended-{n}", {})
    start(agent, make_version(agent, "next"), stages=[{"percent": 10}, {"percent": 100}])
    engine.evaluate_open_rollouts()
    snapshots.record()


def test_the_board_partial_costs_the_same_queries_with_2_or_20_versions(manager, make_version, db):
    counts = {}
    for n in (2, 20):
        agent = Agent.objects.create(slug=f"fleet-{n}", name="Fleet", retain_drained=50)
        make_fleet(agent, make_version, n)
        url = f"/agents/{agent.slug}/"
        manager.get(url, **htmx("fleet"))  # warm the session and role lookups alike
        with CaptureQueriesContext(connection) as queries:
            response = manager.get(url, **htmx("fleet"))
        assert response.status_code == 200
        assert response.content.decode().count("<tr data-version=") == n + 1
        assert response.content.decode().count("% drained") == n - 1
        counts[n] = len(queries)
    assert counts[2] == counts[20]

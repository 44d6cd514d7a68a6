"""``/``: every agent with its rainbow bar, its stable and its running rollout."""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from rollouts import engine
from rollouts.models import Session
from tests.dashboard.conftest import htmx, open_sessions
from versions.models import Agent

pytestmark = pytest.mark.django_db


def bands(html: str) -> list[tuple[str, str]]:
    """(width, label) of every band of the rainbow bars on the page."""
    return re.findall(
        r'<span class="band" style="width: ([\d.]+)%; background-color: #[0-9a-f]{6}">'
        r'(?:<span class="band-label">([^<]*)</span>)?',
        html,
    )


def test_it_shows_every_agent_with_a_band_per_live_version(viewer_browser, rollout_fleet):
    agent, v1, v2 = rollout_fleet["agent"], rollout_fleet["v1"], rollout_fleet["v2"]
    Agent.objects.create(slug="idle", name="Idle agent")
    live = {v.pk: Session.objects.filter(version=v, state="live").count() for v in (v1, v2)}
    assert sum(live.values()) == 12
    assert all(live.values())

    response = viewer_browser.get("/")
    html = response.content.decode()
    assert response.status_code == 200
    assert "<html" in html
    found = bands(html)
    assert [float(width) for width, _ in found] == pytest.approx(
        [100 * live[v1.pk] / 12, 100 * live[v2.pk] / 12], abs=0.01
    )
    # The label is written, not only the colour: in the band and in the legend.
    assert f"v1: {live[v1.pk] / 12:.0%}" in html
    assert f"v2: {live[v2.pk] / 12:.0%}" in html
    assert f"({live[v1.pk]} live)" in html
    assert 'aria-label="Live sessions: v1' in html
    # The stable, and the rollout's state and stage.
    assert f'href="/versions/{v1.pk}/">v1</a>' in html
    assert "running</span>, stage 1 of 2 (50%)" in html
    assert 'href="/agents/idle/"' in html
    assert "no live sessions" in html
    assert agent.slug in html


def test_the_partial_is_only_the_agents_list(viewer_browser, rollout_fleet):
    response = viewer_browser.get("/", **htmx("agents"))
    html = response.content.decode()
    assert response.status_code == 200
    assert "<html" not in html
    assert html.strip().startswith('<section id="agents"')
    assert 'hx-trigger="every 2s, prism:refresh from:body"' in html


def test_it_stops_polling_once_nothing_is_live(viewer_browser, agent, make_version):
    engine.set_stable(agent, make_version(agent, "v1"), actor="ci")
    page = viewer_browser.get("/").content.decode()
    assert "every 2s" not in page
    assert "automatic refresh is off" in page

    response = viewer_browser.get("/", **htmx("agents"))
    assert response.status_code == 286
    assert "every 2s" not in response.content.decode()

    open_sessions(agent, 1)
    response = viewer_browser.get("/", **htmx("agents"))
    assert response.status_code == 200
    assert "every 2s" in response.content.decode()


def test_the_overview_costs_the_same_queries_for_one_agent_or_many(
    viewer_browser, agent, make_version
):
    engine.set_stable(agent, make_version(agent, "v1"), actor="ci")
    open_sessions(agent, 3)
    with CaptureQueriesContext(connection) as one:
        viewer_browser.get("/", **htmx("agents"))
    for n in range(6):
        other = Agent.objects.create(slug=f"a-{n}", name=f"Agent {n}")
        engine.set_stable(other, make_version(other, "v1"), actor="ci")
        open_sessions(other, 2)
    with CaptureQueriesContext(connection) as many:
        assert viewer_browser.get("/", **htmx("agents")).status_code == 200
    assert len(many) == len(one)

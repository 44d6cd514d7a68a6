"""The late-beat warning: on the board's live partial and in every page's layout."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from controlplane.health import record_tick
from rollouts import engine
from tests.dashboard.conftest import htmx

pytestmark = pytest.mark.django_db

BOARD = "/agents/research/"
ALERT = re.compile(r'<p class="beat-late" role="alert" data-beat-late>(.*?)</p>', re.S)


def warning(html: str) -> str | None:
    found = ALERT.search(html)
    return " ".join(found.group(1).split()) if found else None


@pytest.fixture
def stable_agent(agent, make_version):
    engine.set_stable(agent, make_version(agent, "v1"), actor="ci")
    return agent


def test_a_fresh_tick_shows_no_warning(viewer_browser, stable_agent):
    record_tick()
    for headers in ({}, htmx("fleet")):
        response = viewer_browser.get(BOARD, **headers)
        assert response.status_code in (200, 286)
        assert warning(response.content.decode()) is None
        assert "data-beat-late" not in response.content.decode()


def test_an_old_tick_shows_the_warning_with_its_age(viewer_browser, stable_agent, settings):
    settings.PRISM_BEAT_LATE_S = 15
    record_tick(timezone.now() - timedelta(minutes=3))
    for headers in ({}, htmx("fleet")):
        html = viewer_browser.get(BOARD, **headers).content.decode()
        assert warning(html) == (
            "<strong>The beat is late</strong> (last tick 3 min ago): nothing is advancing "
            "or halting rollouts, and drain policies are not applied."
        )
        # Once, inside the live partial: not a second copy from the layout.
        assert html.count("data-beat-late") == 1
        fleet = html[html.index('<section id="fleet"') :]
        assert "data-beat-late" in fleet


def test_the_limit_is_the_setting(viewer_browser, stable_agent, settings):
    record_tick(timezone.now() - timedelta(seconds=30))
    settings.PRISM_BEAT_LATE_S = 60
    assert warning(viewer_browser.get(BOARD, **htmx("fleet")).content.decode()) is None
    settings.PRISM_BEAT_LATE_S = 20
    assert warning(viewer_browser.get(BOARD, **htmx("fleet")).content.decode()) is not None


def test_a_beat_that_never_ticked_is_late(viewer_browser, stable_agent):
    html = viewer_browser.get(BOARD, **htmx("fleet")).content.decode()
    assert "it has never ticked" in warning(html)


def test_the_partial_keeps_polling_while_the_beat_is_late_and_the_warning_clears(
    viewer_browser, stable_agent
):
    # Nothing is live, so only the late beat keeps the fleet partial polling.
    response = viewer_browser.get(BOARD, **htmx("fleet"))
    assert response.status_code == 200
    assert "every 10s" in response.content.decode()
    record_tick()
    response = viewer_browser.get(BOARD, **htmx("fleet"))
    assert response.status_code == 286
    assert warning(response.content.decode()) is None


def test_other_pages_show_it_in_the_layout(viewer_browser, stable_agent):
    html = viewer_browser.get("/").content.decode()
    assert "it has never ticked" in warning(html)
    record_tick()
    assert warning(viewer_browser.get("/").content.decode()) is None


def test_the_login_page_says_nothing_about_the_beat(anonymous_browser, db):
    assert warning(anonymous_browser.get("/login/").content.decode()) is None

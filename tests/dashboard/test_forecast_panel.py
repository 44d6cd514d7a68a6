"""``/agents/{slug}/forecast/``: the board's what-if panel over the drain forecast."""

from __future__ import annotations

import json
import re
from datetime import datetime

import pytest

from rollouts import engine
from rollouts.api_forecast import ForecastQuery, forecast_for
from tests.dashboard.conftest import htmx, open_sessions

pytestmark = pytest.mark.django_db

FORECAST = "/agents/research/forecast/"


def figure(html: str) -> dict:
    found = re.search(
        r'<script id="forecast-figure" type="application/json">(.*?)</script>', html, re.S
    )
    assert found, "no forecast figure in the partial"
    return json.loads(found.group(1))


@pytest.fixture
def fleet(agent, make_version):
    """research: v1 with sessions left behind, then v2 stable with sessions of its own."""
    engine.set_stable(agent, make_version(agent, "v1"), actor="ci")
    open_sessions(agent, 6, prefix="old")
    engine.set_stable(agent, make_version(agent, "v2"), actor="ci")
    open_sessions(agent, 4, prefix="new")
    return agent


def test_the_board_has_the_form_prefilled_with_the_policy(viewer_browser, fleet):
    fleet.max_session_age_s, fleet.max_live_versions = 7200, 3
    fleet.save()
    html = viewer_browser.get("/agents/research/").content.decode()
    form = re.search(r'<form id="forecast-form".*?</form>', html, re.S).group(0)
    assert 'hx-get="/agents/research/forecast/"' in form
    assert 'hx-trigger="change, submit"' in form
    assert 'name="deploy_every_h" min="0.25" max="720" step="any" required value="24"' in form
    assert 'name="max_session_age_s" min="60" max="2592000" step="1" required value="7200"' in form
    assert 'name="max_live_versions" min="1" max="100" step="1" required value="3"' in form
    assert 'hx-trigger="load"' in html  # the panel fills itself in after the page


def test_the_figure_is_the_forecast(viewer_browser, fleet):
    params = {"deploy_every_h": "6", "max_session_age_s": "1800", "max_live_versions": "2"}
    response = viewer_browser.get(FORECAST, params, **htmx("forecast-panel"))
    assert response.status_code == 200
    html = response.content.decode()
    assert "<html" not in html
    data = figure(html)
    query = ForecastQuery(data=params)
    assert query.is_valid()
    expected = forecast_for(fleet, query.validated_data, now=datetime.fromisoformat(data["at"]))
    assert expected["policy"]["max_live_versions"] == 2
    versions, hours = data["data"]
    assert versions["name"] == "expected live versions"
    assert hours["name"] == "old-version session-hours"
    assert versions["x"] == hours["x"] == [p["t_h"] for p in expected["points"]]
    assert versions["y"] == [p["live_versions"] for p in expected["points"]]
    assert hours["y"] == [p["old_session_hours"] for p in expected["points"]]
    assert hours["yaxis"] == "y2"
    assert [s["x0"] for s in data["layout"]["shapes"]] == expected["deploys_h"]
    # Something is really drawn: the old version's sessions are there to drain.
    assert max(hours["y"]) > 0


def test_the_policy_changes_the_curves(viewer_browser, fleet):
    def curve(max_live_versions: int) -> list[float]:
        params = {"deploy_every_h": "1", "max_live_versions": str(max_live_versions)}
        html = viewer_browser.get(FORECAST, params, **htmx("forecast-panel")).content.decode()
        return figure(html)["data"][0]["y"]

    assert max(curve(1)) < max(curve(10))


def test_it_uses_the_agents_policy_by_default(viewer_browser, fleet):
    fleet.max_live_versions = 1
    fleet.save()
    html = viewer_browser.get(FORECAST, **htmx("forecast-panel")).content.decode()
    data = figure(html)
    expected = forecast_for(
        fleet,
        {"deploy_every_h": 24.0, "horizon_h": 72.0, "step_h": 1.0},
        now=datetime.fromisoformat(data["at"]),
    )
    assert expected["policy"]["max_live_versions"] == 1
    assert data["data"][0]["y"] == [p["live_versions"] for p in expected["points"]]


@pytest.mark.parametrize(
    ("params", "field", "message"),
    [
        ({"deploy_every_h": "0"}, "deploy_every_h", "greater than or equal to 0.25"),
        ({"max_session_age_s": "ten"}, "max_session_age_s", "A valid integer is required."),
        ({"max_live_versions": "0"}, "max_live_versions", "greater than or equal to 1"),
    ],
)
def test_bad_input_is_a_400_with_the_message(viewer_browser, fleet, params, field, message):
    response = viewer_browser.get(FORECAST, params, **htmx("forecast-panel"))
    assert response.status_code == 400
    html = response.content.decode()
    item = re.search(rf'<li data-field="{field}">(.*?)</li>', html, re.S)
    assert item
    assert message in item.group(1)
    assert 'role="alert"' in html
    assert "forecast-figure" not in html
    assert 'id="forecast-panel"' in html
    assert "data-swap-errors" in html


def test_without_javascript_it_is_a_page(viewer_browser, fleet):
    response = viewer_browser.get(FORECAST, {"deploy_every_h": "12"})
    assert response.status_code == 200
    html = response.content.decode()
    assert "<html" in html
    assert 'value="12"' in html
    figure(html)
    assert viewer_browser.get(FORECAST, {"deploy_every_h": "x"}).status_code == 400


def test_who_may_read_it(viewer_browser, outsider_browser, anonymous_browser, fleet):
    assert viewer_browser.get(FORECAST, **htmx("forecast-panel")).status_code == 200
    assert outsider_browser.get(FORECAST).status_code == 403
    assert anonymous_browser.get(FORECAST).status_code == 302
    # Read only: the viewer's forecast changes nothing about the agent.
    before = fleet.max_live_versions
    viewer_browser.get(FORECAST, {"max_live_versions": "9"})
    fleet.refresh_from_db()
    assert fleet.max_live_versions == before


def test_an_unknown_agent_is_a_404(viewer_browser, db):
    assert viewer_browser.get("/agents/nobody/forecast/").status_code == 404

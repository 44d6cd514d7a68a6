"""``/agents/{slug}/audit/``: the trail, filterable by action and actor, paged, with
before and after shown key by key."""

from __future__ import annotations

import re

import pytest

from rollouts import engine
from tests.dashboard.conftest import htmx
from versions.audit import record
from versions.models import Agent

pytestmark = pytest.mark.django_db

AUDIT = "/agents/research/audit/"


def actions_listed(html: str) -> list[str]:
    return re.findall(r'<tr data-audit-action="([\w.]+)">', html)


@pytest.fixture
def trail(agent, make_version):
    v1, v2 = make_version(agent, "v1"), make_version(agent, "v2")
    engine.set_stable(agent, v1, actor="alice")
    engine.set_stable(agent, v2, actor="bob")
    engine.rollback_agent(agent, actor="alice", reason="v2 misroutes")
    other = Agent.objects.create(slug="other", name="Other")
    record("agent.updated", other, actor="mallory", reason="not ours")
    return agent


def test_it_lists_the_agents_entries_newest_first(viewer_browser, trail):
    html = viewer_browser.get(AUDIT).content.decode()
    listed = actions_listed(html)
    assert listed[:3] == ["agent.rollback", "agent.stable_set", "agent.stable_set"]
    assert "mallory" not in html
    assert "v2 misroutes" in html


def test_before_and_after_are_shown_key_by_key(viewer_browser, trail):
    html = viewer_browser.get(AUDIT, {"action": "agent.rollback"}).content.decode()
    changes = re.findall(
        r'<tr( class="row-changed")?><th scope="row">(\w+)(?: <span class="visually-hidden">'
        r"\(changed\)</span>)?</th><td><code>([^<]*)</code></td><td><code>([^<]*)</code>",
        html,
    )
    by_key = {key: (bool(changed), old, new) for changed, key, old, new in changes}
    assert set(by_key) == {"epoch", "weights", "stable"}
    assert all(changed for changed, _, _ in by_key.values())
    assert int(by_key["epoch"][2]) == int(by_key["epoch"][1]) + 1


def test_it_filters_by_action_and_by_actor(viewer_browser, trail):
    html = viewer_browser.get(AUDIT, {"action": "agent.stable_set"}).content.decode()
    assert actions_listed(html) == ["agent.stable_set", "agent.stable_set"]
    html = viewer_browser.get(AUDIT, {"actor": "bob"}).content.decode()
    assert actions_listed(html) == ["agent.stable_set"]
    html = viewer_browser.get(
        AUDIT, {"actor": "alice", "action": "agent.rollback"}
    ).content.decode()
    assert actions_listed(html) == ["agent.rollback"]
    # The filters offer what the trail holds.
    assert '<option value="agent.stable_set">agent.stable_set</option>' in html
    assert '<option value="alice" selected>alice</option>' in html
    assert "mallory" not in html


def test_it_pages_without_counting_the_trail(viewer_browser, agent):
    for n in range(30):
        record("agent.updated", agent, actor="alice", reason=f"change {n}")
    first = viewer_browser.get(AUDIT).content.decode()
    assert len(actions_listed(first)) == 25
    assert "change 29" in first
    assert 'id="page-older"' in first
    assert 'id="page-newer"' not in first
    second = viewer_browser.get(AUDIT, {"page": 2}).content.decode()
    assert len(actions_listed(second)) == 5
    assert "change 0<" in second
    assert 'id="page-older"' not in second
    assert 'id="page-newer"' in second


def test_the_entries_partial_is_not_a_whole_page(viewer_browser, trail):
    response = viewer_browser.get(AUDIT, {"actor": "bob"}, **htmx("audit-entries"))
    html = response.content.decode()
    assert response.status_code == 200
    assert "<html" not in html
    assert html.strip().startswith('<section id="audit-entries"')
    assert actions_listed(html) == ["agent.stable_set"]


@pytest.mark.parametrize("query", [{"page": "0"}, {"page": "two"}, {"action": "x" * 65}])
def test_bad_filters_are_a_400(viewer_browser, trail, query):
    assert viewer_browser.get(AUDIT, query).status_code == 400


def test_going_back_after_a_filter_gets_the_whole_page(viewer_browser, trail):
    # htmx asks for the whole page when its history cache misses.
    response = viewer_browser.get(
        AUDIT, {"actor": "bob"}, **htmx(HTTP_HX_HISTORY_RESTORE_REQUEST="true")
    )
    assert "<html" in response.content.decode()

"""Dashboard actions: rollback, pause, resume, advance. Release managers only; a
refused action changes nothing; a double click acts once; every change is audited in
the name of the person."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from rollouts import engine, sessions
from rollouts.models import Lifecycle, Rollout, RolloutEvent, Routing, Session
from tests.dashboard.conftest import browser, htmx, start
from versions.models import Agent, AuditEntry

pytestmark = pytest.mark.django_db

ROLLBACK = "/agents/research/rollback/"


def state(fleet: dict) -> tuple:
    """Everything an action could change."""
    routing = Routing.objects.get(agent=fleet["agent"])
    rollout = Rollout.objects.get(pk=fleet["rollout"].pk)
    return (
        routing.epoch,
        dict(routing.weights),
        rollout.state,
        rollout.stage,
        AuditEntry.objects.count(),
        RolloutEvent.objects.count(),
        Session.objects.filter(drain_at__isnull=False).count(),
    )


def toast(response) -> dict:
    return json.loads(response["HX-Trigger"])["prism:toast"]


def epoch_of(fleet: dict) -> int:
    return Routing.objects.get(agent=fleet["agent"]).epoch


def actions(fleet: dict) -> list[tuple[str, dict]]:
    """(url, form) of every dashboard action, as the page would send it."""
    pk = fleet["rollout"].pk
    return [
        (ROLLBACK, {"epoch": epoch_of(fleet), "reason": "r", "sessions": "evacuate"}),
        *[
            (f"/rollouts/{pk}/{name}/", {"stage": 0, "reason": "r", "sessions": "evacuate"})
            for name in ("pause", "resume", "advance", "rollback")
        ],
        (f"/versions/{fleet['v1'].pk}/drain/", {"reason": "r", "sessions": "terminate"}),
    ]


@pytest.mark.parametrize("role", ["viewer", "harness", None])
def test_only_release_managers_may_act_and_refusals_change_nothing(role, rollout_fleet):
    client = browser(role)
    # Resume needs a paused rollout, pause a running one: try every action in both.
    for paused in (False, True):
        if paused:
            engine.transition(rollout_fleet["rollout"].pk, "pause", actor="ci")
        before = state(rollout_fleet)
        for url, form in actions(rollout_fleet):
            for headers in ({}, htmx()):
                response = client.post(url, form, **headers)
                assert response.status_code == 403, (url, headers)
                assert state(rollout_fleet) == before, url
            confirm = client.get(url, {k: v for k, v in form.items() if k in ("epoch", "stage")})
            assert confirm.status_code == 403, url


def test_anonymous_actions_go_to_the_login_and_change_nothing(rollout_fleet):
    before = state(rollout_fleet)
    for url, form in actions(rollout_fleet):
        response = Client().post(url, form)
        assert response.status_code == 302
        assert response["Location"].startswith("/login/")
        response = Client().post(url, form, **htmx())
        assert response["HX-Redirect"].startswith("/login/")
    assert state(rollout_fleet) == before


def test_the_confirm_step_shows_what_will_happen(manager, rollout_fleet):
    epoch = epoch_of(rollout_fleet)
    response = manager.get(ROLLBACK, {"epoch": epoch}, **htmx())
    html = response.content.decode()
    assert response.status_code == 200
    assert "<html" not in html
    assert html.strip().startswith('<dialog id="confirm-dialog"')
    assert f"Rollout {rollout_fleet['rollout'].pk} is rolled back: v2 gets 0%" in html
    assert f'<input type="hidden" name="epoch" value="{epoch}">' in html
    # Evacuating is an explicit choice; letting sessions finish is the default.
    assert 'value="keep" id="sessions-keep" checked' in html
    assert 'value="evacuate" id="sessions-evacuate">' in html
    assert 'hx-post="/agents/research/rollback/"' in html

    page = manager.get(ROLLBACK, {"epoch": epoch})
    assert "<html" in page.content.decode()
    assert "hx-post" not in page.content.decode()  # a plain form without JavaScript


def test_the_confirm_step_refuses_bad_input(manager, rollout_fleet):
    assert manager.get(ROLLBACK).status_code == 400
    assert manager.get(ROLLBACK, {"epoch": "x"}).status_code == 400
    pk = rollout_fleet["rollout"].pk
    assert manager.get(f"/rollouts/{pk}/pause/", {"stage": "-1"}).status_code == 400
    assert manager.get(f"/rollouts/{pk}/explode/").status_code == 404
    assert manager.get("/rollouts/999999/pause/").status_code == 404


def test_rollback_from_the_board_rolls_back_once_in_the_name_of_the_person(manager, rollout_fleet):
    v1, v2 = rollout_fleet["v1"], rollout_fleet["v2"]
    epoch = epoch_of(rollout_fleet)
    form = {"epoch": epoch, "reason": "latency spike", "sessions": "keep"}

    first = manager.post(ROLLBACK, form, **htmx())
    assert first.status_code == 204
    message = toast(first)
    assert message["level"] == "success"
    assert "Rolled back research: new sessions go to v1" in message["message"]
    assert "prism:refresh" in json.loads(first["HX-Trigger"])
    routing = Routing.objects.get(agent=rollout_fleet["agent"])
    assert routing.weights == {str(v1.pk): 10000}
    assert Rollout.objects.get(pk=rollout_fleet["rollout"].pk).state == "rolled_back"
    entry = AuditEntry.objects.get(action="rollout.rollback")
    assert (entry.actor, entry.actor_user, entry.reason) == (
        manager.user.username,
        manager.user,
        "latency spike",
    )
    assert Session.objects.filter(version=v2, drain_at__isnull=False).count() == 0

    # The double click: same epoch again. Nothing more is rolled back.
    audit = AuditEntry.objects.count()
    second = manager.post(ROLLBACK, form, **htmx())
    assert second.status_code == 409
    assert toast(second)["level"] == "error"
    assert f"Routing changed since epoch {epoch}" in toast(second)["message"]
    assert Routing.objects.get(agent=rollout_fleet["agent"]).epoch == routing.epoch
    assert AuditEntry.objects.count() == audit
    assert Agent.objects.get(pk=rollout_fleet["agent"].pk).stable_id == v1.pk


def test_a_double_click_on_an_agent_rollback_goes_back_one_stable_only(
    manager, agent, make_version
):
    v1, v2, v3 = (make_version(agent, f"v{n}") for n in (1, 2, 3))
    for version in (v1, v2, v3):
        engine.set_stable(agent, version, actor="ci")
    epoch = Routing.objects.get(agent=agent).epoch
    form = {"epoch": epoch}
    assert manager.post(ROLLBACK, form, **htmx()).status_code == 204
    assert manager.post(ROLLBACK, form, **htmx()).status_code == 409
    agent.refresh_from_db()
    assert agent.stable_id == v2.pk
    assert AuditEntry.objects.filter(action="agent.rollback").count() == 1


def test_evacuating_is_chosen_explicitly(manager, rollout_fleet):
    v2 = rollout_fleet["v2"]
    live_on_v2 = Session.objects.filter(version=v2, state="live").count()
    assert live_on_v2
    form = {"epoch": epoch_of(rollout_fleet), "sessions": "evacuate"}
    response = manager.post(ROLLBACK, form, **htmx())
    assert response.status_code == 204
    assert "told to drain" in toast(response)["message"]
    assert Session.objects.filter(version=v2, drain_at__isnull=False).count() == live_on_v2
    entry = AuditEntry.objects.get(action="version.evacuated")
    assert entry.actor == manager.user.username


def test_bad_action_input_is_a_400_and_changes_nothing(manager, rollout_fleet):
    before = state(rollout_fleet)
    pk = rollout_fleet["rollout"].pk
    for url, form in [
        (ROLLBACK, {}),
        (ROLLBACK, {"epoch": "soon"}),
        (ROLLBACK, {"epoch": epoch_of(rollout_fleet), "sessions": "maybe"}),
        (ROLLBACK, {"epoch": epoch_of(rollout_fleet), "reason": "x" * 2001}),
        (f"/rollouts/{pk}/pause/", {"stage": "first"}),
    ]:
        response = manager.post(url, form, **htmx())
        assert response.status_code == 400, form
        assert toast(response)["level"] == "error"
    assert state(rollout_fleet) == before


def test_pause_resume_and_advance_from_the_stage_the_page_showed(manager, rollout_fleet):
    rollout = rollout_fleet["rollout"]
    base = f"/rollouts/{rollout.pk}"

    response = manager.post(f"{base}/pause/", {"stage": 0, "reason": "lunch"}, **htmx())
    assert response.status_code == 204
    assert "paused: now paused at 50%" in toast(response)["message"]
    # A second pause (double click) finds it paused already.
    again = manager.post(f"{base}/pause/", {"stage": 0}, **htmx())
    assert again.status_code == 409
    assert "Cannot pause a rollout that is paused" in toast(again)["message"]

    assert manager.post(f"{base}/resume/", {"stage": 0}, **htmx()).status_code == 204
    response = manager.post(f"{base}/advance/", {"stage": 0, "reason": "looks fine"}, **htmx())
    assert response.status_code == 204
    rollout.refresh_from_db()
    assert (rollout.state, rollout.stage) == ("promoted", 1)
    # Advancing from a stage that is no longer shown does nothing.
    stale = manager.post(f"{base}/advance/", {"stage": 0}, **htmx())
    assert stale.status_code == 409

    entries = AuditEntry.objects.filter(action__startswith="rollout.").exclude(
        action="rollout.started"
    )
    assert [(e.action, e.actor, e.reason) for e in entries.order_by("at", "id")] == [
        ("rollout.pause", manager.user.username, "lunch"),
        ("rollout.resume", manager.user.username, ""),
        ("rollout.advance", manager.user.username, "looks fine"),
    ]


def test_rollback_of_a_rollout_wins_over_a_stale_stage(manager, rollout_fleet, make_version):
    rollout = rollout_fleet["rollout"]
    engine.transition(rollout.pk, "pause", actor="ci")
    response = manager.post(f"/rollouts/{rollout.pk}/rollback/", {"stage": 7}, **htmx())
    assert response.status_code == 204
    rollout.refresh_from_db()
    assert rollout.state == "rolled_back"
    again = manager.post(f"/rollouts/{rollout.pk}/rollback/", {"stage": 0}, **htmx())
    assert again.status_code == 409


def test_without_javascript_an_action_redirects_back_with_a_message(manager, rollout_fleet):
    form = {"epoch": epoch_of(rollout_fleet), "next": "/agents/research/"}
    response = manager.post(ROLLBACK, form)
    assert response.status_code == 302
    assert response["Location"] == "/agents/research/"
    page = manager.get("/agents/research/").content.decode()
    assert "Rolled back research" in page


def test_a_next_url_elsewhere_is_not_followed(manager, rollout_fleet):
    form = {"epoch": epoch_of(rollout_fleet), "next": "https://example.com/"}
    response = manager.post(ROLLBACK, form)
    assert response["Location"] == "/agents/research/"


def test_rolling_back_with_nothing_to_return_to_is_a_409(manager, agent, make_version):
    engine.set_stable(agent, make_version(agent, "v1"), actor="ci")
    epoch = Routing.objects.get(agent=agent).epoch
    confirm = manager.get(ROLLBACK, {"epoch": epoch}, **htmx()).content.decode()
    assert "There is no previous stable version" in confirm
    assert 'id="confirm-submit"' not in confirm
    response = manager.post(ROLLBACK, {"epoch": epoch}, **htmx())
    assert response.status_code == 409
    assert "no previous stable" in toast(response)["message"]


def test_a_started_rollout_can_be_rolled_back_from_the_rollout_page(manager, agent, make_version):
    v1, v2 = make_version(agent, "v1"), make_version(agent, "v2")
    engine.set_stable(agent, v1, actor="ci")
    rollout = start(agent, v2)
    html = manager.get(f"/rollouts/{rollout.pk}/").content.decode()
    assert f'hx-get="/rollouts/{rollout.pk}/rollback/?stage=0"' in html
    assert manager.post(f"/rollouts/{rollout.pk}/rollback/", {}, **htmx()).status_code == 204


def test_a_lingering_version_is_force_drained_from_the_board_once(manager, agent, make_version):
    v1, v2 = make_version(agent, "v1"), make_version(agent, "v2")
    engine.set_stable(agent, v1, actor="ci")
    for i in range(3):
        sessions.assign(agent.slug, f"old-{i}")
    engine.set_stable(agent, v2, actor="ci")  # v1 drains with 3 live sessions
    board = manager.get(f"/agents/{agent.slug}/").content.decode()
    assert f'data-force-drain="{v1.pk}"' in board
    assert f'data-force-drain="{v2.pk}"' not in board  # it has weight: roll back first
    url = f"/versions/{v1.pk}/drain/"
    dialog = manager.get(url, **htmx()).content.decode()
    assert "3 live sessions" in dialog
    assert "<html" not in dialog
    # A reason is required: without one nothing changes.
    assert manager.post(url, {"reason": " "}, **htmx()).status_code == 400
    assert Lifecycle.objects.get(pk=v1.pk).forced_drain_at is None

    response = manager.post(url, {"reason": "stuck sessions", "sessions": "drain"}, **htmx())
    assert response.status_code == 204
    assert "3 live sessions are told to drain" in toast(response)["message"]
    lifecycle = Lifecycle.objects.get(pk=v1.pk)
    assert lifecycle.forced_drain_at is not None
    assert not lifecycle.forced_terminate
    entry = AuditEntry.objects.get(action="version.force_drained")
    assert (entry.actor, entry.reason) == (manager.user.username, "stuck sessions")
    beat = sessions.heartbeat(agent.slug, "old-0")
    assert beat.directive == "drain"
    # A second click: already forced, nothing more happens.
    assert manager.post(url, {"reason": "again", "sessions": "drain"}, **htmx()).status_code == 409
    assert AuditEntry.objects.filter(action="version.force_drained").count() == 1

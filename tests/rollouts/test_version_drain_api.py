"""POST /api/versions/{id}/drain/ and rollouts.drain.force_drain: force-drain a version
by hand."""

from __future__ import annotations

import pytest

from rollouts import drain, engine
from rollouts.models import Lifecycle, Session
from versions.models import AuditEntry

pytestmark = pytest.mark.django_db

START = "/api/agents/{slug}/sessions/"
BEAT = "/api/agents/{slug}/sessions/{sid}/heartbeat/"


def drain_url(version) -> str:
    return f"/api/versions/{version.pk}/drain/"


def start(client, agent, session_id: str) -> int:
    response = client.post(START.format(slug=agent.slug), {"session_id": session_id}, format="json")
    assert response.status_code == 201, response.content
    return response.json()["version"]["id"]


def beat(client, agent, session_id: str) -> str:
    response = client.post(BEAT.format(slug=agent.slug, sid=session_id))
    assert response.status_code == 200, response.content
    return response.json()["directive"]


@pytest.fixture
def draining(agent, make_version, harness, actor):
    """v1 draining with two live sessions and one ended; v2 the stable, with one."""
    v1, v2 = make_version(agent, "v1"), make_version(agent, "v2")
    engine.set_stable(agent, v1, actor=actor)
    for sid in ("a", "b", "done"):
        start(harness, agent, sid)
    harness.post(f"{START.format(slug=agent.slug)}done/end/", {}, format="json")
    engine.set_stable(agent, v2, actor=actor)
    start(harness, agent, "on-v2")
    return v1, v2


def test_it_tells_every_live_session_of_the_version_to_drain(
    release_manager, harness, agent, draining
):
    v1, _ = draining
    assert {beat(harness, agent, sid) for sid in ("a", "b")} == {"continue"}

    response = release_manager.post(drain_url(v1), {"reason": "leaks tokens"}, format="json")

    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["version"], body["forced"], body["terminate"]) == (v1.pk, True, False)
    assert (body["reason"], body["sessions_told_to_drain"]) == ("leaks tokens", 2)
    assert {beat(harness, agent, sid) for sid in ("a", "b")} == {"drain"}
    assert beat(harness, agent, "on-v2") == "continue"
    [entry] = AuditEntry.objects.filter(action="version.force_drained")
    assert (entry.actor, entry.actor_user_id) == (
        release_manager.user.username,
        release_manager.user.pk,
    )
    assert (entry.object_id, entry.reason) == (str(v1.pk), "leaks tokens")
    lifecycle = Lifecycle.objects.get(pk=v1.pk)
    assert (lifecycle.forced_drain_reason, lifecycle.forced_terminate) == ("leaks tokens", False)
    fleet = release_manager.get(f"/api/agents/{agent.slug}/fleet/").json()["versions"]
    row = next(r for r in fleet if r["id"] == v1.pk)
    assert (row["drain"]["forced"], row["drain"]["forced_reason"]) == (True, "leaks tokens")


def test_with_terminate_sessions_are_terminated_and_expired(
    release_manager, harness, agent, draining
):
    v1, _ = draining
    response = release_manager.post(
        drain_url(v1), {"reason": "data breach", "terminate": True}, format="json"
    )
    assert response.status_code == 200, response.content
    assert response.json()["terminate"] is True

    assert beat(harness, agent, "a") == "terminate"
    session = Session.objects.get(session_id="a")
    assert (session.state, session.end_reason) == ("expired", "terminated by a forced drain")
    [expired] = AuditEntry.objects.filter(action="session.expired")
    assert "data breach" in expired.reason
    assert beat(harness, agent, "a") == "terminate"
    assert AuditEntry.objects.filter(action="session.expired").count() == 1


def test_a_drain_can_be_escalated_to_terminate_once(release_manager, agent, draining):
    v1, _ = draining
    assert release_manager.post(drain_url(v1), {"reason": "r1"}, format="json").status_code == 200
    again = release_manager.post(drain_url(v1), {"reason": "r2"}, format="json")
    assert again.status_code == 409
    assert "already" in again.json()["detail"]
    harder = release_manager.post(drain_url(v1), {"reason": "r3", "terminate": True}, format="json")
    assert harder.status_code == 200, harder.content
    assert (
        release_manager.post(
            drain_url(v1), {"reason": "r4", "terminate": True}, format="json"
        ).status_code
        == 409
    )
    assert AuditEntry.objects.filter(action="version.force_drained").count() == 2


def test_a_version_with_weight_is_refused(release_manager, agent, draining):
    _, v2 = draining
    response = release_manager.post(drain_url(v2), {"reason": "nope"}, format="json")
    assert response.status_code == 409
    assert "weight" in response.json()["detail"]
    assert Lifecycle.objects.get(pk=v2.pk).forced_drain_at is None
    assert not AuditEntry.objects.filter(action="version.force_drained").exists()


def test_a_drained_version_is_refused(release_manager, harness, agent, draining):
    v1, _ = draining
    for sid in ("a", "b"):
        harness.post(f"{START.format(slug=agent.slug)}{sid}/end/", {}, format="json")
    response = release_manager.post(drain_url(v1), {"reason": "late"}, format="json")
    assert response.status_code == 409
    assert "drained" in response.json()["detail"]
    assert Lifecycle.objects.get(pk=v1.pk).forced_drain_at is None


def test_a_version_that_never_ran_is_refused(release_manager, agent, make_version, draining):
    response = release_manager.post(
        drain_url(make_version(agent, "v3")), {"reason": "x"}, format="json"
    )
    assert response.status_code == 409


@pytest.mark.parametrize(
    "body",
    [{}, {"reason": ""}, {"reason": "   "}, {"reason": "x", "terminate": "yes"}, {"reason": 5}],
)
def test_bad_input_is_a_400_naming_the_field(release_manager, agent, draining, body):
    v1, _ = draining
    response = release_manager.post(drain_url(v1), body, format="json")
    assert response.status_code == 400, response.content
    assert set(response.json()) & {"reason", "terminate"}
    assert Lifecycle.objects.get(pk=v1.pk).forced_drain_at is None


@pytest.mark.parametrize(
    ("role", "status"),
    [("viewer", 403), ("harness", 403), ("outsider", 403), ("anonymous", 401)],
)
def test_only_a_release_manager_may_force_a_drain(request, agent, draining, role, status):
    v1, _ = draining
    client = request.getfixturevalue(role)
    assert client.post(drain_url(v1), {"reason": "x"}, format="json").status_code == status
    assert Lifecycle.objects.get(pk=v1.pk).forced_drain_at is None


def test_an_unknown_version_is_a_404(release_manager):
    assert (
        release_manager.post(
            "/api/versions/999999/drain/", {"reason": "x"}, format="json"
        ).status_code
        == 404
    )


def test_the_service_function_is_the_same_action(harness, agent, draining, actor):
    v1, _ = draining
    result = drain.force_drain(v1, actor=actor, reason="from the dashboard")
    assert result.lifecycle.forced_drain_reason == "from the dashboard"
    assert (result.live_sessions, result.sessions_told_to_drain) == (2, 2)
    assert beat(harness, agent, "a") == "drain"
    with pytest.raises(drain.DrainRefused):
        drain.force_drain(v1, actor=actor, reason="twice")
    with pytest.raises(ValueError, match="reason"):
        drain.force_drain(v1, actor=actor, reason=" ", terminate=True)

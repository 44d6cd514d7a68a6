"""Query budgets on the hot paths, and no stale routing window."""

from __future__ import annotations

import random
import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from rollouts import engine, fleet, sessions
from rollouts import routing as routing_mod
from rollouts.models import FULL, Routing, Session
from rollouts.routing import Table
from tests.rollouts.conftest import expected_version, set_weights

START = "/api/agents/{slug}/sessions/"
FLEET = "/api/agents/{slug}/fleet/"


def start(client, agent, session_id: str):
    return client.post(START.format(slug=agent.slug), {"session_id": session_id}, format="json")


@pytest.fixture
def routed(agent, make_version, release_manager):
    v1, v2 = make_version(agent), make_version(agent)
    engine.set_stable(agent, v1, actor=release_manager.user)
    set_weights(agent, {v1.pk: 5000, v2.pk: 5000})
    return v1, v2


@pytest.fixture
def cold():
    """Forget everything this process cached: agent ids, compiled tables, payloads."""

    def forget() -> None:
        sessions._agent_ids.clear()
        routing_mod._tables.clear()
        sessions._payloads.clear()

    forget()
    return forget


def warm_up(client, agent, versions) -> None:
    """Fill the per-process caches: the agent's id, this routing, every version's payload."""
    for i in range(40):
        start(client, agent, f"warm-{i}")
    assert set(Session.objects.values_list("version_id", flat=True)) == {v.pk for v in versions}


def statements(queries: CaptureQueriesContext) -> list[str]:
    """What each captured statement reads or writes, by its first table."""
    found = []
    for query in queries.captured_queries:
        tables = re.findall(r'(?:FROM|INTO|JOIN)\s+"?(\w+)"?', query["sql"])
        found.append(tables[0] if tables else query["sql"][:40])
    return found


def test_a_new_session_costs_three_statements_when_warm(agent, routed, harness):
    """The caller's token, the routing row, the upsert: nothing else."""
    warm_up(harness, agent, routed)
    for i in range(5):
        with CaptureQueriesContext(connection) as queries:
            response = start(harness, agent, f"new-{i}")
        assert response.status_code == 201
        assert statements(queries) == [
            "controlplane_apitoken", "rollouts_routing", "rollouts_session"
        ]  # fmt: skip


def test_an_existing_pin_costs_one_more_for_the_policy(agent, routed, harness):
    """Its directive depends on the drain policy in force, which is read fresh."""
    warm_up(harness, agent, routed)
    with CaptureQueriesContext(connection) as queries:
        response = start(harness, agent, "warm-0")
    assert response.status_code == 200
    assert statements(queries) == [
        "controlplane_apitoken", "rollouts_routing", "rollouts_session", "versions_agent"
    ]  # fmt: skip


def test_a_routing_change_costs_the_next_assignment_no_extra_statement(
    agent, routed, harness, django_assert_num_queries
):
    v1, v2 = routed
    warm_up(harness, agent, routed)
    set_weights(agent, {v1.pk: 0, v2.pk: FULL})
    with django_assert_num_queries(3):
        response = start(harness, agent, "after-change")
    assert response.status_code == 201
    assert response.json()["version"]["id"] == v2.pk


def test_a_cold_process_looks_up_the_agent_and_the_payload_once(
    agent, routed, harness, cold, django_assert_num_queries
):
    v1, v2 = routed
    set_weights(agent, {v1.pk: FULL, v2.pk: 0})
    cold()
    with CaptureQueriesContext(connection) as queries:
        assert start(harness, agent, "first").status_code == 201
    assert statements(queries) == [
        "controlplane_apitoken", "versions_agent", "rollouts_routing", "rollouts_session",
        "versions_version",
    ]  # fmt: skip
    with django_assert_num_queries(3):
        assert start(harness, agent, "second").status_code == 201


def test_the_compiled_table_is_cached_by_epoch(agent, routed, harness, cold, monkeypatch):
    v1 = routed[0]
    compiled = []
    original = Table.compile.__func__

    def counting(cls, epoch, weights):
        compiled.append(epoch)
        return original(cls, epoch, weights)

    monkeypatch.setattr(Table, "compile", classmethod(counting))
    cold()
    first = Routing.objects.get(agent=agent).epoch
    for i in range(20):
        assert start(harness, agent, f"a-{i}").status_code == 201
    assert compiled == [first]
    set_weights(agent, {v1.pk: FULL})
    for i in range(20):
        assert start(harness, agent, f"b-{i}").json()["version"]["id"] == v1.pk
    assert compiled == [first, Routing.objects.get(agent=agent).epoch]
    assert compiled[1] > first


def test_it_has_no_stale_window_after_a_routing_change(
    agent, make_version, harness, release_manager
):
    """Each change is followed at once by one assignment, which must follow it."""
    v1, v2, v3 = (make_version(agent) for _ in range(3))
    engine.set_stable(agent, v1, actor=release_manager.user)
    rng = random.Random(7)
    ids = [v1.pk, v2.pk, v3.pk]
    for step in range(60):
        cut = sorted(rng.sample(range(1, FULL), 2))
        weights = dict(zip(ids, (cut[0], cut[1] - cut[0], FULL - cut[1]), strict=True))
        set_weights(agent, weights)
        session_id = f"step-{step}"
        response = start(harness, agent, session_id)
        assert response.status_code == 201
        assert response.json()["version"]["id"] == expected_version(
            agent.slug, session_id, weights
        ), step


def test_every_new_session_lands_on_the_baseline_after_a_rollback(
    agent, make_version, harness, release_manager
):
    v1, v2 = make_version(agent), make_version(agent)
    actor = release_manager.user
    engine.set_stable(agent, v1, actor=actor)
    engine.set_stable(agent, v2, actor=actor)
    for i in range(30):
        assert start(harness, agent, f"before-{i}").json()["version"]["id"] == v2.pk
    engine.rollback_agent(agent, actor=actor, reason="regression")
    landed = [start(harness, agent, f"after-{i}").json()["version"]["id"] for i in range(100)]
    assert landed == [v1.pk] * 100


# --- the fleet board --------------------------------------------------------------------


def fleet_queries(client, agent) -> tuple[int, dict]:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(FLEET.format(slug=agent.slug))
    assert response.status_code == 200
    return len(queries), response.json()


def test_the_fleet_query_count_does_not_grow_with_versions_or_sessions(
    agent, make_version, harness, viewer, release_manager
):
    actor = release_manager.user
    agent.retain_drained = 10
    agent.save()

    def deploy(sessions_each: int, *, end: int = 0) -> None:
        version = make_version(agent)
        engine.set_stable(agent, version, actor=actor)
        sids = [f"{version.pk}-{i}" for i in range(sessions_each)]
        for sid in sids:
            start(harness, agent, sid)
        for sid in sids[:end]:
            harness.post(f"/api/agents/{agent.slug}/sessions/{sid}/end/", {}, format="json")

    # Small fleet: one draining version, one active.
    deploy(3, end=1)
    deploy(2)
    fleet.refresh_estimate(agent)  # the beat's, as it stands between two ticks
    small, body = fleet_queries(viewer, agent)
    assert [v["state"] for v in body["versions"]] == ["active", "draining"]

    # Large fleet: many draining and drained versions, many more sessions.
    for _ in range(3):
        deploy(12, end=4)
    for _ in range(2):
        deploy(3, end=3)
    deploy(20)
    large, body = fleet_queries(viewer, agent)
    states = [v["state"] for v in body["versions"]]
    assert states.count("draining") >= 4
    assert states.count("drained") == 2
    assert len(states) == 8
    assert large == small, f"{small} queries for 2 versions, {large} for 8"


@pytest.mark.parametrize("who", ["viewer", "outsider", "harness-elsewhere", "revoked"])
def test_a_refused_caller_writes_no_pin(request, agent, routed, harness, who, django_user_model):
    from rest_framework.test import APIClient

    from controlplane.models import ApiToken, Profile, Role

    start(harness, agent, "warm")  # the process now knows the agent and its routing
    if who in ("viewer", "outsider"):
        client = request.getfixturevalue(who)
    else:
        user = django_user_model.objects.create_user(who)
        Profile.objects.create(user=user, role=Role.HARNESS)
        scope = ["elsewhere"] if who == "harness-elsewhere" else None
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {ApiToken.issue(user, agents=scope)}")
        if who == "revoked":
            ApiToken.objects.filter(user=user).update(revoked_at=timezone.now())
    response = start(client, agent, "refused-try")
    assert response.status_code == (401 if who == "revoked" else 403)
    assert not Session.objects.filter(session_id="refused-try").exists()


def test_the_hot_path_works_without_prepared_statements(agent, routed, harness, monkeypatch):
    """PRISM_PREPARED_STATEMENTS=false (behind a pooler): the same answers through
    Django's own cursor, and the same three statements when warm."""
    monkeypatch.setitem(connection.settings_dict["OPTIONS"], "prepare_threshold", None)
    warm_up(harness, agent, routed)
    with CaptureQueriesContext(connection) as warm:
        response = start(harness, agent, "unprepared")
    assert response.status_code == 201
    assert response.json()["version"]["id"] == expected_version(
        agent.slug, "unprepared", {v.pk: 5000 for v in routed}
    )
    assert statements(warm) == ["controlplane_apitoken", "rollouts_routing", "rollouts_session"]
    assert start(harness, agent, "unprepared").status_code == 200

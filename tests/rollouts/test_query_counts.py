"""Query budgets on the hot paths, and no stale routing window (DESIGN §5, STYLE)."""

from __future__ import annotations

import random

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from rollouts import engine
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


def test_a_steady_state_assignment_makes_at_most_three_queries(
    agent, routed, harness, django_assert_max_num_queries
):
    # Warm-up: fill the per-process caches (compiled table, both versions' payloads).
    for i in range(40):
        start(harness, agent, f"warm-{i}")
    assert set(Session.objects.values_list("version_id", flat=True)) == {v.pk for v in routed}

    for i in range(5):
        with django_assert_max_num_queries(3):
            response = start(harness, agent, f"new-{i}")
        assert response.status_code == 201

    with django_assert_max_num_queries(3):
        response = start(harness, agent, "new-0")
    assert response.status_code == 200


def test_a_routing_change_costs_the_next_assignment_no_extra_query(
    agent, routed, harness, django_assert_max_num_queries
):
    v1, v2 = routed
    for i in range(40):
        start(harness, agent, f"warm-{i}")
    set_weights(agent, {v1.pk: 2500, v2.pk: 7500})
    with django_assert_max_num_queries(3):
        assert start(harness, agent, "after-change").status_code == 201


def test_the_compiled_table_is_cached_by_epoch(agent, routed, harness, monkeypatch):
    v1 = routed[0]
    compiled = []
    original = Table.compile.__func__

    def counting(cls, epoch, weights):
        compiled.append(epoch)
        return original(cls, epoch, weights)

    monkeypatch.setattr(Table, "compile", classmethod(counting))
    for i in range(20):
        start(harness, agent, f"a-{i}")
    assert len(compiled) <= 1  # at most once, if no earlier request compiled this epoch
    set_weights(agent, {v1.pk: FULL})
    for i in range(20):
        assert start(harness, agent, f"b-{i}").json()["version"]["id"] == v1.pk
    assert len(compiled) <= 2
    assert compiled[-1] == Routing.objects.get(agent=agent).epoch


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


def test_the_warm_token_hot_path_is_one_statement(agent, routed, harness):
    """Read (token, role, routing, policy) and pin in one statement once this process
    has seen the agent's routing; a regression to the ORM path would be four or more."""
    v1 = routed[0]
    for i in range(40):  # fill the caches: this routing, both versions' payloads
        start(harness, agent, f"warm-{i}")
    with CaptureQueriesContext(connection) as new_pin:
        assert start(harness, agent, "fresh").status_code == 201
    with CaptureQueriesContext(connection) as known_pin:
        assert start(harness, agent, "fresh").status_code == 200
    assert len(new_pin.captured_queries) == 1
    assert len(known_pin.captured_queries) == 1

    # After a routing change the statement writes nothing; the pin follows the new epoch.
    set_weights(agent, {v1.pk: FULL})
    with CaptureQueriesContext(connection) as changed:
        response = start(harness, agent, "after-change")
    assert response.status_code == 201
    assert response.json()["version"]["id"] == v1.pk
    assert len(changed.captured_queries) == 2


def test_a_refused_token_writes_no_pin_on_the_hot_path(agent, routed, harness, viewer):
    start(harness, agent, "warm")  # the process now knows the routing
    response = start(viewer, agent, "viewer-try")
    assert response.status_code == 403
    assert not Session.objects.filter(session_id="viewer-try").exists()


def test_the_hot_path_and_the_full_path_answer_the_same_bytes(agent, routed, django_user_model):
    """A browser session takes the full DRF path; a token takes the hot path."""
    from rest_framework.test import APIClient

    from controlplane.models import ApiToken, Profile, Role

    user = django_user_model.objects.create_user("both-ways")
    Profile.objects.create(user=user, role=Role.HARNESS)
    by_session, by_token = APIClient(), APIClient()
    by_session.force_login(user)
    by_token.credentials(HTTP_AUTHORIZATION=f"Token {ApiToken.issue(user)}")

    first = start(by_session, agent, "same-session")
    again_full = start(by_session, agent, "same-session")
    again_hot = start(by_token, agent, "same-session")
    assert first.status_code == 201
    assert (again_full.status_code, again_hot.status_code) == (200, 200)
    assert again_hot.content == again_full.content
    assert again_hot["Content-Type"] == again_full["Content-Type"] == "application/json"
    new_hot = start(by_token, agent, "other-session")
    assert new_hot.status_code == 201
    assert set(new_hot.json()) == set(first.json())


def test_the_hot_path_works_without_prepared_statements(agent, routed, harness, monkeypatch):
    """PRISM_PREPARED_STATEMENTS=false (behind a pooler): the same answers through
    Django's own cursor, and still one statement when warm."""
    monkeypatch.setitem(connection.settings_dict["OPTIONS"], "prepare_threshold", None)
    for i in range(40):
        start(harness, agent, f"warm-{i}")
    with CaptureQueriesContext(connection) as warm:
        response = start(harness, agent, "unprepared")
    assert response.status_code == 201
    assert response.json()["version"]["id"] == expected_version(
        agent.slug, "unprepared", {v.pk: 5000 for v in routed}
    )
    assert len(warm.captured_queries) == 1
    assert start(harness, agent, "unprepared").status_code == 200

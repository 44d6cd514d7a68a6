"""Sticky assignment by the documented hash, pins across routing changes, and the
cacheable routing table."""

from __future__ import annotations

import math

import pytest

from rollouts import engine, sessions
from rollouts.models import FULL, Rollout, Session
from rollouts.routing import Table
from tests.rollouts.conftest import expected_version, set_weights
from versions.models import Agent, Version

SESSIONS_URL = "/api/agents/{slug}/sessions/"
ROUTING_URL = "/api/agents/{slug}/routing/"


def assert_tuple(payload: dict, version: Version) -> None:
    assert payload["id"] == version.pk
    assert payload["fingerprint"] == version.fingerprint
    assert payload["layers"] == version.layer_fingerprints
    for layer in ("code", "model", "prompts", "tools"):
        assert payload[layer] == getattr(version, layer), layer


@pytest.fixture
def three_versions(agent, make_version, release_manager):
    v1, v2, v3 = (make_version(agent, label=f"v{i}") for i in (1, 2, 3))
    engine.set_stable(agent, v1, actor=release_manager.user)
    # Neither weight order nor insertion order matches id order: ranges follow ids.
    set_weights(agent, {v3: 3300, v1: 1700, v2: 5000})
    return v1, v2, v3


def test_it_matches_an_independent_hash_over_ten_thousand_sessions(agent, three_versions):
    weights = {v.pk: w for v, w in zip(three_versions, (1700, 5000, 3300), strict=True)}
    counts = dict.fromkeys(weights, 0)
    mismatches = []
    for i in range(10_000):
        session_id = f"sess-{i}"
        assignment = sessions.assign(agent.slug, session_id)
        payload, _ = sessions.version_payload(assignment.version_id)
        want = expected_version(agent.slug, session_id, weights)
        if assignment.version_id != want or payload["id"] != want:
            mismatches.append((session_id, assignment.version_id, want))
        assert assignment.created
        counts[assignment.version_id] += 1

    assert mismatches == []
    assert Session.objects.filter(agent=agent).count() == 10_000
    n = 10_000
    for version_id, weight in weights.items():
        p = weight / FULL
        sigma = math.sqrt(n * p * (1 - p))
        assert abs(counts[version_id] - n * p) <= 4.5 * sigma, (version_id, counts)


def test_it_assigns_over_http_as_a_harness_computes_from_get_routing(
    agent, three_versions, harness
):
    routing = harness.get(ROUTING_URL.format(slug=agent.slug))
    assert routing.status_code == 200
    weights = {int(k): v for k, v in routing.json()["weights"].items()}
    assert sorted(weights.values()) == [1700, 3300, 5000]

    seen = set()
    for i in range(300):
        session_id = f"http-{i}"
        response = harness.post(
            SESSIONS_URL.format(slug=agent.slug), {"session_id": session_id}, format="json"
        )
        assert response.status_code == 201, response.content
        body = response.json()
        want = expected_version(agent.slug, session_id, weights)
        assert body["session_id"] == session_id
        assert body["version"]["id"] == want
        assert body["directive"] == "continue"
        seen.add(want)
    assert seen == set(weights)
    pinned = dict(
        Session.objects.filter(agent=agent, session_id__startswith="http-").values_list(
            "session_id", "version_id"
        )
    )
    assert len(pinned) == 300
    assert all(
        version_id == expected_version(agent.slug, sid, weights)
        for sid, version_id in pinned.items()
    )


def test_it_hashes_with_the_agent_slug(make_version, release_manager):
    """The same session id may land differently for two agents: the slug is hashed."""
    placed = {}
    for slug in ("alpha", "beta"):
        agent = Agent.objects.create(slug=slug, name=slug)
        a, b = make_version(agent), make_version(agent)
        engine.set_stable(agent, a, actor=release_manager.user)
        set_weights(agent, {a: 5000, b: 5000})
        placed[slug] = [sessions.assign(slug, f"s{i}").version_id == a.pk for i in range(200)]
        weights = {a.pk: 5000, b.pk: 5000}
        assert placed[slug] == [
            expected_version(slug, f"s{i}", weights) == a.pk for i in range(200)
        ]
    assert placed["alpha"] != placed["beta"]


@pytest.mark.parametrize(
    ("bucket", "version_id"),
    [(0, 10), (9997, 10), (9998, 30), (9999, 40)],
)
def test_it_picks_by_half_open_cumulative_ranges(bucket, version_id):
    # Id 20 has no weight and so no range; 10, 30, 40 hold [0, 9998), [9998], [9999].
    table = Table.compile(7, {30: 1, 10: 9998, 20: 0, 40: 1})
    assert table.version_ids == (10, 30, 40)
    assert table.pick(bucket) == version_id


def test_it_pins_survive_every_routing_change(agent, make_version, harness, release_manager):
    """Pins made under shifting weights come back unchanged, with 200 and the tuple,
    through advance, supersede, rollback, cutover, agent rollback and set_stable."""
    actor = release_manager.user
    v1, v2, v3, v4 = (make_version(agent, label=f"v{i}") for i in range(1, 5))
    by_id = {v.pk: v for v in (v1, v2, v3, v4)}
    engine.set_stable(agent, v1, actor=actor)
    url = SESSIONS_URL.format(slug=agent.slug)
    pins: dict[str, int] = {}

    def pin(batch: str, count: int = 60) -> None:
        for i in range(count):
            session_id = f"{batch}-{i}"
            response = harness.post(url, {"session_id": session_id}, format="json")
            assert response.status_code == 201, response.content
            pins[session_id] = response.json()["version"]["id"]

    def reask(step: str) -> None:
        for session_id, version_id in pins.items():
            response = harness.post(url, {"session_id": session_id}, format="json")
            assert response.status_code == 200, (step, session_id, response.content)
            body = response.json()
            assert body["session_id"] == session_id
            assert body["version"]["id"] == version_id, (step, session_id)
            assert_tuple(body["version"], by_id[version_id])

    stages = [
        {"percent": 30, "min_duration_s": 0, "min_sessions": 0},
        {"percent": 60},
        {"percent": 100},
    ]
    first = engine.start_rollout(agent, candidate=v2, stages=stages, gates=[], actor=actor)
    pin("a")
    engine.transition(first.pk, "advance", actor=actor)
    reask("advance")
    pin("b")
    second = engine.start_rollout(
        agent, candidate=v3, stages=stages, gates=[], supersede=True, actor=actor
    )
    assert Rollout.objects.get(pk=first.pk).state == "superseded"
    reask("supersede")
    pin("c")
    engine.transition(second.pk, "rollback", actor=actor)
    reask("rollback")
    engine.start_rollout(agent, candidate=v4, stages=[{"percent": 100}], gates=[], actor=actor)
    reask("cutover")
    pin("d", 30)
    engine.rollback_agent(agent, actor=actor)
    reask("agent rollback")
    engine.set_stable(agent, v2, actor=actor)
    reask("set_stable")

    assert set(pins.values()) == {v1.pk, v2.pk, v3.pk, v4.pk}
    # New sessions follow the newest routing, old ones kept theirs.
    response = harness.post(url, {"session_id": "fresh"}, format="json")
    assert response.status_code == 201
    assert response.json()["version"]["id"] == v2.pk
    assert Session.objects.filter(agent=agent).count() == len(pins) + 1


def test_it_pins_survive_weight_changes_without_rollouts(agent, three_versions, harness):
    v1, v2, v3 = three_versions
    url = SESSIONS_URL.format(slug=agent.slug)
    pins = {}
    for i in range(100):
        response = harness.post(url, {"session_id": f"w-{i}"}, format="json")
        pins[f"w-{i}"] = response.json()["version"]["id"]
    assert set(pins.values()) == {v1.pk, v2.pk, v3.pk}
    for weights in ({v3: FULL}, {v1: 1, v2: 9999}, {v2: 5000, v3: 5000}):
        set_weights(agent, weights)
        for session_id, version_id in pins.items():
            response = harness.post(url, {"session_id": session_id}, format="json")
            assert response.status_code == 200
            assert response.json()["version"]["id"] == version_id


# --- GET /routing/ ------------------------------------------------------------------


def test_it_serves_the_routing_table_with_an_etag(agent, make_version, viewer, release_manager):
    v1, v2 = make_version(agent), make_version(agent)
    engine.set_stable(agent, v1, actor=release_manager.user)
    url = ROUTING_URL.format(slug=agent.slug)

    first = viewer.get(url)
    assert first.status_code == 200
    body = first.json()
    assert body["stable"] == v1.pk
    assert body["weights"] == {str(v1.pk): FULL}
    epoch, tag = body["epoch"], first["ETag"]
    assert tag

    unchanged = viewer.get(url, HTTP_IF_NONE_MATCH=tag)
    assert unchanged.status_code == 304
    assert unchanged["ETag"] == tag
    assert not unchanged.content

    engine.set_stable(agent, v2, actor=release_manager.user)
    changed = viewer.get(url, HTTP_IF_NONE_MATCH=tag)
    assert changed.status_code == 200
    assert changed["ETag"] != tag
    assert changed.json()["epoch"] == epoch + 1
    assert changed.json()["stable"] == v2.pk
    assert changed.json()["weights"] == {str(v2.pk): FULL}
    assert viewer.get(url, HTTP_IF_NONE_MATCH=changed["ETag"]).status_code == 304


def test_it_increments_the_epoch_on_every_routing_change(
    agent, make_version, harness, release_manager
):
    v1, v2 = make_version(agent), make_version(agent)
    url = ROUTING_URL.format(slug=agent.slug)
    engine.set_stable(agent, v1, actor=release_manager.user)
    epochs, tags = [], []
    for weights in ({v1: 9000, v2: 1000}, {v1: 5000, v2: 5000}, {v1: FULL}):
        set_weights(agent, weights)
        response = harness.get(url)
        assert response.json()["weights"] == {str(v.pk): w for v, w in weights.items()}
        epochs.append(response.json()["epoch"])
        tags.append(response["ETag"])
    assert epochs == [epochs[0], epochs[0] + 1, epochs[0] + 2]
    assert len(set(tags)) == 3


def test_it_answers_404_for_the_routing_of_an_unknown_agent(viewer, db):
    assert viewer.get(ROUTING_URL.format(slug="nobody")).status_code == 404

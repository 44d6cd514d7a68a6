"""The sessions API: start, heartbeat, end and feedback, with their bad inputs and roles
(the README's API section)."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from django.utils import timezone

from metrics.models import Outcome
from rollouts import engine
from rollouts.models import Routing, Session
from tests.rollouts.conftest import set_weights

START = "/api/agents/{slug}/sessions/"
BEAT = "/api/agents/{slug}/sessions/{sid}/heartbeat/"
END = "/api/agents/{slug}/sessions/{sid}/end/"
FEEDBACK = "/api/agents/{slug}/sessions/{sid}/feedback/"


@pytest.fixture
def stable(agent, make_version, release_manager):
    version = make_version(agent, label="v1")
    engine.set_stable(agent, version, actor=release_manager.user)
    return version


def start(client, slug: str, session_id):
    return client.post(START.format(slug=slug), {"session_id": session_id}, format="json")


def url(template: str, slug: str, sid: str) -> str:
    return template.format(slug=slug, sid=quote(sid, safe=""))


# --- starting -----------------------------------------------------------------------


def test_it_starts_a_session_with_the_whole_tuple(agent, stable, harness):
    response = start(harness, agent.slug, "s-1")
    assert response.status_code == 201
    body = response.json()
    assert body["session_id"] == "s-1"
    assert body["directive"] == "continue"
    version = body["version"]
    assert version["id"] == stable.pk
    assert version["fingerprint"] == stable.fingerprint
    assert {k: version[k] for k in ("code", "model", "prompts", "tools")} == stable.layers
    assert start(harness, agent.slug, "s-1").status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"session_id": ""},
        {"session_id": "x" * 201},
        {"session_id": "\x00a"},
        {"session_id": "a\nb"},
        {"session_id": "tab\there"},
        {"session_id": 123},
        {"session_id": None},
        {"session_id": ["a"]},
        {"session_id": {"id": "a"}},
        {"session_id": True},
    ],
    ids=[
        "missing",
        "empty",
        "201-chars",
        "nul",
        "newline",
        "tab",
        "int",
        "null",
        "list",
        "object",
        "bool",
    ],
)
def test_it_refuses_bad_session_ids(agent, stable, harness, body):
    response = harness.post(START.format(slug=agent.slug), body, format="json")
    assert response.status_code == 400, response.content
    assert "session_id" in response.json()
    assert not Session.objects.exists()


def test_it_refuses_a_body_that_is_not_an_object(agent, stable, harness):
    response = harness.post(START.format(slug=agent.slug), ["s-1"], format="json")
    assert response.status_code == 400


@pytest.mark.parametrize(
    "raw",
    [b'{"session_id": "\\ud800"}', b'{"session_id": "a\\u200bb"}', b"not json", b""],
    ids=["lone-surrogate", "zero-width-space", "not-json", "empty-body"],
)
def test_it_refuses_raw_bodies_it_cannot_use(agent, stable, harness, raw):
    response = harness.post(START.format(slug=agent.slug), raw, content_type="application/json")
    assert response.status_code == 400
    assert not Session.objects.exists()


@pytest.mark.parametrize(
    "session_id",
    ["x" * 200, "a", "with space", "ünïcødé-✓", "slash/and?query#frag%41"],
)
def test_it_accepts_any_printable_id_up_to_200_characters(agent, stable, harness, session_id):
    assert start(harness, agent.slug, session_id).status_code == 201
    beat = harness.post(url(BEAT, agent.slug, session_id))
    assert beat.status_code == 200, beat.content
    assert beat.json()["directive"] == "continue"
    assert Session.objects.get().session_id == session_id


def test_it_answers_404_for_an_unknown_agent(harness, db):
    assert start(harness, "nobody", "s-1").status_code == 404


def test_it_answers_409_when_the_agent_has_no_stable(agent, make_version, harness):
    make_version(agent)
    response = start(harness, agent.slug, "s-1")
    assert response.status_code == 409
    assert "detail" in response.json()
    assert not Session.objects.exists()


@pytest.mark.parametrize("template", [BEAT, END, FEEDBACK])
def test_it_answers_404_for_an_unknown_session(agent, stable, harness, template):
    start(harness, agent.slug, "known")
    body = {"feedback": 1} if template is FEEDBACK else {}
    assert (
        harness.post(url(template, agent.slug, "unknown"), body, format="json").status_code == 404
    )
    assert harness.post(url(template, "nobody", "known"), body, format="json").status_code == 404


def test_it_does_not_find_a_session_through_another_agent(
    agent, stable, harness, make_version, release_manager
):
    from versions.models import Agent

    other = Agent.objects.create(slug="other", name="other")
    engine.set_stable(other, make_version(other), actor=release_manager.user)
    start(harness, agent.slug, "mine")
    assert harness.post(url(BEAT, "other", "mine")).status_code == 404
    assert start(harness, "other", "mine").status_code == 201  # unique per agent only


# --- ending and feedback ------------------------------------------------------------


@pytest.mark.parametrize(
    "outcome",
    [
        {"success": "true"},
        {"success": 1},
        {"error": "no"},
        {"hallucination": 0},
        {"latency_ms": "fast"},
        {"latency_ms": -1},
        {"latency_ms": True},
        {"cost_usd": -0.01},
        {"cost_usd": "1.0"},
        {"feedback": 1.5},
        {"feedback": -2},
        {"feedback": True},
        {"satisfaction": 1},
        "success",
        ["success"],
    ],
)
def test_it_refuses_a_malformed_outcome(agent, stable, harness, outcome):
    start(harness, agent.slug, "s-1")
    response = harness.post(url(END, agent.slug, "s-1"), {"outcome": outcome}, format="json")
    assert response.status_code == 400, response.content
    assert Session.objects.get().state == "live"
    assert not Outcome.objects.exists()


@pytest.mark.parametrize(
    "raw",
    [
        b'{"outcome": {"latency_ms": 1e400}}',
        b'{"outcome": {"cost_usd": NaN}}',
        b'{"outcome": {"latency_ms": Infinity}}',
    ],
    ids=["overflow", "nan", "infinity"],
)
def test_it_refuses_non_finite_numbers(agent, stable, harness, raw):
    start(harness, agent.slug, "s-1")
    response = harness.post(url(END, agent.slug, "s-1"), raw, content_type="application/json")
    assert response.status_code == 400
    assert not Outcome.objects.exists()


def test_it_records_the_outcome_once_when_ended_twice(agent, stable, harness):
    start(harness, agent.slug, "s-1")
    outcome = {
        "success": True,
        "error": False,
        "latency_ms": 812.5,
        "cost_usd": 0.031,
        "hallucination": False,
        "feedback": 0.5,
    }
    first = harness.post(url(END, agent.slug, "s-1"), {"outcome": outcome}, format="json")
    assert first.status_code == 200
    assert first.json()["already_ended"] is False
    assert first.json()["state"] == "ended"

    second = harness.post(
        url(END, agent.slug, "s-1"),
        {"outcome": {"success": False, "error": True, "latency_ms": 1}},
        format="json",
    )
    assert second.status_code == 200
    assert second.json()["already_ended"] is True

    stored = Outcome.objects.get()
    assert (
        stored.success,
        stored.error,
        stored.latency_ms,
        stored.cost_usd,
        stored.hallucination,
        stored.feedback,
    ) == (True, False, 812.5, 0.031, False, 0.5)
    assert stored.version_id == stable.pk
    assert stored.ended_at is not None
    session = Session.objects.get()
    assert session.state == "ended"
    assert session.ended_at == stored.ended_at


def test_it_records_the_outcome_of_an_expired_session_once(
    agent, stable, harness, make_version, release_manager
):
    """A session the policy expired may still report how it went, once."""
    start(harness, agent.slug, "s-1")
    engine.set_stable(agent, make_version(agent), actor=release_manager.user)
    Session.objects.update(state="expired", ended_at=timezone.now())
    first = harness.post(url(END, agent.slug, "s-1"), {"outcome": {"success": True}}, format="json")
    assert first.status_code == 200
    assert first.json()["already_ended"] is False
    assert first.json()["state"] == "expired"
    second = harness.post(
        url(END, agent.slug, "s-1"), {"outcome": {"success": False}}, format="json"
    )
    assert second.status_code == 200
    assert second.json()["already_ended"] is True
    assert Outcome.objects.get().success is True


def test_it_ends_without_an_outcome(agent, stable, harness):
    start(harness, agent.slug, "s-1")
    assert harness.post(url(END, agent.slug, "s-1"), {}, format="json").status_code == 200
    assert Session.objects.get().state == "ended"
    assert Outcome.objects.get().success is None


def test_it_stores_late_feedback_after_the_end(agent, stable, harness):
    start(harness, agent.slug, "s-1")
    harness.post(url(END, agent.slug, "s-1"), {"outcome": {"success": True}}, format="json")
    response = harness.post(url(FEEDBACK, agent.slug, "s-1"), {"feedback": -0.75}, format="json")
    assert response.status_code == 200
    stored = Outcome.objects.get()
    assert stored.feedback == -0.75
    assert stored.feedback_at is not None
    assert stored.success is True
    # The latest feedback wins.
    harness.post(url(FEEDBACK, agent.slug, "s-1"), {"feedback": 1}, format="json")
    assert Outcome.objects.get().feedback == 1.0


def test_it_keeps_feedback_that_arrives_before_the_end(agent, stable, harness):
    start(harness, agent.slug, "s-1")
    harness.post(url(FEEDBACK, agent.slug, "s-1"), {"feedback": 0.25}, format="json")
    harness.post(url(END, agent.slug, "s-1"), {"outcome": {"success": False}}, format="json")
    stored = Outcome.objects.get()
    assert (stored.feedback, stored.success) == (0.25, False)
    assert stored.ended_at is not None


@pytest.mark.parametrize("value", [1.5, -2, True, "0.5", None])
def test_it_refuses_bad_feedback(agent, stable, harness, value):
    start(harness, agent.slug, "s-1")
    response = harness.post(url(FEEDBACK, agent.slug, "s-1"), {"feedback": value}, format="json")
    assert response.status_code == 400
    assert not Outcome.objects.exists()


def test_it_answers_terminate_to_an_ended_session(agent, stable, harness):
    start(harness, agent.slug, "s-1")
    harness.post(url(END, agent.slug, "s-1"), {}, format="json")
    assert harness.post(url(BEAT, agent.slug, "s-1")).json()["directive"] == "terminate"
    again = start(harness, agent.slug, "s-1")
    assert again.status_code == 200
    assert again.json()["directive"] == "terminate"


# --- roles --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "expected"),
    [
        ("viewer", 403),
        ("outsider", 403),
        ("anonymous", 401),
        ("harness", 200),
        ("release_manager", 200),
    ],
)
def test_it_lets_only_harnesses_and_managers_use_sessions(
    request, agent, stable, harness, role, expected
):
    client = request.getfixturevalue(role)
    start(harness, agent.slug, "existing")
    created = start(client, agent.slug, "new")
    assert created.status_code == (201 if expected == 200 else expected)
    calls = [
        (BEAT, {}),
        (FEEDBACK, {"feedback": 0.5}),
        (END, {"outcome": {"success": True}}),
    ]
    for template, body in calls:
        response = client.post(url(template, agent.slug, "existing"), body, format="json")
        assert response.status_code == expected, (template, response.content)
    assert Session.objects.get(session_id="existing").state == (
        "ended" if expected == 200 else "live"
    )


# --- pins reported after local routing ("fail static") ---------------------------------


def report(client, slug: str, session_id: str, version):
    body = {"session_id": session_id, "version": version, "started_at": timezone.now().isoformat()}
    return client.post(START.format(slug=slug), body, format="json")


def test_a_pin_made_locally_while_prism_was_down_is_recorded_as_reported(
    agent, stable, make_version, harness
):
    # The harness routed to v0 from its cached table; v0 gets no weight now.
    v0 = make_version(agent, label="v0")
    response = report(harness, agent.slug, "offline-1", v0.pk)
    assert response.status_code == 201
    assert response.json()["version"]["id"] == v0.pk
    assert Session.objects.get(session_id="offline-1").version_id == v0.pk
    # Reporting it again is harmless; asking without a version returns the same pin.
    assert report(harness, agent.slug, "offline-1", v0.pk).status_code == 200
    assert start(harness, agent.slug, "offline-1").json()["version"]["id"] == v0.pk


def test_a_reported_pin_that_contradicts_the_stored_one_is_a_409(
    agent, stable, make_version, harness
):
    other = make_version(agent, label="other")
    assert start(harness, agent.slug, "s").json()["version"]["id"] == stable.pk
    response = report(harness, agent.slug, "s", other.pk)
    assert response.status_code == 409
    assert f"pinned to version {stable.pk}" in response.json()["detail"]
    assert Session.objects.get(session_id="s").version_id == stable.pk


@pytest.mark.parametrize("bad", ["1", True, 1.5, -1, 10**9])
def test_a_reported_version_must_be_one_of_the_agents_versions(agent, stable, harness, bad):
    response = report(harness, agent.slug, "s", bad)
    assert response.status_code == 400
    assert "version" in response.json()
    assert not Session.objects.filter(session_id="s").exists()


def test_a_reported_version_of_another_agent_is_a_400(agent, stable, make_version, harness):
    from versions.models import Agent

    elsewhere = make_version(Agent.objects.create(slug="other-agent", name="Other"))
    response = report(harness, agent.slug, "s", elsewhere.pk)
    assert response.status_code == 400
    assert not Session.objects.filter(session_id="s").exists()


def test_it_records_the_routing_epoch_each_pin_was_computed_from(agent, v1, v2, harness):
    """Rollups key on the pin's epoch to tell which stage a session started in, so it
    must be the epoch of the table that picked the version, on the warm path too."""
    first = Routing.objects.get(agent=agent).epoch
    for i in range(3):
        assert start(harness, agent.slug, f"a-{i}").status_code == 201
    set_weights(agent, {v1: 5000, v2: 5000})
    second = Routing.objects.get(agent=agent).epoch
    assert second > first
    for i in range(3):
        assert start(harness, agent.slug, f"b-{i}").status_code == 201
    epochs = dict(Session.objects.filter(agent=agent).values_list("session_id", "epoch"))
    assert {epochs[f"a-{i}"] for i in range(3)} == {first}
    assert {epochs[f"b-{i}"] for i in range(3)} == {second}

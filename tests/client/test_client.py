"""The harness client against a live Prism (pytest-django's live server)."""

from __future__ import annotations

import hashlib
import socket

import pytest
from django.utils import timezone

from metrics.models import Outcome
from prism_client import (
    Call,
    Client,
    Directive,
    NotFound,
    Refused,
    Unauthorized,
    Unavailable,
    bucket,
)
from rollouts import engine, routing
from rollouts.models import Session
from tests.rollouts.conftest import expected_version, weights

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def client_for(live_server):
    """Clients of the live server, closed afterwards: a keep-alive connection left open
    would hold the server thread, and its database connection, past the test."""
    made: list[Client] = []

    def make(token: str, slug: str = "research", **kwargs) -> Client:
        made.append(Client(live_server.url, token, slug, timeout=5, backoff_s=0.01, **kwargs))
        return made[-1]

    yield make
    for client in made:
        client.close()


def test_the_local_bucket_is_the_documented_hash():
    for n in range(500):
        session_id = f"chat-{n}"
        digest = hashlib.sha256(f"research:{session_id}".encode()).hexdigest()
        assert bucket("research", session_id) == int(digest[:16], 16) % 10000
        assert bucket("research", session_id) == routing.bucket("research", session_id)


def test_it_starts_a_session_pinned_to_the_version_prism_stored(client_for, harness_token, split):
    v1, v2, _ = split
    client = client_for(harness_token)
    session = client.start("chat-1")
    stored = Session.objects.get(session_id="chat-1")
    assert session.version.id == stored.version_id
    assert session.version.id in (v1.pk, v2.pk)
    pinned = v1 if session.version.id == v1.pk else v2
    assert session.version.fingerprint == pinned.fingerprint
    assert session.version.prompts == pinned.prompts
    assert session.version.tools == pinned.tools
    assert session.directive is Directive.CONTINUE
    assert session.created
    assert not session.local
    again = client.start("chat-1")
    assert again.version.id == session.version.id
    assert not again.created


def test_local_routing_agrees_with_prism_for_every_session(client_for, harness_token, split):
    client = client_for(harness_token)
    table = client.refresh_routing()
    assert table.weights == weights(split[0].agent)
    seen = set()
    for n in range(60):
        session = client.start(f"agree-{n}")
        assert table.pick("research", f"agree-{n}") == session.version.id
        assert session.version.id == expected_version("research", f"agree-{n}", table.weights)
        seen.add(session.version.id)
    assert seen == {split[0].pk, split[1].pk}


def test_the_routing_table_is_revalidated_with_its_etag(client_for, harness_token, split):
    calls: list[Call] = []
    client = client_for(harness_token, observer=calls.append)
    first = client.refresh_routing()
    again = client.refresh_routing()
    routing_calls = [c for c in calls if c.name == "routing"]
    assert [c.status for c in routing_calls] == [200, 304]
    assert again is first
    # Tuples of routed versions are fetched once, for use while Prism is down.
    assert sorted(c.path for c in calls if c.name == "version") == sorted(
        f"/api/versions/{v.pk}/" for v in split[:2]
    )
    engine.transition(split[2].pk, "rollback", actor="test")
    changed = client.refresh_routing()
    assert [c.status for c in calls if c.name == "routing"] == [200, 304, 200]
    assert changed.epoch > first.epoch
    assert changed.weights == {split[0].pk: 10000}


def test_heartbeats_carry_drain_and_terminate_to_the_callback(
    client_for, harness_token, split, agent
):
    told = []
    client = client_for(harness_token, on_directive=lambda s, d: told.append(d))
    sessions = [client.start(f"hb-{n}") for n in range(12)]
    on_v2 = [s for s in sessions if s.version.id == split[1].pk]
    assert on_v2, "the 50/50 split sends some of twelve sessions to the candidate"
    assert all(s.heartbeat() is Directive.CONTINUE for s in sessions)
    assert told == []
    engine.transition(split[2].pk, "rollback", actor="test", evacuate=True)
    assert on_v2[0].heartbeat() is Directive.DRAIN
    assert on_v2[0].draining
    assert told == [Directive.DRAIN]
    assert on_v2[0].heartbeat() is Directive.DRAIN
    assert told == [Directive.DRAIN]  # news only once
    agent.drain_grace_s = 0
    agent.save(update_fields=["drain_grace_s"])
    assert on_v2[0].heartbeat() is Directive.TERMINATE
    assert on_v2[0].terminated
    assert told == [Directive.DRAIN, Directive.TERMINATE]
    on_v1 = [s for s in sessions if s.version.id == split[0].pk]
    assert all(s.heartbeat() is Directive.CONTINUE for s in on_v1)


def test_end_and_late_feedback_reach_the_outcome(client_for, harness_token, split):
    client = client_for(harness_token)
    session = client.start("done-1")
    session.end(success=True, latency_ms=820.5, cost_usd=0.02, hallucination=False)
    session.end(success=False)  # ending twice is harmless: the first outcome stands
    session.feedback(-0.5)
    outcome = Outcome.objects.get(session_id="done-1")
    assert outcome.version_id == session.version.id
    assert (outcome.success, outcome.latency_ms, outcome.cost_usd) == (True, 820.5, 0.02)
    assert outcome.hallucination is False
    assert outcome.feedback == -0.5
    assert Session.objects.get(session_id="done-1").state == "ended"


def test_bad_outcomes_are_refused_before_anything_is_sent(client_for, harness_token, split):
    calls: list[Call] = []
    client = client_for(harness_token, observer=calls.append)
    session = client.start("typo-1")
    sent = len(calls)
    with pytest.raises(ValueError, match="sucess"):
        session.end(sucess=True)
    with pytest.raises(ValueError, match="latency_ms"):
        session.end(latency_ms=-1)
    with pytest.raises(ValueError, match="feedback"):
        session.feedback(2)
    assert len(calls) == sent
    assert Session.objects.get(session_id="typo-1").state == "live"


def test_refusals_are_raised_once_and_never_retried(client_for, harness_token, split):
    calls: list[Call] = []
    bad = client_for("prism_not-a-token", observer=calls.append, retries=3)
    with pytest.raises(Unauthorized) as refused:
        bad.start("x-1")
    assert refused.value.status == 401
    assert [c.status for c in calls if c.name == "start"] == [401]
    calls.clear()
    elsewhere = client_for(harness_token, slug="no-such-agent", observer=calls.append, retries=3)
    with pytest.raises(NotFound):
        elsewhere.start("x-2")
    assert [c.status for c in calls if c.name == "start"] == [404]
    assert isinstance(refused.value, Refused)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_idempotent_calls_are_retried_with_backoff_and_others_sent_once():
    calls: list[Call] = []
    client = Client(
        f"http://127.0.0.1:{_closed_port()}",
        "prism_x",
        "research",
        timeout=1,
        retries=3,
        backoff_s=0.01,
        observer=calls.append,
    )
    with pytest.raises(Unavailable, match="Connection"):
        client.refresh_routing()
    assert [c.attempt for c in calls] == [0, 1, 2, 3]
    assert all(c.status is None and "Connection" in c.error for c in calls)
    calls.clear()
    with pytest.raises(Unavailable, match="no routing table"):
        client.start("s-1")  # nothing cached: nothing to pin to
    client._down_until = 0
    calls.clear()
    with pytest.raises(Unavailable):
        client.request("POST", "/api/agents/", {"slug": "a", "name": "A"})
    assert [c.attempt for c in calls] == [0]


def test_after_an_outage_calls_fail_fast_for_a_moment():
    calls: list[Call] = []
    client = Client(
        f"http://127.0.0.1:{_closed_port()}",
        "prism_x",
        "research",
        retries=0,
        offline_s=60,
        observer=calls.append,
    )
    with pytest.raises(Unavailable):
        client.refresh_routing()
    tried = len(calls)
    assert not client.online
    with pytest.raises(Unavailable, match="moments ago"):
        client.refresh_routing()
    with pytest.raises(Unavailable, match="no routing table"):
        client.start("s-2")
    assert len(calls) == tried  # no network attempt while the breaker is open


def test_a_cached_table_survives_a_restart_of_the_harness(
    client_for, harness_token, split, tmp_path
):
    cache = tmp_path / "routing.json"
    client_for(harness_token, cache_path=cache).refresh_routing()
    offline = Client(
        f"http://127.0.0.1:{_closed_port()}",
        harness_token,
        "research",
        retries=0,
        cache_path=cache,
    )
    session = offline.start("after-restart")
    assert session.local
    assert session.version.id == expected_version(
        "research", "after-restart", weights(split[0].agent)
    )
    assert (
        session.version.prompts
        == (split[0] if session.version.id == split[0].pk else split[1]).prompts
    )
    assert offline.pending == 1
    assert session.started_at <= timezone.now()

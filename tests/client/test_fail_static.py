"""Fail static: Prism (a real gunicorn on the test database) stops mid-run; sessions keep
working on locally computed pins and are reported once it is back."""

from __future__ import annotations

import time

import pytest

from metrics.models import Outcome
from prism_client import Client, Directive
from rollouts import engine
from rollouts.models import Session
from tests.client.conftest import issue_token
from tests.rollouts.conftest import expected_version, weights


@pytest.mark.django_db(transaction=True)
def test_sessions_keep_their_versions_through_an_outage_and_are_reported_after(
    web, agent, make_version
):
    v1, v2 = make_version(agent, "v1"), make_version(agent, "v2")
    engine.set_stable(agent, v1, actor="test")
    rollout = engine.start_rollout(
        agent,
        candidate=v2,
        stages=engine.validate_stages([{"percent": 50}, {"percent": 100}]),
        gates=[],
        actor="test",
    )
    split = weights(agent)
    token = issue_token("outage-harness", "harness")
    web.start()
    client = Client(web.url, token, "research", timeout=2, retries=1, backoff_s=0.01, offline_s=0.2)

    before = [client.start(f"before-{n}") for n in range(10)]
    assert not any(s.local for s in before)

    web.stop()
    # While Prism is down, a release manager's rollback lands in the database: a pin
    # Prism computed now would go to v1. Sessions the harness pins locally still follow
    # the table it had, and Prism must record the version each one really ran on.
    engine.transition(rollout.pk, "rollback", actor="test")
    during = [client.start(f"during-{n}") for n in range(30)]
    assert all(s.local for s in during)
    for session in during:
        assert session.version.id == expected_version("research", session.session_id, split)
    assert {s.version.id for s in during} == {v1.pk, v2.pk}
    assert all(s.heartbeat() is Directive.CONTINUE for s in before + during)
    for session in before[:5] + during[:10]:
        session.end(success=True, latency_ms=100.0)
    during[10].feedback(0.75)
    assert client.pending == 30 + 15 + 1  # the local pins, the ends, the feedback
    assert Session.objects.filter(session_id__startswith="during-").count() == 0

    web.start()
    time.sleep(0.25)  # past the client's offline_s
    flush = client.report_pending()
    assert flush.remaining == 0
    assert flush.rejected == 0
    assert client.pending == 0

    pinned = dict(Session.objects.filter(agent=agent).values_list("session_id", "version_id"))
    for session in before + during:
        assert pinned[session.session_id] == session.version.id
    assert not any(s.local for s in during)
    ended = set(Outcome.objects.filter(ended_at__isnull=False).values_list("session_id", flat=True))
    assert ended == {s.session_id for s in before[:5] + during[:10]}
    assert Outcome.objects.get(session_id=during[10].session_id).feedback == 0.75
    # Once reported, the sessions heartbeat like any other.
    assert during[20].heartbeat() in (Directive.CONTINUE, Directive.DRAIN)
    fresh = client.start("after-1")
    assert not fresh.local
    assert fresh.version.id == v1.pk

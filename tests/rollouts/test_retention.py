"""Retention deletes old ended sessions with their outcomes, old looks at closed
rollouts and old snapshots, a bounded batch at a time, and nothing that is live, recent,
uncounted or inside an open rollout's window. The rollups do not move.

Time is moved by rewriting timestamps in the database, never by sleeping.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from metrics import retention as metrics_retention
from metrics import rollups
from metrics.models import Outcome
from rollouts import drain, engine, retention, sessions
from rollouts.models import (
    Evaluation,
    FleetSnapshot,
    Rollout,
    RoutingChange,
    Session,
    SessionState,
)
from tests.explain import read
from versions.audit import SYSTEM
from versions.models import AuditEntry

pytestmark = pytest.mark.django_db

DAY = timedelta(days=1)


def policy(days: int = 90, *, batch: int = 5000, batches: int = 4) -> retention.Policy:
    return retention.Policy(days, days, days, batch=batch, batches=batches)


def ended_days_ago(session_ids: list[str], days: float) -> None:
    """Move sessions' whole lives ``days`` into the past."""
    at = timezone.now() - days * DAY
    Session.objects.filter(session_id__in=session_ids).update(
        started_at=at - timedelta(minutes=5), last_seen_at=at, ended_at=at
    )


def rollup_state(version_ids: list[int]) -> tuple:
    summaries = {
        key: (s.n, s.total, s.total_sq, s.sketch.to_json() if s.sketch else None)
        for key, s in rollups.summaries(version_ids).items()
    }
    return (
        summaries,
        rollups.with_outcome_counts(version_ids),
        rollups.assigned_counts(version_ids),
    )


@pytest.fixture
def history(agent, make_version):
    """An agent's sessions of every kind: old ones to delete, and ones to keep."""
    agent.idle_timeout_s = 600
    agent.save()
    v1, v2 = make_version(agent), make_version(agent)
    engine.set_stable(agent, v1, actor=SYSTEM)
    now = timezone.now()
    names: dict[str, list[str]] = {
        kind: [f"{kind}-{i}" for i in range(n)]
        for kind, n in {
            "old_ended": 10,
            "old_abandoned": 4,
            "old_expired": 3,
            "recent": 3,
            "live": 2,
        }.items()
    }
    for session_ids in names.values():
        for session_id in session_ids:
            sessions.assign(agent.slug, session_id)
    for i, session_id in enumerate([*names["old_ended"], *names["recent"]]):
        sessions.end(agent.slug, session_id, {"success": i % 3 != 0, "latency_ms": 100.0 + i})
    sessions.feedback(agent.slug, names["old_ended"][0], 0.5)
    # Abandoned and expired by the beat's own sweeps, with their times moved back first.
    long_ago = now - 200 * DAY
    Session.objects.filter(session_id__in=names["old_abandoned"]).update(
        started_at=long_ago, last_seen_at=long_ago
    )
    assert drain.abandon_idle(agent, now) == 4
    Session.objects.filter(session_id__in=names["old_expired"]).update(
        started_at=long_ago, drain_at=long_ago
    )
    assert drain.expire_overdue(agent, now) == 3
    # An expired session that reports late keeps an outcome too.
    sessions.end(agent.slug, names["old_expired"][0], {"error": True})
    for kind in ("old_ended", "old_abandoned", "old_expired"):
        ended_days_ago(names[kind], 100)
    ended_days_ago(names["recent"], 10)
    Session.objects.filter(session_id__in=names["live"]).update(started_at=long_ago)
    engine.set_stable(agent, v2, actor=SYSTEM)
    assert rollups.count_assignments(settle_s=0) == 22
    return {"versions": [v1.pk, v2.pk], **names}


def surviving(agent) -> set[str]:
    return set(Session.objects.filter(agent=agent).values_list("session_id", flat=True))


def test_it_deletes_old_ended_sessions_and_their_outcomes_in_bounded_batches(agent, history):
    old = {*history["old_ended"], *history["old_abandoned"], *history["old_expired"]}
    kept = {*history["recent"], *history["live"]}
    rollups_before = rollup_state(history["versions"])
    audit_before = AuditEntry.objects.count()
    changes_before = RoutingChange.objects.count()
    assert Outcome.objects.filter(session_id__in=old).count() == 11

    runs = []
    for _ in range(4):
        with CaptureQueriesContext(connection) as captured:
            runs.append(retention.apply(agent, policy=policy(batch=4, batches=2))["sessions"])
        deletes = [
            q["sql"]
            for q in captured.captured_queries
            if q["sql"].lstrip().startswith("DELETE")
            and ("rollouts_session" in q["sql"] or "metrics_outcome" in q["sql"])
        ]
        # At most two batches per run, each one statement for sessions, one for outcomes.
        assert len(deletes) <= 4, deletes

    assert runs == [8, 8, 1, 0]
    assert surviving(agent) == kept
    assert not Outcome.objects.filter(session_id__in=old).exists()
    assert set(Outcome.objects.values_list("session_id", flat=True)) == set(history["recent"])
    assert set(
        Session.objects.filter(state=SessionState.LIVE).values_list("session_id", flat=True)
    ) == set(history["live"])
    # What gates, charts and totals read is what it was; so are the trails.
    assert rollup_state(history["versions"]) == rollups_before
    assert AuditEntry.objects.count() == audit_before
    assert RoutingChange.objects.count() == changes_before


def test_it_keeps_sessions_the_pin_count_has_not_counted_yet(agent, history):
    for session_id in ("late-1", "late-2"):
        sessions.assign(agent.slug, session_id)
        sessions.end(agent.slug, session_id, {"success": True})
    ended_days_ago(["late-1", "late-2"], 100)

    retention.apply(agent, policy=policy())
    assert {"late-1", "late-2"} <= surviving(agent)

    assert rollups.count_assignments(settle_s=0) == 2
    retention.apply(agent, policy=policy())
    assert not {"late-1", "late-2"} & surviving(agent)


def test_it_keeps_what_an_open_rollout_still_covers(agent, history, make_version):
    """Sessions that ended after the agent's open rollout began stay, however old."""
    rollout = engine.start_rollout(
        agent,
        candidate=make_version(agent),
        stages=engine.validate_stages([50, 100]),
        gates=[],
        actor=SYSTEM,
    )
    Rollout.objects.filter(pk=rollout.pk).update(started_at=timezone.now() - 120 * DAY)
    ended_days_ago(history["old_ended"][:2], 130)

    assert retention.apply(agent, policy=policy())["sessions"] == 2
    assert not set(history["old_ended"][:2]) & surviving(agent)
    assert set(history["old_ended"][2:]) <= surviving(agent)

    engine.transition(rollout.pk, "rollback", actor=SYSTEM, reason="done")
    assert retention.apply(agent, policy=policy())["sessions"] == 15


def test_zero_days_keeps_everything_forever(agent, history):
    FleetSnapshot.objects.create(agent=agent, at=timezone.now() - 1000 * DAY)
    before = surviving(agent)
    assert retention.apply(agent, policy=policy(0)) == {
        "sessions": 0,
        "evaluations": 0,
        "snapshots": 0,
    }
    assert surviving(agent) == before
    assert FleetSnapshot.objects.count() == 1


def test_it_keeps_other_agents_sessions(agent, history, make_version):
    from versions.models import Agent

    other = Agent.objects.create(slug="other", name="Other")
    engine.set_stable(other, make_version(other), actor=SYSTEM)
    sessions.assign(other.slug, "theirs")
    sessions.end(other.slug, "theirs", {"success": True})
    ended_days_ago(["theirs"], 100)
    rollups.count_assignments(settle_s=0)

    assert retention.apply(agent, policy=policy())["sessions"] == 17
    assert Session.objects.filter(agent=other, session_id="theirs").exists()
    assert Outcome.objects.filter(agent=other, session_id="theirs").exists()


def look(rollout: Rollout, days_ago: float) -> Evaluation:
    return Evaluation.objects.create(
        rollout=rollout,
        at=timezone.now() - days_ago * DAY,
        actor=SYSTEM,
        stage=0,
        epoch=1,
        decision="hold",
        report={},
    )


def test_it_deletes_old_looks_at_closed_rollouts_only(agent, make_version):
    engine.set_stable(agent, make_version(agent), actor=SYSTEM)
    stages = engine.validate_stages([50, 100])
    closed = engine.start_rollout(
        agent, candidate=make_version(agent), stages=stages, gates=[], actor=SYSTEM
    )
    engine.transition(closed.pk, "rollback", actor=SYSTEM, reason="bad")
    open_ = engine.start_rollout(
        agent, candidate=make_version(agent), stages=stages, gates=[], actor=SYSTEM
    )
    old_closed = [look(closed, 100) for _ in range(5)]
    recent_closed = look(closed, 10)
    old_open = look(open_, 100)

    assert retention.apply(agent, policy=policy(batch=2, batches=2))["evaluations"] == 4
    assert retention.apply(agent, policy=policy(batch=2, batches=2))["evaluations"] == 1
    left = set(Evaluation.objects.values_list("pk", flat=True))
    assert left == {recent_closed.pk, old_open.pk}
    assert not left & {e.pk for e in old_closed}


def test_it_deletes_old_snapshots(agent):
    now = timezone.now()
    for days in (200, 120, 91, 89, 1):
        FleetSnapshot.objects.create(agent=agent, at=now - days * DAY, live={"1": 3})
    assert retention.apply(agent, now=now, policy=policy())["snapshots"] == 3
    assert sorted(
        round((now - at) / DAY) for at in FleetSnapshot.objects.values_list("at", flat=True)
    ) == [1, 89]


@pytest.mark.postgres
def test_a_batch_reads_the_rows_it_deletes_not_the_history(agent, make_version):
    """Through the ended-sessions index, oldest first: a batch visits about as many
    sessions as it deletes, however much younger history lies beyond the cutoff."""
    version = make_version(agent)
    engine.set_stable(agent, version, actor=SYSTEM)
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO rollouts_session (agent_id, session_id, version_id, state, started_at,"
            " last_seen_at, ended_at, end_reason, epoch)"
            " SELECT %s, 'h-' || g, %s, 'ended', now() - g * interval '1 minute',"
            " now() - g * interval '1 minute', now() - g * interval '1 minute', '', 1"
            " FROM generate_series(1, 30000) g",
            [agent.pk, version.pk],
        )
        cursor.execute("ANALYZE rollouts_session")
    rollups.count_assignments(settle_s=0)
    cutoff = timezone.now() - timedelta(minutes=29_900)  # the oldest hundred
    counted = metrics_retention.assignments_counted_through()
    savepoint = transaction.savepoint_create()
    reading = read(
        retention._DELETE_SESSIONS,
        [agent.pk, cutoff, counted, 50, cutoff, counted],
        table="rollouts_session",
    )
    transaction.savepoint_rollback(savepoint)
    assert reading.plan["Actual Rows"] == 50
    # Found (50), fetched by id (50) and deleted (50), of 30,000 rows.
    assert reading.rows <= 3 * 50, reading.plan
    # A few pages per row deleted (index descent, heap page), not a pass over the table.
    assert reading.buffers <= 8 * 50, reading.plan

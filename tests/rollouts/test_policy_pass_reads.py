"""The beat's policy pass reads what the live state costs, not what the history costs.

An agent with a hundred times more ended sessions than live ones (and a second agent
just as big beside it): every read the pass makes is replayed under ``EXPLAIN (ANALYZE,
BUFFERS)`` against the state it ran on, and the sessions rows it visited and the pages
it touched must be bounded by the live sessions, never by the history.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from rollouts import drain, engine
from rollouts.models import Lifecycle, Session
from tests.explain import reads_of, relation_pages
from versions.audit import SYSTEM
from versions.models import Agent

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]

HISTORY = 30_000  # ended, abandoned and expired sessions per agent
LIVE = 300  # live sessions per agent


def _insert(agent_id: int, rows: str, params: list) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO rollouts_session (agent_id, session_id, version_id, state, started_at,"
            " last_seen_at, ended_at, drain_at, end_reason, epoch) " + rows,
            [agent_id, *params],
        )


def fleet_with_history(agent: Agent, make_version, now) -> dict:
    """Four versions: v1 drained long ago, v2 evacuated two minutes ago (its sessions
    overdue), v3 draining with a few sessions told to drain for their age an hour ago,
    v4 the stable. The history (ended sessions of all four) is inserted first, as it
    accumulated, and the live sessions after it."""
    v1, v2, v3, v4 = (make_version(agent) for _ in range(4))
    for version in (v1, v2, v3, v4):
        engine.set_stable(agent, version, actor=SYSTEM)
    Lifecycle.objects.filter(pk=v1.pk).update(drained_at=now - timedelta(days=20))
    marked = now - timedelta(seconds=120)
    Lifecycle.objects.filter(pk=v2.pk).update(forced_drain_at=marked, forced_drain_reason="bad")
    ids = [v1.pk, v2.pk, v3.pk, v4.pk]
    _insert(
        agent.pk,
        """SELECT %s, 'h-' || g, (%s::bigint[])[1 + g %% 4],
                  (ARRAY['ended', 'ended', 'ended', 'abandoned', 'expired'])[1 + g %% 5],
                  %s - g * interval '80 seconds', %s - g * interval '80 seconds' + interval '5 min',
                  %s - g * interval '80 seconds' + interval '5 min', NULL, '', 1
           FROM generate_series(1, %s) g""",
        [ids, now, now, now, HISTORY],
    )
    live = [
        # (version, how many, started s ago, last seen s ago, told to drain s ago)
        (v4, LIVE - 45, 300, 10, None),
        (v4, 10, 1800, 1200, None),  # idle: no heartbeat for 20 minutes
        (v3, 15, 600, 10, None),
        (v3, 5, 7200, 10, 3600),  # told to drain for its age an hour ago: overdue
        (v2, 15, 900, 10, 120),  # told at the evacuation mark: overdue
    ]
    serial = 0
    for version, n, started, seen, told in live:
        _insert(
            agent.pk,
            """SELECT %s, 'l-' || (%s + g), %s, 'live', %s, %s, NULL, %s, '', 4
               FROM generate_series(1, %s) g""",
            [
                serial,
                version.pk,
                now - timedelta(seconds=started),
                now - timedelta(seconds=seen),
                None if told is None else now - timedelta(seconds=told),
                n,
            ],
        )
        serial += n
    return {"v1": v1, "v2": v2, "v3": v3, "v4": v4}


@pytest.fixture
def now():
    return timezone.now()


@pytest.fixture
def busy(agent, make_version, now):
    agent.idle_timeout_s = 600
    agent.max_session_age_s = 3000
    agent.drain_grace_s = 60
    agent.max_live_versions = 4
    agent.save()
    versions = fleet_with_history(agent, make_version, now)
    # A neighbour just as big: a read that does not lead with the agent would read it too.
    neighbour = Agent.objects.create(slug="neighbour", name="Neighbour")
    fleet_with_history(neighbour, make_version, now)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE rollouts_session")
    return versions


def test_a_policy_pass_reads_only_live_and_overdue_sessions(agent, busy, now):
    assert Session.objects.filter(agent=agent).count() == HISTORY + LIVE
    savepoint = transaction.savepoint_create()
    with CaptureQueriesContext(connection) as captured:
        result = drain.enforce_policies(agent, now)
    # It did its work: the idle ones, the overdue ones of both kinds, and v2 is empty.
    assert result == {
        "abandoned": 10,
        "expired": 20,
        "force_drained": [],
        "drained": [busy["v2"].pk],
    }
    transaction.savepoint_rollback(savepoint)  # replay the reads on the state they saw

    readings = reads_of(captured.captured_queries, "rollouts_session")
    assert len(readings) >= 5
    for reading in readings:
        # Every sessions row a node looked at, kept or filtered out, is a live one: no
        # read walks the history, nor the neighbour's sessions.
        assert reading.rows <= LIVE, (reading.sql, reading.rows, reading.plan)
        # Pages follow the rows: an index descent and a heap page for each at most.
        assert reading.buffers <= 10 + 8 * reading.rows, (reading.sql, reading.plan)
    # The whole pass touched a small part of what the history takes up.
    assert sum(r.buffers for r in readings) * 3 < relation_pages("rollouts_session")


def test_a_quiet_tick_reads_a_few_pages_and_takes_no_routing_lock(agent, busy, now):
    """With nothing to do (the sweeps find no candidate, the cap is not exceeded) the
    pass never locks the routing row."""
    drain.enforce_policies(agent, now)
    with CaptureQueriesContext(connection) as captured:
        assert drain.enforce_policies(agent, now) == {
            "abandoned": 0,
            "expired": 0,
            "force_drained": [],
            "drained": [],
        }
    assert not [q for q in captured.captured_queries if "FOR UPDATE" in q["sql"]]
    assert not [q for q in captured.captured_queries if "COUNT(" in q["sql"].upper()]
    readings = reads_of(captured.captured_queries, "rollouts_session")
    for reading in readings:
        assert reading.rows <= LIVE, (reading.sql, reading.plan)
    # A few pages per read (the first pass's ends left dead entries in the live index
    # until a vacuum), against the hundreds the history takes up.
    assert sum(r.buffers for r in readings) <= 60, [(r.sql, r.buffers) for r in readings]

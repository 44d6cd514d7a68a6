"""Ending sessions on a draining version: ends run in parallel, and the routing row is
locked only by the end that may have emptied the version.

These run on real PostgreSQL with one connection per thread, so locks are real locks.
"""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from django.db import connection

from rollouts import engine, sessions
from rollouts.models import Lifecycle, Session
from tests.concurrency import race
from versions.audit import SYSTEM
from versions.models import AuditEntry

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def draining(agent, make_version, n: int) -> tuple:
    """v1 with ``n`` live sessions, then v2 made stable: v1 drains."""
    v1, v2 = make_version(agent), make_version(agent)
    engine.set_stable(agent, v1, actor=SYSTEM)
    ids = [f"s-{i}" for i in range(n)]
    for session_id in ids:
        sessions.assign(agent.slug, session_id)
    engine.set_stable(agent, v2, actor=SYSTEM)
    assert Session.objects.filter(version=v1, state="live").count() == n
    return v1, v2, ids


class RoutingLockHolder(threading.Thread):
    """Holds ``SELECT … FOR UPDATE`` on an agent's routing row, on a connection of its
    own, until released."""

    def __init__(self, agent_id: int) -> None:
        super().__init__(daemon=True)
        self.agent_id = agent_id
        self.locked = threading.Event()
        self.release = threading.Event()
        self.backend_pid: int | None = None

    def run(self) -> None:
        params = connection.get_connection_params()
        with psycopg.connect(**params) as conn, conn.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            self.backend_pid = cursor.fetchone()[0]
            cursor.execute(
                "SELECT 1 FROM rollouts_routing WHERE agent_id = %s FOR UPDATE", [self.agent_id]
            )
            self.locked.set()
            self.release.wait(30)
            conn.rollback()


def waiting_on_routing(exclude_pid: int) -> list[int]:
    """Backends waiting for a lock on a rollouts_routing row (other than the holder)."""
    with psycopg.connect(**connection.get_connection_params()) as conn:
        rows = conn.execute(
            "SELECT l.pid FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
            "WHERE c.relname = 'rollouts_routing' AND NOT l.granted AND l.pid <> %s",
            [exclude_pid],
        ).fetchall()
        # Row locks wait on the holder's transaction id, not on the relation.
        rows += conn.execute(
            "SELECT w.pid FROM pg_locks w JOIN pg_locks h ON h.transactionid = w.transactionid "
            "WHERE w.locktype = 'transactionid' AND NOT w.granted AND h.granted "
            "AND h.pid = %s",
            [exclude_pid],
        ).fetchall()
    return [pid for (pid,) in rows]


def test_an_end_with_other_live_sessions_left_does_not_lock_the_routing_row(agent, make_version):
    v1, _, ids = draining(agent, make_version, 3)
    holder = RoutingLockHolder(agent.pk)
    holder.start()
    assert holder.locked.wait(10)
    try:
        # Were the end to ask for the routing row, it would wait for the holder and fail
        # after lock_timeout; it does not ask.
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '2s'")
        _, changed = sessions.end(agent.slug, ids[0], {"success": True})
        assert changed
        _, changed = sessions.end(agent.slug, ids[1], {"success": False})
        assert changed
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET lock_timeout")
        holder.release.set()
        holder.join(10)
    assert Session.objects.filter(version=v1, state="live").count() == 1
    assert Lifecycle.objects.get(pk=v1.pk).drained_at is None


def test_the_end_that_empties_the_version_locks_the_routing_row_to_mark_it_drained(
    agent, make_version
):
    v1, _, ids = draining(agent, make_version, 2)
    sessions.end(agent.slug, ids[0], {})
    holder = RoutingLockHolder(agent.pk)
    holder.start()
    assert holder.locked.wait(10)
    last = threading.Thread(
        target=lambda: (sessions.end(agent.slug, ids[1], {}), connection.close()), daemon=True
    )
    last.start()
    try:
        deadline = time.monotonic() + 10
        while not waiting_on_routing(holder.backend_pid):
            assert time.monotonic() < deadline, "the last end never asked for the routing row"
            time.sleep(0.05)
        # Its own row update committed before it asked: the session is ended already.
        assert Session.objects.get(session_id=ids[1]).state == "ended"
        assert Lifecycle.objects.get(pk=v1.pk).drained_at is None
    finally:
        holder.release.set()
        holder.join(10)
    last.join(10)
    assert not last.is_alive()
    assert Lifecycle.objects.get(pk=v1.pk).drained_at is not None


def test_concurrent_ends_of_a_draining_version_mark_it_drained_once(agent, make_version):
    n = 12
    v1, _, ids = draining(agent, make_version, n)

    results = race(n, lambda i: sessions.end(agent.slug, ids[i], {"success": True})[1])

    assert results == [True] * n
    assert not Session.objects.filter(version=v1, state="live").exists()
    assert Lifecycle.objects.get(pk=v1.pk).drained_at is not None
    [entry] = AuditEntry.objects.filter(action="version.drained", object_id=str(v1.pk))
    assert entry.actor == SYSTEM

"""What the polled reads cost on PostgreSQL: the fleet endpoint, the board's fleet
partial and the snapshot's live counts read rows and buffers in proportion to the live
sessions, not to the history (here 100 times as many ended sessions as live ones)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.db.models import Min
from django.utils import timezone

from metrics import rollups
from rollouts import drain, fleet, snapshots
from rollouts.models import Lifecycle, Routing, Session
from tests.dashboard.conftest import browser, htmx
from tests.explain import Explained, buffers, explain, rows_read
from versions.models import Agent

pytestmark = pytest.mark.postgres

LIVE_EVERY = 100  # one session in a hundred is live
HISTORY = 20_000


@pytest.fixture
def history(agent: Agent, make_version) -> dict:
    """Four versions, three of them draining, and 20,200 sessions of which 202 are live,
    spread through the whole table (the worst case for the heap), with a padded
    ``end_reason`` so the table is as wide as a real one."""
    versions = [make_version(agent) for _ in range(4)]
    active = versions[-1]
    Routing.objects.update_or_create(
        agent=agent, defaults={"weights": {str(active.pk): 10000}, "epoch": 1}
    )
    now = timezone.now()
    for version in versions[:-1]:
        Lifecycle.objects.create(
            version=version,
            agent=agent,
            first_routed_at=now - timedelta(days=8),
            drain_started_at=now - timedelta(hours=1),
            live_at_drain_start=80,
        )
    ids = [v.pk for v in versions]
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO rollouts_session (agent_id, session_id, version_id, state, started_at,
                last_seen_at, ended_at, drain_at, end_reason, epoch)
            SELECT %s, 'h-' || g || repeat('y', 180), (%s::bigint[])[1 + g %% 4],
                   CASE WHEN g %% %s = 0 THEN 'live' ELSE 'ended' END,
                   now() - g * interval '40 seconds',
                   now() - g * interval '40 seconds' + interval '20 minutes',
                   CASE WHEN g %% %s = 0 THEN NULL
                        ELSE now() - g * interval '40 seconds' + interval '20 minutes' END,
                   NULL, repeat('x', 200), 1
            FROM generate_series(1, %s) AS g
            """,
            [agent.pk, ids, LIVE_EVERY, LIVE_EVERY, HISTORY + HISTORY // (LIVE_EVERY - 1)],
        )
        cursor.execute("ANALYZE rollouts_session")
    rollups.count_assignments(settle_s=0)
    fleet.refresh_estimate(agent)  # the beat's
    live = HISTORY // (LIVE_EVERY - 1)
    return {"agent": agent, "versions": versions, "live": live}


def bounded(cost: Explained, live: int) -> None:
    """A small multiple of the live rows, plus a constant for the few small tables. A
    test cannot VACUUM (it runs in a transaction), so an index-only scan of the live
    index still visits each live row's heap page: about one buffer per live row per
    read of them, and the board reads them three times."""
    assert cost.rows_read <= 3 * live + 100, cost.worst()
    assert cost.buffers <= 4 * live + 150, cost.worst()


def test_a_history_scan_would_be_caught(history):
    """The bound is tight enough to fail a read of the history: counting the agent's
    sessions reads all 20,202."""
    plan = explain(
        "SELECT COUNT(*) FROM rollouts_session WHERE agent_id = %s", [history["agent"].pk]
    )
    assert rows_read(plan) > 3 * history["live"] + 100
    assert buffers(plan) > 4 * history["live"] + 150


def test_the_fleet_endpoint_reads_the_live_sessions_only(history, viewer):
    agent = history["agent"]
    with Explained() as cost:
        response = viewer.get(f"/api/agents/{agent.slug}/fleet/")
    assert response.status_code == 200
    rows = response.json()["versions"]
    assert sum(r["live_sessions"] for r in rows) == history["live"]
    assert sum(r["total_sessions"] for r in rows) == HISTORY + history["live"]
    assert all(r["drain"]["eta_s"] is not None for r in rows if r["state"] == "draining")
    bounded(cost, history["live"])


def test_the_board_partial_reads_the_live_sessions_only(history):
    agent = history["agent"]
    client = browser("viewer")
    with Explained() as cost:
        response = client.get(f"/agents/{agent.slug}/", **htmx("fleet"))
    assert response.status_code == 200
    bounded(cost, history["live"])


def test_the_snapshot_live_counts_read_the_live_sessions_only(history):
    with Explained() as cost:
        live = snapshots.live_by_agent([history["agent"].pk])
    assert sum(live[history["agent"].pk].values()) == history["live"]
    bounded(cost, history["live"])


def test_the_estimate_reads_its_sample_not_the_history(history, settings):
    """The beat's survival estimate: every live session and at most the sample of the
    window's ended ones (the first try, then the strata)."""
    settings.PRISM_SURVIVAL_SAMPLE = 1000
    with Explained() as cost:
        fleet.refresh_estimate(history["agent"])
    assert cost.rows_read <= history["live"] + 2 * 1001 + fleet.SURVIVAL_STRATA + 100


def test_with_the_etas_stored_the_fleet_reads_each_live_session_once(history):
    """The beat stored the drain ETAs: a request counts the live sessions and reads
    nothing else of them."""
    agent = history["agent"]
    assert fleet.refresh_drain_etas(agent) == 3
    with Explained() as cost:
        rows = fleet.fleet(agent)
    assert all(r.drain["eta_s"] is not None for r in rows if r.state == "draining")
    assert cost.rows_read <= history["live"] + 100, cost.worst()


def test_the_oldest_live_session_is_one_index_entry_per_version(history):
    agent, versions = history["agent"], history["versions"]
    with Explained() as cost:
        oldest = drain.oldest_live_start(agent, [v.pk for v in versions])
    assert (
        oldest
        == (Session.objects.filter(agent=agent, state="live").aggregate(m=Min("started_at"))["m"])
    )
    assert cost.rows_read <= 2 * len(versions) + 10, cost.worst()
    assert drain.oldest_live_start(agent, []) is None
    newest = versions[-1]
    assert (
        drain.oldest_live_start(agent, [newest.pk])
        == (
            Session.objects.filter(agent=agent, state="live", version=newest).aggregate(
                m=Min("started_at")
            )["m"]
        )
    )

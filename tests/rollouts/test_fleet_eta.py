"""The stored drain ETA (rollouts.fleet.refresh_drain_etas): the beat computes it, the
fleet reads it less the time since, and a drain the beat has not seen yet is computed
per request until it has."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from rollouts import drain, engine, fleet, tasks
from rollouts.models import Lifecycle, Session
from tests.explain import RowsRead

pytestmark = pytest.mark.django_db

DURATION_S = 600


@pytest.fixture
def draining(agent, make_version):
    """v1 drains with five live sessions 100 s old; every session so far lasted 600 s."""
    v1, v2 = make_version(agent), make_version(agent)
    engine.set_stable(agent, v1, actor="test")
    now = timezone.now()
    ended = [
        Session(
            agent=agent, version=v1, session_id=f"old-{i}", state="ended",
            started_at=now - timedelta(seconds=DURATION_S + 60 + i),
            last_seen_at=now - timedelta(seconds=60 + i),
            ended_at=now - timedelta(seconds=60 + i),
        )
        for i in range(40)
    ]  # fmt: skip
    live = [
        Session(
            agent=agent, version=v1, session_id=f"live-{i}",
            started_at=now - timedelta(seconds=100), last_seen_at=now,
        )
        for i in range(5)
    ]  # fmt: skip
    Session.objects.bulk_create(ended + live)
    engine.set_stable(agent, v2, actor="test")
    return v1


def row(agent, version, now):
    return next(r for r in fleet.fleet(agent, now) if r.version.pk == version.pk)


def test_the_fleet_reads_the_stored_eta_less_the_time_since(agent, draining):
    now = timezone.now()
    computed = row(agent, draining, now).drain["eta_s"]
    assert DURATION_S - 100 - 30 <= computed <= DURATION_S - 100 + 30

    assert fleet.refresh_drain_etas(agent, now) == 1
    lifecycle = Lifecycle.objects.get(pk=draining.pk)
    assert (lifecycle.drain_eta_s, lifecycle.drain_eta_at) == (computed, now)

    reads = RowsRead()
    later = now + timedelta(seconds=120)
    with connection.execute_wrapper(reads):
        eta = row(agent, draining, later).drain["eta_s"]
    assert eta == pytest.approx(computed - 120)
    # Routing, versions, live counts and totals: no live session's age is read.
    assert reads.statements == 4
    assert row(agent, draining, now + timedelta(days=1)).drain["eta_s"] == 0


def test_a_drain_forced_after_the_stored_eta_is_computed_per_request(agent, draining):
    now = timezone.now()
    fleet.refresh_drain_etas(agent, now)
    stored = row(agent, draining, now).drain["eta_s"]
    Lifecycle.objects.filter(pk=draining.pk).update(
        forced_drain_at=now + timedelta(seconds=1), forced_drain_reason="test"
    )
    agent.drain_grace_s = 30
    agent.save(update_fields=["drain_grace_s"])

    forced = row(agent, draining, now + timedelta(seconds=2)).drain
    assert forced["forced"] is True
    # Every session now has the grace left, not the survival curve's 500 s.
    assert forced["eta_s"] <= 30 < stored


def test_the_tick_stores_only_the_drains_it_has_not_seen(agent, draining):
    now = timezone.now()
    assert tasks.enforce_agent_drain_policies(agent.pk)["etas"] == 1
    first = Lifecycle.objects.get(pk=draining.pk).drain_eta_at
    assert tasks.enforce_agent_drain_policies(agent.pk)["etas"] == 0
    assert Lifecycle.objects.get(pk=draining.pk).drain_eta_at == first
    # The survival task recomputes every draining version's ETA with the curve.
    assert tasks.estimate_survival(agent.pk) == 1
    assert Lifecycle.objects.get(pk=draining.pk).drain_eta_at > first
    assert first >= now


def test_an_eta_computed_for_a_drain_that_restarted_meanwhile_is_not_stored(
    agent, draining, monkeypatch
):
    """Computed for the drain as it was read; the write is conditional on that drain,
    so a drain restarted (or forced) in between keeps no stale figure."""
    real = fleet.compute_drain_etas

    def restarted_while_computing(agent_, lifecycles, now):
        answer = real(agent_, lifecycles, now)
        Lifecycle.objects.filter(pk=draining.pk).update(drain_started_at=now + timedelta(seconds=5))
        return answer

    monkeypatch.setattr(fleet, "compute_drain_etas", restarted_while_computing)
    assert fleet.refresh_drain_etas(agent) == 0
    assert Lifecycle.objects.get(pk=draining.pk).drain_eta_at is None


def test_an_active_version_gets_no_stored_eta(agent, draining):
    engine.set_stable(agent, draining, actor="test")  # v1 is the stable again
    # Only v2, which drains now (with no session: its ETA is 0).
    assert fleet.refresh_drain_etas(agent) == 1
    assert Lifecycle.objects.get(pk=draining.pk).drain_eta_at is None
    [other] = Lifecycle.objects.exclude(pk=draining.pk).filter(drain_eta_at__isnull=False)
    assert other.drain_eta_s == 0


def test_forcing_or_reactivating_a_drain_clears_its_stored_eta(agent, draining):
    fleet.refresh_drain_etas(agent)
    assert Lifecycle.objects.get(pk=draining.pk).drain_eta_at is not None

    drain.force_drain(draining, actor="test", reason="stuck sessions")
    forced = Lifecycle.objects.get(pk=draining.pk)
    assert (forced.drain_eta_s, forced.drain_eta_at) == (None, None)

    fleet.refresh_drain_etas(agent)
    engine.set_stable(agent, draining, actor="test")  # active again
    again = Lifecycle.objects.get(pk=draining.pk)
    assert (again.drain_started_at, again.drain_eta_s, again.drain_eta_at) == (None, None, None)

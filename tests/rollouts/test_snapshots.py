"""Fleet snapshots: one row per agent per beat tick, counts from live sessions, and
downsampling as rows age."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings
from django.db import connection
from django.test.utils import CaptureQueriesContext

from controlplane.celery import app
from rollouts import sessions, snapshots, tasks
from rollouts.models import FleetSnapshot, Session
from tests.rollouts.conftest import set_weights
from versions.models import Agent

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 2, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def two_live(agent, v1, v2):
    """v1 and v2 share the traffic; sessions are started until both hold some."""
    set_weights(agent, {v1: 5000, v2: 5000})
    for i in range(12):
        sessions.assign(agent.slug, f"s-{i}")
    return v1, v2


def live_now(agent: Agent) -> dict[str, int]:
    pins = Session.objects.filter(agent=agent, state="live").values_list("version_id", flat=True)
    return {str(version_id): n for version_id, n in Counter(pins).items()}


def test_it_records_one_row_per_agent_per_tick_with_the_live_counts(agent, two_live):
    other = Agent.objects.create(slug="quiet", name="Quiet agent")
    beat = settings.PRISM_BEAT_SECONDS
    for tick in range(3):
        assert snapshots.record(T0 + timedelta(seconds=tick * beat)) == 2

    rows = list(FleetSnapshot.objects.filter(agent=agent).order_by("at"))
    assert [row.at for row in rows] == [T0 + timedelta(seconds=i * beat) for i in range(3)]
    expected = live_now(agent)
    assert len(expected) == 2
    assert sum(expected.values()) == 12
    assert all(row.live == expected for row in rows)
    # An agent with nothing live still gets its row, so its chart falls to zero.
    assert list(FleetSnapshot.objects.filter(agent=other).values_list("live", flat=True)) == [
        {},
        {},
        {},
    ]


def test_ended_sessions_leave_the_next_snapshot(agent, two_live):
    snapshots.record(T0)
    ended = sessions.assign(agent.slug, "s-0")
    sessions.end(agent.slug, "s-0", {"success": True})
    snapshots.record(T0 + timedelta(seconds=settings.PRISM_BEAT_SECONDS))

    first, second = FleetSnapshot.objects.filter(agent=agent).order_by("at")
    pinned = str(ended.version_id)
    assert second.live[pinned] == first.live[pinned] - 1
    assert second.live == live_now(agent)


def test_a_second_record_in_the_same_tick_writes_nothing(agent, two_live):
    snapshots.record(T0)
    sessions.assign(agent.slug, "late")
    # Within the same beat interval: a retried or overlapping beat.
    snapshots.record(T0 + timedelta(seconds=settings.PRISM_BEAT_SECONDS - 1))
    assert FleetSnapshot.objects.filter(agent=agent).count() == 1
    assert sum(FleetSnapshot.objects.get(agent=agent).live.values()) == 12


def test_recording_costs_the_same_queries_for_one_agent_or_many(agent, two_live, make_version):
    with CaptureQueriesContext(connection) as one:
        snapshots.record(T0)
    for n in range(5):
        extra = Agent.objects.create(slug=f"extra-{n}", name="Extra")
        version = make_version(extra)
        set_weights(extra, {version: 10000})
        for i in range(3):
            sessions.assign(extra.slug, f"x-{i}")
    with CaptureQueriesContext(connection) as many:
        snapshots.record(T0 + timedelta(hours=1))
    assert len(many) == len(one) <= 3
    assert FleetSnapshot.objects.filter(at=T0 + timedelta(hours=1)).count() == 6


def test_the_beat_runs_the_snapshot_task(agent, two_live):
    schedule = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert "rollouts.tasks.record_fleet_snapshots" in schedule
    assert "rollouts.tasks.record_fleet_snapshots" in app.tasks

    result = tasks.record_fleet_snapshots.apply()
    assert result.successful(), result.traceback
    assert result.get() == {"agents": 1, "deleted": 0}
    assert FleetSnapshot.objects.get(agent=agent).live == live_now(agent)


# --- downsampling ------------------------------------------------------------------


def fill(agent: Agent, start: datetime, end: datetime, every_s: int) -> None:
    """Raw snapshots every ``every_s`` seconds in [start, end), numbered in ``live``."""
    rows, at, n = [], start, 0
    while at < end:
        rows.append(FleetSnapshot(agent=agent, at=at, live={"1": n}))
        at += timedelta(seconds=every_s)
        n += 1
    FleetSnapshot.objects.bulk_create(rows)


def test_downsampling_keeps_every_tick_for_six_hours_then_one_per_five_minutes_then_hourly(
    agent,
):
    now = T0 + timedelta(days=9)
    # A minute's resolution across nine days is enough to exercise every tier.
    fill(agent, T0, now, 60)
    times = list(FleetSnapshot.objects.filter(agent=agent).values_list("at", flat=True))

    while snapshots.downsample(now, batch=400, max_batches=3):
        pass

    left = list(FleetSnapshot.objects.filter(agent=agent).order_by("at"))
    kept = [row.at for row in left]
    cutoff_6h, cutoff_7d = now - timedelta(hours=6), now - timedelta(days=7)
    assert [at for at in kept if at >= cutoff_6h] == [at for at in times if at >= cutoff_6h]
    middle = [at for at in kept if cutoff_7d <= at < cutoff_6h]
    old = [at for at in kept if at < cutoff_7d]
    # One per 5-minute bucket, each the earliest (on the bucket's first minute).
    assert all(at.minute % 5 == 0 and at.second == 0 for at in middle)
    assert len(middle) == len({int(at.timestamp()) // 300 for at in middle})
    assert len(middle) == (cutoff_6h - cutoff_7d) // timedelta(minutes=5)
    # One per hour, on the hour.
    assert all(at.minute == 0 for at in old)
    assert len(old) == (cutoff_7d - T0) // timedelta(hours=1)
    assert {row.step_s for row in left if row.at < cutoff_7d} == {3600}
    assert {row.step_s for row in left if cutoff_7d <= row.at < cutoff_6h} == {300}
    assert {row.step_s for row in left if row.at >= cutoff_6h} == {0}
    # The rows kept are the original rows, with their counts, not new ones.
    assert all(row.live == {"1": int((row.at - T0).total_seconds()) // 60} for row in left)


def test_downsampling_deletes_in_bounded_batches_and_is_idempotent(agent):
    now = T0 + timedelta(days=1)
    fill(agent, T0, now, 10)  # ticks every 10 s: 8,640 rows
    total = FleetSnapshot.objects.count()

    deleted = snapshots.downsample(now, batch=100, max_batches=2)
    # Two batches of 100 raw rows: in each 5-minute bucket (30 rows) one is kept.
    assert 0 < deleted <= 200
    assert FleetSnapshot.objects.count() == total - deleted

    while snapshots.downsample(now, batch=100, max_batches=5):
        pass
    settled = list(FleetSnapshot.objects.order_by("at").values_list("at", "step_s"))
    assert snapshots.downsample(now) == 0
    assert list(FleetSnapshot.objects.order_by("at").values_list("at", "step_s")) == settled
    old = [at for at, _ in settled if at < now - timedelta(hours=6)]
    assert len(old) == 18 * 12  # 18 hours of 5-minute buckets
    assert len(settled) - len(old) == 6 * 360  # six hours of 10 s ticks


def test_downsampling_treats_each_agent_on_its_own(agent):
    other = Agent.objects.create(slug="other", name="Other")
    now = T0 + timedelta(hours=7)
    fill(agent, T0, T0 + timedelta(minutes=10), 60)
    fill(other, T0, T0 + timedelta(minutes=10), 60)
    snapshots.downsample(now)
    for each in (agent, other):
        assert list(FleetSnapshot.objects.filter(agent=each).values_list("at", flat=True)) == [
            T0,
            T0 + timedelta(minutes=5),
        ]


def test_series_reads_one_agents_snapshots_in_order(agent, two_live):
    other = Agent.objects.create(slug="other", name="Other")
    for tick in (2, 0, 1):
        snapshots.record(T0 + timedelta(minutes=tick))
    got = snapshots.series(agent, T0 + timedelta(minutes=1))
    assert [at for at, _ in got] == [T0 + timedelta(minutes=1), T0 + timedelta(minutes=2)]
    assert all(live == live_now(agent) for _, live in got)
    assert snapshots.series(other, T0) == [(T0 + timedelta(minutes=m), {}) for m in range(3)]

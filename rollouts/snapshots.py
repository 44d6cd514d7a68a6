"""Fleet snapshots: live sessions per version of every agent, once per beat tick.

They are the read model of the rainbow chart (live sessions per version over time), so
the chart never counts sessions itself. A tick costs one grouped count over the
live-sessions partial index, O(live sessions) whatever the agents' history, and one
insert of one row per agent.

Old rows are thinned as they age: every tick is kept for six hours, one row per five
minutes for seven days, and one per hour after that. Each row is looked at once per
tier it ages into, in small batches, so a beat never deletes much at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Count
from django.utils import timezone

from rollouts.models import FleetSnapshot, Session, SessionState
from versions.models import Agent

# (age past which rows are thinned, the bucket width in seconds they are thinned to)
TIERS: tuple[tuple[timedelta, int], ...] = (
    (timedelta(hours=6), 300),
    (timedelta(days=7), 3600),
)
BATCH = 500
MAX_BATCHES = 10


def tick_of(now: datetime, interval_s: int) -> datetime:
    """``now`` rounded down to the beat interval, so every writer in one tick agrees."""
    interval = max(int(interval_s), 1)
    seconds = int(now.timestamp()) // interval * interval
    return datetime.fromtimestamp(seconds, tz=UTC)


def live_by_agent(agent_ids: Iterable[int]) -> dict[int, dict[int, int]]:
    """``{agent_id: {version_id: live sessions}}`` of these agents (an agent with none
    left out), in one grouped query over the live index, led by the agent as every
    sessions query is (the snapshots, the overview page and ``/metrics`` read it)."""
    live: dict[int, dict[int, int]] = {}
    rows = (
        Session.objects.filter(agent_id__in=list(agent_ids), state=SessionState.LIVE)
        .values("agent_id", "version_id")
        .annotate(n=Count("*"))
        .values_list("agent_id", "version_id", "n")
        .order_by()
    )
    for agent_id, version_id, n in rows:
        live.setdefault(agent_id, {})[version_id] = n
    return live


def record(now: datetime | None = None) -> int:
    """Write this tick's snapshot of every agent; return how many agents it covers.

    1. Round ``now`` down to the beat interval: that is the row's ``at``.
    2. Count live sessions per (agent, version) in one query.
    3. Insert one row per agent, ``{}`` for an agent with nothing live so the chart
       falls to zero. The unique (agent, at) constraint drops rows this tick already
       has, so a retried or doubled beat writes nothing twice.
    """
    at = tick_of(now or timezone.now(), settings.PRISM_BEAT_SECONDS)
    agent_ids = list(Agent.objects.values_list("pk", flat=True))
    live = live_by_agent(agent_ids)
    FleetSnapshot.objects.bulk_create(
        [
            FleetSnapshot(agent_id=pk, at=at, live={str(v): n for v, n in live.get(pk, {}).items()})
            for pk in agent_ids
        ],
        ignore_conflicts=True,
    )
    return len(agent_ids)


def downsample(
    now: datetime | None = None, *, batch: int = BATCH, max_batches: int = MAX_BATCHES
) -> int:
    """Thin rows that aged past a tier; return how many rows were deleted.

    For each tier (age, width), oldest rows first, at most ``max_batches`` batches of
    ``batch`` rows of a finer resolution than ``width`` and older than ``now - age``:

    1. Bucket each row by (agent, its time divided by ``width``).
    2. Look up the rows already kept for those buckets at this resolution (a bucket
       may straddle two batches or two beats).
    3. In a bucket with no kept row, keep the earliest row: mark it with ``width``.
       Delete every other row of the bucket.
    """
    now = now or timezone.now()
    deleted = 0
    for age, width in TIERS:
        cutoff = now - age
        for _ in range(max_batches):
            rows = list(
                FleetSnapshot.objects.filter(step_s__lt=width, at__lt=cutoff)
                .order_by("at", "id")
                .values_list("id", "agent_id", "at")[:batch]
            )
            if not rows:
                break
            deleted += _thin(rows, width)
            if len(rows) < batch:
                break
    return deleted


def _thin(rows: Sequence[tuple[int, int, datetime]], width: int) -> int:
    def bucket(at: datetime) -> int:
        return int(at.timestamp()) // width

    first, last = bucket(rows[0][2]), bucket(rows[-1][2])
    kept = {
        (agent_id, bucket(at))
        for agent_id, at in FleetSnapshot.objects.filter(
            step_s__gte=width,
            agent_id__in={agent_id for _, agent_id, _ in rows},
            at__gte=datetime.fromtimestamp(first * width, tz=UTC),
            at__lt=datetime.fromtimestamp((last + 1) * width, tz=UTC),
        ).values_list("agent_id", "at")
    }
    keep, drop = [], []
    for pk, agent_id, at in rows:
        key = (agent_id, bucket(at))
        if key in kept:
            drop.append(pk)
        else:
            kept.add(key)
            keep.append(pk)
    with transaction.atomic():
        FleetSnapshot.objects.filter(pk__in=keep).update(step_s=width)
        FleetSnapshot.objects.filter(pk__in=drop).delete()
    return len(drop)


def series(agent: Agent, since: datetime) -> list[tuple[datetime, dict[str, int]]]:
    """The agent's snapshots since ``since``, oldest first: ``[(at, live), ...]``."""
    return list(
        FleetSnapshot.objects.filter(agent=agent, at__gte=since)
        .order_by("at")
        .values_list("at", "live")
    )

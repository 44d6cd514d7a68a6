"""Retention: ended sessions and their outcomes, gate evaluations and fleet snapshots
older than a configured age are deleted by the beat, a little at a time.

What is kept whatever its age:

- live sessions, and sessions the beat's pin count has not counted yet (their pins are
  not in the ``sessions_assigned`` rollup; ``metrics.retention``);
- sessions that ended after the agent's open rollout began, and that rollout's
  evaluations: its window and its charts still cover them;
- the metric rollups (what gates, charts and totals read: deleting a session or an
  outcome changes none of them), the routing change log and the audit trail.

Each run deletes at most ``batches`` statements of ``batch`` rows of each kind per
agent, oldest first, each statement in its own short transaction (a session and its
outcome go in the same one), so a first run over years of history never holds locks
for long, and the next run goes on where this one stopped.

Deletions are logged, not audited: they follow a standing configured policy rather
than anyone's decision about the fleet, and at one run a minute the trail would gain
an entry per agent per minute, forever, drowning the changes it is there to show.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Min
from django.utils import timezone

from metrics import retention as metrics_retention
from rollouts.models import OPEN_STATES, Evaluation, FleetSnapshot, Rollout
from versions.models import Agent


@dataclass(frozen=True)
class Policy:
    """Ages in days (0: keep forever), and how much one run may delete."""

    sessions_days: int
    evaluations_days: int
    snapshots_days: int
    batch: int = 5000
    batches: int = 4

    @classmethod
    def from_settings(cls) -> Policy:
        return cls(
            sessions_days=settings.PRISM_RETAIN_SESSIONS_DAYS,
            evaluations_days=settings.PRISM_RETAIN_EVALUATIONS_DAYS,
            snapshots_days=settings.PRISM_RETAIN_SNAPSHOTS_DAYS,
            batch=settings.PRISM_RETENTION_BATCH,
            batches=settings.PRISM_RETENTION_BATCHES,
        )


def _cutoff(now: datetime, days: int) -> datetime | None:
    return None if days <= 0 else now - timedelta(days=days)


def _open_rollout_start(agent: Agent) -> datetime | None:
    return Rollout.objects.filter(agent=agent, state__in=OPEN_STATES).aggregate(
        at=Min("started_at")
    )["at"]


# Oldest first, through the ended-sessions index (agent, ended_at). The outer conditions
# repeat the inner ones: a session a harness ends at this very moment (an abandoned one
# reporting late) gets a new ended_at, and the DELETE re-checks the row it waited for.
_DELETE_SESSIONS = """
DELETE FROM rollouts_session
WHERE id IN (
    SELECT id FROM rollouts_session
    WHERE agent_id = %s AND state <> 'live' AND ended_at < %s AND id <= %s
    ORDER BY ended_at
    LIMIT %s
) AND state <> 'live' AND ended_at < %s AND id <= %s
RETURNING session_id
"""


def forget_sessions(agent: Agent, cutoff: datetime, *, batch: int = 5000, batches: int = 4) -> int:
    """Delete the agent's sessions that ended before ``cutoff``, with their outcomes.

    1. Read how far the pin count has got; sessions above it stay.
    2. Up to ``batches`` times: in one transaction, delete the ``batch`` oldest ended
       sessions (one statement, returning their ids) and their outcomes (one more).
    3. Stop early at a short batch: nothing older is left.

    Returns how many sessions were deleted.
    """
    counted = metrics_retention.assignments_counted_through()
    deleted = 0
    for _ in range(batches):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(_DELETE_SESSIONS, [agent.pk, cutoff, counted, batch, cutoff, counted])
            session_ids = [row[0] for row in cursor.fetchall()]
            metrics_retention.forget_outcomes(agent.pk, session_ids)
        deleted += len(session_ids)
        if len(session_ids) < batch:
            break
    return deleted


def _delete_in_batches(rows, *, batch: int, batches: int) -> int:
    """Delete ``rows`` (a queryset ordered oldest first), ``batch`` at a time."""
    model = rows.model
    deleted = 0
    for _ in range(batches):
        with transaction.atomic():
            count, _ = model.objects.filter(pk__in=rows.values("pk")[:batch]).delete()
        deleted += count
        if count < batch:
            break
    return deleted


def forget_evaluations(agent: Agent, cutoff: datetime, *, batch: int, batches: int) -> int:
    """Delete the looks at the agent's closed rollouts taken before ``cutoff``. An open
    rollout keeps every look: its charts draw them."""
    rows = (
        Evaluation.objects.filter(rollout__agent=agent, at__lt=cutoff)
        .exclude(rollout__state__in=OPEN_STATES)
        .order_by("at")
    )
    return _delete_in_batches(rows, batch=batch, batches=batches)


def forget_snapshots(agent: Agent, cutoff: datetime, *, batch: int, batches: int) -> int:
    """Delete the agent's fleet snapshots taken before ``cutoff``."""
    rows = FleetSnapshot.objects.filter(agent=agent, at__lt=cutoff).order_by("at")
    return _delete_in_batches(rows, batch=batch, batches=batches)


def apply(agent: Agent, now: datetime | None = None, policy: Policy | None = None) -> dict:
    """One retention run for one agent: ``{"sessions", "evaluations", "snapshots"}``
    deleted. Safe to run twice at once: a row two runs both pick is deleted by one."""
    now = now or timezone.now()
    policy = policy or Policy.from_settings()
    done = {"sessions": 0, "evaluations": 0, "snapshots": 0}
    limits = {"batch": policy.batch, "batches": policy.batches}
    cutoff = _cutoff(now, policy.sessions_days)
    if cutoff is not None:
        window = _open_rollout_start(agent)
        if window is not None:
            cutoff = min(cutoff, window)
        done["sessions"] = forget_sessions(agent, cutoff, **limits)
    cutoff = _cutoff(now, policy.evaluations_days)
    if cutoff is not None:
        done["evaluations"] = forget_evaluations(agent, cutoff, **limits)
    cutoff = _cutoff(now, policy.snapshots_days)
    if cutoff is not None:
        done["snapshots"] = forget_snapshots(agent, cutoff, **limits)
    return done

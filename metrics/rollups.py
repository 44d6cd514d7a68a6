"""Metric rollups: what gates and charts read instead of the sessions.

Every ended session adds its outcome to rows keyed by (version, routing epoch, metric).
The epoch is the one the session's pin was computed from, and every routing change moves
it, so "started since the rollout began" and "started during this stage" are exact sets
of epochs, with no time buckets. A row holds a count, a sum and a sum of squares, and for
latency and cost a quantile sketch: exactly what ``metrics.summary.Summary`` needs.

What feeds which row, per session:

- the outcome, once its end is recorded (the first end stands): one sample for each
  metric whose field it reports, and one for ``sessions_with_outcome`` if it reports
  any of success, error, latency, cost or hallucination (what ``min_sessions`` counts);
- late feedback after the end: ``feedback_score`` moves by the difference, so a second
  feedback replaces the first;
- ``abandon_rate``: one sample per ended session of any kind (ended, abandoned,
  expired), valued 1 if it was abandoned or expired, or ended without an outcome;
- ``sessions_assigned``: new pins, counted by the beat from a cursor on the sessions'
  ids, so the assignment path gains no write.

Writes happen in the transaction of the change that causes them, as one
``INSERT … ON CONFLICT DO UPDATE`` adding to the rows. A session always writes to the
shard its id hashes to, one of ``SHARDS``, so concurrent ends rarely wait on one
another's row; readers sum the shards, which costs epochs x metrics x shards rows, never
a row per session.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Sum
from django.utils import timezone

from metrics import feed
from metrics.gates import METRICS
from metrics.models import Rollup, RollupCursor
from metrics.sketch import Sketch
from metrics.summary import Summary

SHARDS = 16
#: How an absent epoch (a pin the harness made locally) is stored in the unique key.
NO_EPOCH = -1

ABANDON_RATE = "abandon_rate"
ASSIGNED = "sessions_assigned"
WITH_OUTCOME = "sessions_with_outcome"
COUNTERS = (ASSIGNED, WITH_OUTCOME)

#: Outcome fields that make an end one "with an outcome". Feedback is not among them: it
#: is the user's, may come much later, and a session that crashed is still a crash.
REPORTED_FIELDS = ("success", "error", "latency_ms", "cost_usd", "hallucination")
#: The metrics fed by one outcome field each, by field.
FIELD_METRICS = {
    metric.field: metric.name
    for metric in METRICS.values()
    if metric.field in (*REPORTED_FIELDS, "feedback")
}
SKETCHED = frozenset({"latency_ms", "cost_usd"})

LIVE, ENDED, ABANDONED, EXPIRED = "live", "ended", "abandoned", "expired"


def shard_of(session_id: str) -> int:
    """The shard a session writes to: stable across processes, unlike ``hash``."""
    return zlib.crc32(session_id.encode()) % SHARDS


def reported(outcome: Mapping[str, Any]) -> bool:
    """Whether an outcome counts as one: at least one harness-reported field is set."""
    return any(outcome.get(name) is not None for name in REPORTED_FIELDS)


def _stored_epoch(epoch: int | None) -> int:
    return NO_EPOCH if epoch is None else epoch


def _epoch(stored: int) -> int | None:
    return None if stored == NO_EPOCH else stored


# --- writing -----------------------------------------------------------------------------


@dataclass
class _Delta:
    """What one change adds to one rollup row."""

    n: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    sketch: Sketch | None = field(default=None)

    def add(self, other: _Delta) -> None:
        self.n += other.n
        self.total += other.total
        self.total_sq += other.total_sq
        if other.sketch is not None:
            self.sketch = other.sketch.merge(self.sketch) if self.sketch else other.sketch.copy()


_Key = tuple[int, int, str, int]  # version, stored epoch, metric, shard


def _upsert(deltas: Mapping[_Key, _Delta]) -> None:
    """Add the deltas to their rows in one statement.

    Rows go in key order, so two transactions that both touch several rows lock them in
    the same order and cannot deadlock on each other.
    """
    if not deltas:
        return
    table = Rollup._meta.db_table
    # PostgreSQL needs the JSON typed; SQLite stores it as text and has no casts.
    as_json = "%s::jsonb" if connection.vendor == "postgresql" else "%s"
    params: list[Any] = []
    for key in sorted(deltas):
        delta = deltas[key]
        sketch = None if delta.sketch is None else json.dumps(delta.sketch.to_json())
        params.extend((*key, delta.n, delta.total, delta.total_sq, sketch))
    values = ", ".join([f"(%s, %s, %s, %s, %s, %s, %s, {as_json})"] * len(deltas))
    sql = f"""
        INSERT INTO {table} (version_id, epoch, metric, shard, n, total, total_sq, sketch)
        VALUES {values}
        ON CONFLICT (version_id, epoch, metric, shard) DO UPDATE SET
            n = {table}.n + excluded.n,
            total = {table}.total + excluded.total,
            total_sq = {table}.total_sq + excluded.total_sq,
            sketch = CASE WHEN excluded.sketch IS NULL THEN {table}.sketch
                          ELSE metrics_sketch_merge({table}.sketch, excluded.sketch) END
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def _sample(value: Any, metric: str) -> _Delta:
    x = float(value)
    return _Delta(1, x, x * x, Sketch.of([x]) if metric in SKETCHED else None)


def outcome_recorded(
    *, version_id: int, epoch: int | None, session_id: str, values: Mapping[str, Any]
) -> None:
    """A session's end was recorded, for the first time, with these final values (its
    outcome fields, including any feedback that arrived before the end)."""
    key = (version_id, _stored_epoch(epoch))
    shard = shard_of(session_id)
    deltas = {
        (*key, metric, shard): _sample(values[name], metric)
        for name, metric in FIELD_METRICS.items()
        if values.get(name) is not None
    }
    if reported(values):
        deltas[(*key, WITH_OUTCOME, shard)] = _Delta(1)
    _upsert(deltas)


def feedback_replaced(
    *, version_id: int, epoch: int | None, session_id: str, old: float | None, new: float
) -> None:
    """Feedback arrived for a session whose end is recorded: it replaces ``old`` (None if
    the session had none) in ``feedback_score``."""
    metric = FIELD_METRICS["feedback"]
    delta = _sample(new, metric) if old is None else _Delta(0, new - old, new * new - old * old)
    _upsert({(version_id, _stored_epoch(epoch), metric, shard_of(session_id)): delta})


def session_ending(
    version_id: int, epoch: int | None, session_id: str, state: str, outcome: Mapping[str, Any]
) -> None:
    """The harness is ending a session that was in ``state`` until now, with ``outcome``:
    ``abandon_rate`` moves from what that state contributed to what an end contributes.

    A live session becomes one more ended session, abandoned unless it has an outcome.
    An abandoned one was counted as abandoned already; with an outcome it no longer is.
    An expired session stays expired whatever it reports late.
    """
    with_outcome = reported(outcome)
    if state == LIVE:
        delta = _Delta(1, 0.0 if with_outcome else 1.0, 0.0 if with_outcome else 1.0)
    elif state == ABANDONED and with_outcome:
        delta = _Delta(0, -1.0, -1.0)
    else:
        return
    _upsert({(version_id, _stored_epoch(epoch), ABANDON_RATE, shard_of(session_id)): delta})


def sessions_ended(state: str, sessions: Iterable[tuple[int, int | None, str]]) -> None:
    """Live sessions, given as (version id, epoch, session id), were just abandoned or
    expired by a policy: each is one more ended session, and one more abandoned one."""
    if state not in (ABANDONED, EXPIRED):
        raise ValueError(f"sessions_ended is for abandoned or expired sessions, not {state!r}")
    deltas: dict[_Key, _Delta] = {}
    for version_id, epoch, session_id in sessions:
        key = (version_id, _stored_epoch(epoch), ABANDON_RATE, shard_of(session_id))
        deltas.setdefault(key, _Delta()).add(_Delta(1, 1.0, 1.0))
    _upsert(deltas)


def add_assignments(counts: Iterable[tuple[int, int | None, int]]) -> None:
    """Add (version id, epoch, new pins) to ``sessions_assigned``. Only the beat writes
    these, so one shard is enough."""
    _upsert({(v, _stored_epoch(e), ASSIGNED, 0): _Delta(n) for v, e, n in counts if n})


# --- counting new pins ---------------------------------------------------------------------

ASSIGNED_CURSOR = "assigned"
#: Pin ids counted per step; a tick takes a few steps at most, the next tick the rest.
COUNT_STEP = 50_000
COUNT_STEPS_PER_TICK = 10


def count_assignments(*, now: datetime | None = None, settle_s: float | None = None) -> int:
    """Count the pins made since the last count into ``sessions_assigned``. Returns how
    many were counted.

    Ids come from a sequence, and a pin that took id 100 may commit after one that took
    101: a cursor that jumped to the highest id visible would skip it for good. So:

    1. Lock the cursor row, skipping if another beat or worker holds it (it is counting).
    2. If the mark (the highest pin id seen at ``mark_at``) is older than ``settle_s``,
       every insert that had taken an id up to it has committed by now, unless its
       statement ran for longer than that: count the pins after the position up to
       the mark, per (version, epoch), and move the position.
    3. Once the position reaches the mark, take a new mark.

    The counts and the cursor commit together, so a retried or duplicated task never
    counts a pin twice.
    """
    now = now or timezone.now()
    settle = timedelta(seconds=settings.PRISM_PIN_SETTLE_S if settle_s is None else settle_s)
    RollupCursor.objects.get_or_create(name=ASSIGNED_CURSOR)
    sessions = feed.sessions()
    counted = 0
    with transaction.atomic():
        cursor = (
            RollupCursor.objects.select_for_update(skip_locked=True)
            .filter(name=ASSIGNED_CURSOR)
            .first()
        )
        if cursor is None:
            return 0
        if cursor.mark_at is None or cursor.position >= cursor.mark:
            cursor.mark, cursor.mark_at = sessions.last_pin_id(), now
        steps = 0
        while (
            cursor.position < cursor.mark
            and now - cursor.mark_at >= settle
            and steps < COUNT_STEPS_PER_TICK
        ):
            upper = min(cursor.mark, cursor.position + COUNT_STEP)
            counts = sessions.pin_counts(cursor.position, upper)
            add_assignments(counts)
            counted += sum(n for _, _, n in counts)
            cursor.position, steps = upper, steps + 1
        if cursor.position >= cursor.mark:
            cursor.mark, cursor.mark_at = max(cursor.position, sessions.last_pin_id()), now
        cursor.save()
    return counted


# --- reading -------------------------------------------------------------------------------


def _rows(version_ids: Iterable[int], epochs: Iterable[int | None] | None, metrics: Any):
    rows = Rollup.objects.filter(version_id__in=list(version_ids), metric__in=metrics)
    if epochs is not None:
        rows = rows.filter(epoch__in=[_stored_epoch(e) for e in epochs])
    return rows


def summaries(
    version_ids: Iterable[int],
    epochs: Iterable[int | None] | None = None,
    metrics: Iterable[str] | None = None,
) -> dict[tuple[int, int | None, str], Summary]:
    """{(version id, epoch, metric): Summary} for the given versions, over all their
    epochs or only ``epochs``, of every gated metric or only ``metrics`` (which may name
    the counters too: their Summary's ``n`` is the count). One query; its rows are
    epochs x metrics x shards."""
    metrics = [*FIELD_METRICS.values(), ABANDON_RATE] if metrics is None else list(metrics)
    result: dict[tuple[int, int | None, str], Summary] = {}
    for version_id, epoch, metric, n, total, total_sq, sketch in _rows(
        version_ids, epochs, metrics
    ).values_list("version_id", "epoch", "metric", "n", "total", "total_sq", "sketch"):
        key = (version_id, _epoch(epoch), metric)
        summary = result.setdefault(key, Summary(sketch=Sketch() if metric in SKETCHED else None))
        summary.update(Summary(n, total, total_sq, Sketch.from_json(sketch) if sketch else None))
    return result


def _counts(
    metric: str, version_ids: Iterable[int], epochs: Iterable[int | None] | None
) -> dict[tuple[int, int | None], int]:
    rows = (
        _rows(version_ids, epochs, [metric])
        .values_list("version_id", "epoch")
        .annotate(count=Sum("n"))
        .order_by()
    )
    return {(version_id, _epoch(epoch)): int(count) for version_id, epoch, count in rows}


def assigned_counts(
    version_ids: Iterable[int], epochs: Iterable[int | None] | None = None
) -> dict[tuple[int, int | None], int]:
    """{(version id, epoch): sessions pinned}, as far as the beat has counted: for the
    sample-ratio check."""
    return _counts(ASSIGNED, version_ids, epochs)


def with_outcome_counts(
    version_ids: Iterable[int], epochs: Iterable[int | None] | None = None
) -> dict[tuple[int, int | None], int]:
    """{(version id, epoch): sessions ended with an outcome}: what ``min_sessions``
    counts."""
    return _counts(WITH_OUTCOME, version_ids, epochs)

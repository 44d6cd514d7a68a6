"""Recording session outcomes, the samples every metric is computed from."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from metrics import rollups
from metrics.models import Outcome

OUTCOME_FIELDS = ("success", "error", "latency_ms", "cost_usd", "hallucination", "feedback")
BOOLEAN_FIELDS = ("success", "error", "hallucination")

# Who is reporting the outcomes being recorded: the API unless a metric source says so.
_source: ContextVar[str] = ContextVar("outcome_source", default="api")


@contextlib.contextmanager
def reported_by(source: str) -> Iterator[None]:
    """Label the outcomes recorded inside the block (e.g. by a metric source's poll)."""
    token = _source.set(source[:32])
    try:
        yield
    finally:
        _source.reset(token)


def clean_outcome(data: Any, *, ignore_unknown: bool = False) -> dict[str, Any]:
    """The outcome fields of ``data``, checked strictly; raises ValueError naming the
    first bad field. Booleans must be booleans; numbers finite, latency and cost not
    negative, feedback within [-1, 1]. Unknown keys are an error unless ignored."""
    if not isinstance(data, dict):
        raise ValueError("an outcome must be an object")
    unknown = sorted(set(data) - set(OUTCOME_FIELDS))
    if unknown and not ignore_unknown:
        raise ValueError(f"unknown outcome field {unknown[0]!r}")
    values: dict[str, Any] = {}
    for name in OUTCOME_FIELDS:
        if name not in data:
            continue
        value = data[name]
        if value is None:
            values[name] = None
        elif name in BOOLEAN_FIELDS:
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be true, false or null")
            values[name] = value
        else:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number or null")
            value = float(value)
            low = -1.0 if name == "feedback" else 0.0
            high = 1.0 if name == "feedback" else math.inf
            if not math.isfinite(value) or not low <= value <= high:
                raise ValueError(f"{name} must lie in [{low}, {high}]")
            values[name] = value
    return values


def _locked_row(agent_id: int, session_id: str, defaults: dict[str, Any]) -> tuple[Outcome, bool]:
    """The session's outcome row, locked for this transaction, or a new one from
    ``defaults``. A concurrent insert of the same row (an end racing a feedback) loses
    to the unique constraint, and then the winner's row is locked and returned."""
    rows = Outcome.objects.select_for_update().filter(agent_id=agent_id, session_id=session_id)
    row = rows.first()
    if row is not None:
        return row, False
    try:
        with transaction.atomic():
            return Outcome.objects.create(
                agent_id=agent_id, session_id=session_id, **defaults
            ), True
    except IntegrityError:
        return rows.get(), False


def record_outcome(
    *,
    agent_id: int,
    version_id: int,
    session_id: str,
    started_at: datetime,
    ended_at: datetime,
    outcome: dict[str, Any],
    epoch: int | None = None,
    source: str | None = None,
) -> Outcome:
    """Store a session's outcome once, and feed the metric rollups.

    1. Lock the session's outcome row (late feedback may have created it), or insert one
       holding the whole outcome.
    2. A row whose end is not recorded yet is completed, keeping earlier feedback unless
       the end carries its own. A row already ended stays as it is: the first end stands.
    3. The first time the end is recorded, the row's final values go into the rollups,
       in this same transaction.
    """
    source = source or _source.get()
    values = {field: outcome.get(field) for field in OUTCOME_FIELDS if field in outcome}
    if values.get("feedback") is not None:
        values["feedback_at"] = ended_at
    with transaction.atomic(savepoint=False):
        row, created = _locked_row(
            agent_id,
            session_id,
            {
                "version_id": version_id,
                "started_at": started_at,
                "epoch": epoch,
                "ended_at": ended_at,
                "source": source,
                **values,
            },
        )
        if not created:
            if row.ended_at is not None:
                return row
            # Feedback arrived before the end: keep it unless the end carries its own.
            if row.feedback is not None and values.get("feedback") is None:
                values.pop("feedback", None)
                values.pop("feedback_at", None)
            changes = {"ended_at": ended_at, "source": source, **values}
            Outcome.objects.filter(pk=row.pk).update(**changes)
            for name, value in changes.items():
                setattr(row, name, value)
        rollups.outcome_recorded(
            version_id=row.version_id,
            epoch=row.epoch,
            session_id=session_id,
            values={name: getattr(row, name) for name in OUTCOME_FIELDS},
        )
    return row


def has_ended(agent_id: int, session_id: str) -> bool:
    """Whether the session's end has been recorded already."""
    return Outcome.objects.filter(
        agent_id=agent_id, session_id=session_id, ended_at__isnull=False
    ).exists()


def record_feedback(
    *,
    agent_id: int,
    version_id: int,
    session_id: str,
    started_at: datetime,
    feedback: float,
    epoch: int | None = None,
) -> None:
    """Late user feedback: the latest value wins, in the rollups too.

    1. Lock the session's outcome row, or create one holding only the feedback (its end
       will add it to the rollups).
    2. Replace the value. If the end is recorded already, ``feedback_score`` moves from
       the old value (or none) to the new one.
    """
    now = timezone.now()
    with transaction.atomic(savepoint=False):
        row, created = _locked_row(
            agent_id,
            session_id,
            {
                "version_id": version_id,
                "started_at": started_at,
                "epoch": epoch,
                "feedback": feedback,
                "feedback_at": now,
            },
        )
        if created:
            return
        Outcome.objects.filter(pk=row.pk).update(feedback=feedback, feedback_at=now)
        if row.ended_at is not None:
            rollups.feedback_replaced(
                version_id=row.version_id,
                epoch=row.epoch,
                session_id=session_id,
                old=row.feedback,
                new=feedback,
            )

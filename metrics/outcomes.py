"""Recording session outcomes, the samples every metric is computed from (DESIGN §7)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import Count, Q
from django.utils import timezone

from metrics.models import Outcome

OUTCOME_FIELDS = ("success", "error", "latency_ms", "cost_usd", "hallucination", "feedback")


def record_outcome(
    *,
    agent_id: int,
    version_id: int,
    session_id: str,
    started_at: datetime,
    ended_at: datetime,
    outcome: dict[str, Any],
    source: str = "api",
) -> Outcome:
    """Store a session's outcome once. A row created earlier by late feedback is completed;
    an already ended one is left as it is (the first end stands)."""
    values = {field: outcome.get(field) for field in OUTCOME_FIELDS if field in outcome}
    if values.get("feedback") is not None:
        values["feedback_at"] = ended_at
    row, created = Outcome.objects.get_or_create(
        agent_id=agent_id,
        session_id=session_id,
        defaults={
            "version_id": version_id,
            "started_at": started_at,
            "ended_at": ended_at,
            "source": source,
            **values,
        },
    )
    if not created and row.ended_at is None:
        # Feedback arrived before the end: keep it unless the end carries its own.
        if row.feedback is not None and values.get("feedback") is None:
            values.pop("feedback", None)
            values.pop("feedback_at", None)
        updated = Outcome.objects.filter(pk=row.pk, ended_at__isnull=True).update(
            ended_at=ended_at, source=source, **values
        )
        if updated:
            for field, value in {"ended_at": ended_at, "source": source, **values}.items():
                setattr(row, field, value)
    return row


def has_ended(agent_id: int, session_id: str) -> bool:
    """Whether the session's end has been recorded already."""
    return Outcome.objects.filter(
        agent_id=agent_id, session_id=session_id, ended_at__isnull=False
    ).exists()


def record_feedback(
    *, agent_id: int, version_id: int, session_id: str, started_at: datetime, feedback: float
) -> None:
    """Late user feedback: the latest value wins."""
    now = timezone.now()
    updated = Outcome.objects.filter(agent_id=agent_id, session_id=session_id).update(
        feedback=feedback, feedback_at=now
    )
    if not updated:
        Outcome.objects.get_or_create(
            agent_id=agent_id,
            session_id=session_id,
            defaults={
                "version_id": version_id,
                "started_at": started_at,
                "feedback": feedback,
                "feedback_at": now,
            },
        )


def ended_counts(version_ids: list[int], since: datetime) -> dict[int, int]:
    """Samples per version: ended sessions with an outcome (at least one metric field
    reported, late feedback included) among those started at or after ``since``.

    A session that ended without reporting anything tells no metric anything, so it is
    not a sample (the abandon rate counts it instead)."""
    reported = Q()
    for field in OUTCOME_FIELDS:
        reported |= Q(**{f"{field}__isnull": False})
    rows = (
        Outcome.objects.filter(
            reported, version_id__in=version_ids, started_at__gte=since, ended_at__isnull=False
        )
        .values_list("version_id")
        .annotate(n=Count("*"))
        .order_by()
    )
    counts = dict.fromkeys(version_ids, 0)
    counts.update(dict(rows))
    return counts

"""The sessions, as the metrics app sees them (``metrics.feed.SessionFeed``).

Settings point ``PRISM_SESSION_FEED`` here, so the beat's pin count and the metric
sources can read pins and end sessions without metrics importing this app.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Count, Max

from metrics.feed import UnknownSession
from rollouts import sessions
from rollouts.models import Routing, Session, SessionState


def last_pin_id() -> int:
    return Session.objects.aggregate(last=Max("id"))["last"] or 0


def pin_counts(after_id: int, up_to_id: int) -> list[tuple[int, int | None, int]]:
    # A range of the primary key: the cost is the pins in it, not the history.
    return list(
        Session.objects.filter(id__gt=after_id, id__lte=up_to_id)
        .values_list("version_id", "epoch")
        .annotate(n=Count("*"))
        .order_by()
    )


def end_reported(slug: str, session_id: str, outcome: dict[str, Any]) -> bool:
    try:
        _, changed = sessions.end(slug, session_id, outcome)
    except sessions.NotFound:
        raise UnknownSession(session_id) from None
    return changed


def versions_in_play(agent_id: int) -> list[int]:
    routing = Routing.objects.filter(agent_id=agent_id).first()
    weighted = {int(v) for v, w in (routing.weights if routing else {}).items() if w > 0}
    live = Session.objects.filter(agent_id=agent_id, state=SessionState.LIVE)
    return sorted(weighted | set(live.values_list("version_id", flat=True).distinct()))

"""What retention needs from the metrics app: how far the pin count has got, and
forgetting the outcomes of sessions that are being deleted.

Deleting an outcome never changes a rollup: its samples were added when its end was
recorded, and with its session gone no late feedback can move them again. The rollups
are what gates, charts and totals read, so they outlive the rows they summarise.
"""

from __future__ import annotations

from collections.abc import Sequence

from metrics.models import Outcome, RollupCursor
from metrics.rollups import ASSIGNED_CURSOR


def assignments_counted_through() -> int:
    """The highest session id the beat's pin count has counted (0 before it ever ran):
    a session above it is not in ``sessions_assigned`` yet and must not be deleted."""
    position = (
        RollupCursor.objects.filter(name=ASSIGNED_CURSOR).values_list("position", flat=True).first()
    )
    return position or 0


def forget_outcomes(agent_id: int, session_ids: Sequence[str]) -> int:
    """Delete the outcomes of these sessions of one agent, in the caller's transaction
    (the one deleting the sessions). One statement, through the unique (agent,
    session_id) index. Returns how many were deleted."""
    if not session_ids:
        return 0
    deleted, _ = Outcome.objects.filter(agent_id=agent_id, session_id__in=session_ids).delete()
    return deleted

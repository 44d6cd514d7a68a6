"""The beat's metric work: polling metric sources and counting new pins. Both are
idempotent and safe to run twice at once (they lock and skip what another one holds)."""

from __future__ import annotations

from celery import shared_task

from metrics import rollups, sources


@shared_task(ignore_result=True)
def poll_sources() -> dict[str, int]:
    """Poll every enabled metric source that is due."""
    return sources.poll_due()


@shared_task(ignore_result=True)
def count_assignments() -> int:
    """Count the pins made since the last count into the rollups (sample-ratio check)."""
    return rollups.count_assignments()

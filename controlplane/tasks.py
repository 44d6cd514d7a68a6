"""The beat's own tick, which ``GET /api/health/`` reads to tell whether the beat is late."""

from __future__ import annotations

from celery import shared_task

from controlplane import health


@shared_task(ignore_result=True)
def beat_tick() -> str:
    return health.record_tick().isoformat()

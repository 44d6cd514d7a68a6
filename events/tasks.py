"""Webhook delivery by Celery: a dispatch per event after its commit, and the beat's
sweep of whatever is due (a lost message, a retry, a worker that died mid-send)."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from events import delivery


@shared_task(ignore_result=True)
def deliver_event(event_id: int) -> dict[str, int]:
    """Send an event's due deliveries now (idempotent: each attempt is claimed)."""
    return delivery.deliver_due(event_id=event_id)


@shared_task(ignore_result=True)
def sweep_deliveries() -> dict[str, int]:
    """Send every due delivery, within about one sweep interval of work."""
    return delivery.deliver_due(budget_s=float(settings.PRISM_WEBHOOK_SWEEP_SECONDS))

"""Writing events: the outbox.

An event is a row written in the transaction of the change it reports, together with a
pending delivery for every active webhook of the agent that wants it. Both commit with
the change or not at all, so an event is never lost and never sent for a change that
rolled back. After the commit a dispatch is queued; the beat's sweep finds any delivery
whose message was lost.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models import Model

from controlplane.middleware import current_request_id
from events.models import Delivery, Event, EventType, Webhook
from events.text import summary
from versions.models import Agent, AuditEntry

log = logging.getLogger(__name__)


class OutsideTransaction(RuntimeError):
    """An event written outside a transaction could outlive a change that rolled back."""


def emit(
    type: str,
    *,
    agent: Agent,
    subject: Model,
    data: dict[str, Any] | None = None,
    audit: AuditEntry | None = None,
    once: str | None = None,
) -> Event | None:
    """Write one event, and its deliveries, inside the caller's transaction.

    1. Refuse an unknown type, and a call outside an atomic block.
    2. With ``once``, write the event only if no event with that key exists (a unique
       constraint decides between racing writers, in a savepoint); return None if one
       does.
    3. Create a pending delivery for each active webhook of the agent that wants the
       type, and queue their dispatch for after the commit.
    """
    if type not in EventType.values:
        raise ValueError(f"unknown event type {type!r}")
    if not connection.in_atomic_block:
        raise OutsideTransaction(f"{type} emitted outside a transaction")
    data = data or {}
    event = Event(
        agent=agent,
        type=type,
        subject_type=subject._meta.model_name,
        subject_id=str(subject.pk),
        subject_repr=str(subject)[:200],
        data=data,
        text=summary(type, agent.slug, data),
        audit_entry=audit,
        request_id=current_request_id.get(),
        once=once,
    )
    if once is None:
        event.save()
    else:
        try:
            with transaction.atomic():
                event.save()
        except IntegrityError:
            return None
    webhooks = [
        hook for hook in Webhook.objects.filter(agent=agent, active=True) if hook.wants(type)
    ]
    if webhooks:
        Delivery.objects.bulk_create(
            Delivery(event=event, webhook=hook, agent=agent, created_at=event.occurred_at)
            for hook in webhooks
        )
        event_id = event.pk
        transaction.on_commit(lambda: queue_dispatch(event_id))
    return event


def queue_dispatch(event_id: int) -> None:
    """Ask a worker to send an event's deliveries now. Best effort: with the broker
    away the beat's sweep sends them, so a failure here is only logged."""
    from events.tasks import deliver_event

    try:
        deliver_event.apply_async((event_id,), retry=False)
    except Exception as exc:  # the broker's errors are many; none may undo the change
        log.warning("could not queue the deliveries of event %s: %s", event_id, exc)


def body(event: Event) -> dict[str, Any]:
    """What a webhook receives: the stable schema of ``EventBody`` in the API."""
    return {
        "id": event.pk,
        "type": event.type,
        "occurred_at": event.occurred_at.isoformat().replace("+00:00", "Z"),
        "agent": event.agent.slug,
        "subject": {"type": event.subject_type, "id": event.subject_id, "name": event.subject_repr},
        "data": event.data,
        "text": event.text,
    }

"""Writing the audit trail. Call ``record`` inside the transaction of the change."""

from __future__ import annotations

from typing import Any

from django.db import models

from controlplane.middleware import current_request_id
from versions.models import Agent, AuditEntry

SYSTEM = "system"


def record(
    action: str,
    obj: models.Model,
    *,
    actor: Any,
    reason: str = "",
    before: Any = None,
    after: Any = None,
    agent: Agent | None = None,
) -> AuditEntry:
    """Append one audit entry.

    ``actor`` is a user, or a string such as ``"system"`` (the beat) or ``"cli"``.
    ``agent`` defaults to the object itself or its ``agent`` attribute, so entries can
    be filtered per agent.
    """
    if agent is None:
        agent = obj if isinstance(obj, Agent) else getattr(obj, "agent", None)
    user = actor if getattr(actor, "is_authenticated", False) else None
    return AuditEntry.objects.create(
        actor=(user.get_username() if user else str(actor or SYSTEM))[:150],
        actor_user=user,
        action=action,
        agent=agent,
        object_type=obj._meta.model_name,
        object_id=str(obj.pk),
        object_repr=str(obj)[:200],
        reason=reason,
        before=before,
        after=after,
        request_id=current_request_id.get(),
    )

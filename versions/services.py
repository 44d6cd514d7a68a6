"""Agent and version writes. Each is one transaction with its audit entry."""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction

from versions.audit import record
from versions.fingerprint import LAYERS, fingerprint
from versions.models import Agent, Version


def create_agent(*, slug: str, name: str, drain_policy: dict[str, int], actor: Any) -> Agent:
    with transaction.atomic():
        agent = Agent.objects.create(slug=slug, name=name, **drain_policy)
        record("agent.created", agent, actor=actor, after={"name": name, **agent.drain_policy})
    return agent


def update_agent(agent: Agent, *, changes: dict[str, Any], actor: Any, reason: str = "") -> Agent:
    """Change an agent's name or drain policy; the new policy applies at the next heartbeat."""
    with transaction.atomic():
        locked = Agent.objects.select_for_update().get(pk=agent.pk)
        before = {field: getattr(locked, field) for field in changes}
        changed = {k: v for k, v in changes.items() if before[k] != v}
        if changed:
            for field, value in changed.items():
                setattr(locked, field, value)
            locked.save(update_fields=list(changed))
            record(
                "agent.updated",
                locked,
                actor=actor,
                reason=reason,
                before={k: before[k] for k in changed},
                after=changed,
            )
    return locked


def register_version(
    agent: Agent,
    *,
    layers: dict[str, Any],
    label: str | None,
    notes: str,
    actor: Any,
) -> tuple[Version, bool]:
    """Register a tuple, or return the existing version with the same fingerprint.

    Returns ``(version, created)``. Two concurrent registrations of one tuple race on
    the ``(agent, fingerprint)`` unique constraint: the loser's insert fails, and it
    returns the winner's row, so both callers see the same version.

    Raises ``LabelTaken`` when the label already names a different tuple.
    """
    fp = fingerprint(layers)
    existing = Version.objects.filter(agent=agent, fingerprint=fp).first()
    if existing is not None:
        return existing, False
    user = actor if getattr(actor, "is_authenticated", False) else None
    try:
        with transaction.atomic():
            version = Version(
                agent=agent,
                label=label or None,
                notes=notes,
                created_by=user,
                **{layer: layers[layer] for layer in LAYERS},
            )
            version.save()
            record(
                "version.registered",
                version,
                actor=actor,
                agent=agent,
                after={
                    "fingerprint": version.fingerprint,
                    "label": version.label,
                    "layers": version.layer_fingerprints,
                },
            )
            return version, True
    except IntegrityError:
        existing = Version.objects.filter(agent=agent, fingerprint=fp).first()
        if existing is not None:
            return existing, False
        if label and Version.objects.filter(agent=agent, label=label).exists():
            raise LabelTaken(label) from None
        raise


class LabelTaken(Exception):
    def __init__(self, label: str) -> None:
        super().__init__(f"label {label!r} already names another version of this agent")
        self.label = label

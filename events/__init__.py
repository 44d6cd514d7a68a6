"""Events: one row per transition, written in the transition's own transaction (an
outbox), and the signed webhooks that deliver them.

``emit`` is the one call other apps make, next to their audit ``record``. It lives here
so callers write ``events.emit(...)``; the models load only when it is first called,
since this package is imported while Django populates its app registry.
"""

from __future__ import annotations

from typing import Any


def emit(
    type: str,
    *,
    agent: Any,
    subject: Any,
    data: dict[str, Any] | None = None,
    audit: Any = None,
    once: str | None = None,
) -> Any:
    """Write one event inside the caller's transaction; see ``events.outbox.emit``."""
    from events.outbox import emit as write

    return write(type, agent=agent, subject=subject, data=data, audit=audit, once=once)


def version_ref(version: Any, **extra: Any) -> dict[str, Any]:
    """An event's data about a version: who it is, and whatever the caller adds."""
    return {
        "version": {"id": version.pk, "label": version.label, "fingerprint": version.fingerprint},
        **extra,
    }

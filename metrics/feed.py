"""What the metrics need from sessions, which live in an app above this one.

Metrics may not import rollouts (dependencies point ``rollouts → metrics``), yet the
beat's pin count and the metric sources need to read pins and to end sessions the way
the API does. Settings name the module that provides this (``PRISM_SESSION_FEED``,
``rollouts.feed`` in Prism), the way Django names its pluggable parts.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any, Protocol

from django.conf import settings


class UnknownSession(Exception):
    """A reported outcome for a session this agent never started."""


class SessionFeed(Protocol):
    def last_pin_id(self) -> int:
        """The highest session id visible now (0 with none)."""

    def pin_counts(self, after_id: int, up_to_id: int) -> list[tuple[int, int | None, int]]:
        """(version id, epoch, pins) over the sessions with after_id < id <= up_to_id."""

    def end_reported(self, slug: str, session_id: str, outcome: dict[str, Any]) -> bool:
        """End the session with ``outcome`` exactly as the API's end does; False if it had
        ended already (the first end stands). Raises UnknownSession."""

    def versions_in_play(self, agent_id: int) -> list[int]:
        """The agent's versions that get traffic or still have live sessions."""


def sessions() -> SessionFeed:
    return import_module(settings.PRISM_SESSION_FEED)  # type: ignore[return-value]

"""The exceptions a harness may see. Every one is a ``PrismError``.

- ``Unavailable``: no answer could be had: the network failed, the call timed out, or
  Prism answered 5xx (or 429) after the retries allowed. A start falls back on local
  routing for this one ("fail static").
- ``Refused``: Prism answered and said no (4xx). Retrying the same call will not help.
  ``NotFound`` (404), ``Conflict`` (409) and ``Unauthorized`` (401, 403) narrow it.
"""

from __future__ import annotations

from typing import Any


class PrismError(Exception):
    """Base class of every error this library raises."""


class Unavailable(PrismError):
    """Prism could not be reached or could not answer. ``status`` is the last HTTP status
    seen (None for a network error or a timeout)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Refused(PrismError):
    """Prism refused the call (4xx). ``detail`` is its message, ``body`` the parsed
    answer (field errors for a 400)."""

    def __init__(self, status: int, detail: str, body: Any = None) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail
        self.body = body


class Unauthorized(Refused):
    """401 or 403: the token is wrong, or its role or scope does not allow the call."""


class NotFound(Refused):
    """404: no such agent, session or version."""


class Conflict(Refused):
    """409: a state conflict, e.g. a reported pin that disagrees with Prism's."""


def refused(status: int, body: Any) -> Refused:
    """The right ``Refused`` subclass for a 4xx answer."""
    detail = body.get("detail") if isinstance(body, dict) else None
    if not isinstance(detail, str):
        detail = str(body)[:500] if body not in (None, "") else "refused"
    kind = {401: Unauthorized, 403: Unauthorized, 404: NotFound, 409: Conflict}.get(status, Refused)
    return kind(status, detail, body)

"""What a client sees while the database is away: a prompt 503 with a JSON body.

A restart, a failover or a network cut makes every query raise ``OperationalError``
(or ``InterfaceError`` on a connection that was already closed). Unhandled, each would
be a 500 with a traceback, which tells a harness nothing it can act on. This middleware
answers 503 with ``Retry-After`` instead, so a harness retries, and meanwhile keeps
starting sessions from its cached routing table (fail static).

Nothing else is needed to recover: Django marks the connection unusable when the error
happens and drops it at the end of the request, so the first request after the
database is back opens a fresh connection. ``DATABASE_CONNECT_TIMEOUT`` bounds how long
that attempt may take while the database is unreachable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse

log = logging.getLogger(__name__)

RETRY_AFTER_S = 2


def unavailable_response() -> JsonResponse:
    response = JsonResponse(
        {
            "detail": "The database is unavailable; retry shortly.",
            "code": "database_unavailable",
        },
        status=503,
    )
    response["Retry-After"] = str(RETRY_AFTER_S)
    return response


class DatabaseOutageMiddleware:
    """Turn a database error that escapes a view into a 503 JSON answer."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, OperationalError | InterfaceError):
            return None
        # One line per request, not a traceback: an outage produces thousands of these.
        log.warning(
            "database unavailable: %s %s answered 503 (%s: %s)",
            request.method,
            request.path,
            type(exception).__name__,
            str(exception).strip().splitlines()[0] if str(exception).strip() else "",
        )
        return unavailable_response()

"""A Python client for Prism harnesses: standard library only.

    from prism_client import Client, Directive

    prism = Client("http://127.0.0.1:8000", token="prism_...", agent="research")
    session = prism.start("chat-42")          # pinned to one version for its whole life
    model = session.version.model             # the tuple: code, model, prompts, tools
    if session.heartbeat() is Directive.DRAIN:
        ...                                   # finish the step, checkpoint, end
    session.end(success=True, latency_ms=840, cost_usd=0.012)
    session.feedback(0.5)                     # later, when the user rates it

When Prism cannot be reached, ``start`` pins the session from the cached routing table
and the client reports the pin once Prism is back (see ``Client``).
"""

from prism_client.client import Client, Directive, Flush, Session, Version, validate_outcome
from prism_client.errors import (
    Conflict,
    NotFound,
    PrismError,
    Refused,
    Unauthorized,
    Unavailable,
)
from prism_client.routing import RoutingTable, bucket
from prism_client.transport import Call
from prism_client.webhooks import verify

__all__ = [
    "Call",
    "Client",
    "Conflict",
    "Directive",
    "Flush",
    "NotFound",
    "PrismError",
    "Refused",
    "RoutingTable",
    "Session",
    "Unauthorized",
    "Unavailable",
    "Version",
    "bucket",
    "validate_outcome",
    "verify",
]

"""Sending deliveries: claim, sign, POST, record, and retry with backoff.

At most one worker sends a given attempt: a delivery is claimed by a conditional
UPDATE that takes it only while it is still pending and due, and that pushes its next
attempt past the end of this one (a lease). A worker that dies mid-send leaves the
lease to run out, and the sweep sends it again as the next attempt.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import random
import socket
import ssl
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from events import urlguard
from events.models import Delivery, DeliveryCount, DeliveryStatus
from events.outbox import body, queue_dispatch
from versions.audit import record

EXCERPT_CHARS = 500
USER_AGENT = "prism-webhooks/1"


# --- pure parts ---------------------------------------------------------------------------


def signature(secret: str, timestamp: int, payload: bytes) -> str:
    """``v1=`` and the hex HMAC-SHA256 of ``"{timestamp}.{body}"`` under the secret."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def retry_delay(attempt: int, *, base: float, cap: float, rand: random.Random) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1, 2, ...).

    The ceiling doubles with every attempt, up to ``cap``; the delay is drawn uniformly
    from its upper half. Spread this way, receivers coming back from an outage are not
    hit by every sender at once, and unlike a draw from the whole range (full jitter),
    each wait is at least as long as the one before: a flaky receiver is never retried
    sooner than it last was.
    """
    ceiling = min(cap, base * 2 ** (attempt - 1))
    return ceiling / 2 + rand.uniform(0, ceiling / 2)


# --- settings -----------------------------------------------------------------------------


def timeout_s() -> float:
    return float(settings.PRISM_WEBHOOK_TIMEOUT_S)


def lease() -> timedelta:
    """How long a claimed attempt is its sender's: the timeout for connecting, sending
    and reading each, and a margin."""
    return timedelta(seconds=3 * timeout_s() + 10)


_random = random.SystemRandom()


# --- claiming and sending -----------------------------------------------------------------


@dataclass
class Claim:
    delivery: Delivery
    attempt: int


def claim(delivery_id: int, now: datetime) -> Claim | None:
    """Take one attempt of a pending, due delivery, or None if it is not to be sent now
    (another worker has it, it is not due, or it has ended)."""
    taken = Delivery.objects.filter(
        pk=delivery_id, status=DeliveryStatus.PENDING, next_attempt_at__lte=now
    ).update(attempts=F("attempts") + 1, next_attempt_at=now + lease(), last_attempt_at=now)
    if not taken:
        return None
    delivery = Delivery.objects.select_related("event__agent", "webhook").get(pk=delivery_id)
    return Claim(delivery, delivery.attempts)


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to the address the guard checked, whatever the name resolves to now."""

    def __init__(self, target: urlguard.Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._address = target.address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, target: urlguard.Target, timeout: float) -> None:
        super().__init__(
            target.host, target.port, timeout=timeout, context=ssl.create_default_context()
        )
        self._address = target.address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        # The certificate is checked against the name in the URL, not the address.
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


@dataclass
class Answer:
    status: int | None
    excerpt: str
    error: str
    latency_ms: int


def post(url: str, headers: dict[str, str], payload: bytes) -> Answer:
    """POST once, with the timeout, following no redirect. Never raises for the
    network or the receiver: every failure is an ``Answer`` with an error."""
    started = time.monotonic()

    def answer(status: int | None, excerpt: str = "", error: str = "") -> Answer:
        elapsed = round((time.monotonic() - started) * 1000)
        return Answer(status, excerpt[:EXCERPT_CHARS], error[:EXCERPT_CHARS], elapsed)

    try:
        target = urlguard.resolve(url, allow_private=settings.PRISM_WEBHOOKS_ALLOW_PRIVATE)
    except urlguard.UnsafeURL as exc:
        return answer(None, error=f"refused: {exc}")
    kind = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
    connection = kind(target, timeout_s())
    try:
        connection.request("POST", target.path, body=payload, headers=headers)
        response = connection.getresponse()
        excerpt = response.read(EXCERPT_CHARS * 4).decode("utf-8", "replace")
        return answer(response.status, excerpt)
    except TimeoutError:
        return answer(None, error=f"timed out after {timeout_s():g} s")
    except (OSError, http.client.HTTPException) as exc:
        return answer(None, error=f"{type(exc).__name__}: {exc}")
    finally:
        connection.close()


def headers_for(claim: Claim, payload: bytes, timestamp: int) -> dict[str, str]:
    delivery = claim.delivery
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Prism-Event": delivery.event.type,
        "Prism-Delivery": str(delivery.pk),
        "Prism-Attempt": str(claim.attempt),
        "Prism-Timestamp": str(timestamp),
        "Prism-Signature": signature(delivery.webhook.secret, timestamp, payload),
    }


def _count(delivery: Delivery, status: str) -> None:
    """Add one ended delivery to the counters, in the transaction that ended it."""
    counted = DeliveryCount.objects.filter(
        agent_id=delivery.agent_id, event_type=delivery.event.type, status=status
    ).update(count=F("count") + 1)
    if not counted:
        _, created = DeliveryCount.objects.get_or_create(
            agent_id=delivery.agent_id,
            event_type=delivery.event.type,
            status=status,
            defaults={"count": 1},
        )
        if not created:
            DeliveryCount.objects.filter(
                agent_id=delivery.agent_id, event_type=delivery.event.type, status=status
            ).update(count=F("count") + 1)


def send(claim: Claim, now: datetime | None = None) -> str:
    """Send a claimed attempt and record what came of it: "delivered", "retry",
    "failed", or "lost" (the claim ran out and someone else has the delivery now).

    1. Sign the event's body with the webhook's secret and the current time.
    2. POST it; a 2xx answer is delivered, anything else failed this attempt.
    3. Record the attempt, only if the claim still holds (same attempt, still pending):
       delivered; or failed for good after ``PRISM_WEBHOOK_MAX_ATTEMPTS``; or due again
       after ``retry_delay``.
    """
    delivery = claim.delivery
    payload = encode(body(delivery.event))
    answer = post(delivery.webhook.url, headers_for(claim, payload, int(time.time())), payload)
    now = timezone.now()
    ok = answer.status is not None and 200 <= answer.status < 300
    fields: dict[str, Any] = {
        "last_status_code": answer.status,
        "latency_ms": answer.latency_ms,
        "response_excerpt": answer.excerpt,
        "error": "" if ok else answer.error or f"HTTP {answer.status}",
    }
    if ok:
        fields.update(status=DeliveryStatus.DELIVERED, delivered_at=now, next_attempt_at=None)
        outcome = "delivered"
    elif claim.attempt >= settings.PRISM_WEBHOOK_MAX_ATTEMPTS:
        fields.update(status=DeliveryStatus.FAILED, next_attempt_at=None)
        outcome = "failed"
    else:
        wait = retry_delay(
            claim.attempt,
            base=float(settings.PRISM_WEBHOOK_BACKOFF_BASE_S),
            cap=float(settings.PRISM_WEBHOOK_BACKOFF_CAP_S),
            rand=_random,
        )
        fields.update(next_attempt_at=now + timedelta(seconds=wait))
        outcome = "retry"
    with transaction.atomic():
        recorded = Delivery.objects.filter(
            pk=delivery.pk, status=DeliveryStatus.PENDING, attempts=claim.attempt
        ).update(**fields)
        if not recorded:
            return "lost"
        if outcome in ("delivered", "failed"):
            _count(delivery, fields["status"])
    return outcome


def deliver(delivery_id: int) -> str:
    """Claim and send one delivery now, if it is due: "skipped" if it is not ours."""
    claimed = claim(delivery_id, timezone.now())
    return "skipped" if claimed is None else send(claimed)


def due(limit: int, *, event_id: int | None = None) -> list[int]:
    deliveries = Delivery.objects.filter(
        status=DeliveryStatus.PENDING, next_attempt_at__lte=timezone.now()
    )
    if event_id is not None:
        deliveries = deliveries.filter(event_id=event_id)
    return list(deliveries.order_by("next_attempt_at").values_list("pk", flat=True)[:limit])


def deliver_due(*, event_id: int | None = None, limit: int = 100, budget_s: float = 60.0) -> dict:
    """Send what is due (of one event, or of all), one claim at a time, until the batch
    or the time budget is spent: what is left waits for the next sweep."""
    tally = {"delivered": 0, "retry": 0, "failed": 0, "lost": 0, "skipped": 0}
    stop = time.monotonic() + budget_s
    for delivery_id in due(limit, event_id=event_id):
        if time.monotonic() > stop:
            break
        tally[deliver(delivery_id)] += 1
    return tally


class NotFailed(Exception):
    """Only a failed delivery can be sent again (answered with 409)."""


def redeliver(delivery_id: int, *, actor: Any, reason: str = "") -> Delivery:
    """Make a failed delivery pending again, due now, with a fresh budget of attempts,
    audited, and queue it. Conditional: of two people pressing it at once, one re-sends."""
    with transaction.atomic():
        before = (
            Delivery.objects.filter(pk=delivery_id)
            .values("status", "attempts", "last_status_code", "error")
            .first()
        )
        updated = Delivery.objects.filter(pk=delivery_id, status=DeliveryStatus.FAILED).update(
            status=DeliveryStatus.PENDING, attempts=0, next_attempt_at=timezone.now(), error=""
        )
        if not updated:
            raise NotFailed(
                f"Delivery {delivery_id} is {before['status'] if before else 'gone'}; "
                "only a failed one is sent again."
            )
        delivery = Delivery.objects.select_related("event").get(pk=delivery_id)
        record("delivery.redelivered", delivery, actor=actor, reason=reason, before=before)
        event_id = delivery.event_id
        transaction.on_commit(lambda: queue_dispatch(event_id))
    return delivery

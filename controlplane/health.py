"""``GET /api/health/``: can Prism reach its database and broker, and is the beat on time?

The beat runs a tiny task every tick (``controlplane.tasks.beat_tick``) that moves one
row's timestamp forward. Its lag is how long ago that was; past ``PRISM_BEAT_LATE_S``
(three beat intervals by default) the beat, or every worker, has stopped, and the
automatic parts of Prism (abandoning idle sessions, evaluating rollouts, polling metric
sources) have stopped with it.

The endpoint needs no authentication, so load balancers and uptime checks can call it
with no token; it says only what is up and how late the beat is, never why something
failed beyond the error's type. It answers 503 when anything is wrong. Every check has a
bound on its time, so a hung dependency gives a prompt 503 rather than a hung probe.
"""

from __future__ import annotations

import concurrent.futures
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.utils import timezone
from drf_spectacular.utils import extend_schema, inline_serializer
from kombu import Connection
from rest_framework import permissions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.models import BeatTick

BEAT = "beat"
#: Seconds each check may take before it counts as failed.
CHECK_TIMEOUT_S = 2.0
OK, ERROR = "ok", "error"


def record_tick(now: datetime | None = None) -> datetime:
    """Record that the beat ticked at ``now``. The row only moves forward, so a tick
    that ran late (a retry, a backlog) never makes the beat look later than it is."""
    now = now or timezone.now()
    if BeatTick.objects.filter(name=BEAT, at__lt=now).update(at=now):
        return now
    try:
        with transaction.atomic():
            BeatTick.objects.create(name=BEAT, at=now)
    except IntegrityError:
        pass  # the row exists and is already at or past ``now``
    return now


def _database() -> datetime | None:
    """Round-trip to the database within the time bound; returns the last tick."""
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL statement_timeout = %s", [int(CHECK_TIMEOUT_S * 1000)])
        return BeatTick.objects.filter(name=BEAT).values_list("at", flat=True).first()


def _broker() -> None:
    """Connect to the broker and back (Redis answers a PING) within the time bound."""
    options = dict(getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", {}) or {})
    options.update(socket_timeout=CHECK_TIMEOUT_S, socket_connect_timeout=CHECK_TIMEOUT_S)
    with Connection(
        settings.CELERY_BROKER_URL, connect_timeout=CHECK_TIMEOUT_S, transport_options=options
    ) as broker:
        broker.ensure_connection(
            max_retries=1, interval_start=0, interval_step=0, timeout=CHECK_TIMEOUT_S
        )


def check(now: datetime | None = None) -> tuple[bool, dict[str, Any]]:
    """(healthy, report).

    1. Ask the broker in a thread, so its wait overlaps the database's.
    2. Ask the database for the last tick, with a statement timeout.
    3. The beat is late if it never ticked or its last tick is older than the limit.
    """
    errors: dict[str, str] = {}
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    broker = pool.submit(_broker)
    # Not waiting for a broker that hangs past its bound: the answer goes out regardless.
    pool.shutdown(wait=False)
    last_tick = None
    try:
        last_tick = _database()
        database = OK
    except DatabaseError as exc:
        database, errors["database"] = ERROR, type(exc).__name__
    try:
        broker.result(timeout=CHECK_TIMEOUT_S + 1)
        broker_state = OK
    except concurrent.futures.TimeoutError:
        broker_state, errors["broker"] = ERROR, "Timeout"
    except Exception as exc:  # kombu and its transports raise many kinds
        broker_state, errors["broker"] = ERROR, type(exc).__name__
    now = now or timezone.now()
    late_after = float(settings.PRISM_BEAT_LATE_S)
    lag = None if last_tick is None else max(0.0, (now - last_tick).total_seconds())
    late = lag is None or lag > late_after
    report: dict[str, Any] = {
        "status": OK if database == broker_state == OK and not late else ERROR,
        "database": database,
        "broker": broker_state,
        "beat": {
            "last_tick": last_tick,
            "lag_s": None if lag is None else round(lag, 3),
            "late_after_s": late_after,
            "late": late,
        },
    }
    if errors:
        report["errors"] = errors
    return report["status"] == OK, report


class HealthView(APIView):
    """No authentication: probes call it without a token (and a bad one is ignored)."""

    authentication_classes: list = []
    permission_classes = [permissions.AllowAny]

    @extend_schema(
        responses={
            200: inline_serializer(
                "Health",
                {
                    "status": serializers.CharField(help_text='"ok" or "error"'),
                    "database": serializers.CharField(help_text='"ok" or "error"'),
                    "broker": serializers.CharField(help_text='"ok" or "error"'),
                    "beat": inline_serializer(
                        "BeatHealth",
                        {
                            "last_tick": serializers.DateTimeField(allow_null=True),
                            "lag_s": serializers.FloatField(allow_null=True),
                            "late_after_s": serializers.FloatField(),
                            "late": serializers.BooleanField(),
                        },
                    ),
                    "errors": serializers.DictField(child=serializers.CharField(), required=False),
                },
            ),
            503: None,
        },
        description="Database, broker and beat lag. 503 (same body) when any is wrong.",
    )
    def get(self, request: Request) -> Response:
        healthy, report = check()
        code = status.HTTP_200_OK if healthy else status.HTTP_503_SERVICE_UNAVAILABLE
        return Response(report, status=code, headers={"Cache-Control": "no-store"})

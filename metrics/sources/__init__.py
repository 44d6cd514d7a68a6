"""Metric sources: where the beat polls an agent's metrics.

Two kinds, one module each: ``http_json`` (the agent platform's export of per-session
outcomes, recorded exactly like the API's end) and ``prometheus`` (counters per version
from PromQL, stored as observations). This module holds what they share: checking a
source's configuration, fetching JSON over HTTP with a bound on time and size, and the
poll itself, which locks the source so that two beats or workers never poll it twice,
and records every error so the engine can stop trusting a failing source.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

import events
from metrics.models import MetricSource, SourceKind
from metrics.sources import http_json, prometheus
from metrics.sources.base import MAX_ERROR_CHARS, ConfigError, SourceError, validate_url

log = logging.getLogger(__name__)

#: The engine halts a rollout on a source failing this many polls in a row, as Argo
#: Rollouts' analysis does with its consecutive-error limit.
CONSECUTIVE_ERROR_LIMIT = 4
KINDS = {SourceKind.HTTP_JSON: http_json, SourceKind.PROMETHEUS: prometheus}
#: How long a poll may hold its source before another may take it over (a poll that
#: died); a poll stops fetching well before, so it never outlives its lease.
LEASE = timedelta(minutes=2)
LEASE_MARGIN = timedelta(seconds=10)


def validate(kind: str, url: Any, config: Any) -> dict[str, Any]:
    """Check a source of ``kind`` and return its configuration normalised."""
    validate_url(url)
    if kind not in SourceKind.values:
        raise ConfigError({"kind": f"Expected one of {', '.join(SourceKind.values)}."})
    return KINDS[kind].validate_config(config)


# --- polling ------------------------------------------------------------------------------


def poll_interval() -> timedelta:
    return timedelta(seconds=settings.PRISM_SOURCE_POLL_SECONDS)


def _due(source: MetricSource, now: datetime) -> bool:
    if source.poll_lease_until is not None and source.poll_lease_until > now:
        return False  # being polled right now
    # Half an interval, so a beat that fires a little early still polls on its tick.
    return source.last_polled_at is None or now - source.last_polled_at >= poll_interval() / 2


def poll_due(now: datetime | None = None) -> dict[str, int]:
    """Poll every enabled source that is due. Returns counts of what happened."""
    now = now or timezone.now()
    horizon = now - poll_interval() / 2
    due = MetricSource.objects.filter(enabled=True).filter(
        Q(last_polled_at__isnull=True) | Q(last_polled_at__lte=horizon)
    )
    report = {"polled": 0, "failed": 0, "skipped": 0}
    for source_id in due.values_list("id", flat=True):
        outcome = poll(source_id, now)
        report[{"ok": "polled", "error": "failed"}.get(outcome, "skipped")] += 1
    return report


def _claim(source_id: int, now: datetime) -> MetricSource | None:
    """Take the source for one poll, or None if it is not to be polled now.

    The row is locked only for this short transaction (``skip_locked``: a source another
    beat or worker is claiming is skipped). Under the lock, a source polled recently or
    under another poll's lease is not due; a due one gets a lease and its poll time.
    """
    with transaction.atomic():
        source = (
            MetricSource.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("agent")
            .filter(pk=source_id, enabled=True)
            .first()
        )
        if source is None or not _due(source, now):
            return None
        source.last_polled_at, source.poll_lease_until = now, now + LEASE
        source.poll_count += 1
        source.save(update_fields=["last_polled_at", "poll_lease_until", "poll_count"])
    return source


def poll(source_id: int, now: datetime | None = None) -> str:
    """Poll one source: "ok", "error", or "skipped" (held by another poll, disabled, or
    not due).

    1. Claim the source (``_claim``), so that no other beat or worker polls it at once.
    2. Poll it, holding no lock: each batch of results commits as it comes (recorded
       outcomes with the cursor that follows them, or a poll's observations), so a
       failure keeps what was done before it, and a retry repeats nothing.
    3. Record the end of the poll and drop the lease: a success resets the count of
       consecutive errors; an error records its message and time and adds to it.
    """
    now = now or timezone.now()
    source = _claim(source_id, now)
    if source is None:
        return "skipped"
    done = MetricSource.objects.filter(pk=source.pk, poll_lease_until=source.poll_lease_until)
    try:
        KINDS[source.kind].poll(source, now, deadline=source.poll_lease_until - LEASE_MARGIN)
    except SourceError as exc:
        message = str(exc)[:MAX_ERROR_CHARS]
        with transaction.atomic():
            failed = {"poll_lease_until": None, "last_error": message, "last_error_at": now}
            # The first failure after a success starts an episode: that one is announced.
            started = done.filter(consecutive_errors=0).update(
                **failed, consecutive_errors=1, error_count=F("error_count") + 1
            )
            if not started:
                done.update(
                    **failed,
                    consecutive_errors=F("consecutive_errors") + 1,
                    error_count=F("error_count") + 1,
                )
            else:
                data = {"source": source.pk, "kind": source.kind, "error": message}
                events.emit("metric_source.failing", agent=source.agent, subject=source, data=data)
        log.warning("metric source %s failed: %s", source.pk, message)
        return "error"
    except BaseException:
        done.update(poll_lease_until=None)
        raise
    with transaction.atomic():
        failed_polls = done.select_for_update().values_list("consecutive_errors", flat=True)
        failed_polls = failed_polls.first() or 0
        done.update(poll_lease_until=None, last_success_at=now, consecutive_errors=0)
        if failed_polls:
            data = {"source": source.pk, "kind": source.kind, "failed_polls": failed_polls}
            events.emit("metric_source.recovered", agent=source.agent, subject=source, data=data)
    return "ok"


# --- for the engine -----------------------------------------------------------------------


@dataclass(frozen=True)
class Standing:
    """What the engine needs to know about an agent's enabled sources, read at once."""

    #: The sources whose last poll failed, in id order.
    failing: list[MetricSource]
    #: {metric: error} for the metrics a failing source provides: gates on them are
    #: inconclusive while it fails.
    errors: dict[str, str]
    #: The metrics the Prometheus sources count: gates on them read the sources'
    #: counters instead of the session rollups.
    from_prometheus: set[str]


def standing(agent_id: int) -> Standing:
    """The agent's enabled sources as the engine sees them, in one query."""
    failing: list[MetricSource] = []
    errors: dict[str, str] = {}
    provided: set[str] = set()
    for source in MetricSource.objects.filter(agent_id=agent_id, enabled=True).order_by("pk"):
        if source.kind == SourceKind.PROMETHEUS:
            provided.update(prometheus.metrics_of(source.config))
        if source.consecutive_errors > 0:
            failing.append(source)
            for metric in KINDS[source.kind].metrics_of(source.config):
                errors.setdefault(
                    metric,
                    f"source {source.pk} ({source.kind}): {source.last_error} "
                    f"({source.consecutive_errors} consecutive errors)",
                )
    return Standing(failing, errors, provided)

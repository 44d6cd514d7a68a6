"""``prometheus``: counters per version, from instant PromQL queries.

A gate needs counts, not a bare ratio: how many sessions, and the sum behind the value.
So each metric a source provides names counter queries::

    {"metrics": {
        "error_rate": {"n": "sum(agent_sessions_total{version=\\"{version}\\"})",
                       "total": "sum(agent_session_errors_total{version=\\"{version}\\"})"},
        "latency_ms": {"n": "...", "total": "...", "total_sq": "..."}}}

``n`` counts sessions; ``total`` counts the successes (errors, ...) of a rate, or sums the
values of a mean; a mean also needs ``total_sq``, the sum of squared values, for its
variance. ``{version}`` (the version id), ``{fingerprint}``, ``{label}`` and ``{agent}`` are
substituted into each query for each version polled; every query must name the version.

Each poll stores one observation per version and metric. The reader turns two
observations into the increase of each counter over a window, carrying over counter
resets, as a ``Summary``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from django.db import transaction
from django.db.models import F, Window
from django.db.models.functions import RowNumber
from django.utils import timezone

from metrics.feed import sessions
from metrics.gates import METRICS
from metrics.models import MetricSource, Observation
from metrics.rollups import ABANDON_RATE, FIELD_METRICS
from metrics.sources.base import ConfigError, PollResult, SourceError, fetch_json
from metrics.summary import Summary
from versions.models import Version

COUNTERS = ("n", "total", "total_sq")
PLACEHOLDERS = ("{version}", "{fingerprint}", "{label}")
MAX_QUERY_CHARS = 2000
MAX_METRICS = 16


def metric_kinds() -> dict[str, str]:
    """{metric: "rate" or "value"} for the metrics a source may provide."""
    kinds = {name: METRICS[name].kind for name in FIELD_METRICS.values()}
    kinds[ABANDON_RATE] = "rate"
    return kinds


def validate_config(config: Any) -> dict[str, Any]:
    """Check a Prometheus source's queries; raises ConfigError naming the bad field."""
    shape = 'Expected {"metrics": {metric: {"n": query, "total": query, ...}}}.'
    if not isinstance(config, dict) or not isinstance(config.get("metrics"), dict):
        raise ConfigError({"config": shape})
    if set(config) != {"metrics"}:
        raise ConfigError({"config": f"Unknown option {sorted(set(config) - {'metrics'})[0]!r}."})
    metrics = config["metrics"]
    if not metrics or len(metrics) > MAX_METRICS:
        raise ConfigError({"config.metrics": f"Give 1 to {MAX_METRICS} metrics."})
    kinds = metric_kinds()
    normalised: dict[str, dict[str, str]] = {}
    for name, queries in metrics.items():
        where = f"config.metrics.{name}"
        if name not in kinds:
            raise ConfigError({where: f"Unknown metric; expected one of {sorted(kinds)}."})
        if not isinstance(queries, dict):
            raise ConfigError({where: 'Expected {"n": query, "total": query}.'})
        extra = sorted(set(queries) - set(COUNTERS))
        if extra:
            raise ConfigError(
                {where: f"Unknown counter {extra[0]!r}: give n, total and total_sq as counters."}
            )
        if "n" not in queries:
            raise ConfigError(
                {
                    where: "No n: a gate needs the number of sessions behind a value, so give "
                    "n as a counter query (a ratio alone cannot be tested)."
                }
            )
        if "total" not in queries:
            raise ConfigError(
                {where: "No total: give the count of successes (or errors, ...) or the sum."}
            )
        if kinds[name] == "value" and "total_sq" not in queries:
            raise ConfigError(
                {
                    where: "No total_sq: a mean needs its variance, so give the sum of squared "
                    "values as a counter (e.g. from a recording rule)."
                }
            )
        for counter, query in queries.items():
            if not isinstance(query, str) or not query.strip() or len(query) > MAX_QUERY_CHARS:
                raise ConfigError(
                    {f"{where}.{counter}": f"A PromQL query of 1 to {MAX_QUERY_CHARS} characters."}
                )
            if "\x00" in query:
                raise ConfigError({f"{where}.{counter}": "No NUL characters."})
            if not any(p in query for p in PLACEHOLDERS):
                raise ConfigError(
                    {
                        f"{where}.{counter}": "The query must name the version with "
                        f"{', '.join(PLACEHOLDERS)}: otherwise every version reads the same."
                    }
                )
        normalised[name] = {counter: queries[counter] for counter in COUNTERS if counter in queries}
    return {"metrics": normalised}


def metrics_of(config: dict[str, Any]) -> list[str]:
    return list(config.get("metrics", {}))


def _promql_string(value: str) -> str:
    """``value`` as the inside of a double-quoted PromQL string."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(query: str, version: Version, agent_slug: str) -> str:
    """The query with the version's placeholders substituted (PromQL's own braces stay)."""
    for placeholder, value in (
        ("{version}", str(version.pk)),
        ("{fingerprint}", version.fingerprint),
        ("{label}", version.label or ""),
        ("{agent}", agent_slug),
    ):
        query = query.replace(placeholder, _promql_string(value))
    return query


def instant(base_url: str, query: str, at: datetime, timeout: float) -> float | None:
    """The value of an instant query at ``at``: the sum of a vector's samples, or a
    scalar. None when the vector is empty (nothing reported yet)."""
    url = (
        base_url.rstrip("/")
        + "/api/v1/query?"
        + urlencode({"query": query, "time": f"{at.timestamp():.3f}"})
    )
    data = fetch_json(url, timeout)
    if not isinstance(data, dict) or data.get("status") != "success":
        error = data.get("error") if isinstance(data, dict) else None
        raise SourceError(f"Prometheus refused the query: {error or 'no status'}")
    result = data.get("data") or {}
    kind, samples = result.get("resultType"), result.get("result")
    try:
        if kind == "vector":
            if not samples:
                return None
            values = [float(sample["value"][1]) for sample in samples]
        elif kind == "scalar":
            values = [float(samples[1])]
        else:
            raise SourceError(f"the query gave a {kind}, not an instant vector or a scalar")
    except (KeyError, IndexError, TypeError, ValueError):
        raise SourceError("an answer Prometheus' query API does not give") from None
    total = math.fsum(values)
    if not math.isfinite(total):
        raise SourceError(f"the query gave {total}, not a counter value")
    return total


def _carried(previous: Observation | None, raw: dict[str, float]) -> dict[str, float]:
    """Cumulative counters that never decrease: a raw value below the last one is a
    counter reset, after which the raw value is all new increase."""
    carried = {}
    for counter, value in raw.items():
        before = None if previous is None else previous.raw.get(counter)
        total_before = None if previous is None else getattr(previous, counter)
        if before is None or total_before is None:
            carried[counter] = value
        elif value >= before:
            carried[counter] = total_before + (value - before)
        else:
            carried[counter] = total_before + value
    return carried


def _edges(rows, *, newest: bool) -> dict[tuple[int, int, str], Observation]:
    """The newest (or oldest) of ``rows`` per (source, version, metric), in one query."""
    order = F("at").desc() if newest else F("at").asc()
    ranked = rows.annotate(
        rank=Window(RowNumber(), partition_by=[F("source_id"), F("version_id"), F("metric")],
                    order_by=order)
    )  # fmt: skip
    return {(o.source_id, o.version_id, o.metric): o for o in ranked.filter(rank=1)}


def poll(source: MetricSource, now: datetime, *, deadline: datetime) -> PollResult:
    """Query every counter of every metric for each version in play, all at the instant
    ``now``, then store an observation per version and metric that has data, in one
    transaction: a poll that fails half-way stores none."""
    result = PollResult()
    agent = source.agent
    versions = list(
        Version.objects.filter(pk__in=sessions().versions_in_play(agent.pk), agent=agent)
    )
    metrics = source.config.get("metrics", {})
    polled: list[tuple[Version, str, dict[str, float]]] = []
    for version in versions:
        for metric, queries in metrics.items():
            raw: dict[str, float] = {}
            for counter, query in queries.items():
                left = (deadline - timezone.now()).total_seconds()
                if left <= 0:
                    raise SourceError(f"the poll ran out of time after {len(polled)} metrics")
                value = instant(
                    source.url, render(query, version, agent.slug), now, min(left, source.timeout_s)
                )
                if value is None:
                    break  # not reported (yet) for this version
                raw[counter] = value
            else:
                polled.append((version, metric, raw))
    with transaction.atomic():
        previous = _edges(
            Observation.objects.filter(source=source, version__in=versions, at__lt=now),
            newest=True,
        )
        for version, metric, raw in polled:
            carried = _carried(previous.get((source.pk, version.pk, metric)), raw)
            Observation.objects.create(
                source=source,
                version=version,
                metric=metric,
                at=now,
                n=carried["n"],
                total=carried["total"],
                total_sq=carried.get("total_sq"),
                raw=raw,
            )
            result.observations += 1
    return result


def observed_summaries(
    version_ids: Iterable[int],
    since: datetime,
    until: datetime | None = None,
    *,
    source_ids: Iterable[int] | None = None,
) -> dict[tuple[int, str], Summary]:
    """{(version id, metric): Summary} of what Prometheus sources counted between
    ``since`` and ``until`` (now by default).

    1. Per source, version and metric, take the last observation at or before ``until``.
    2. Take the last one at or before ``since`` or, if polling began later, the first one
       after it: the increase before the first poll is unknown, and not guessed.
    3. The difference of the two is the increase of each counter: n, total, and
       total_sq (for a rate, whose values are 0 or 1, the same as total). Sources that
       report the same metric for a version add up.
    """
    until = until or timezone.now()
    rows = Observation.objects.filter(version_id__in=list(version_ids), at__lte=until)
    if source_ids is not None:
        rows = rows.filter(source_id__in=list(source_ids))
    last = _edges(rows, newest=True)
    before = _edges(rows.filter(at__lte=since), newest=True)
    after = _edges(rows.filter(at__gte=since), newest=False)
    kinds = metric_kinds()
    result: dict[tuple[int, str], Summary] = defaultdict(Summary)
    for key, end in last.items():
        start = before.get(key) or after.get(key)
        n = total = total_sq = 0.0
        if start is not None and start.at < end.at:
            n, total = end.n - start.n, end.total - start.total
            if kinds.get(end.metric) == "rate":
                total_sq = total
            elif end.total_sq is not None and start.total_sq is not None:
                total_sq = end.total_sq - start.total_sq
        result[(end.version_id, end.metric)].update(Summary(round(n), total, total_sq))
    return dict(result)

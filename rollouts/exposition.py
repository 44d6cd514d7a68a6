"""``GET /metrics``: Prism's own series in the Prometheus exposition format.

Two kinds of series:

- process-local ones, counted where they happen (``rollouts.instruments``); under
  gunicorn with ``PROMETHEUS_MULTIPROC_DIR`` set they are summed over every worker's
  file (``MultiProcessCollector``);
- the fleet's state, read from the database at scrape time (``FleetCollector``). It is
  registered on the per-scrape registry, next to the process-local series, so however
  many workers there are, each figure appears once.

The endpoint is plain Django, not DRF: no API token, role or throttle applies, and a
scrape does not count as API traffic. It is protected by its own rule (``refusal``): a
bearer token (``PRISM_METRICS_TOKEN``), or a client address in an allowed network
(``PRISM_METRICS_ALLOW_NETWORKS``, loopback by default).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import logging
import os
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import DatabaseError
from django.db.models import OuterRef, Subquery
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from controlplane import health
from controlplane.models import BeatTick
from events.stats import delivery_counts
from metrics.gates import FAIL, INCONCLUSIVE, PASS
from metrics.judge import MISMATCH, NOT_REPORTED

# The fleet's states and rules (not its reads), imported in this one place.
from rollouts import drain as fleet_model
from rollouts import snapshots
from rollouts.models import Lifecycle, Rollout, RolloutState
from versions.models import Agent, Version

log = logging.getLogger(__name__)

VERSION_STATES = (
    fleet_model.INACTIVE,
    fleet_model.ACTIVE,
    fleet_model.DRAINING,
    fleet_model.DRAINED,
)
ROLLOUT_STATES = tuple(RolloutState.values)
GATE_VERDICTS = (PASS, FAIL, INCONCLUSIVE, NOT_REPORTED)
FULL_WEIGHT = 10000  # basis points


# --- the fleet, read at scrape time ---------------------------------------------------


def _webhook_families() -> Iterator[Metric]:
    """Webhook deliveries by agent and event type: the ended ones as counters (kept by
    the transaction that ended each, so they never go down), the ones in flight as a
    gauge."""
    ended = CounterMetricFamily(
        "prism_webhook_deliveries",
        "Webhook deliveries that ended, by outcome (delivered, or failed after the last attempt).",
        labels=["agent", "event", "outcome"],
    )
    pending = GaugeMetricFamily(
        "prism_webhook_deliveries_pending",
        "Webhook deliveries not yet delivered and still to be attempted.",
        labels=["agent", "event"],
    )
    for (slug, event_type, status), n in sorted(delivery_counts().items()):
        if status == "pending":
            pending.add_metric([slug, event_type], n)
        else:
            ended.add_metric([slug, event_type, status], n)
    yield from (ended, pending)


class FleetCollector:
    """Scrape-time series of every agent, read in a fixed number of queries (five with
    any agent, and two for webhook deliveries), whatever the number of agents, versions
    or sessions:

    1. the agents with their routing weights and their latest rollout's id;
    2. live sessions per (agent, version), from the live index only;
    3. the agents' versions with their lifecycles (no sessions);
    4. those latest rollouts, with their latest evaluation;
    5. the beat's last tick.

    The versions listed are those ``GET /api/agents/{slug}/fleet/`` lists (every
    inactive, active and draining version, and the ``retain_drained`` most recently
    drained), with the same state, live count and drain progress. A database that
    cannot be read gives ``prism_up 0`` and no other series from here, rather than a
    failed scrape: the process-local series still go out.
    """

    def collect(self) -> Iterator[Metric]:
        now = timezone.now()
        try:
            families, up = list(self._families(now)), 1
        except DatabaseError as exc:
            log.warning("metrics scrape could not read the database: %s", type(exc).__name__)
            families, up = [], 0
        yield from families
        yield GaugeMetricFamily(
            "prism_up", "1 if this scrape read Prism's state from its database, else 0.", value=up
        )

    def _families(self, now: datetime) -> Iterator[Metric]:
        live_sessions = GaugeMetricFamily(
            "prism_live_sessions",
            "Live sessions pinned to the version.",
            labels=["agent", "version"],
        )
        version_state = GaugeMetricFamily(
            "prism_version_state",
            "1 for the version's current lifecycle state, 0 for the others.",
            labels=["agent", "version", "state"],
        )
        weight = GaugeMetricFamily(
            "prism_version_weight_ratio",
            "Share of new sessions routed to the version (its weight / 10000).",
            labels=["agent", "version"],
        )
        progress = GaugeMetricFamily(
            "prism_drain_progress",
            "1 - live sessions now / live sessions when the drain started, for draining "
            "and drained versions.",
            labels=["agent", "version"],
        )
        stage_percent = GaugeMetricFamily(
            "prism_rollout_stage_percent",
            "Traffic percent of the current stage of the agent's latest rollout.",
            labels=["agent", "rollout"],
        )
        rollout_state = GaugeMetricFamily(
            "prism_rollout_state",
            "1 for the current state of the agent's latest rollout, 0 for the others.",
            labels=["agent", "rollout", "state"],
        )
        gate_verdict = GaugeMetricFamily(
            "prism_gate_verdict",
            "1 for each gate's verdict in the latest rollout's latest evaluation.",
            labels=["agent", "rollout", "gate", "stat", "verdict"],
        )
        sample_ratio = GaugeMetricFamily(
            "prism_sample_ratio_ok",
            "0 if the latest evaluation found a sample-ratio mismatch (routing is broken), else 1.",
            labels=["agent", "rollout"],
        )
        for agent in self._agents():
            slug = agent["slug"]
            for row in agent["versions"]:
                version = str(row["id"])
                live_sessions.add_metric([slug, version], row["live"])
                weight.add_metric([slug, version], row["weight"] / FULL_WEIGHT)
                for state in VERSION_STATES:
                    version_state.add_metric([slug, version, state], int(row["state"] == state))
                if row["progress"] is not None:
                    progress.add_metric([slug, version], row["progress"])
            rollout = agent["rollout"]
            if rollout is None:
                continue
            rollout_id = str(rollout["pk"])
            stage_percent.add_metric(
                [slug, rollout_id], rollout["stages"][rollout["stage"]]["percent"]
            )
            for state in ROLLOUT_STATES:
                rollout_state.add_metric([slug, rollout_id, state], int(rollout["state"] == state))
            evaluation = rollout["last_evaluation"] or {}
            seen = set()
            for gate in evaluation.get("gates", []):
                key = (gate.get("metric"), gate.get("stat"))
                if None in key or key in seen:
                    continue
                seen.add(key)
                for verdict in GATE_VERDICTS:
                    gate_verdict.add_metric(
                        [slug, rollout_id, *key, verdict], int(gate.get("verdict") == verdict)
                    )
            srm = evaluation.get("srm")
            if isinstance(srm, dict) and "verdict" in srm:
                sample_ratio.add_metric([slug, rollout_id], int(srm["verdict"] != MISMATCH))
        yield from (live_sessions, version_state, weight, progress)
        yield from (stage_percent, rollout_state, gate_verdict, sample_ratio)
        last_tick = BeatTick.objects.filter(name=health.BEAT).values_list("at", flat=True).first()
        # A beat that never ticked is as late as can be: an alert on the lag fires.
        lag = float("inf") if last_tick is None else max(0.0, (now - last_tick).total_seconds())
        yield GaugeMetricFamily(
            "prism_beat_lag_seconds",
            "Seconds since the beat's last tick (+Inf if it never ticked).",
            value=lag,
        )
        yield from _webhook_families()

    def _agents(self) -> list[dict[str, Any]]:
        latest = Rollout.objects.filter(agent=OuterRef("pk")).order_by("-id").values("pk")[:1]
        agents = list(
            Agent.objects.order_by("slug").values(
                "pk", "slug", "retain_drained", "routing__weights", rollout_id=Subquery(latest)
            )
        )
        if not agents:
            return []
        ids = [agent["pk"] for agent in agents]
        live = snapshots.live_by_agent(ids)
        versions: dict[int, list[tuple[int, Lifecycle | None]]] = {pk: [] for pk in ids}
        for pk, agent_id, *marks in Version.objects.filter(agent_id__in=ids).values_list(
            "pk",
            "agent_id",
            "lifecycle__version_id",
            "lifecycle__first_routed_at",
            "lifecycle__drain_started_at",
            "lifecycle__live_at_drain_start",
        ):
            lifecycle = None
            if marks[0] is not None:
                lifecycle = Lifecycle(
                    version_id=pk,
                    first_routed_at=marks[1],
                    drain_started_at=marks[2],
                    live_at_drain_start=marks[3],
                )
            versions[agent_id].append((pk, lifecycle))
        rollouts = {
            row["pk"]: row
            for row in Rollout.objects.filter(
                pk__in=[a["rollout_id"] for a in agents if a["rollout_id"]]
            ).values("pk", "state", "stage", "stages", "last_evaluation")
        }
        return [
            {
                "slug": agent["slug"],
                "versions": _listed_versions(
                    agent, versions[agent["pk"]], live.get(agent["pk"], {})
                ),
                "rollout": rollouts.get(agent["rollout_id"]),
            }
            for agent in agents
        ]


def _listed_versions(
    agent: dict[str, Any], versions: list[tuple[int, Lifecycle | None]], live: dict[int, int]
) -> list[dict[str, Any]]:
    """The versions the fleet lists, newest first, with the fleet's figures.

    1. Derive each version's state from its weight, live count and lifecycle.
    2. Of the drained ones, keep the ``retain_drained`` most recently drained.
    3. Drain progress for draining and drained versions whose drain has started.
    """
    weights = {int(k): int(v) for k, v in (agent["routing__weights"] or {}).items()}
    rows = []
    for pk, lifecycle in sorted(versions, key=lambda item: item[0], reverse=True):
        count = live.get(pk, 0)
        state = fleet_model.version_state(weights.get(pk, 0), count, lifecycle)
        rows.append((pk, lifecycle, count, state))
    hidden = fleet_model.hidden_drained(
        ((r[0], r[1].drain_started_at) for r in rows if r[3] == fleet_model.DRAINED),
        agent["retain_drained"],
    )
    listed = []
    for pk, lifecycle, count, state in rows:
        if pk in hidden:
            continue
        progress = None
        if (
            state in (fleet_model.DRAINING, fleet_model.DRAINED)
            and lifecycle is not None
            and lifecycle.drain_started_at is not None
        ):
            progress = fleet_model.drain_progress(count, lifecycle.live_at_drain_start or 0)
        listed.append(
            {
                "id": pk,
                "state": state,
                "live": count,
                "weight": weights.get(pk, 0),
                "progress": progress,
            }
        )
    return listed


# --- the registry of one scrape -------------------------------------------------------


def multiprocess_dir() -> str | None:
    """The folder gunicorn's workers share their series in, or None: one process."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def scrape_registry() -> CollectorRegistry:
    """A registry for one scrape: the process-local series (every worker's, summed, in
    multiprocess mode) and the fleet's, read now."""
    registry = CollectorRegistry(auto_describe=False)
    folder = multiprocess_dir()
    if folder:
        MultiProcessCollector(registry, path=folder)
    else:
        registry.register(_Forward(REGISTRY))
    registry.register(FleetCollector())
    return registry


class _Forward:
    """Another registry's series, as one collector of this registry."""

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> Iterable[Metric]:
        return self.source.collect()


# --- protection and the view ----------------------------------------------------------

# Headers a proxy adds: a request carrying one came through a proxy, whose own address
# is all REMOTE_ADDR shows, so the network rule cannot vouch for the real client.
FORWARDING_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP")


@functools.lru_cache(maxsize=8)
def _networks(cidrs: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(cidr) for cidr in cidrs)


def _in_allowed_network(request: HttpRequest) -> bool:
    if any(request.META.get(header) for header in FORWARDING_HEADERS):
        return False
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(
        address in network for network in _networks(tuple(settings.PRISM_METRICS_ALLOW_NETWORKS))
    )


def token_matches(presented: str, expected: str) -> bool:
    """Whether the presented token is the configured one, in time that depends on
    neither: both are hashed first, so even their lengths compare in constant time."""
    presented_digest = hashlib.sha256(presented.encode("utf-8", "replace")).digest()
    expected_digest = hashlib.sha256(expected.encode("utf-8", "replace")).digest()
    return hmac.compare_digest(presented_digest, expected_digest)


def _refused(status: int, detail: str, **headers: str) -> JsonResponse:
    response = JsonResponse({"detail": detail}, status=status)
    for name, value in headers.items():
        response[name] = value
    return response


def refusal(request: HttpRequest) -> HttpResponse | None:
    """Why this request may not read the metrics (401 or 403), or None if it may.

    1. A request that presents credentials must present the configured bearer token,
       from wherever it comes: a wrong one is refused, so a misconfigured scraper is
       noticed rather than let in by its address.
    2. Without credentials, a client in an allowed network that reached Prism directly
       (no forwarding header) may read.
    3. Anyone else is asked for the token (401), or refused outright (403) when no token
       is configured.
    """
    expected = settings.PRISM_METRICS_TOKEN
    header = request.META.get("HTTP_AUTHORIZATION", "")
    challenge = {"WWW-Authenticate": 'Bearer realm="prism-metrics"'}
    if header:
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return _refused(
                401, "Send the metrics token as 'Authorization: Bearer <token>'.", **challenge
            )
        if not expected or not token_matches(presented.strip(), expected):
            return _refused(401, "The metrics token is not valid.", **challenge)
        return None
    if _in_allowed_network(request):
        return None
    if expected:
        return _refused(401, "The metrics need a bearer token.", **challenge)
    return _refused(
        403,
        "The metrics are readable from PRISM_METRICS_ALLOW_NETWORKS only, and no "
        "PRISM_METRICS_TOKEN is configured.",
    )


@csrf_exempt  # nothing but GET is served; any other method gets this view's 405
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Every series, in the exposition format the scraper asks for (Prometheus' text
    format unless it accepts OpenMetrics)."""
    if request.method != "GET":
        return _refused(405, f'Method "{request.method}" not allowed.', Allow="GET")
    refused = refusal(request)
    if refused is not None:
        return refused
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    response = HttpResponse(encoder(scrape_registry()), content_type=content_type)
    response["Cache-Control"] = "no-store"
    return response

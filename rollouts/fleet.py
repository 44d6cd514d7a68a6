"""The fleet's read model: each version's state, live and total sessions, and drain
progress and ETA, as ``GET /api/agents/{slug}/fleet/`` and the fleet board show them.

Everything here is polled, so it costs what the live state costs, not what the history
costs:

- live counts and states are exact at the moment of the request, from the partial index
  that holds only live sessions;
- totals come from the metric rollups, which the beat counts new pins into (so a total
  may trail the newest pins by a beat tick and the pin settle delay);
- the drain ETA conditions the agent's stored survival curve (recomputed by the beat,
  ``refresh_estimate``) on the ages of the draining versions' live sessions; the beat
  stores it with the curve (``refresh_drain_etas``), and a request reads it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from metrics import rollups
from rollouts.drain import (
    DRAINED,
    DRAINING,
    drain_progress,
    hidden_drained,
    live_counts,
    version_state,
)
from rollouts.models import Lifecycle, Routing, Session, SessionState, SurvivalEstimate
from rollouts.survival import (
    Span,
    SurvivalCurve,
    drain_eta,
    kaplan_meier,
    policy_drain_bound,
    slice_weight,
    window_span,
)
from versions.models import Agent, Version

NOT_DRAINING = {
    "started_at": None,
    "live_at_start": None,
    "progress": None,
    "eta_s": None,
    "forced": False,
    "forced_reason": "",
    "drained_at": None,
}
#: Time strata of the window a large sample is drawn from, each read from its start.
SURVIVAL_STRATA = 24
#: The stored curve's grid: 1% of a duration (10 ms below a second).
SURVIVAL_RESOLUTION = 0.01
_UPDATED = ["computed_at", "window_s", "times", "survival", "sampled", "events", "sessions"]
_SPAN_FIELDS = ("state", "started_at", "ended_at", "last_seen_at", "drain_at")


@dataclass
class FleetVersion:
    version: Version
    state: str
    weight: int
    live_sessions: int
    total_sessions: int
    drain: dict[str, Any] | None


# --- the survival estimate ------------------------------------------------------------


def window_sample(agent: Agent, now: datetime) -> tuple[list[Span], list[float]]:
    """The sessions the survival estimate is computed from, with their weights.

    The window is the last ``PRISM_SURVIVAL_WINDOW_S`` seconds; a session is in it if it
    was live at some point in it: every live session, and every one that ended in it.

    1. Every live session, weight 1, from the live index (its start only).
    2. The ended ones from the index of ended sessions by (agent, ended_at), the window's
       range only: all of them if there are at most ``PRISM_SURVIVAL_SAMPLE``.
    3. Otherwise a sample stratified over the window: it is cut into
       ``SURVIVAL_STRATA`` equal strata, the first ends of each are read, and each read
       one is weighted by the share of its stratum that the read ones cover
       (``survival.slice_weight``). The busiest hour and the quietest one are both seen,
       each for what it weighs.
    """
    window_start = now - timedelta(seconds=settings.PRISM_SURVIVAL_WINDOW_S)
    cap = settings.PRISM_SURVIVAL_SAMPLE
    spans: list[Span] = []
    weights: list[float] = []

    def add(rows: Any, weight: float) -> None:
        for state, started_at, ended_at, last_seen_at, drain_at in rows:
            span = window_span(
                state=state,
                started_at=started_at,
                ended_at=ended_at,
                last_seen_at=last_seen_at,
                drain_at=drain_at,
                window_start=window_start,
                now=now,
            )
            if span is not None:
                spans.append(span)
                weights.append(weight)

    for started_at in Session.objects.filter(agent=agent, state=SessionState.LIVE).values_list(
        "started_at", flat=True
    ):
        entry = max((window_start - started_at).total_seconds(), 0.0)
        spans.append(Span(entry, max((now - started_at).total_seconds(), entry), False))
        weights.append(1.0)

    ended = Session.objects.filter(~Q(state=SessionState.LIVE), agent=agent)
    rows = list(
        ended.filter(ended_at__gte=window_start)
        .order_by("ended_at")
        .values_list(*_SPAN_FIELDS)[: cap + 1]
    )
    if len(rows) <= cap:
        add(rows, 1.0)
        return spans, weights
    limit = math.ceil(cap / SURVIVAL_STRATA)
    width = (now - window_start) / SURVIVAL_STRATA
    for h in range(SURVIVAL_STRATA):
        low = window_start + h * width
        high = low + width
        stratum = ended.filter(ended_at__gte=low)
        if h < SURVIVAL_STRATA - 1:
            stratum = stratum.filter(ended_at__lt=high)
        rows = list(stratum.order_by("ended_at").values_list(*_SPAN_FIELDS)[:limit])
        kept, weight = slice_weight(
            [row[2].timestamp() for row in rows], low.timestamp(), high.timestamp(), limit
        )
        add(rows[:kept], weight)
    return spans, weights


def refresh_estimate(agent: Agent, now: datetime | None = None) -> SurvivalEstimate:
    """Compute the agent's survival curve and store it (the beat, once per agent per
    ``PRISM_SURVIVAL_SECONDS``). One upsert: two computing at once both store a valid
    estimate, and the later one stands."""
    now = now or timezone.now()
    spans, weights = window_sample(agent, now)
    curve = kaplan_meier(
        [s.exit for s in spans],
        [s.ended for s in spans],
        entries=[s.entry for s in spans],
        weights=weights,
        resolution=SURVIVAL_RESOLUTION,
    )
    estimate = SurvivalEstimate(
        agent=agent,
        computed_at=now,
        window_s=settings.PRISM_SURVIVAL_WINDOW_S,
        times=list(curve.times),
        survival=list(curve.survival),
        sampled=curve.observations,
        events=curve.events,
        sessions=round(sum(weights), 1),
    )
    SurvivalEstimate.objects.bulk_create(
        [estimate],
        update_conflicts=True,
        unique_fields=["agent"],
        update_fields=_UPDATED,
    )
    return estimate


def survival_curve(agent: Agent, now: datetime | None = None) -> SurvivalCurve:
    """The agent's stored survival curve; computed and stored first if the beat has not
    got to this agent yet (a new agent), so the next request reads it."""
    estimate = SurvivalEstimate.objects.filter(agent=agent).first()
    if estimate is None:
        estimate = refresh_estimate(agent, now)
    return SurvivalCurve(
        times=tuple(estimate.times),
        survival=tuple(estimate.survival),
        events=estimate.events,
        observations=estimate.sampled,
    )


# --- the drain ETA ---------------------------------------------------------------------


def compute_drain_etas(
    agent: Agent, draining: dict[int, Lifecycle], now: datetime
) -> dict[int, float | None]:
    """{version id: ETA} for the draining versions, computed now: the agent's stored
    survival curve conditioned on the age of each of their live sessions, each capped by
    what the drain policy leaves it. One read of the live index (the start and drain
    time of each of their live sessions) and one of the stored curve."""
    if not draining:
        return {}
    ages: dict[int, list[float]] = {pk: [] for pk in draining}
    caps: dict[int, list[float]] = {pk: [] for pk in draining}
    for version_id, started_at, drain_at in Session.objects.filter(
        agent=agent, version_id__in=list(draining), state=SessionState.LIVE
    ).values_list("version_id", "started_at", "drain_at"):
        age = max((now - started_at).total_seconds(), 0.0)
        ages[version_id].append(age)
        caps[version_id].append(
            policy_drain_bound(
                age,
                max_session_age_s=agent.max_session_age_s,
                drain_grace_s=agent.drain_grace_s,
                drained_for_s=None if drain_at is None else (now - drain_at).total_seconds(),
                forced=draining[version_id].forced_drain_at is not None,
            )
        )
    curve = survival_curve(agent, now)
    return {pk: drain_eta(curve, ages[pk], caps=caps[pk]) for pk in draining}


def stored_eta_is_current(lifecycle: Lifecycle) -> bool:
    """Whether the stored ETA belongs to this drain as it stands. Every write that
    starts, restarts or forces a drain clears it; as a second guard it must also be
    computed since the drain started and since any force-drain (which changes every
    session's cap)."""
    at = lifecycle.drain_eta_at
    if at is None or lifecycle.drain_started_at is None or at < lifecycle.drain_started_at:
        return False
    return lifecycle.forced_drain_at is None or at >= lifecycle.forced_drain_at


def stored_eta(lifecycle: Lifecycle, now: datetime) -> float | None:
    """The stored ETA, less the time since it was computed (never below zero): between
    two computations every cap shrinks by that time, and so does the estimate."""
    if lifecycle.drain_eta_s is None or lifecycle.drain_eta_at is None:
        return None
    since = max((now - lifecycle.drain_eta_at).total_seconds(), 0.0)
    return round(max(lifecycle.drain_eta_s - since, 0.0), 1)


def refresh_drain_etas(
    agent: Agent, now: datetime | None = None, *, stale_only: bool = False
) -> int:
    """Compute the ETA of each of the agent's draining versions and store it on its
    lifecycle (the beat: every version with the survival estimate, and on each tick the
    drains that started or were forced since their last one, ``stale_only``). Each write
    is conditional on the drain it was computed for, so a drain that restarted or was
    forced meanwhile keeps no stale figure. Returns how many it stored."""
    now = now or timezone.now()
    routing = Routing.objects.filter(agent=agent).first()
    weighted = {int(k) for k, v in (routing.weights if routing else {}).items() if int(v) > 0}
    draining = {
        lifecycle.version_id: lifecycle
        for lifecycle in Lifecycle.objects.filter(
            agent=agent, drain_started_at__isnull=False, drained_at__isnull=True
        )
        if lifecycle.version_id not in weighted
        and not (stale_only and stored_eta_is_current(lifecycle))
    }
    stored = 0
    for version_id, eta in compute_drain_etas(agent, draining, now).items():
        lifecycle = draining[version_id]
        stored += Lifecycle.objects.filter(
            pk=version_id,
            drain_started_at=lifecycle.drain_started_at,
            forced_drain_at=lifecycle.forced_drain_at,
        ).update(drain_eta_s=eta, drain_eta_at=now)
    return stored


# --- the fleet view -------------------------------------------------------------------


def fleet(agent: Agent, now: datetime | None = None) -> list[FleetVersion]:
    """Every version worth showing, with its derived state and drain progress.

    Inactive, active and draining versions are all listed; of the drained ones only the
    ``retain_drained`` most recently drained, which stay instantly rollback-able. None
    of the reads grows with the sessions' history:

    1. The routing row; the versions with their lifecycles; live sessions per version
       (the live index).
    2. The states, and which drained versions are left out.
    3. Totals for the versions shown, from the rollups of assigned pins.
    4. Progress from the live count against the count at drain start; the ETA as the
       beat stored it, less the time since. A drain the beat has not seen yet (it
       started, or was forced, since the last computation) gets its ETA computed here
       (``compute_drain_etas``) until the next tick stores one.
    """
    now = now or timezone.now()
    routing = Routing.objects.filter(agent=agent).first()
    weights = {int(k): int(v) for k, v in (routing.weights if routing else {}).items()}
    versions = list(
        Version.objects.filter(agent=agent).select_related("lifecycle", "agent").order_by("-id")
    )
    live = live_counts(agent)
    rows = []
    for version in versions:
        lifecycle = getattr(version, "lifecycle", None)
        n = live.get(version.pk, 0)
        rows.append(
            (version, lifecycle, n, version_state(weights.get(version.pk, 0), n, lifecycle))
        )

    # Step 2.
    hidden = hidden_drained(
        ((r[0].pk, r[1].drain_started_at) for r in rows if r[3] == DRAINED), agent.retain_drained
    )
    rows = [r for r in rows if r[0].pk not in hidden]

    totals: dict[int, int] = {}
    for (version_id, _), n in rollups.assigned_counts([r[0].pk for r in rows]).items():
        totals[version_id] = totals.get(version_id, 0) + n

    # Step 4.
    draining = {r[0].pk: r[1] for r in rows if r[3] == DRAINING and r[1] and r[1].drain_started_at}
    fresh = compute_drain_etas(
        agent, {pk: lc for pk, lc in draining.items() if not stored_eta_is_current(lc)}, now
    )

    result = []
    for version, lifecycle, n, state in rows:
        # Always an object, so clients can read drain["progress"] without a null check;
        # its fields are null while the version is not draining.
        drain = dict(NOT_DRAINING)
        if state in (DRAINING, DRAINED) and lifecycle and lifecycle.drain_started_at:
            at_start = lifecycle.live_at_drain_start or 0
            eta = 0.0
            if state == DRAINING:
                eta = fresh[version.pk] if version.pk in fresh else stored_eta(lifecycle, now)
            drain = {
                "started_at": lifecycle.drain_started_at,
                "live_at_start": at_start,
                "progress": drain_progress(n, at_start),
                "eta_s": eta,
                "forced": lifecycle.forced_drain_at is not None,
                "forced_reason": lifecycle.forced_drain_reason,
                "drained_at": lifecycle.drained_at,
            }
        result.append(
            FleetVersion(
                version, state, weights.get(version.pk, 0), n, totals.get(version.pk, 0), drain
            )
        )
    return result

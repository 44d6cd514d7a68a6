"""``GET /api/agents/{slug}/forecast/``: the drain forecast (rollouts.forecast) fed with
what Prism has observed of the agent."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from rollouts import forecast as model
from rollouts.fleet import survival_curve
from rollouts.models import Lifecycle, Routing, Session, SessionState
from versions.models import Agent

ARRIVAL_SAMPLE = 5000  # newest ends read for the arrival rate
ARRIVAL_WINDOW = timedelta(days=7)
AGE_GROUPS = 50  # live sessions per version are summarised in this many age groups
HOUR = 3600.0


class ForecastQuery(serializers.Serializer):
    deploy_every_h = serializers.FloatField(
        required=False,
        default=24.0,
        min_value=0.25,
        max_value=720,
        help_text="Hours between deploys (each a cutover to a new version).",
    )
    max_session_age_s = serializers.IntegerField(
        required=False,
        min_value=60,
        max_value=30 * 86400,
        help_text="Drain policy to try; the agent's own by default.",
    )
    drain_grace_s = serializers.IntegerField(
        required=False,
        min_value=0,
        max_value=7 * 86400,
        help_text="Drain policy to try; the agent's own by default.",
    )
    max_live_versions = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=100,
        help_text="Drain policy to try; the agent's own by default.",
    )
    horizon_h = serializers.FloatField(required=False, default=72.0, min_value=1, max_value=336)
    step_h = serializers.FloatField(
        required=False,
        min_value=0.05,
        max_value=336,
        help_text=f"Hours between points; horizon_h / 72 by default, at most "
        f"{model.MAX_POINTS} steps.",
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        step = attrs.setdefault("step_h", attrs["horizon_h"] / 72)
        if step > attrs["horizon_h"]:
            raise ValidationError({"step_h": ["Must not exceed horizon_h."]})
        if attrs["horizon_h"] / step > model.MAX_POINTS + 1e-9:
            raise ValidationError({"step_h": [f"At most {model.MAX_POINTS} steps."]})
        return attrs


@dataclass(frozen=True)
class Observed:
    arrivals_per_h: float
    since_deploy_h: float | None
    versions: list[model.VersionNow]
    live_sessions: int
    curve_sessions: int


def _age_groups(ages: list[float]) -> tuple[tuple[float, int], ...]:
    """Live sessions' ages (hours) in at most AGE_GROUPS groups of neighbouring ages, each
    at its mean age: the forecast's cost then does not grow with the live count."""
    ages.sort()
    size = math.ceil(len(ages) / AGE_GROUPS) or 1
    return tuple(
        (sum(chunk) / len(chunk), len(chunk))
        for chunk in (ages[i : i + size] for i in range(0, len(ages), size))
    )


def observe(agent: Agent, now: datetime) -> tuple[Any, Observed]:
    """What the forecast starts from: the survival curve, the arrival rate over a recent
    window, and the versions live or routed now.

    None of the reads grows with the history:
    1. The stored survival curve.
    2. The newest ``ARRIVAL_SAMPLE`` ends within ``ARRIVAL_WINDOW`` (the index on ended
       sessions). The window starts at the oldest of them, or a week ago (at most the
       agent's age) when there were fewer.
    3. Every live session (the live index), its age grouped per version.
    4. Arrivals: every session started inside the window is either live now or ended
       inside it, so the two reads count them exactly.
    5. The routing row and the lifecycles of the versions live or routed.
    """
    curve = survival_curve(agent, now)
    ends = list(
        Session.objects.filter(agent=agent, ended_at__gte=now - ARRIVAL_WINDOW)
        .exclude(state=SessionState.LIVE)
        .order_by("-ended_at")
        .values_list("started_at", "ended_at")[:ARRIVAL_SAMPLE]
    )
    if len(ends) == ARRIVAL_SAMPLE:
        since = ends[-1][1]
    else:
        since = now - min(now - agent.created_at, ARRIVAL_WINDOW)

    ages: dict[int, list[float]] = {}
    started = sum(1 for started_at, _ in ends if started_at >= since)
    for version_id, started_at in (
        Session.objects.filter(agent=agent, state=SessionState.LIVE)
        .values_list("version_id", "started_at")
        .iterator(chunk_size=2000)
    ):
        ages.setdefault(version_id, []).append(max((now - started_at).total_seconds(), 0) / HOUR)
        started += started_at >= since
    window_h = (now - since).total_seconds() / HOUR
    arrivals = started / max(window_h, 1 / 60)

    routing = Routing.objects.filter(agent=agent).first()
    weights = {int(k): int(v) for k, v in (routing.weights if routing else {}).items() if v}
    ids = sorted(set(ages) | set(weights))
    lifecycles = {lc.version_id: lc for lc in Lifecycle.objects.filter(version_id__in=ids)}

    def hours_ago(at: datetime | None) -> float | None:
        return None if at is None else -max((now - at).total_seconds(), 0) / HOUR

    versions = []
    for version_id in ids:
        lifecycle = lifecycles.get(version_id)
        versions.append(
            model.VersionNow(
                weight=weights.get(version_id, 0),
                live=_age_groups(ages.get(version_id, [])),
                retired_h=hours_ago(lifecycle.drain_started_at) if lifecycle else None,
                forced_h=hours_ago(lifecycle.forced_drain_at) if lifecycle else None,
            )
        )
    deployed = [
        lifecycles[v].first_routed_at
        for v in weights
        if v in lifecycles and lifecycles[v].first_routed_at is not None
    ]
    since = (now - max(deployed)).total_seconds() / HOUR if deployed else None
    return curve, Observed(
        arrivals_per_h=arrivals,
        since_deploy_h=since,
        versions=versions,
        live_sessions=sum(len(a) for a in ages.values()),
        curve_sessions=curve.observations,
    )


def forecast_for(agent: Agent, params: dict[str, Any], now: datetime | None = None) -> dict:
    """The forecast's answer for an agent and validated query parameters."""
    now = now or timezone.now()
    curve, seen = observe(agent, now)
    every = params["deploy_every_h"]
    policy = model.Policy(
        max_session_age_h=params.get("max_session_age_s", agent.max_session_age_s) / HOUR,
        drain_grace_h=params.get("drain_grace_s", agent.drain_grace_s) / HOUR,
        max_live_versions=params.get("max_live_versions", agent.max_live_versions),
    )
    # The next deploy is one cadence after the last one, or now if that is overdue.
    first = every if seen.since_deploy_h is None else max(every - seen.since_deploy_h, 0.0)
    try:
        result = model.forecast(
            curve,
            arrivals_per_h=seen.arrivals_per_h,
            deploy_every_h=every,
            policy=policy,
            horizon_h=params["horizon_h"],
            step_h=params["step_h"],
            first_deploy_h=first,
            now=seen.versions,
        )
    except model.ForecastError as exc:
        raise ValidationError({exc.field: [exc.message]}) from None
    return {
        "agent": agent.slug,
        "horizon_h": result.horizon_h,
        "step_h": result.step_h,
        "deploy_every_h": every,
        "policy": {
            "max_session_age_s": round(policy.max_session_age_h * HOUR),
            "drain_grace_s": round(policy.drain_grace_h * HOUR),
            "max_live_versions": policy.max_live_versions,
        },
        "observed": {
            "arrivals_per_h": round(seen.arrivals_per_h, 4),
            "live_sessions": seen.live_sessions,
            "live_versions": sum(1 for v in seen.versions if v.live),
            "sessions_in_survival_curve": seen.curve_sessions,
        },
        "deploys_h": [round(d, 4) for d in result.deploys_h],
        "points": [
            {
                "t_h": round(p.t_h, 4),
                "live_versions": round(p.live_versions, 4),
                "old_session_hours": round(p.old_session_hours, 4),
            }
            for p in result.points
        ],
    }


class ForecastView(APIView):
    @extend_schema(
        parameters=[
            OpenApiParameter(name, float if name.endswith("_h") else int, required=False)
            for name in ForecastQuery().fields
        ],
        responses=inline_serializer(
            "Forecast",
            {
                "agent": serializers.SlugField(),
                "horizon_h": serializers.FloatField(),
                "step_h": serializers.FloatField(),
                "deploy_every_h": serializers.FloatField(),
                "policy": inline_serializer(
                    "ForecastPolicy",
                    {
                        "max_session_age_s": serializers.IntegerField(),
                        "drain_grace_s": serializers.IntegerField(),
                        "max_live_versions": serializers.IntegerField(),
                    },
                ),
                "observed": inline_serializer(
                    "ForecastObserved",
                    {
                        "arrivals_per_h": serializers.FloatField(),
                        "live_sessions": serializers.IntegerField(),
                        "live_versions": serializers.IntegerField(),
                        "sessions_in_survival_curve": serializers.IntegerField(),
                    },
                ),
                "deploys_h": serializers.ListField(child=serializers.FloatField()),
                "points": inline_serializer(
                    "ForecastPoint",
                    {
                        "t_h": serializers.FloatField(),
                        "live_versions": serializers.FloatField(),
                        "old_session_hours": serializers.FloatField(),
                    },
                    many=True,
                ),
            },
        ),
    )
    def get(self, request: Request, slug: str) -> Response:
        agent = get_object_or_404(Agent, slug=slug)
        query = ForecastQuery(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        return Response(forecast_for(agent, query.validated_data))

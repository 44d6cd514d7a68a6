"""rollouts.fleet against a brute force over the raw rows: on random fleets, the fast
path's states, live counts, totals, progress and ETAs are what a pure-Python pass over
every Session row gives."""

from __future__ import annotations

import math
import random
from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from metrics import rollups
from rollouts import fleet
from rollouts.models import Lifecycle, Routing, Session
from rollouts.survival import SurvivalCurve, grid_ceil
from tests.rollouts.test_survival import brute_force_eta
from versions.models import Version

WINDOW_S = 7 * 86400
STATES = ["live", "live", "ended", "ended", "abandoned", "expired"]


def random_fleet(rng: random.Random, agent, make_version, now) -> None:
    """Versions in every state, with sessions of every kind spread over ten days."""
    agent.max_session_age_s = rng.choice([86400, 7 * 86400])
    agent.drain_grace_s = rng.choice([60, 300])
    agent.retain_drained = rng.choice([0, 1, 3])
    agent.save()
    versions = [make_version(agent) for _ in range(rng.randint(3, 7))]
    active = versions[-1]
    Routing.objects.update_or_create(
        agent=agent, defaults={"weights": {str(active.pk): 10000}, "epoch": 3}
    )
    sessions = []
    for version in versions:
        first = version is versions[0]
        never_routed = version is not active and not first and rng.random() < 0.2
        if version is not active and not never_routed:
            Lifecycle.objects.create(
                version=version,
                agent=agent,
                first_routed_at=now - timedelta(days=9),
                drain_started_at=now - timedelta(seconds=rng.uniform(60, 5 * 86400)),
                live_at_drain_start=rng.randint(0, 40),
                forced_drain_at=now - timedelta(seconds=30)
                if not first and rng.random() < 0.3
                else None,
                forced_drain_reason="test",
            )
        for i in range(0 if never_routed else rng.randint(5, 40)):
            state = "live" if first and i < 5 else rng.choice(STATES)
            if version is not active and not first and rng.random() < 0.5 and state == "live":
                state = "ended"  # some versions drain fully
            started = now - timedelta(seconds=rng.uniform(0, 10 * 86400))
            duration = rng.lognormvariate(math.log(3600), 1.5)
            ended = min(started + timedelta(seconds=duration), now)
            drain_at = None
            if not (first and state == "live") and rng.random() < 0.25:
                drain_at = min(started + timedelta(seconds=duration / 2), now)
            sessions.append(
                Session(
                    agent=agent,
                    version=version,
                    session_id=f"{version.pk}-{i}",
                    state=state,
                    started_at=started,
                    last_seen_at=ended - timedelta(seconds=rng.uniform(0, 60)),
                    ended_at=None if state == "live" else ended,
                    drain_at=drain_at,
                    epoch=rng.randint(1, 3),
                )
            )
    for s in sessions:
        s.last_seen_at = max(s.last_seen_at, s.started_at)
    Session.objects.bulk_create(sessions)
    rollups.count_assignments(settle_s=0)


def brute_curve(rows, now) -> SurvivalCurve:
    """Kaplan-Meier with delayed entry straight from the definition, O(n^2)."""
    window_start = now - timedelta(seconds=WINDOW_S)
    spans = []
    for s in rows:
        age = lambda at, s=s: max((at - s.started_at).total_seconds(), 0.0)  # noqa: E731
        if s.state == "live":
            exit_, event = age(now), False
        elif s.state == "abandoned":
            exit_, event = age(s.last_seen_at), True
        else:
            exit_, event = age(s.ended_at), s.state == "ended" and s.drain_at is None
        if s.state != "live" and s.ended_at < window_start:
            continue
        entry = age(window_start)
        if entry <= exit_:
            spans.append((entry, max(grid_ceil(exit_, fleet.SURVIVAL_RESOLUTION), entry), event))
    times, survival, s_ = [], [], 1.0
    for t in sorted({x for _, x, e in spans if e}):
        at_risk = sum(1 for entry, x, _ in spans if entry <= t <= x)
        deaths = sum(1 for _, x, e in spans if e and x == t)
        s_ *= (at_risk - deaths) / at_risk
        times.append(t)
        survival.append(s_)
    return SurvivalCurve(times=tuple(times), survival=tuple(survival))


def brute_fleet(agent, now) -> list[tuple]:
    rows = list(Session.objects.filter(agent=agent))
    routing = Routing.objects.get(agent=agent)
    lifecycles = {lc.version_id: lc for lc in Lifecycle.objects.filter(agent=agent)}
    versions = sorted(Version.objects.filter(agent=agent).values_list("pk", flat=True))[::-1]
    curve = brute_curve(rows, now)
    states = {}
    for vid in versions:
        live = sum(1 for s in rows if s.version_id == vid and s.state == "live")
        lc = lifecycles.get(vid)
        if routing.weight_of(vid) > 0:
            states[vid] = "active"
        elif lc is None or lc.first_routed_at is None:
            states[vid] = "draining" if live else "inactive"
        else:
            states[vid] = "draining" if live else "drained"
    drained = sorted(
        (vid for vid in versions if states[vid] == "drained"),
        key=lambda vid: (lifecycles[vid].drain_started_at, vid),
        reverse=True,
    )
    hidden = set(drained[agent.retain_drained :])
    answer = []
    for vid in versions:
        if vid in hidden:
            continue
        mine = [s for s in rows if s.version_id == vid]
        live = [s for s in mine if s.state == "live"]
        progress = eta = None
        lc = lifecycles.get(vid)
        if states[vid] in ("draining", "drained") and lc and lc.drain_started_at:
            at_start = lc.live_at_drain_start or 0
            progress = 1.0 if not at_start else max(0.0, min(1.0, 1 - len(live) / at_start))
            eta = 0.0
            if states[vid] == "draining":
                ages = [(now - s.started_at).total_seconds() for s in live]
                caps = []
                for s, a in zip(live, ages, strict=True):
                    if s.drain_at is not None:
                        told = (now - s.drain_at).total_seconds()
                        caps.append(max(agent.drain_grace_s - told, 0.0))
                    elif lc.forced_drain_at is not None:
                        caps.append(float(agent.drain_grace_s))
                    else:
                        caps.append(max(agent.max_session_age_s - a, 0.0) + agent.drain_grace_s)
                eta = brute_force_eta(curve, ages, 0.5, caps)
        answer.append(
            (vid, states[vid], routing.weight_of(vid), len(live), len(mine), progress, eta)
        )
    return answer


@pytest.mark.parametrize("stored", [False, True], ids=["per-request", "stored-by-the-beat"])
@pytest.mark.parametrize("seed", range(6))
@override_settings(PRISM_SURVIVAL_SAMPLE=100_000, PRISM_SURVIVAL_WINDOW_S=WINDOW_S)
def test_the_fleet_equals_a_brute_force_over_every_session(seed, stored, agent, make_version):
    """ETAs computed by the request, or stored by the beat's pass at the same time."""
    rng = random.Random(seed)
    now = timezone.now()
    random_fleet(rng, agent, make_version, now)
    if stored:
        fleet.refresh_estimate(agent, now)
        assert fleet.refresh_drain_etas(agent, now) >= 1

    fast = [
        (
            row.version.pk,
            row.state,
            row.weight,
            row.live_sessions,
            row.total_sessions,
            row.drain["progress"],
            row.drain["eta_s"],
        )
        for row in fleet.fleet(agent, now)
    ]
    slow = brute_fleet(agent, now)

    assert [r[:5] for r in fast] == [r[:5] for r in slow]
    for f, s in zip(fast, slow, strict=True):
        assert f[5] == (None if s[5] is None else pytest.approx(s[5], abs=1e-4)), f
        assert f[6] == (None if s[6] is None else pytest.approx(s[6], abs=0.11)), f
    # Every fleet has a draining version with an estimate to compare.
    assert any(r[1] == "draining" and r[6] for r in slow)

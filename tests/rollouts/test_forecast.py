"""The drain forecast: hand-computed cases, an independent Monte-Carlo simulation of the
same policy, and the API that feeds it with what Prism observed."""

from __future__ import annotations

import bisect
import math
import random
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from rollouts import api_forecast, engine
from rollouts.forecast import ForecastError, Policy, VersionNow, forecast
from rollouts.models import Session, SessionState
from rollouts.survival import SurvivalCurve

H = 3600.0


def curve_h(times_h, survival) -> SurvivalCurve:
    return SurvivalCurve(times=tuple(t * H for t in times_h), survival=tuple(survival))


def run(curve, **kwargs):
    defaults = {"horizon_h": 8, "step_h": 1, "now": [VersionNow(weight=10000)]}
    return forecast(curve, **{**defaults, **kwargs})


# --- hand-computed cases ----------------------------------------------------------------


def test_it_matches_a_hand_computed_cadence_with_the_age_limit():
    """Every session lasts exactly 3 h, 10 arrive per hour, a deploy every 2 h from t=2,
    sessions older than 1 h on an old version drain with 0.5 h of grace.

    Version k gets the sessions started in [2k, 2k+2). Those started before 2k+1 are
    older than 1 h when the version retires at 2k+2, so they end at 2k+2.5; the others
    end 1.5 h after they start. So version k holds 10(t-2k) sessions on [2k, 2k+2), 20
    on [2k+2, 2k+2.5), 10(2k+3.5-t) on [2k+2.5, 2k+3.5) and none after.

    - live versions: at an odd hour t >= 3, version (t-3)/2 holds 5 sessions and the
      next 10: (1 - e^-5) + (1 - e^-10); at an even hour, one version holds 20 (or 10
      at t=1) and the previous none.
    - old session-hours: from 2k+2 to 2k+3 the retired version runs 20 * 0.5 + the
      integral of 10(2k+3.5-u) over [2k+2.5, 2k+3] = 10 + 3.75 = 13.75; from 2k+3 to
      2k+4 it runs the last 10 * 0.5^2 / 2 = 1.25.
    """
    result = run(
        curve_h([3], [0.0]),
        arrivals_per_h=10,
        deploy_every_h=2,
        first_deploy_h=2,
        policy=Policy(max_session_age_h=1, drain_grace_h=0.5, max_live_versions=10),
    )
    assert result.deploys_h == (2, 4, 6)
    assert result.forced == ()
    one, two = 1 - math.exp(-10), (1 - math.exp(-5)) + (1 - math.exp(-10))
    expected_live = [0, one, 1 - math.exp(-20), two, 1 - math.exp(-20), two, 1, two, 1]
    expected_old = [0, 0, 0, 13.75, 1.25, 13.75, 1.25, 13.75, 1.25]
    assert [p.t_h for p in result.points] == list(range(9))
    assert [p.live_versions for p in result.points] == pytest.approx(expected_live, abs=1e-6)
    assert [p.old_session_hours for p in result.points] == pytest.approx(expected_old, abs=1e-9)


def test_it_matches_a_hand_computed_cap_on_live_versions():
    """Sessions never end by themselves and the age limit (10 h) is beyond the horizon:
    only the cap of 2 live versions drains them. Deploys every hour from t=1.

    At t=1 the new version and version 0 make two: allowed. At each later deploy there
    are three, and the oldest is force-drained: version 0 at t=2, 1 at t=3, 2 at t=4,
    each gone half an hour later. So two versions hold 10 sessions each at every hour
    from t=2, and each hour a full retired version runs 10 session-hours and the one
    being force-drained 10 * 0.5 more.
    """
    result = run(
        curve_h([], []),
        arrivals_per_h=10,
        deploy_every_h=1,
        first_deploy_h=1,
        horizon_h=5,
        policy=Policy(max_session_age_h=10, drain_grace_h=0.5, max_live_versions=2),
    )
    assert result.forced == ((0, 2), (1, 3), (2, 4))
    two = 2 * (1 - math.exp(-10))
    expected_live = [0, 1 - math.exp(-10), two, two, two, two]
    assert [p.live_versions for p in result.points] == pytest.approx(expected_live, abs=1e-9)
    expected_old = [0, 0, 10, 15, 15, 15]
    assert [p.old_session_hours for p in result.points] == pytest.approx(expected_old, abs=1e-9)


def test_it_follows_the_sessions_live_now_on_a_draining_version():
    """No new sessions. A version drains since an hour ago with two sessions of age
    0.5 h; half of all sessions end at 1 h and the rest at 2 h. Each survivor is live
    with p(t) = S(0.5 + t): 1 until t=0.5, 0.5 until t=1.5, then 0, so the version is
    live with 1 - (1-p)^2, and the pair runs 2 * (0.5 + 0.25) = 1.5 session-hours in
    the first hour and 2 * 0.25 = 0.5 in the second."""
    result = forecast(
        curve_h([1, 2], [0.5, 0.0]),
        arrivals_per_h=0,
        deploy_every_h=24,
        first_deploy_h=24,
        horizon_h=2,
        step_h=0.5,
        policy=Policy(max_session_age_h=10, drain_grace_h=0.1, max_live_versions=4),
        now=[VersionNow(weight=0, live=((0.5, 2),), retired_h=-1)],
    )
    assert [p.t_h for p in result.points] == [0, 0.5, 1, 1.5, 2]
    assert [p.live_versions for p in result.points] == pytest.approx([1, 0.75, 0.75, 0, 0])
    old = [p.old_session_hours for p in result.points]
    assert sum(old[1:3]) == pytest.approx(1.5)
    assert sum(old[3:]) == pytest.approx(0.5)
    assert old[1] == pytest.approx(1.0)


def test_the_age_limit_ends_sessions_live_now():
    """Four sessions of age 0.5 h that would last 2 h, on a version retired an hour ago,
    with a 1 h age limit and 0.25 h of grace: told to drain at t=0.5, gone at 0.75."""
    result = forecast(
        curve_h([2], [0.0]),
        arrivals_per_h=0,
        deploy_every_h=24,
        first_deploy_h=24,
        horizon_h=1,
        step_h=0.25,
        policy=Policy(max_session_age_h=1, drain_grace_h=0.25, max_live_versions=4),
        now=[VersionNow(weight=0, live=((0.5, 4),), retired_h=-1)],
    )
    assert [p.live_versions for p in result.points] == pytest.approx([1, 1, 1, 0, 0])
    assert [p.old_session_hours for p in result.points] == pytest.approx([0, 1, 1, 1, 0])


@pytest.mark.parametrize(
    ("field", "changes"),
    [
        ("deploy_every_h", {"deploy_every_h": 0}),
        ("deploy_every_h", {"deploy_every_h": math.nan}),
        ("arrivals_per_h", {"arrivals_per_h": -1}),
        ("horizon_h", {"horizon_h": math.inf}),
        ("step_h", {"step_h": 0.001}),
        ("max_live_versions", {"policy": Policy(1, 0, 0)}),
        ("max_session_age_h", {"policy": Policy(-1, 0, 3)}),
        ("deploy_every_h", {"deploy_every_h": 0.01, "horizon_h": 300, "step_h": 2}),
    ],
)
def test_bad_parameters_name_the_field(field, changes):
    kwargs = {
        "arrivals_per_h": 1,
        "deploy_every_h": 1,
        "first_deploy_h": 1,
        "policy": Policy(1, 0, 3),
        **changes,
    }
    with pytest.raises(ForecastError) as error:
        run(curve_h([1], [0.0]), **kwargs)
    assert error.value.field == field


# --- an independent Monte-Carlo simulation of the same policy --------------------------


def monte_carlo(
    rng, *, times_h, survival, rate, every, first, age, grace, cap, horizon, step, now, runs
):
    """Simulate sessions one by one and apply the policy as the beat does: at each
    deploy, count the versions that really have a live session and force-drain the
    oldest retired ones beyond the cap. Shares no code with rollouts.forecast."""

    def draw(above: float) -> float:
        """A duration from the step survival curve, given it exceeds ``above``."""
        k = bisect.bisect_right(times_h, above)
        s_above = survival[k - 1] if k else 1.0
        u = rng.random() * s_above
        for t, s in zip(times_h, survival, strict=True):
            if t > above and s <= u:
                return t
        return math.inf

    def arrivals(start: float, end: float, lam: float) -> list[float]:
        out, t = [], start
        while lam > 0:
            t += rng.expovariate(lam)
            if t >= end:
                return out
            out.append(t)
        return out

    deploys = []
    d = first
    while d < horizon:
        deploys.append(d)
        d += every
    grid = [n * step for n in range(round(horizon / step) + 1)]
    live_sum = [0.0] * len(grid)
    old_sum = [0.0] * len(grid)
    old_sq = [0.0] * len(grid)
    live_sq = [0.0] * len(grid)
    for _ in range(runs):
        versions = []  # dicts: retired, forced, sessions [(start, natural end)]
        for weight, groups, retired in now:
            sessions = [(-a, -a + draw(a)) for a, n in groups for _ in range(n)]
            versions.append(
                {
                    "retired": retired,
                    "forced": math.inf,
                    "sessions": sessions,
                    "rate": rate * weight / 10000,
                }
            )
        for v in versions:
            if v["rate"]:
                v["retired"] = deploys[0] if deploys else math.inf
                v["sessions"] += [(s, s + draw(0)) for s in arrivals(0, v["retired"], v["rate"])]

        def end(v, start, natural):
            return min(natural, min(max(start + age, v["retired"]), v["forced"]) + grace)

        def live_at(v, t):
            return any(s <= t < end(v, s, e) for s, e in v["sessions"])

        def apply_cap(versions, t, new):
            live = [v for v in versions if v is not new and live_at(v, t)]
            if new is not None and rate > 0:
                live.append(new)
            covered = sum(1 for v in live if v["forced"] <= t)
            for v in sorted(
                (v for v in live if v["retired"] <= t and v["forced"] > t),
                key=lambda v: v["retired"],
            ):
                if covered >= len(live) - cap:
                    break
                v["forced"] = t
                covered += 1

        apply_cap(versions, 0.0, None)
        for k, d in enumerate(deploys):
            nxt = deploys[k + 1] if k + 1 < len(deploys) else math.inf
            for v in versions:
                v["retired"] = min(v["retired"], d)
            new = {
                "retired": nxt,
                "forced": math.inf,
                "rate": rate,
                "sessions": [(s, s + draw(0)) for s in arrivals(d, min(nxt, horizon), rate)],
            }
            versions.append(new)
            apply_cap(versions, d, new)

        for n, t in enumerate(grid):
            count = sum(1 for v in versions if live_at(v, t))
            hours = 0.0
            if n:
                lo = grid[n - 1]
                for v in versions:
                    for s, e in v["sessions"]:
                        a, b = max(s, v["retired"], lo), min(end(v, s, e), t)
                        hours += max(b - a, 0.0)
            live_sum[n] += count
            live_sq[n] += count * count
            old_sum[n] += hours
            old_sq[n] += hours * hours

    def stats(total, squares):
        means = [x / runs for x in total]
        errors = [
            math.sqrt(max(q / runs - m * m, 0) / runs) for q, m in zip(squares, means, strict=True)
        ]
        return means, errors

    return stats(live_sum, live_sq), stats(old_sum, old_sq)


@pytest.mark.parametrize(
    ("every", "age", "cap"),
    [(4.0, 6.0, 2), (6.0, 3.0, 10)],
    ids=["cap-binds", "age-limit-only"],
)
def test_it_agrees_with_a_monte_carlo_simulation_of_the_policy(every, age, cap):
    times_h = [0.25, 0.5, 1, 2, 4, 8]
    survival = [0.8, 0.6, 0.4, 0.2, 0.1, 0.05]  # 5% never end by themselves
    now = [
        # weight, live sessions (age_h, count), retired at
        (0, ((4.0, 2),), -2.0),
        (10000, ((0.5, 5), (3.0, 3)), math.inf),
    ]
    params = {
        "rate": 20.0,
        "every": every,
        "first": 3.0,
        "age": age,
        "grace": 0.5,
        "cap": cap,
        "horizon": 30.0,
        "step": 1.0,
    }
    (live, live_err), (old, old_err) = monte_carlo(
        random.Random(20240611),
        times_h=times_h,
        survival=survival,
        now=now,
        runs=120,
        **params,
    )
    result = forecast(
        curve_h(times_h, survival),
        arrivals_per_h=params["rate"],
        deploy_every_h=every,
        first_deploy_h=params["first"],
        horizon_h=params["horizon"],
        step_h=params["step"],
        policy=Policy(max_session_age_h=age, drain_grace_h=0.5, max_live_versions=cap),
        now=[VersionNow(weight=w, live=g, retired_h=None if w else r) for w, g, r in now],
    )
    assert len(result.points) == len(live)
    for point, mc, err in zip(result.points, live, live_err, strict=True):
        assert point.live_versions == pytest.approx(mc, abs=0.03 + 4 * err), point
    for point, mc, err in zip(result.points, old, old_err, strict=True):
        assert point.old_session_hours == pytest.approx(mc, abs=0.1 + 0.02 * mc + 4 * err), point
    if cap == 2:
        assert result.forced, "the cap must bind in this case"
        assert max(p.live_versions for p in result.points) <= cap + 1  # + one in grace


# --- the API ----------------------------------------------------------------------------


@pytest.fixture
def fleet(agent, make_version):
    """v1 retired with two live sessions, v2 the stable with live and ended sessions, on
    an agent ten days old (its sessions began after it existed)."""
    type(agent).objects.filter(pk=agent.pk).update(created_at=timezone.now() - timedelta(days=10))
    agent.refresh_from_db()
    v1, v2 = make_version(agent, "v1"), make_version(agent, "v2")
    engine.set_stable(agent, v1, actor="test")
    engine.set_stable(agent, v2, actor="test")
    now = timezone.now()

    def add(version, n, *, age_h, ended_after_h=None):
        for _ in range(n):
            started = now - timedelta(hours=age_h)
            ended = started + timedelta(hours=ended_after_h) if ended_after_h else None
            Session.objects.create(
                agent=agent,
                session_id=f"s-{Session.objects.count()}",
                version=version,
                started_at=started,
                last_seen_at=ended or now,
                ended_at=ended,
                state=SessionState.ENDED if ended else SessionState.LIVE,
            )

    add(v1, 2, age_h=3)
    add(v2, 3, age_h=0.5)
    add(v2, 20, age_h=2, ended_after_h=1)
    return v1, v2, add


def test_it_forecasts_from_the_observed_fleet(viewer, agent, fleet):
    answer = viewer.get(
        "/api/agents/research/forecast/",
        {"deploy_every_h": 6, "max_session_age_s": 7200, "max_live_versions": 3, "horizon_h": 24},
    )
    assert answer.status_code == 200, answer.content
    body = answer.json()
    assert body["horizon_h"] == 24
    points = body["points"]
    assert [p["t_h"] for p in points] == pytest.approx([n / 3 for n in range(73)], abs=1e-4)
    # Now: v1 and v2 both hold live sessions, for certain.
    assert points[0]["live_versions"] == pytest.approx(2)
    assert points[0]["old_session_hours"] == 0
    assert body["observed"]["live_sessions"] == 5
    assert body["observed"]["arrivals_per_h"] > 0
    assert body["policy"] == {
        "max_session_age_s": 7200,
        "drain_grace_s": agent.drain_grace_s,
        "max_live_versions": 3,
    }
    assert all(p["live_versions"] <= 3 + 1 for p in points)
    assert any(p["old_session_hours"] > 0 for p in points)
    assert len(body["deploys_h"]) == 4


def test_the_agents_own_policy_is_the_default(viewer, agent, fleet):
    agent.max_live_versions = 2
    agent.save(update_fields=["max_live_versions"])
    body = viewer.get("/api/agents/research/forecast/").json()
    assert body["deploy_every_h"] == 24
    assert body["horizon_h"] == 72
    assert body["policy"]["max_live_versions"] == 2
    assert body["policy"]["max_session_age_s"] == agent.max_session_age_s


def test_its_queries_do_not_grow_with_the_sessions(viewer, agent, fleet):
    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert viewer.get("/api/agents/research/forecast/").status_code == 200
        return len(captured)

    queries()  # the agent's first survival estimate is computed and stored here
    few = queries()
    fleet[2](fleet[1], 300, age_h=1)
    fleet[2](fleet[1], 300, age_h=5, ended_after_h=2)
    assert queries() == few


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"deploy_every_h": "soon"}, "deploy_every_h"),
        ({"deploy_every_h": "0"}, "deploy_every_h"),
        ({"max_session_age_s": "-5"}, "max_session_age_s"),
        ({"max_live_versions": "0"}, "max_live_versions"),
        ({"max_live_versions": "1.5"}, "max_live_versions"),
        ({"horizon_h": "100000"}, "horizon_h"),
        ({"horizon_h": "nan"}, "horizon_h"),
        ({"step_h": "0.06", "horizon_h": "300"}, "step_h"),
        ({"deploy_every_h": "0.25", "horizon_h": "300", "step_h": "2"}, "deploy_every_h"),
    ],
)
def test_bad_values_get_400_naming_the_field(viewer, agent, fleet, query, field):
    answer = viewer.get("/api/agents/research/forecast/", query)
    assert answer.status_code == 400, answer.content
    assert field in answer.json()


def test_unknown_agents_get_404_and_harnesses_403(viewer, harness, db):
    assert viewer.get("/api/agents/nobody/forecast/").status_code == 404
    assert harness.get("/api/agents/nobody/forecast/").status_code == 403


@pytest.mark.parametrize("sample", [5000, 7])
def test_the_arrival_rate_counts_every_start_inside_its_window(
    viewer, agent, fleet, monkeypatch, sample
):
    """Read from the ended and the live sessions only, the count of starts inside the
    window equals a brute force over every row, whether the window is a week (few ends)
    or as far back as the newest ``sample`` ends reach."""
    monkeypatch.setattr(api_forecast, "ARRIVAL_SAMPLE", sample)
    fleet[2](fleet[1], 9, age_h=30, ended_after_h=0.5)  # started and ended inside a week
    fleet[2](fleet[1], 4, age_h=24 * 9, ended_after_h=24 * 2.5)  # started before it
    now = timezone.now()
    _, seen = api_forecast.observe(agent, now)

    rows = Session.objects.filter(agent=agent).values_list("started_at", "ended_at", "state")
    ends = sorted((e for _, e, state in rows if state != SessionState.LIVE), reverse=True)
    ends = [e for e in ends if e >= now - api_forecast.ARRIVAL_WINDOW]
    if len(ends) >= sample:
        since = ends[sample - 1]
    else:
        since = now - min(now - agent.created_at, api_forecast.ARRIVAL_WINDOW)
    started = sum(1 for s, _, _ in rows if s >= since)
    assert seen.arrivals_per_h == pytest.approx(started / ((now - since).total_seconds() / 3600))
    assert seen.arrivals_per_h > 0

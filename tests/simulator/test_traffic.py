"""The simulated traffic's shape, from fixed seeds: no server involved."""

from __future__ import annotations

import statistics

import pytest

from simulator import demo
from simulator.fleet import Fleet
from simulator.scenarios import SCENARIOS
from simulator.traffic import Arrivals, Durations


def plans(seed: int, n: int, durations: Durations | None = None):
    arrivals = Arrivals(seed, durations or Durations())
    return [arrivals.next() for _ in range(n)]


def test_the_same_seed_gives_the_same_sessions():
    assert plans(7, 300) == plans(7, 300)
    assert plans(7, 300) != plans(8, 300)
    quality = SCENARIOS["healthy"].quality
    assert [p.ending(quality) for p in plans(7, 50)] == [p.ending(quality) for p in plans(7, 50)]


def test_durations_are_long_tailed_with_a_share_of_multi_hour_sessions():
    durations = [p.duration_s for p in plans(1, 20_000)]
    multi_hour = sum(d > 3600 for d in durations) / len(durations)
    # 8% drawn from the hours-long component (96.6% of which exceed an hour), plus the
    # minutes-long component's own tail beyond an hour (0.3%).
    assert multi_hour == pytest.approx(0.08, abs=0.01)
    median = statistics.median(durations)
    assert 200 < median < 330
    assert statistics.fmean(durations) > 3 * median
    assert max(durations) <= Durations().cap_s


def test_the_rainbow_runs_more_hours_long_sessions_than_the_soak():
    def share(name: str) -> float:
        drawn = [p.duration_s for p in plans(3, 10_000, SCENARIOS[name].durations)]
        return sum(d > 3600 for d in drawn) / len(drawn)

    assert share("rainbow") > 0.15
    assert share("soak") < 0.06


def test_a_regressed_candidate_errs_more_and_costs_more_than_its_baseline():
    scenario = SCENARIOS["regression"]
    sessions = plans(11, 8000)
    base = [p.ending(scenario.quality).outcome for p in sessions]
    cand = [p.ending(scenario.candidate_quality).outcome for p in sessions]
    base_errors = sum(o["error"] for o in base) / len(base)
    cand_errors = sum(o["error"] for o in cand) / len(cand)
    assert base_errors == pytest.approx(0.04, abs=0.01)
    assert cand_errors == pytest.approx(0.12, abs=0.015)
    ratio = statistics.median(o["cost_usd"] for o in cand) / statistics.median(
        o["cost_usd"] for o in base
    )
    assert ratio == pytest.approx(1.6, rel=0.05)
    assert SCENARIOS["healthy"].candidate_quality is None


def test_late_feedback_comes_for_a_share_of_sessions_and_follows_success():
    endings = [p.ending(SCENARIOS["soak"].quality) for p in plans(5, 5000)]
    rated = [e for e in endings if e.feedback is not None]
    assert len(rated) / len(endings) == pytest.approx(0.3, abs=0.03)
    assert all(-1 <= e.feedback <= 1 for e in rated)
    happy = [e.feedback for e in rated if e.outcome["success"]]
    unhappy = [e.feedback for e in rated if not e.outcome["success"]]
    assert statistics.fmean(happy) > 0.4 > -0.2 > statistics.fmean(unhappy)
    assert statistics.median(e.feedback_delay_s for e in rated) == pytest.approx(600, rel=0.1)


def test_acceleration_shortens_only_the_simulated_clock():
    fleet = Fleet(accel=60)
    assert fleet.real(3600) == 60
    assert fleet.real(SCENARIOS["rainbow"].deploy_every_s) == 20
    with pytest.raises(ValueError, match="accel"):
        Fleet(accel=0)


def test_prism_times_are_divided_by_the_acceleration():
    policy = {
        "idle_timeout_s": 1800,
        "max_session_age_s": 86400,
        "drain_grace_s": 30,
        "max_live_versions": 4,
    }
    assert demo.scaled_policy(policy, 60) == {
        "idle_timeout_s": 30,
        "max_session_age_s": 1440,
        "drain_grace_s": 1,
        "max_live_versions": 4,
    }
    assert demo.scaled_policy({**policy, "drain_grace_s": 0}, 60)["drain_grace_s"] == 0
    assert demo.scaled_policy(policy, 100_000)["idle_timeout_s"] == 1
    stages = [{"percent": 5, "min_duration_s": 600, "max_duration_s": 3600}, {"percent": 100}]
    assert demo.scaled_stages(stages, 60) == [
        {"percent": 5, "min_duration_s": 10, "max_duration_s": 60},
        {"percent": 100},
    ]
    assert stages[0]["min_duration_s"] == 600  # the spec itself is left alone

"""The rollout state machine as a service: stage specs, evaluation of the
comparison window, and one audited transaction per transition."""

from __future__ import annotations

from datetime import timedelta

import pytest

from rollouts import engine, sessions
from rollouts.models import Lifecycle, Rollout, RolloutEvent, Routing, RoutingChange
from rollouts.routing import Table, bucket
from tests.rollouts.conftest import ended_on, start_rollout, weights
from versions.models import Agent, AuditEntry

pytestmark = pytest.mark.django_db

SLUG = "research"
SESSIONS = f"/api/agents/{SLUG}/sessions/"
QUICK = {"min_duration_s": 0, "min_sessions": 0}


def routing(agent) -> Routing:
    return Routing.objects.get(agent=agent)


def ids_on(agent, version_id: int, n: int, prefix: str) -> list[str]:
    current = routing(agent)
    table = Table.compile(current.epoch, {int(k): v for k, v in current.weights.items()})
    found, i = [], 0
    while len(found) < n:
        session_id = f"{prefix}-{i}"
        i += 1
        if table.pick(bucket(agent.slug, session_id)) == version_id:
            found.append(session_id)
    return found


def open_sessions(client, agent, version_id: int, n: int, prefix: str) -> list[str]:
    """Start ``n`` sessions through the API that the routing sends to ``version_id``."""
    ids = ids_on(agent, version_id, n, prefix)
    for session_id in ids:
        response = client.post(SESSIONS, {"session_id": session_id}, format="json")
        assert response.status_code == 201, response.content
        assert response.json()["version"]["id"] == version_id
    return ids


def end_sessions(client, ids: list[str]) -> None:
    for session_id in ids:
        response = client.post(
            f"{SESSIONS}{session_id}/end/",
            {"outcome": {"success": True, "error": False}},
            format="json",
        )
        assert response.status_code == 200, response.content


# --- stage specs --------------------------------------------------------------------------


def test_the_default_stages_are_5_25_50_100_with_default_conditions():
    stages = engine.validate_stages(None)
    assert [s["percent"] for s in stages] == [5, 25, 50, 100]
    assert all(s["min_duration_s"] == engine.DEFAULT_MIN_DURATION_S for s in stages)
    assert all(s["min_sessions"] == engine.DEFAULT_MIN_SESSIONS for s in stages)
    assert all(s["max_duration_s"] is None for s in stages)


def test_a_stage_may_be_a_bare_percent_and_optional_fields_default():
    stages = engine.validate_stages([10, {"percent": 60, "min_sessions": 0}, 100])
    assert [s["percent"] for s in stages] == [10, 60, 100]
    assert stages[1]["min_sessions"] == 0
    assert stages[1]["min_duration_s"] == engine.DEFAULT_MIN_DURATION_S


@pytest.mark.parametrize("percent", [0.1, 0.29, 1.1, 2.3, 33.33, 57.01, 99.99])
def test_percents_with_two_decimals_are_accepted_as_basis_points(percent):
    stages = engine.validate_stages([percent, 100])
    assert stages[0]["percent"] == percent


@pytest.mark.parametrize("percent", [0.001, 1.234, 33.333])
def test_percents_finer_than_a_basis_point_are_refused(percent):
    with pytest.raises(engine.StageError) as error:
        engine.validate_stages([percent, 100])
    assert "stages[0]" in error.value.errors


def test_fractional_percents_route_exact_basis_points(agent, v1, v2):
    start_rollout(agent, v2, stages=[1.1, 33.33, 100])
    assert weights(agent) == {v1.pk: 9890, v2.pk: 110}
    rollout = Rollout.objects.get()
    engine.transition(rollout.pk, "advance", actor="tester")
    assert weights(agent) == {v1.pk: 6667, v2.pk: 3333}


# --- evaluation -----------------------------------------------------------------------------


def test_evaluate_holds_until_both_arms_have_enough_sessions_started_in_the_window(
    release_manager, harness, agent, v1, v2
):
    """Sessions that started before the rollout never count, even if they end inside it."""
    before = open_sessions(harness, agent, v1.pk, 4, "before")
    stages = [
        {"percent": 50, "min_duration_s": 0, "min_sessions": 3},
        {"percent": 75, "min_duration_s": 0, "min_sessions": 3},
        {"percent": 100},
    ]
    rollout = start_rollout(agent, v2, stages=stages)
    evaluate = f"/api/rollouts/{rollout.pk}/evaluate/"

    def evaluated() -> dict:
        response = release_manager.post(evaluate, {}, format="json")
        assert response.status_code == 200, response.content
        return response.json()

    end_sessions(harness, before)  # ended in the window, but started before it
    body = evaluated()
    assert (body["state"], body["stage"]) == ("running", 0)
    assert body["evaluations"][-1]["min_sessions"]["baseline"] == 0
    assert body["evaluations"][-1]["verdict"] == "hold"

    candidate_ids = open_sessions(harness, agent, v2.pk, 3, "cand")
    baseline_ids = open_sessions(harness, agent, v1.pk, 3, "base")
    assert evaluated()["stage"] == 0  # live sessions are not samples

    end_sessions(harness, candidate_ids)
    end_sessions(harness, baseline_ids[:2])
    body = evaluated()
    assert body["stage"] == 0
    assert body["evaluations"][-1]["min_sessions"] == {
        "ok": False,
        "required": 3,
        "candidate": 3,
        "baseline": 2,
    }

    end_sessions(harness, baseline_ids[2:])
    body = evaluated()
    assert (body["state"], body["stage"]) == ("running", 1)
    assert weights(agent) == {v1.pk: 2500, v2.pk: 7500}
    assert body["events"][-1]["action"] == "auto_advance"


def end_without_outcome(client, ids: list[str]) -> None:
    for session_id in ids:
        response = client.post(f"{SESSIONS}{session_id}/end/", {}, format="json")
        assert response.status_code == 200, response.content


def test_only_sessions_with_an_outcome_started_during_the_stage_are_samples(
    release_manager, harness, agent, v1, v2
):
    stages = [
        {"percent": 50, "min_duration_s": 0, "min_sessions": 2},
        {"percent": 75, "min_duration_s": 0, "min_sessions": 2},
        {"percent": 100},
    ]
    rollout = start_rollout(agent, v2, stages=stages)

    def evaluated() -> dict:
        response = release_manager.post(f"/api/rollouts/{rollout.pk}/evaluate/", {}, format="json")
        assert response.status_code == 200, response.content
        return response.json()

    def samples(body: dict) -> tuple[int, int]:
        counts = body["evaluations"][-1]["min_sessions"]
        return counts["candidate"], counts["baseline"]

    # Ended, but reported nothing: not a sample of any metric.
    end_without_outcome(harness, open_sessions(harness, agent, v2.pk, 2, "empty-c"))
    end_without_outcome(harness, open_sessions(harness, agent, v1.pk, 2, "empty-b"))
    body = evaluated()
    assert (body["stage"], samples(body)) == (0, (0, 0))

    end_sessions(harness, open_sessions(harness, agent, v2.pk, 2, "s0-c"))
    end_sessions(harness, open_sessions(harness, agent, v1.pk, 1, "s0-b"))
    [straddling] = open_sessions(harness, agent, v2.pk, 1, "s0-live")
    # Late user feedback alone is not an outcome: the session itself reported nothing
    # (it may have crashed), so it stays out of the samples and counts as abandoned.
    [late] = open_sessions(harness, agent, v1.pk, 1, "s0-late")
    end_without_outcome(harness, [late])
    assert samples(evaluated()) == (2, 1)
    harness.post(f"{SESSIONS}{late}/feedback/", {"feedback": 0.5}, format="json")
    assert samples(evaluated()) == (2, 1)
    end_sessions(harness, open_sessions(harness, agent, v1.pk, 1, "s0-b2"))
    body = evaluated()
    assert (body["state"], body["stage"]) == ("running", 1)

    # Stage 1 starts with no samples: those of stage 0 were drawn at other weights.
    body = evaluated()
    assert (body["stage"], samples(body)) == (1, (0, 0))
    # Started in stage 0, ended in stage 1: it belongs to stage 0.
    end_sessions(harness, [straddling])
    end_sessions(harness, open_sessions(harness, agent, v2.pk, 1, "s1-c"))
    end_sessions(harness, open_sessions(harness, agent, v1.pk, 2, "s1-b"))
    body = evaluated()
    assert (body["stage"], samples(body)) == (1, (1, 2))
    end_sessions(harness, open_sessions(harness, agent, v2.pk, 1, "s1-c2"))
    assert evaluated()["state"] == "promoted"


def test_evaluate_holds_until_the_minimum_duration_has_elapsed(agent, v1, v2):
    rollout = start_rollout(
        agent, v2, stages=[{"percent": 5, "min_duration_s": 3600, "min_sessions": 0}, 100]
    )
    result = engine.transition(rollout.pk, "evaluate", actor="tester")
    assert (result.state, result.stage) == ("running", 0)
    assert "minimum duration" in result.last_evaluation["reason"]


def after(rollout, seconds: float):
    return rollout.started_at + timedelta(seconds=seconds)


def test_time_spent_paused_does_not_count_towards_min_duration(agent, v1, v2):
    rollout = start_rollout(
        agent, v2, stages=[{"percent": 5, "min_duration_s": 3600, "min_sessions": 0}, 50, 100]
    )
    engine.transition(rollout.pk, "pause", actor="tester", now=after(rollout, 600))
    engine.transition(rollout.pk, "resume", actor="tester", now=after(rollout, 600 + 7200))

    # 2 h 10 min on the wall clock, but only 20 minutes running: the stage holds.
    result = engine.transition(rollout.pk, "evaluate", actor="tester", now=after(rollout, 8400))
    assert (result.state, result.stage) == ("running", 0)
    assert result.last_evaluation["min_duration"]["elapsed_s"] == pytest.approx(1200)
    assert "minimum duration" in result.last_evaluation["reason"]
    # The beat sees the same clock.
    assert engine.evaluate_open_rollouts(now=after(rollout, 8400))["changed"] == 0

    # An hour of running time in all: now it advances, and the next stage's clock
    # starts from zero with nothing paused.
    result = engine.transition(rollout.pk, "evaluate", actor="tester", now=after(rollout, 10800))
    assert (result.state, result.stage) == ("running", 1)
    result = engine.transition(rollout.pk, "evaluate", actor="tester", now=after(rollout, 10801))
    assert result.last_evaluation["min_duration"]["elapsed_s"] == pytest.approx(1)


def test_time_spent_paused_does_not_count_towards_max_duration(agent, v1, v2):
    stages = [
        {"percent": 5, "min_duration_s": 0, "min_sessions": 1000, "max_duration_s": 900},
        100,
    ]
    rollout = start_rollout(agent, v2, stages=stages)
    assert engine.stage_deadline(rollout) == after(rollout, 900)
    engine.transition(rollout.pk, "pause", actor="tester", now=after(rollout, 300))
    rollout.refresh_from_db()
    assert engine.stage_deadline(rollout) is None  # no deadline while the clock stands
    engine.transition(rollout.pk, "resume", actor="tester", now=after(rollout, 300 + 7200))
    rollout.refresh_from_db()
    assert engine.stage_deadline(rollout) == after(rollout, 900 + 7200)

    result = engine.transition(rollout.pk, "evaluate", actor="tester", now=after(rollout, 7600))
    assert result.state == "running"  # 400 s of running time, within 900
    result = engine.transition(rollout.pk, "evaluate", actor="tester", now=after(rollout, 8101))
    assert result.state == "halted"
    assert result.last_evaluation["reason"].startswith("inconclusive")


def test_paused_time_counts_again_from_zero_after_a_second_pause(agent, v1, v2):
    rollout = start_rollout(
        agent, v2, stages=[{"percent": 5, "min_duration_s": 1000, "min_sessions": 0}, 100]
    )
    for pause_at, resume_at in ((100, 1100), (1500, 5000)):
        engine.transition(rollout.pk, "pause", actor="tester", now=after(rollout, pause_at))
        engine.transition(rollout.pk, "resume", actor="tester", now=after(rollout, resume_at))
    # Running: 100 + 400 + 499 = 999 s at 5499, 1000 s at 5500.
    result = engine.transition(rollout.pk, "evaluate", actor="tester", now=after(rollout, 5499))
    assert result.state == "running"
    result = engine.transition(rollout.pk, "evaluate", actor="tester", now=after(rollout, 5500))
    assert result.state == "promoted"


def test_a_critical_gate_that_is_inconclusive_never_lets_the_rollout_advance(agent, v1, v2):
    gates = [{"metric": "error_rate", "max_increase": 0.5}]
    rollout = start_rollout(
        agent, v2, stages=[{"percent": 5, "min_duration_s": 0, "min_sessions": 0}, 100], gates=gates
    )
    # The baseline reports errors, the candidate nothing yet: that blocks.
    ended_on(agent, v1, 5, "base", {"error": False})
    for _ in range(3):
        result = engine.transition(rollout.pk, "evaluate", actor="tester")
        assert (result.state, result.stage) == ("running", 0)
    report = result.last_evaluation
    assert report["verdict"] == "hold"
    assert [(g["metric"], g["verdict"]) for g in report["gates"]] == [
        ("error_rate", "inconclusive")
    ]
    assert weights(agent) == {v1.pk: 9500, v2.pk: 500}
    assert list(RolloutEvent.objects.values_list("action", flat=True)) == ["start"]


def test_a_non_critical_gate_does_not_block_advancing(agent, v1, v2):
    gates = [{"metric": "error_rate", "max_increase": 0.5, "critical": False}]
    rollout = start_rollout(
        agent, v2, stages=[{"percent": 5, "min_duration_s": 0, "min_sessions": 0}, 100], gates=gates
    )
    result = engine.transition(rollout.pk, "evaluate", actor="tester")
    assert result.state == "promoted"


@pytest.mark.parametrize(
    ("gates", "said"),
    [
        pytest.param([], "no gates configured", id="no-gates"),
        pytest.param(
            [{"metric": "error_rate", "max_increase": 0.5, "critical": False}],
            "no critical gates configured",
            id="only-non-critical",
        ),
    ],
)
def test_an_advance_with_nothing_to_check_says_so(agent, v1, v2, gates, said):
    """With no critical gate, "every critical gate passes" is vacuous: the reason names
    what really happened, in the evaluation, the event and the audit entry."""
    rollout = start_rollout(
        agent,
        v2,
        stages=[{"percent": 5, "min_duration_s": 0, "min_sessions": 0}, 50, 100],
        gates=gates,
    )
    result = engine.transition(rollout.pk, "evaluate", actor="tester")
    assert (result.state, result.stage) == ("running", 1)
    event = result.events.last()
    entry = AuditEntry.objects.get(action="rollout.auto_advance")
    for reason in (result.last_evaluation["reason"], event.reason, entry.reason):
        assert said in reason
        assert "every critical gate passes" not in reason


def test_an_inconclusive_critical_gate_halts_once_the_stage_overstays(agent, v1, v2):
    gates = [{"metric": "error_rate", "max_increase": 0.5}]
    rollout = start_rollout(
        agent,
        v2,
        gates=gates,
        stages=[{"percent": 5, "min_duration_s": 0, "min_sessions": 0, "max_duration_s": 0}, 100],
    )
    ended_on(agent, v1, 5, "base", {"error": False})
    result = engine.transition(rollout.pk, "evaluate", actor="tester")
    assert result.state == "halted"
    assert result.last_evaluation["reason"].startswith("inconclusive")
    assert weights(agent) == {v1.pk: 10000}


def test_a_failing_critical_gate_halts_or_rolls_back(agent, v1, v2):
    gates = [{"metric": "error_rate", "max_increase": 0.01}]
    stages = [{"percent": 50, "min_duration_s": 3600}, 100]

    def clear_regression(prefix: str) -> None:
        ended_on(agent, v2, 40, f"{prefix}-c", {"error": True})
        ended_on(agent, v1, 40, f"{prefix}-b", {"error": False})

    halting = start_rollout(agent, v2, stages=stages, gates=gates)
    clear_regression("first")
    result = engine.transition(halting.pk, "evaluate", actor="tester")
    assert result.state == "halted"
    assert result.last_evaluation["reason"] == "critical gate failed: error_rate"
    assert weights(agent) == {v1.pk: 10000}
    engine.transition(halting.pk, "rollback", actor="tester")

    auto = start_rollout(agent, v2, stages=stages, gates=gates, auto_rollback=True)
    clear_regression("second")
    assert engine.transition(auto.pk, "evaluate", actor="tester").state == "rolled_back"
    event = auto.events.last()
    assert (event.action, event.evaluation["gates"][0]["verdict"]) == ("auto_rollback", "fail")
    assert weights(agent) == {v1.pk: 10000}


# --- transitions: audit, events, epoch, atomicity ------------------------------------------


def test_every_transition_writes_one_audit_entry_and_one_event_and_bumps_the_epoch_once(
    agent, v1, v2, django_user_model
):
    alice = django_user_model.objects.create_user(username="alice")
    stages = [
        {"percent": 10, "min_duration_s": 0, "min_sessions": 0},
        {"percent": 30, "min_duration_s": 0, "min_sessions": 1000, "max_duration_s": 0},
        {"percent": 60},
        {"percent": 100},
    ]
    # (action, changes routing, state after, stage after, candidate basis points after)
    steps = [
        ("start", True, "running", 0, 1000),
        ("pause", False, "paused", 0, 1000),
        ("resume", False, "running", 0, 1000),
        ("evaluate", True, "running", 1, 3000),  # stage 0 passes: auto_advance
        ("evaluate", True, "halted", 1, 0),  # stage 1 overstays: halt
        ("resume", True, "running", 1, 3000),
        ("advance", True, "running", 2, 6000),
        ("rollback", True, "rolled_back", 2, 0),
    ]
    rollout = None
    for action, routes, state, stage, candidate_bp in steps:
        audit_before, events_before = AuditEntry.objects.count(), RolloutEvent.objects.count()
        epoch_before = routing(agent).epoch
        reason = f"because {action}"
        if action == "start":
            rollout = start_rollout(agent, v2, stages=stages, actor=alice, reason=reason)
        else:
            rollout = engine.transition(rollout.pk, action, actor=alice, reason=reason)
        rollout.refresh_from_db()

        assert (rollout.state, rollout.stage) == (state, stage), action
        assert routing(agent).weight_of(v2.pk) == candidate_bp, action
        assert routing(agent).epoch == epoch_before + (1 if routes else 0), action
        assert AuditEntry.objects.count() == audit_before + 1, action
        assert RolloutEvent.objects.count() == events_before + 1, action
        entry = AuditEntry.objects.order_by("-id").first()
        event = RolloutEvent.objects.order_by("-id").first()
        assert (entry.actor, entry.actor_user_id, entry.agent_id) == ("alice", alice.pk, agent.pk)
        assert (event.actor, event.to_state, event.to_stage) == ("alice", state, stage)
        assert entry.object == f"rollout:{rollout.pk}"
        if action == "evaluate":
            assert event.evaluation is not None
            assert entry.after["evaluation"] is not None
            assert event.reason == event.evaluation["reason"] == entry.reason
        else:
            assert event.reason == entry.reason == reason
        if action != "start":
            assert entry.before["state"] == event.from_state
            assert entry.after["state"] == state
        if routes:
            assert entry.after["epoch"] == entry.before["epoch"] + 1
            assert entry.after["weights"] == routing(agent).weights
    assert list(rollout.events.values_list("action", flat=True)) == [
        "start",
        "pause",
        "resume",
        "auto_advance",
        "halt",
        "resume",
        "advance",
        "rollback",
    ]


def test_an_evaluation_that_holds_writes_no_transition(agent, v1, v2):
    rollout = start_rollout(agent, v2)
    audit_before, epoch_before = AuditEntry.objects.count(), routing(agent).epoch
    result = engine.transition(rollout.pk, "evaluate", actor="tester")
    assert result.state == "running"
    assert AuditEntry.objects.count() == audit_before
    assert routing(agent).epoch == epoch_before
    assert RolloutEvent.objects.filter(rollout=rollout).count() == 1
    rollout.refresh_from_db()
    assert rollout.last_evaluation["verdict"] == "hold"
    assert rollout.evaluated_at is not None


def test_a_transition_whose_audit_fails_changes_nothing(agent, v1, v2, monkeypatch):
    rollout = start_rollout(agent, v2)
    epoch, routed = routing(agent).epoch, weights(agent)

    def broken(*args, **kwargs):
        raise RuntimeError("audit store down")

    monkeypatch.setattr(engine, "record", broken)
    with pytest.raises(RuntimeError):
        engine.transition(rollout.pk, "advance", actor="tester")
    with pytest.raises(RuntimeError):
        engine.transition(rollout.pk, "rollback", actor="tester")
    rollout.refresh_from_db()
    assert (rollout.state, rollout.stage) == ("running", 0)
    assert (routing(agent).epoch, weights(agent)) == (epoch, routed)
    assert list(rollout.events.values_list("action", flat=True)) == ["start"]


def test_a_start_whose_audit_fails_leaves_no_rollout(agent, v1, v2, monkeypatch):
    epoch = routing(agent).epoch
    monkeypatch.setattr(engine, "record", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        start_rollout(agent, v2)
    assert not Rollout.objects.exists()
    assert routing(agent).epoch == epoch
    assert weights(agent) == {v1.pk: 10000}


def test_promotion_makes_the_candidate_stable_and_the_old_stable_drain(harness, agent, v1, v2):
    live = open_sessions(harness, agent, v1.pk, 3, "old")
    end_sessions(harness, live[:1])
    rollout = start_rollout(agent, v2, stages=[50, 100])
    engine.transition(rollout.pk, "advance", actor="tester")
    rollout.refresh_from_db()
    assert rollout.state == "promoted"
    assert Agent.objects.get(pk=agent.pk).stable_id == v2.pk
    assert weights(agent) == {v2.pk: 10000}
    assert routing(agent).stable_history == [v1.pk, v2.pk]
    old = Lifecycle.objects.get(pk=v1.pk)
    assert old.drain_started_at is not None
    assert old.live_at_drain_start == 2


@pytest.mark.parametrize("promoted_by", ["cutover", "advance", "beat"])
def test_a_promoted_rollout_can_be_rolled_back_while_its_candidate_is_the_stable(
    harness, agent, v1, v2, actor, promoted_by
):
    stages = [100] if promoted_by == "cutover" else [{"percent": 50, **QUICK}, 100]
    rollout = start_rollout(agent, v2, stages=stages)
    if promoted_by == "advance":
        engine.transition(rollout.pk, "advance", actor="someone")
    elif promoted_by == "beat":
        engine.evaluate_open_rollouts()
    rollout.refresh_from_db()
    assert rollout.state == "promoted"
    on_v2 = open_sessions(harness, agent, v2.pk, 1, "c")
    audit_before = AuditEntry.objects.count()

    after = engine.transition(rollout.pk, "rollback", actor=actor, reason="worse answers")

    assert after.state == "rolled_back"
    assert weights(agent) == {v1.pk: 10000}
    assert Agent.objects.get(pk=agent.pk).stable_id == v1.pk
    # The candidate drains; the bad stable is no rollback target any more.
    assert Lifecycle.objects.get(pk=v2.pk).drain_started_at is not None
    assert Lifecycle.objects.get(pk=v1.pk).drain_started_at is None
    assert routing(agent).stable_history == [v1.pk]
    assert AuditEntry.objects.count() == audit_before + 1
    entry = AuditEntry.objects.get(action="rollout.rollback")
    assert (entry.actor, entry.reason) == (actor.username, "worse answers")
    assert (entry.before["state"], entry.after["state"]) == ("promoted", "rolled_back")
    assert after.events.last().action == "rollback"
    assert sessions.heartbeat(SLUG, on_v2[0]).directive == "continue"  # no evacuate
    with pytest.raises(engine.TransitionError):
        engine.transition(rollout.pk, "rollback", actor=actor)


def test_a_promoted_rollout_is_no_longer_rolled_back_once_a_newer_one_started(
    agent, v1, v2, make_version
):
    first = start_rollout(agent, v2, stages=[100])
    second = start_rollout(agent, make_version(agent, "v3"))
    with pytest.raises(engine.TransitionError, match="newer rollout"):
        engine.transition(first.pk, "rollback", actor="tester")
    # Rolled back itself, the newer one still leaves its candidate the stable: too late.
    engine.transition(second.pk, "rollback", actor="tester")
    with pytest.raises(engine.TransitionError, match="newer rollout"):
        engine.transition(first.pk, "rollback", actor="tester")
    assert weights(agent) == {v2.pk: 10000}


def test_a_promoted_rollout_is_no_longer_rolled_back_once_the_stable_moved(
    agent, v1, v2, make_version
):
    rollout = start_rollout(agent, v2, stages=[100])
    v3 = make_version(agent, "v3")
    engine.set_stable(agent, v3, actor="tester")
    with pytest.raises(engine.TransitionError):
        engine.transition(rollout.pk, "rollback", actor="tester")
    assert weights(agent) == {v3.pk: 10000}


def test_every_routing_change_records_its_epoch_actor_kind_and_rollout(agent, v1, v2, actor):
    rollout = start_rollout(agent, v2, stages=[{"percent": 50, **QUICK}, 60, 100], actor=actor)
    engine.evaluate_open_rollouts()
    engine.transition(rollout.pk, "rollback", actor=actor)
    changes = list(RoutingChange.objects.filter(agent=agent).order_by("epoch"))
    assert [(c.epoch, c.system, c.rollout_id, c.action) for c in changes] == [
        (1, False, None, "agent.stable_set"),
        (2, False, rollout.pk, "rollout.started"),
        (3, True, rollout.pk, "rollout.auto_advance"),
        (4, False, rollout.pk, "rollout.rollback"),
    ]
    assert [c.actor for c in changes] == ["test", actor.username, "system", actor.username]
    assert changes[-1].epoch == routing(agent).epoch


def test_a_rollback_with_evacuate_tells_the_candidates_sessions_to_drain(harness, agent, v1, v2):
    rollout = start_rollout(agent, v2, stages=[50, 100])
    on_v2 = ids_on(agent, v2.pk, 2, "c")
    for session_id in on_v2:
        sessions.assign(SLUG, session_id)
    engine.transition(rollout.pk, "rollback", actor="tester", evacuate=True, reason="bad")
    assert {sessions.heartbeat(SLUG, sid).directive for sid in on_v2} == {"drain"}
    lifecycle = Lifecycle.objects.get(pk=v2.pk)
    assert lifecycle.forced_drain_at is not None
    assert lifecycle.forced_drain_reason == "bad"


def test_set_stable_refuses_while_a_rollout_is_open(agent, v1, v2, make_version):
    start_rollout(agent, v2)
    with pytest.raises(engine.TransitionError):
        engine.set_stable(agent, make_version(agent, "v3"), actor="tester")
    assert Agent.objects.get(pk=agent.pk).stable_id == v1.pk


def test_supersede_records_both_rollouts(agent, v1, v2, make_version):
    old = start_rollout(agent, v2)
    new = start_rollout(agent, make_version(agent, "v3"), supersede=True, reason="v3 has the fix")
    old.refresh_from_db()
    assert old.state == "superseded"
    assert old.ended_at is not None
    assert old.events.last().action == "supersede"
    assert (
        AuditEntry.objects.filter(action="rollout.superseded", object_id=str(old.pk)).count() == 1
    )
    assert new.baseline_id == v1.pk
    assert weights(agent) == {v1.pk: 9500, new.candidate_id: 500}

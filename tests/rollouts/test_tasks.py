"""The beat's rollout task: it advances, halts and rolls back as ``system``."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from rollouts import engine, tasks
from rollouts.models import FleetSnapshot, RolloutEvent, Session
from tests.rollouts.conftest import ended_on, start_rollout, weights
from versions.models import Agent, AuditEntry

pytestmark = pytest.mark.django_db

QUICK = {"min_duration_s": 0, "min_sessions": 0}


@pytest.fixture(autouse=True)
def eager_fan_out():
    """The tick fans out one task per rollout; run those in-process here, so each test
    sees the tick's whole effect (the processes tests run them on a real worker)."""
    app = tasks.evaluate_rollout.app
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False


def run_beat() -> int:
    """One evaluation tick; returns how many rollouts it fanned out to."""
    result = tasks.evaluate_rollouts.apply()
    assert result.successful(), result.traceback
    return result.get()


def test_the_beat_advances_a_ready_stage_as_system(agent, v1, v2):
    rollout = start_rollout(
        agent, v2, [{"percent": 5, **QUICK}, {"percent": 50, "min_duration_s": 3600}, 100]
    )
    assert run_beat() == 1

    rollout.refresh_from_db()
    assert (rollout.state, rollout.stage) == ("running", 1)
    assert weights(agent) == {v1.pk: 5000, v2.pk: 5000}
    event = rollout.events.last()
    assert (event.actor, event.action, event.from_stage, event.to_stage) == (
        "system",
        "auto_advance",
        0,
        1,
    )
    assert event.evaluation["verdict"] == "advance"
    entry = AuditEntry.objects.get(action="rollout.auto_advance")
    assert (entry.actor, entry.actor_user) == ("system", None)
    assert entry.reason == event.reason
    assert (entry.before["stage"], entry.after["stage"]) == (0, 1)


def test_the_beat_is_idempotent_while_a_stage_is_not_ready(agent, v1, v2):
    rollout = start_rollout(
        agent, v2, [{"percent": 5, **QUICK}, {"percent": 50, "min_duration_s": 3600}, 100]
    )
    run_beat()
    audit = AuditEntry.objects.count()
    assert run_beat() == 1
    assert run_beat() == 1
    rollout.refresh_from_db()
    assert rollout.stage == 1
    assert AuditEntry.objects.count() == audit
    assert rollout.events.filter(action="auto_advance").count() == 1
    assert rollout.last_evaluation["verdict"] == "hold"


def test_the_beat_promotes_at_the_last_stage(agent, v1, v2):
    rollout = start_rollout(agent, v2, [{"percent": 50, **QUICK}, 100])
    run_beat()
    rollout.refresh_from_db()
    assert rollout.state == "promoted"
    assert weights(agent) == {v2.pk: 10000}
    assert Agent.objects.get(pk=agent.pk).stable_id == v2.pk


def test_the_beat_halts_an_overdue_stage_as_inconclusive(agent, v1, v2):
    rollout = start_rollout(
        agent,
        v2,
        [{"percent": 5, "min_duration_s": 0, "min_sessions": 10, "max_duration_s": 0}, 100],
    )
    run_beat()
    rollout.refresh_from_db()
    assert rollout.state == "halted"
    assert weights(agent) == {v1.pk: 10000}
    event = rollout.events.last()
    assert (event.actor, event.action) == ("system", "halt")
    assert event.reason.startswith("inconclusive")
    assert AuditEntry.objects.get(action="rollout.halt").actor == "system"


def test_the_beat_never_advances_past_an_inconclusive_critical_gate(agent, v1, v2):
    rollout = start_rollout(
        agent,
        v2,
        [{"percent": 5, **QUICK}, 100],
        gates=[{"metric": "success_rate", "max_decrease": 0.05}],
    )
    # The baseline reports success, the candidate nothing yet: that blocks.
    ended_on(agent, v1, 5, "base", {"success": True})
    for _ in range(3):
        run_beat()
    rollout.refresh_from_db()
    assert (rollout.state, rollout.stage) == ("running", 0)
    assert rollout.last_evaluation["gates"][0]["verdict"] == "inconclusive"


def test_the_beat_leaves_paused_halted_and_closed_rollouts_alone(agent, v1, v2, make_version):
    rollout = start_rollout(agent, v2, [{"percent": 5, **QUICK}, 100])
    engine.transition(rollout.pk, "pause", actor="alice")
    assert run_beat() == 0
    rollout.refresh_from_db()
    assert (rollout.state, rollout.stage) == ("paused", 0)
    engine.transition(rollout.pk, "rollback", actor="alice")
    assert run_beat() == 0
    assert not RolloutEvent.objects.filter(actor="system").exists()


def test_the_beat_evaluates_at_the_time_it_is_given(agent, v1, v2):
    """The verdict it acts on is the one for ``now``, not for the wall clock."""
    rollout = start_rollout(
        agent,
        v2,
        [
            {"percent": 5, "min_duration_s": 600, "min_sessions": 0},
            {"percent": 50, "min_duration_s": 600},
            100,
        ],
    )
    later = rollout.started_at + timedelta(seconds=601)
    assert engine.evaluate_open_rollouts(now=later) == {"evaluated": 1, "changed": 1}
    rollout.refresh_from_db()
    assert rollout.stage == 1
    assert rollout.stage_started_at == later
    # The new stage's clock starts at that time too: ten minutes more are needed.
    assert engine.evaluate_open_rollouts(now=later + timedelta(seconds=300)) == {
        "evaluated": 1,
        "changed": 0,
    }
    rollout.refresh_from_db()
    assert rollout.stage == 1


# --- the drain-policy tick ---------------------------------------------------------------


def agents_with_an_idle_session(make_version, prefix: str, n: int = 3) -> list[Agent]:
    """``n`` agents, each with a stable version and one session idle for ten minutes."""
    agents = [
        Agent.objects.create(slug=f"{prefix}{i}", name=f"{prefix}{i}", idle_timeout_s=60)
        for i in range(n)
    ]
    long_ago = timezone.now() - timedelta(minutes=10)
    for agent in agents:
        version = make_version(agent)
        engine.set_stable(agent, version, actor="test")
        Session.objects.create(
            agent=agent, session_id="idle", version=version, started_at=long_ago,
            last_seen_at=long_ago,
        )  # fmt: skip
    return agents


def record_sends(monkeypatch, task) -> list[tuple[tuple, dict]]:
    """What the fan-out sends to ``task``, each still sent (run eagerly here)."""
    sent: list[tuple[tuple, dict]] = []
    publish = task.apply_async

    def recording(args, **options):
        sent.append((tuple(args), options))
        return publish(args, **options)

    monkeypatch.setattr(task, "apply_async", recording)
    return sent


def test_the_drain_tick_fans_out_batches_of_agents_expiring_with_the_tick(
    monkeypatch, settings, make_version
):
    """The shape of the fan-out, run eagerly here; tests/e2e/test_processes.py runs the
    same tasks on a real worker through Redis."""
    settings.PRISM_BEAT_SECONDS = 7
    settings.PRISM_BEAT_BATCH = 2
    agents = agents_with_an_idle_session(make_version, "a")
    sent = record_sends(monkeypatch, tasks.enforce_agent_drain_policies)

    result = tasks.enforce_drain_policies.apply()

    assert result.get() == 3
    ids = sorted(a.pk for a in agents)
    assert [args for args, _ in sent] == [(ids[:2],), (ids[2:],)]
    assert all(options == {"expires": 7.0} for _, options in sent)
    # Each pass did its own agent's work, and only once.
    for agent in agents:
        [entry] = AuditEntry.objects.filter(action="sessions.abandoned", agent=agent)
        assert entry.after["sessions"] == ["idle"]
    assert set(Session.objects.values_list("state", flat=True)) == {"abandoned"}


def test_a_policy_pass_for_an_agent_deleted_since_the_tick_does_nothing():
    assert tasks.enforce_agent_drain_policies.apply((987654,)).get() == {}
    assert tasks.enforce_agent_drain_policies.apply(([987654],)).get() == {987654: {}}


def test_an_agent_that_fails_in_a_batch_does_not_stop_the_others(monkeypatch, make_version):
    """The batch runs every agent, then fails the task with the first error, so the
    failure is still seen (the worker logs it, and its events say failed)."""
    agents = agents_with_an_idle_session(make_version, "b")
    real = tasks.drain.enforce_policies

    def broken_for_the_first(agent, now=None):
        if agent.pk == agents[0].pk:
            raise RuntimeError("this agent's pass broke")
        return real(agent, now)

    monkeypatch.setattr(tasks.drain, "enforce_policies", broken_for_the_first)

    result = tasks.enforce_agent_drain_policies.apply(([a.pk for a in agents],))

    assert result.failed()
    assert "this agent's pass broke" in str(result.result)
    states = dict(Session.objects.values_list("agent_id", "state"))
    assert states == {agents[0].pk: "live", agents[1].pk: "abandoned", agents[2].pk: "abandoned"}


def test_the_evaluation_tick_fans_out_batches_of_rollouts_at_the_stage_it_saw(
    monkeypatch, settings, agent, v1, v2
):
    settings.PRISM_EVALUATE_SECONDS = 9
    settings.PRISM_BEAT_BATCH = 10
    rollout = start_rollout(agent, v2)
    sent = record_sends(monkeypatch, tasks.evaluate_rollout)

    assert tasks.evaluate_rollouts.apply().get() == 1
    assert sent == [(([[rollout.pk, 0]],), {"expires": 9.0})]
    assert tasks.evaluate_rollout.apply(([[rollout.pk, 3]],)).get() == {rollout.pk: "skipped"}
    with pytest.raises(TypeError, match="needs the stage"):
        tasks.evaluate_rollout(rollout.pk)


def test_the_retention_run_fans_out_batches_of_agents(monkeypatch, settings):
    settings.PRISM_RETENTION_SECONDS = 60
    settings.PRISM_RETAIN_SNAPSHOTS_DAYS = 90
    agents = [Agent.objects.create(slug=f"r{i}", name=f"R{i}") for i in range(2)]
    old = timezone.now() - timedelta(days=100)
    for agent in agents:
        FleetSnapshot.objects.create(agent=agent, at=old)
        FleetSnapshot.objects.create(agent=agent, at=timezone.now())
    sent = record_sends(monkeypatch, tasks.apply_agent_retention)

    assert tasks.apply_retention.apply().get() == 2
    assert [args for args, _ in sent] == [(sorted(a.pk for a in agents),)]
    assert all(options == {"expires": 60.0} for _, options in sent)
    assert FleetSnapshot.objects.filter(at__lt=old + timedelta(days=1)).count() == 0
    assert FleetSnapshot.objects.count() == 2

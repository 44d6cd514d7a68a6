"""Rollback always wins.

These run real concurrent transactions on PostgreSQL: each thread has its own
connection, and a barrier releases them together.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from rollouts import engine, evaluation
from rollouts.models import Rollout, RolloutEvent, Routing
from tests.concurrency import race
from versions.models import Agent

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres]

ITERATIONS = 50
STAGES = engine.validate_stages(
    [{"percent": 5, "min_duration_s": 0, "min_sessions": 0}, 25, 50, 100]
)


def run_together(*calls: Callable[[], Any]) -> list[Any]:
    """Run each call in its own thread and connection, released at once by a barrier.
    Returns each call's result, or the exception it raised."""

    def outcome(index: int) -> Any:
        try:
            return calls[index]()
        except Exception as exc:
            return exc

    return race(len(calls), outcome, timeout=30)


@pytest.fixture
def world(agent, v1, v2):
    return agent, v1, v2


def assert_rolled_back(agent: Agent, rollout: Rollout, v1, v2) -> None:
    rollout.refresh_from_db()
    routing = Routing.objects.get(agent=agent)
    assert rollout.state == "rolled_back"
    assert routing.weight_of(v2.pk) == 0
    assert routing.weights == {str(v1.pk): 10000}
    assert Agent.objects.get(pk=agent.pk).stable_id == v1.pk
    # Nothing gave the candidate weight after the rollback committed.
    actions = list(rollout.events.values_list("action", flat=True))
    assert actions[-1] == "rollback", actions
    assert actions.count("rollback") == 1


def test_advance_racing_rollback_never_leaves_the_candidate_weighted(world):
    agent, v1, v2 = world
    orders: Counter[str] = Counter()
    for i in range(ITERATIONS):
        rollout = engine.start_rollout(
            agent, candidate=v2, stages=STAGES, gates=[], actor="starter"
        )
        epoch = Routing.objects.get(agent=agent).epoch
        advanced, rolled_back = run_together(
            lambda r=rollout: engine.transition(r.pk, "advance", actor="advancer"),
            lambda r=rollout, i=i: engine.transition(
                r.pk, "rollback", actor="pager", reason=f"race {i}"
            ),
        )
        assert isinstance(rolled_back, Rollout), rolled_back
        assert_rolled_back(agent, rollout, v1, v2)
        if isinstance(advanced, Rollout):
            orders["advance first"] += 1
            assert rollout.events.filter(action="advance").count() == 1
            changes = 2
        else:
            # The rollback committed first: the advance saw a closed rollout.
            assert isinstance(advanced, engine.TransitionError), advanced
            orders["rollback first"] += 1
            assert not rollout.events.filter(action="advance").exists()
            changes = 1
        assert Routing.objects.get(agent=agent).epoch == epoch + changes
    assert sum(orders.values()) == ITERATIONS


def test_the_beat_racing_a_human_rollback_loses(world):
    agent, v1, v2 = world
    for i in range(20):
        rollout = engine.start_rollout(
            agent, candidate=v2, stages=STAGES, gates=[], actor="starter"
        )
        beat, rolled_back = run_together(
            engine.evaluate_open_rollouts,
            lambda r=rollout, i=i: engine.transition(
                r.pk, "rollback", actor="pager", reason=f"race {i}"
            ),
        )
        assert isinstance(beat, dict), beat
        assert isinstance(rolled_back, Rollout), rolled_back
        assert_rolled_back(agent, rollout, v1, v2)
        if beat["changed"]:
            assert rollout.events.filter(action="auto_advance", actor="system").count() == 1


PROMOTES_AT_ONCE = engine.validate_stages(
    [{"percent": 50, "min_duration_s": 0, "min_sessions": 0}, 100]
)


def race_promotion_against(rollback: Callable[[Rollout, int], Any], world) -> Counter[str]:
    """Start a rollout the beat promotes at its next tick, note the epoch a person sees,
    then run that tick and the person's ``rollback(rollout, seen_epoch)`` together,
    ITERATIONS times. Every time, the rollback must win; returns the commit orders."""
    agent, v1, v2 = world
    orders: Counter[str] = Counter()
    # The beat assesses before it locks, so a rollback released at the same instant
    # nearly always commits first. Holding it back by a random few milliseconds makes
    # both orders happen, each decided by the database. How long the beat takes depends
    # on the machine's load, so the range adapts: it widens while the rollback keeps
    # winning the race to the lock and narrows while the promotion does.
    rng = random.Random(2)
    longest = 0.02
    for _ in range(ITERATIONS):
        rollout = engine.start_rollout(
            agent, candidate=v2, stages=PROMOTES_AT_ONCE, gates=[], actor="starter"
        )
        seen = Routing.objects.get(agent=agent).epoch
        delay = rng.uniform(0, longest)

        def person(r: Rollout = rollout, e: int = seen, d: float = delay) -> Any:
            time.sleep(d)
            return rollback(r, e)

        beat, rolled_back = run_together(engine.evaluate_open_rollouts, person)
        assert isinstance(beat, dict), beat
        assert not isinstance(rolled_back, Exception), rolled_back
        assert_rolled_back(agent, rollout, v1, v2)
        actions = list(rollout.events.values_list("action", flat=True))
        if "auto_advance" in actions:
            assert actions == ["start", "auto_advance", "rollback"]
            assert rollout.events.get(action="auto_advance").to_state == "promoted"
            orders["promotion first"] += 1
            longest = max(longest * 0.8, 0.002)
        else:
            assert actions == ["start", "rollback"]
            orders["rollback first"] += 1
            longest = min(longest * 1.25, 2.0)
        assert Routing.objects.get(agent=agent).stable_history[-1] == v1.pk
    return orders


def test_a_rollout_rollback_racing_its_promotion_always_wins(world):
    orders = race_promotion_against(
        lambda rollout, _seen: engine.transition(rollout.pk, "rollback", actor="pager"), world
    )
    assert set(orders) == {"promotion first", "rollback first"}, orders


def test_an_agent_rollback_with_the_epoch_seen_racing_a_promotion_always_wins(world):
    agent = world[0]
    orders = race_promotion_against(
        lambda _rollout, seen: engine.rollback_agent(agent, actor="pager", expect_epoch=seen),
        world,
    )
    assert set(orders) == {"promotion first", "rollback first"}, orders


def test_a_verdict_assessed_before_a_rollback_is_dropped(world, monkeypatch):
    """The beat assesses outside any lock. If a human rolls back between that
    assessment and the beat's write, the stale verdict must not be applied."""
    agent, v1, v2 = world
    rollout = engine.start_rollout(agent, candidate=v2, stages=STAGES, gates=[], actor="starter")
    real_assess = evaluation.assess
    calls = []

    def assess_then_rollback(r, epoch, now=None):
        result = real_assess(r, epoch, now)
        if not calls:
            # A human's rollback commits on another connection, mid-beat.
            run_together(lambda: engine.transition(rollout.pk, "rollback", actor="pager"))
        calls.append(result.decision)
        return result

    monkeypatch.setattr(evaluation, "assess", assess_then_rollback)
    tally = engine.evaluate_open_rollouts()

    assert calls[0] == "advance"
    assert tally["changed"] == 0
    assert_rolled_back(agent, rollout, v1, v2)
    assert not RolloutEvent.objects.filter(actor="system").exists()


def test_a_verdict_assessed_before_a_human_advance_is_dropped(world, monkeypatch):
    """Likewise a human advance between the beat's assessment and its write: the beat
    must not apply its stage-0 verdict to stage 1 and skip a stage."""
    agent, _, v2 = world
    rollout = engine.start_rollout(agent, candidate=v2, stages=STAGES, gates=[], actor="starter")
    real_assess = evaluation.assess

    def assess_then_advance(r, epoch, now=None):
        result = real_assess(r, epoch, now)
        if r.stage == 0 and not rollout.events.filter(action="advance").exists():
            run_together(lambda: engine.transition(rollout.pk, "advance", actor="human"))
        return result

    monkeypatch.setattr(evaluation, "assess", assess_then_advance)
    assert engine.evaluate_open_rollouts()["changed"] == 0
    rollout.refresh_from_db()
    assert (rollout.state, rollout.stage) == ("running", 1)
    assert Routing.objects.get(agent=agent).weight_of(v2.pk) == 2500
    assert not RolloutEvent.objects.filter(actor="system").exists()


def test_concurrent_starts_open_exactly_one_rollout(world, make_version):
    agent, v1, v2 = world
    v3 = make_version(agent, "v3")
    for _ in range(10):
        first, second = run_together(
            lambda: engine.start_rollout(agent, candidate=v2, stages=STAGES, gates=[], actor="a"),
            lambda: engine.start_rollout(agent, candidate=v3, stages=STAGES, gates=[], actor="b"),
        )
        won = [r for r in (first, second) if isinstance(r, Rollout)]
        lost = [r for r in (first, second) if not isinstance(r, Rollout)]
        assert len(won) == len(lost) == 1
        assert isinstance(lost[0], engine.TransitionError), lost[0]
        routing = Routing.objects.get(agent=agent)
        assert routing.weights == {str(v1.pk): 9500, str(won[0].candidate_id): 500}
        engine.transition(won[0].pk, "rollback", actor="cleanup")

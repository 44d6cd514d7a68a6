"""The scale fixture builder (bench.fixtures) on a small build: its shape, its timeline,
and rollups equal to what the app itself writes for the same sessions and outcomes."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator

import pytest
from django.db import transaction
from django.db.models import Count

from bench import fixtures
from metrics import rollups
from metrics.models import Outcome, Rollup
from rollouts.models import Lifecycle, Rollout, RoutingChange, Session, SurvivalEstimate
from versions.models import Agent

pytestmark = pytest.mark.django_db

SESSIONS = 1500


@pytest.fixture(scope="module")
def built(django_db_setup, django_db_blocker) -> Iterator[fixtures.Built]:
    """One build for the module, rolled back at its end; each test runs in a savepoint
    inside it, so the replay's rewrites of the rollups stay in that test."""
    with django_db_blocker.unblock(), transaction.atomic():
        yield fixtures.build(SESSIONS, floor=False, vacuum=False)
        transaction.set_rollback(True)


def test_it_builds_fifty_agents_with_a_running_rollout_each_and_twenty_versions_on_the_busiest(
    built,
):
    assert Agent.objects.count() == fixtures.AGENTS
    running = Rollout.objects.filter(state="running").values("agent").annotate(n=Count("*"))
    assert len(running) == fixtures.AGENTS
    assert {row["n"] for row in running} == {1}
    busiest = Agent.objects.get(slug=built.info["busiest"])
    assert busiest.versions.count() == fixtures.BUSIEST_VERSIONS
    draining = Lifecycle.objects.filter(
        agent=busiest, drain_started_at__isnull=False, drained_at__isnull=True
    )
    assert sorted(draining.values_list("version_id", flat=True)) == sorted(
        built.info["agents"][busiest.slug]["draining"]
    )
    for version_id in built.info["agents"][busiest.slug]["draining"]:
        assert Session.objects.filter(agent=busiest, version_id=version_id, state="live").exists()
    drained = Lifecycle.objects.filter(agent=busiest, drained_at__isnull=False)
    assert drained.count() == fixtures.BUSIEST_VERSIONS - 2 - fixtures.DRAINING
    # The read models the beat keeps: a stored survival estimate per agent.
    assert SurvivalEstimate.objects.count() == fixtures.AGENTS


def test_it_writes_realistic_shares_of_live_ended_abandoned_and_expired_sessions(built):
    states = Counter(Session.objects.values_list("state", flat=True))
    total = sum(states.values())
    assert total == SESSIONS
    # 1% live, but every agent keeps at least one live session (and each draining
    # version one), which on a build this small adds up to a few percent.
    assert 0.005 <= states["live"] / total <= fixtures.LIVE_SHARE + (fixtures.AGENTS + 3) / total
    ended = total - states["live"]
    assert states["ended"] / ended > 0.8
    assert states["abandoned"] > 0
    assert states["expired"] > 0
    with_outcome = Outcome.objects.count()
    assert 0.85 <= with_outcome / states["ended"] <= 1.0
    assert not Outcome.objects.exclude(
        session_id__in=Session.objects.filter(state="ended").values("session_id")
    ).exists()


def test_it_pins_every_session_in_the_epoch_whose_routing_it_started_under(built):
    """Each session's epoch is a RoutingChange of its agent, its version had weight in
    that epoch, and it started between that change and the next."""
    changes = {
        (c.agent_id, c.epoch): c for c in RoutingChange.objects.all().order_by("agent", "epoch")
    }
    nexts = {(agent_id, epoch): changes.get((agent_id, epoch + 1)) for agent_id, epoch in changes}
    for agent_id, epoch, version_id, started_at in Session.objects.values_list(
        "agent_id", "epoch", "version_id", "started_at"
    ):
        change = changes[(agent_id, epoch)]
        assert str(version_id) in change.weights
        assert change.at <= started_at
        following = nexts[(agent_id, epoch)]
        if following is not None:
            assert started_at < following.at


def test_it_counts_every_pin_into_the_assignment_rollups_by_the_beat(built):
    counted = rollups.assigned_counts(
        list(Session.objects.values_list("version_id", flat=True).distinct())
    )
    expected = Counter(Session.objects.values_list("version_id", "epoch"))
    assert counted == dict(expected)


def _replay() -> None:
    """Every ended session and outcome through the app's own rollup writers, as the
    session-end, feedback and policy paths call them."""
    outcomes = {(o.agent_id, o.session_id): o for o in Outcome.objects.all()}
    for session in Session.objects.exclude(state="live").order_by("pk"):
        key = (session.version_id, session.epoch, session.session_id)
        if session.state in (rollups.ABANDONED, rollups.EXPIRED):
            rollups.sessions_ended(session.state, [key])
            continue
        outcome = outcomes.get((session.agent_id, session.session_id))
        values = (
            {name: getattr(outcome, name) for name in rollups.REPORTED_FIELDS}
            if outcome is not None
            else {}
        )
        rollups.session_ending(*key, rollups.LIVE, values)
        if outcome is not None:
            rollups.outcome_recorded(
                version_id=session.version_id,
                epoch=session.epoch,
                session_id=session.session_id,
                values=values,
            )
            if outcome.feedback is not None:
                rollups.feedback_replaced(
                    version_id=session.version_id,
                    epoch=session.epoch,
                    session_id=session.session_id,
                    old=None,
                    new=outcome.feedback,
                )


def test_its_rollups_equal_a_replay_of_its_sessions_through_the_app(built):
    versions = list(Session.objects.values_list("version_id", flat=True).distinct())
    fast = rollups.summaries(versions)
    fast_outcomes = rollups.with_outcome_counts(versions)
    assert fast
    assert sum(fast_outcomes.values()) == Outcome.objects.count()

    Rollup.objects.exclude(metric=rollups.ASSIGNED).delete()
    _replay()
    slow = rollups.summaries(versions)

    assert rollups.with_outcome_counts(versions) == fast_outcomes
    assert fast.keys() == slow.keys()
    for key, summary in slow.items():
        mine = fast[key]
        assert mine.n == summary.n, key
        assert math.isclose(mine.total, summary.total, rel_tol=1e-9, abs_tol=1e-9), key
        assert math.isclose(mine.total_sq, summary.total_sq, rel_tol=1e-9, abs_tol=1e-9), key
        if summary.sketch is not None:
            assert mine.sketch.to_json() == summary.sketch.to_json(), key

"""The stored survival estimate behind drain ETAs (rollouts.fleet.refresh_estimate) and
the beat task that recomputes it (rollouts.tasks.estimate_survival)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from rollouts import fleet, tasks
from rollouts.models import Session, SurvivalEstimate
from versions.models import Agent

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def eager_fan_out():
    """The task fans out one task per agent; run those in-process here."""
    app = tasks.estimate_survival.app
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False


def sessions(agent, version, durations_s, *, now, live=0):
    rows = [
        Session(
            agent=agent,
            version=version,
            session_id=f"{agent.slug}-{i}",
            state="ended",
            started_at=now - timedelta(seconds=d + 60),
            last_seen_at=now - timedelta(seconds=60),
            ended_at=now - timedelta(seconds=60),
        )
        for i, d in enumerate(durations_s)
    ]
    rows += [
        Session(
            agent=agent,
            version=version,
            session_id=f"{agent.slug}-live-{i}",
            started_at=now - timedelta(seconds=30),
            last_seen_at=now,
        )
        for i in range(live)
    ]
    Session.objects.bulk_create(rows)


def test_the_beat_task_stores_one_estimate_per_agent(agent, make_version):
    other = Agent.objects.create(slug="support", name="Support")
    now = timezone.now()
    sessions(agent, make_version(agent), [100, 200, 300, 400], now=now, live=2)
    sessions(other, make_version(other), [1000] * 3, now=now)

    result = tasks.estimate_survival.apply()
    assert result.successful(), result.traceback
    assert result.get() == 2

    mine = SurvivalEstimate.objects.get(agent=agent)
    assert (mine.sampled, mine.events, mine.sessions) == (6, 4, 6.0)
    curve = fleet.survival_curve(agent)
    # The two live ones (30 s old) are censored before the first end: four at risk
    # at 100 s, so S = 3/4, then 1/2, 1/4 and 0 (times on the stored 1% grid).
    assert curve.at(99) == 1.0
    assert [curve.at(t) for t in (150, 250, 350, 410)] == pytest.approx([0.75, 0.5, 0.25, 0])
    assert SurvivalEstimate.objects.get(agent=other).events == 3


def test_a_request_reads_the_stored_estimate_and_never_the_window(agent, make_version):
    now = timezone.now()
    sessions(agent, make_version(agent), [100, 200], now=now)
    fleet.refresh_estimate(agent, now)
    Session.objects.filter(agent=agent).delete()  # the stored curve stands meanwhile

    with CaptureQueriesContext(connection) as queries:
        curve = fleet.survival_curve(agent)
    assert len(queries) == 1
    assert curve.times == pytest.approx((100.0, 200.0), rel=0.01)


def test_a_new_agent_gets_its_estimate_at_its_first_request(agent, make_version):
    sessions(agent, make_version(agent), [500] * 4, now=timezone.now())
    assert not SurvivalEstimate.objects.filter(agent=agent).exists()

    curve = fleet.survival_curve(agent)

    assert curve.times == pytest.approx((500.0,), rel=0.01)
    assert SurvivalEstimate.objects.filter(agent=agent).exists()


def test_a_second_computation_replaces_the_first(agent, make_version):
    version = make_version(agent)
    now = timezone.now()
    fleet.refresh_estimate(agent, now)
    sessions(agent, version, [50], now=now)
    fleet.refresh_estimate(agent, now + timedelta(seconds=1))
    estimate = SurvivalEstimate.objects.get(agent=agent)
    assert estimate.computed_at == now + timedelta(seconds=1)
    assert estimate.events == 1

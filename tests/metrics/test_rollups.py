"""Metric rollups equal a brute-force pass over the raw sessions and outcomes.

Randomised histories (seeded) go through the real service functions: pins at moving
epochs and reported pins, ends with and without outcomes, duplicate ends, feedback before
and after the end and twice, abandon and expiry by the beat's policies and at heartbeat
and assignment, ends of abandoned and expired sessions. Then every rollup the readers
return is compared with what the rows say.
"""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from datetime import timedelta

import pytest
from django.db import connection
from django.db.models import Value
from django.db.models.functions import Least
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from metrics import rollups
from metrics.models import Outcome, Rollup
from metrics.sketch import Sketch
from metrics.summary import Summary
from rollouts import drain, engine, sessions
from rollouts.models import Session
from tests.concurrency import race
from tests.rollouts.conftest import set_weights

pytestmark = pytest.mark.django_db

FIELDS = rollups.FIELD_METRICS  # outcome field -> metric


def random_outcome(rng: random.Random) -> dict:
    outcome = {}
    if rng.random() < 0.7:
        outcome["success"] = rng.random() < 0.8
    if rng.random() < 0.6:
        outcome["error"] = rng.random() < 0.1
    if rng.random() < 0.7:
        outcome["latency_ms"] = rng.choice([0.0, round(rng.lognormvariate(6, 1), 3)])
    if rng.random() < 0.5:
        outcome["cost_usd"] = round(rng.uniform(0, 0.05), 6)
    if rng.random() < 0.4:
        outcome["hallucination"] = rng.random() < 0.05
    if rng.random() < 0.2:
        outcome["feedback"] = rng.choice([-1.0, -0.5, 0.0, 0.25, 1.0])
    if rng.random() < 0.1:
        outcome["success"] = None  # explicitly unreported
    return outcome


def brute_force(version_ids: list[int]):
    """The rollups, recomputed from every session and outcome row."""
    summaries: dict = defaultdict(list)
    with_outcome: dict = defaultdict(int)
    assigned: dict = defaultdict(int)
    abandon: dict = defaultdict(list)
    outcomes = {o.session_id: o for o in Outcome.objects.filter(version_id__in=version_ids)}
    for o in outcomes.values():
        if o.ended_at is None:
            continue
        for field, metric in FIELDS.items():
            value = getattr(o, field)
            if value is not None:
                summaries[(o.version_id, o.epoch, metric)].append(float(value))
        if rollups.reported({f: getattr(o, f) for f in rollups.REPORTED_FIELDS}):
            with_outcome[(o.version_id, o.epoch)] += 1
    for s in Session.objects.filter(version_id__in=version_ids):
        assigned[(s.version_id, s.epoch)] += 1
        if s.state == "live":
            continue
        o = outcomes.get(s.session_id)
        has_outcome = (
            o is not None
            and o.ended_at is not None
            and rollups.reported({f: getattr(o, f) for f in rollups.REPORTED_FIELDS})
        )
        abandoned = s.state in ("abandoned", "expired") or not has_outcome
        abandon[(s.version_id, s.epoch, "abandon_rate")].append(1.0 if abandoned else 0.0)
    expected = {
        key: Summary.of(values, sketched=key[2] in rollups.SKETCHED)
        for key, values in summaries.items()
    }
    expected.update({key: Summary.of(values) for key, values in abandon.items()})
    return expected, dict(with_outcome), dict(assigned)


def assert_same(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for key, summary in expected.items():
        mine = got[key]
        assert mine.n == summary.n, key
        assert math.isclose(mine.total, summary.total, rel_tol=1e-9, abs_tol=1e-9), key
        assert math.isclose(mine.total_sq, summary.total_sq, rel_tol=1e-9, abs_tol=1e-9), key
        if key[2] in rollups.SKETCHED:
            assert mine.sketch == summary.sketch, key


def play(agent, versions, rng: random.Random, steps: int) -> None:
    """A random history of one agent's sessions through the real service functions."""
    slug = agent.slug
    started: list[str] = []
    serial = 0
    for _ in range(steps):
        action = rng.choices(
            ["start", "report", "end", "end-again", "feedback", "abandon", "expire",
             "expire-at-heartbeat", "expire-at-start", "route"],
            weights=[30, 3, 20, 4, 10, 4, 3, 2, 2, 3],
        )[0]  # fmt: skip
        now = timezone.now()
        if action == "start" or not started:
            serial += 1
            started.append(f"s-{serial}")
            sessions.assign(slug, started[-1])
        elif action == "report":
            serial += 1
            started.append(f"r-{serial}")
            sessions.assign(
                slug,
                started[-1],
                sessions.Report(rng.choice(versions).pk, timezone.now()),
            )
        elif action in ("end", "end-again"):
            sessions.end(slug, rng.choice(started), random_outcome(rng))
        elif action == "feedback":
            sessions.feedback(slug, rng.choice(started), rng.choice([-1.0, -0.3, 0.5, 1.0]))
        elif action == "abandon":
            chosen = rng.sample(started, min(3, len(started)))
            # Time moves for the start too: a session is never seen before it began.
            idle_since = now - timedelta(seconds=agent.idle_timeout_s + 1)
            Session.objects.filter(session_id__in=chosen).update(
                last_seen_at=idle_since, started_at=Least("started_at", Value(idle_since))
            )
            drain.abandon_idle(agent, now)
        elif action == "expire":
            chosen = rng.sample(started, min(2, len(started)))
            # Told to drain for its age: it started at least max_session_age_s before.
            told = now - timedelta(seconds=agent.drain_grace_s + 1)
            Session.objects.filter(session_id__in=chosen, state="live").update(
                drain_at=told,
                started_at=told - timedelta(seconds=agent.max_session_age_s + 1),
            )
            drain.expire_overdue(agent, now)
        elif action in ("expire-at-heartbeat", "expire-at-start"):
            chosen = rng.choice(started)
            Session.objects.filter(session_id=chosen, state="live").update(
                drain_at=now - timedelta(seconds=agent.drain_grace_s + 1)
            )
            if action == "expire-at-heartbeat":
                sessions.heartbeat(slug, chosen)
            else:
                sessions.assign(slug, chosen)
        elif action == "route":
            weights = {v.pk: 0 for v in versions}
            for v in rng.sample(versions, rng.randint(1, len(versions))):
                weights[v.pk] = rng.randint(1, 10)
            total = sum(weights.values())
            bp = {pk: w * 10000 // total for pk, w in weights.items()}
            bp[max(bp, key=bp.get)] += 10000 - sum(bp.values())
            set_weights(agent, bp)


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6])
def test_rollups_equal_a_brute_force_pass_over_the_rows(agent, make_version, seed):
    rng = random.Random(seed)
    versions = [make_version(agent, f"v{i}") for i in range(3)]
    engine.set_stable(agent, versions[0], actor="test")
    play(agent, versions, rng, steps=160)
    # Two passes: the second must find nothing new.
    rollups.count_assignments(settle_s=0)
    rollups.count_assignments(settle_s=0)

    ids = [v.pk for v in versions]
    expected, with_outcome, assigned = brute_force(ids)
    assert_same(rollups.summaries(ids), expected)
    assert rollups.with_outcome_counts(ids) == with_outcome
    assert rollups.assigned_counts(ids) == assigned
    # The history exercised what it should: several epochs, reported pins, every state.
    assert len({e for _, e in assigned}) >= 3
    assert None in {e for _, e in assigned}
    assert {"live", "ended", "abandoned", "expired"} <= set(
        Session.objects.values_list("state", flat=True)
    )


def test_reading_some_epochs_reads_only_those(agent, make_version):
    v1, v2 = make_version(agent, "v1"), make_version(agent, "v2")
    engine.set_stable(agent, v1, actor="test")
    sessions.assign(agent.slug, "a")
    first = Session.objects.get(session_id="a").epoch
    set_weights(agent, {v1: 5000, v2: 5000})
    for i in range(40):
        sessions.assign(agent.slug, f"b{i}")
    second = first + 1
    for sid in ["a", *[f"b{i}" for i in range(40)]]:
        sessions.end(agent.slug, sid, {"success": True, "latency_ms": 100.0})

    both = rollups.summaries([v1.pk, v2.pk])
    only = rollups.summaries([v1.pk, v2.pk], epochs=[second])
    assert both[(v1.pk, first, "success_rate")].n == 1
    assert all(epoch == second for _, epoch, _ in only)
    assert sum(s.n for (_, _, m), s in only.items() if m == "success_rate") == 40
    assert rollups.with_outcome_counts([v1.pk], epochs=[first]) == {(v1.pk, first): 1}


def test_a_second_feedback_replaces_the_first(agent, make_version):
    v1 = make_version(agent, "v1")
    engine.set_stable(agent, v1, actor="test")
    sessions.assign(agent.slug, "s")
    sessions.feedback(agent.slug, "s", 1.0)  # before the end: counted at the end
    assert rollups.summaries([v1.pk]) == {}
    sessions.end(agent.slug, "s", {"success": True})
    epoch = Session.objects.get(session_id="s").epoch
    key = (v1.pk, epoch, "feedback_score")
    assert (rollups.summaries([v1.pk])[key].n, rollups.summaries([v1.pk])[key].total) == (1, 1.0)
    sessions.feedback(agent.slug, "s", -0.5)
    summary = rollups.summaries([v1.pk])[key]
    assert (summary.n, summary.total, summary.total_sq) == (1, -0.5, 0.25)


def test_an_abandoned_session_ending_with_an_outcome_is_no_longer_abandoned(agent, make_version):
    v1 = make_version(agent, "v1")
    engine.set_stable(agent, v1, actor="test")
    for sid in ("a", "b"):
        sessions.assign(agent.slug, sid)
    later = timezone.now() + timedelta(seconds=agent.idle_timeout_s + 1)
    assert drain.abandon_idle(agent, later) == 2
    epoch = Session.objects.get(session_id="a").epoch
    key = (v1.pk, epoch, "abandon_rate")
    assert (rollups.summaries([v1.pk])[key].n, rollups.summaries([v1.pk])[key].total) == (2, 2)

    sessions.end(agent.slug, "a", {"success": True})
    sessions.end(agent.slug, "b", {})  # back, but with nothing to report
    summary = rollups.summaries([v1.pk])[key]
    assert (summary.n, summary.total) == (2, 1)
    assert rollups.with_outcome_counts([v1.pk]) == {(v1.pk, epoch): 1}


def test_the_beat_counts_each_pin_once_and_waits_for_the_mark_to_settle(agent, make_version):
    v1 = make_version(agent, "v1")
    engine.set_stable(agent, v1, actor="test")
    for i in range(5):
        sessions.assign(agent.slug, f"s{i}")
    epoch = Session.objects.first().epoch
    now = timezone.now()

    assert rollups.count_assignments(now=now, settle_s=10) == 0  # the mark is taken
    sessions.assign(agent.slug, "late")  # after the mark: counted on a later mark
    assert rollups.count_assignments(now=now + timedelta(seconds=5), settle_s=10) == 0
    assert rollups.count_assignments(now=now + timedelta(seconds=10), settle_s=10) == 5
    assert rollups.assigned_counts([v1.pk]) == {(v1.pk, epoch): 5}
    assert rollups.count_assignments(now=now + timedelta(seconds=20), settle_s=10) == 1
    assert rollups.count_assignments(now=now + timedelta(seconds=40), settle_s=10) == 0
    assert rollups.assigned_counts([v1.pk]) == {(v1.pk, epoch): 6}


def test_reading_costs_one_query_and_rows_bounded_by_keys_not_sessions(agent, make_version):
    v1, v2 = make_version(agent, "v1"), make_version(agent, "v2")
    engine.set_stable(agent, v1, actor="test")
    set_weights(agent, {v1: 5000, v2: 5000})
    for i in range(300):
        sessions.assign(agent.slug, f"s{i}")
        sessions.end(agent.slug, f"s{i}", {"success": True, "latency_ms": 10.0 + i})
    rows = Rollup.objects.filter(version_id__in=[v1.pk, v2.pk]).count()
    # 2 versions x 1 epoch x (success, latency, abandon, with-outcome) x 16 shards at most.
    assert rows <= 2 * 4 * rollups.SHARDS
    with CaptureQueriesContext(connection) as queries:
        got = rollups.summaries([v1.pk, v2.pk])
    assert len(queries) == 1
    assert sum(s.n for (_, _, m), s in got.items() if m == "latency_ms") == 300
    assert got[next(k for k in got if k[2] == "latency_ms")].sketch.count > 0


def test_an_end_writes_its_rollups_in_two_statements(agent, make_version):
    """One for abandon_rate, one for everything the outcome reports: the write does not
    grow with the number of metrics."""
    v1 = make_version(agent, "v1")
    engine.set_stable(agent, v1, actor="test")
    sessions.assign(agent.slug, "s")
    outcome = {"success": True, "error": False, "latency_ms": 5.0, "cost_usd": 0.01,
               "hallucination": False, "feedback": 0.5}  # fmt: skip
    with CaptureQueriesContext(connection) as queries:
        sessions.end(agent.slug, "s", outcome)
    writes = [q["sql"] for q in queries if "metrics_rollup" in q["sql"]]
    assert len(writes) == 2
    assert len(rollups.summaries([v1.pk])) == 7  # six metrics and abandon_rate


def test_sketch_rows_merge_in_the_database_like_in_python(agent, make_version):
    v1 = make_version(agent, "v1")
    engine.set_stable(agent, v1, actor="test")
    values = [0.0, 1e-12, 3.0, 3.01, 250.0, 250.0, 9e5]
    for i, value in enumerate(values):
        sessions.assign(agent.slug, f"s{i}")
        sessions.end(agent.slug, f"s{i}", {"latency_ms": value})
    (summary,) = [s for (_, _, m), s in rollups.summaries([v1.pk]).items() if m == "latency_ms"]
    assert summary.sketch == Sketch.of(values)
    assert summary.sketch.quantile(1.0) == 9e5


@pytest.mark.django_db(transaction=True)
def test_concurrent_ends_lose_no_update(agent, make_version):
    v1 = make_version(agent, "v1")
    engine.set_stable(agent, v1, actor="test")
    ids = [f"c{i}" for i in range(24)]
    for sid in ids:
        sessions.assign(agent.slug, sid)

    def work(i: int) -> None:
        sessions.end(agent.slug, ids[i], {"success": i % 2 == 0, "latency_ms": float(i)})
        sessions.feedback(agent.slug, ids[i], 0.5)
        sessions.feedback(agent.slug, ids[i], -0.5)

    race(len(ids), work)
    expected, with_outcome, _ = brute_force([v1.pk])
    assert_same(rollups.summaries([v1.pk]), expected)
    assert with_outcome == rollups.with_outcome_counts([v1.pk])


@pytest.mark.parametrize("seed", range(5))
def test_the_database_merges_sketches_like_python(seed):
    rng = random.Random(seed)
    a = Sketch.of(rng.lognormvariate(5, 2) for _ in range(rng.randint(0, 300)))
    b = Sketch.of([0.0] * rng.randint(0, 3) + [rng.uniform(0, 1e4) for _ in range(200)])
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT metrics_sketch_merge(%s::jsonb, %s::jsonb),"
            " metrics_sketch_merge(NULL, %s::jsonb)",
            [json.dumps(a.to_json()), json.dumps(b.to_json()), json.dumps(b.to_json())],
        )
        merged, only_b = cursor.fetchone()
    as_sketch = Sketch.from_json(merged if isinstance(merged, dict) else json.loads(merged))
    assert as_sketch == a.merge(b)
    assert Sketch.from_json(only_b if isinstance(only_b, dict) else json.loads(only_b)) == b

"""Drain policies, heartbeat directives and the version lifecycle.

Time is moved by rewriting session timestamps in the database, never by sleeping.
"""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
from django.db import connection
from django.db.models import Sum
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from metrics.models import Rollup
from rollouts import drain, engine, sessions
from rollouts.fleet import fleet as fleet_view
from rollouts.models import FULL, Lifecycle, Routing, Session
from rollouts.routing import Table, bucket
from tests.concurrency import race
from tests.rollouts.conftest import set_weights
from versions import services
from versions.models import Agent, AuditEntry, Version

START = "/api/agents/{slug}/sessions/"
BEAT = "/api/agents/{slug}/sessions/{sid}/heartbeat/"
END = "/api/agents/{slug}/sessions/{sid}/end/"


@pytest.fixture
def policy_agent(agent):
    agent.idle_timeout_s = 60
    agent.max_session_age_s = 100
    agent.drain_grace_s = 30
    agent.max_live_versions = 4
    agent.save()
    return agent


def start(client, agent, session_id: str) -> dict:
    response = client.post(START.format(slug=agent.slug), {"session_id": session_id}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def superseded(agent, make_version, client, actor, *session_ids: str) -> tuple[Version, Version]:
    """Start ``session_ids`` on a stable v1, then make v2 stable: v1 is draining, with those
    sessions still pinned to it."""
    v1, v2 = make_version(agent), make_version(agent)
    engine.set_stable(agent, v1, actor=actor)
    for session_id in session_ids:
        start(client, agent, session_id)
    engine.set_stable(agent, v2, actor=actor)
    return v1, v2


def beat(client, agent, session_id: str) -> str:
    response = client.post(BEAT.format(slug=agent.slug, sid=session_id))
    assert response.status_code == 200, response.content
    return response.json()["directive"]


def age(session_id: str, **fields_seconds_ago: int) -> None:
    """Move a session's timestamps into the past."""
    now = timezone.now()
    Session.objects.filter(session_id=session_id).update(
        **{field: now - timedelta(seconds=s) for field, s in fields_seconds_ago.items()}
    )


def audits(action: str, **filters) -> list[AuditEntry]:
    return list(AuditEntry.objects.filter(action=action, **filters).order_by("id"))


def state(session_id: str) -> str:
    return Session.objects.get(session_id=session_id).state


# --- max_session_age_s and drain_grace_s ----------------------------------------------


def test_it_lets_old_sessions_on_an_active_version_continue(
    policy_agent, make_version, harness, actor
):
    engine.set_stable(policy_agent, make_version(policy_agent), actor=actor)
    start(harness, policy_agent, "old")
    age("old", started_at=10 * 86400)
    assert beat(harness, policy_agent, "old") == "continue"
    assert Session.objects.get(session_id="old").drain_at is None
    assert not audits("session.drain")


def test_it_drains_then_expires_an_old_session_on_a_draining_version(
    policy_agent, make_version, harness, actor
):
    superseded(policy_agent, make_version, harness, actor, "young", "old")

    age("young", started_at=99)
    age("old", started_at=101)
    assert beat(harness, policy_agent, "young") == "continue"
    assert beat(harness, policy_agent, "old") == "drain"
    drain_at = Session.objects.get(session_id="old").drain_at
    assert drain_at is not None
    [entry] = audits("session.drain")
    assert entry.actor == "system"
    assert "max_session_age_s=100" in entry.reason
    assert entry.object_repr == "old"

    # Within the grace: drain again, and the first drain time stands.
    assert beat(harness, policy_agent, "old") == "drain"
    assert Session.objects.get(session_id="old").drain_at == drain_at
    assert len(audits("session.drain")) == 1

    age("old", started_at=200, drain_at=31)
    assert beat(harness, policy_agent, "old") == "terminate"
    assert state("old") == "expired"
    assert Session.objects.get(session_id="old").ended_at is not None
    [expired] = audits("session.expired")
    assert "drain_grace_s=30" in expired.reason
    assert beat(harness, policy_agent, "old") == "terminate"
    assert len(audits("session.expired")) == 1
    assert state("young") == "live"


def test_it_terminates_at_once_with_no_grace(policy_agent, make_version, harness, actor):
    superseded(policy_agent, make_version, harness, actor, "s")
    services.update_agent(policy_agent, changes={"drain_grace_s": 0}, actor=actor)
    age("s", started_at=101)
    assert beat(harness, policy_agent, "s") == "terminate"
    assert state("s") == "expired"
    assert len(audits("session.drain")) == 1
    assert len(audits("session.expired")) == 1


def test_it_tells_a_reasking_session_to_drain_too(policy_agent, make_version, harness, actor):
    """A harness that re-posts its session id gets the same directive as a heartbeat."""
    v1, _ = superseded(policy_agent, make_version, harness, actor, "s")
    age("s", started_at=101)
    response = harness.post(
        START.format(slug=policy_agent.slug), {"session_id": "s"}, format="json"
    )
    assert response.status_code == 200
    assert response.json()["directive"] == "drain"
    assert response.json()["version"]["id"] == v1.pk
    # The hot path hands a directive that must write to the full path, which audits it.
    assert len(audits("session.drain")) == 1


def test_it_applies_a_changed_policy_at_the_very_next_heartbeat(
    policy_agent, make_version, harness, actor, release_manager
):
    superseded(policy_agent, make_version, harness, actor, "s")
    age("s", started_at=50)
    assert beat(harness, policy_agent, "s") == "continue"

    response = release_manager.patch(
        f"/api/agents/{policy_agent.slug}/",
        {"drain_policy": {"max_session_age_s": 40}, "reason": "tighten"},
        format="json",
    )
    assert response.status_code == 200, response.content
    assert beat(harness, policy_agent, "s") == "drain"

    age("s", drain_at=20)
    assert beat(harness, policy_agent, "s") == "drain"
    services.update_agent(policy_agent, changes={"drain_grace_s": 10}, actor=actor)
    assert beat(harness, policy_agent, "s") == "terminate"
    assert state("s") == "expired"


# --- idle_timeout_s -----------------------------------------------------------------


def test_it_marks_idle_sessions_abandoned(policy_agent, make_version, harness, actor):
    engine.set_stable(policy_agent, make_version(policy_agent), actor=actor)
    for sid in ("idle", "busy", "edge"):
        start(harness, policy_agent, sid)
    age("idle", last_seen_at=61)
    age("edge", last_seen_at=55)

    result = drain.enforce_policies(policy_agent)
    assert result["abandoned"] == 1
    assert (state("idle"), state("busy"), state("edge")) == ("abandoned", "live", "live")
    [entry] = audits("sessions.abandoned")
    assert entry.actor == "system"
    assert "idle_timeout_s=60" in entry.reason
    assert entry.after["sessions"] == ["idle"]

    assert beat(harness, policy_agent, "idle") == "terminate"
    assert state("idle") == "abandoned"
    assert beat(harness, policy_agent, "busy") == "continue"
    # A second pass finds nothing more to do.
    assert drain.enforce_policies(policy_agent)["abandoned"] == 0
    assert len(audits("sessions.abandoned")) == 1


def test_it_reads_the_idle_timeout_at_each_pass(policy_agent, make_version, harness, actor):
    engine.set_stable(policy_agent, make_version(policy_agent), actor=actor)
    start(harness, policy_agent, "s")
    age("s", last_seen_at=30)
    assert drain.enforce_policies(policy_agent)["abandoned"] == 0
    services.update_agent(policy_agent, changes={"idle_timeout_s": 20}, actor=actor)
    policy_agent.refresh_from_db()
    assert drain.enforce_policies(policy_agent)["abandoned"] == 1


def test_a_heartbeat_keeps_a_session_from_being_abandoned(
    policy_agent, make_version, harness, actor
):
    engine.set_stable(policy_agent, make_version(policy_agent), actor=actor)
    start(harness, policy_agent, "s")
    age("s", last_seen_at=61)
    beat(harness, policy_agent, "s")
    assert drain.enforce_policies(policy_agent)["abandoned"] == 0
    assert state("s") == "live"


# --- max_live_versions and forced drains -----------------------------------------------


def test_it_force_drains_the_oldest_draining_version_past_the_cap(
    policy_agent, make_version, harness, actor
):
    services.update_agent(policy_agent, changes={"max_live_versions": 2}, actor=actor)
    policy_agent.refresh_from_db()
    v1, v2, v3 = (make_version(policy_agent) for _ in range(3))
    engine.set_stable(policy_agent, v1, actor=actor)
    start(harness, policy_agent, "on-v1")
    start(harness, policy_agent, "on-v1-b")
    engine.set_stable(policy_agent, v2, actor=actor)
    start(harness, policy_agent, "on-v2")
    assert drain.enforce_policies(policy_agent)["force_drained"] == []  # two live: at the cap
    assert not audits("version.force_drained")
    # The routing change that gives v3 weight makes three live versions: v1, the oldest
    # draining one, is forced there and then, in the same transaction.
    engine.set_stable(policy_agent, v3, actor=actor)
    start(harness, policy_agent, "on-v3")

    [entry] = audits("version.force_drained")
    assert entry.object_id == str(v1.pk)
    assert entry.actor == "system"
    assert "max_live_versions=2" in entry.reason
    assert entry.after == {"sessions_told_to_drain": 2}
    lifecycle = Lifecycle.objects.get(pk=v1.pk)
    assert lifecycle.forced_drain_at is not None
    assert "max_live_versions" in lifecycle.forced_drain_reason

    assert beat(harness, policy_agent, "on-v1") == "drain"
    assert beat(harness, policy_agent, "on-v2") == "continue"
    assert beat(harness, policy_agent, "on-v3") == "continue"
    # Handled already: the next pass forces nothing more while v1 drains.
    assert drain.enforce_policies(policy_agent)["force_drained"] == []
    assert len(audits("version.force_drained")) == 1

    # The grace runs out for the session that went quiet: the beat expires it, and v1
    # is drained once its last session ends. (Time moves for the mark too: a session is
    # told to drain at its version's mark or later.)
    age("on-v1-b", drain_at=31)
    Lifecycle.objects.filter(pk=v1.pk).update(
        forced_drain_at=timezone.now() - timedelta(seconds=31)
    )
    assert drain.enforce_policies(policy_agent)["expired"] == 1
    assert state("on-v1-b") == "expired"
    assert "drain_grace_s=30" in audits("sessions.expired")[0].reason
    assert not audits("version.drained")
    harness.post(END.format(slug=policy_agent.slug, sid="on-v1"), {}, format="json")
    [drained] = audits("version.drained")
    assert drained.object_id == str(v1.pk)


def three_live_versions(agent, make_version, client, actor):
    """v1 and v2 draining with live sessions, v3 the stable: three live versions."""
    v1, v2, v3 = (make_version(agent) for _ in range(3))
    engine.set_stable(agent, v1, actor=actor)
    start(client, agent, "on-v1")
    engine.set_stable(agent, v2, actor=actor)
    start(client, agent, "on-v2")
    engine.set_stable(agent, v3, actor=actor)
    start(client, agent, "on-v3")
    return v1, v2, v3


def test_the_cap_applies_at_the_next_heartbeat_after_a_routing_change(
    policy_agent, make_version, harness, actor
):
    services.update_agent(policy_agent, changes={"max_live_versions": 2}, actor=actor)
    policy_agent.refresh_from_db()
    v1, _, _ = three_live_versions(policy_agent, make_version, harness, actor)

    # No beat has run: the routing change that made v3 live applied the cap.
    assert beat(harness, policy_agent, "on-v1") == "drain"
    assert beat(harness, policy_agent, "on-v2") == "continue"
    assert beat(harness, policy_agent, "on-v3") == "continue"
    [entry] = audits("version.force_drained")
    assert (entry.object_id, entry.actor) == (str(v1.pk), "system")
    assert "max_live_versions=2" in entry.reason
    # The beat finds it done, and a later routing change does not force it again.
    assert drain.enforce_policies(policy_agent)["force_drained"] == []
    engine.set_stable(policy_agent, make_version(policy_agent), actor=actor)
    assert len(audits("version.force_drained", object_id=str(v1.pk))) == 1


def test_the_cap_counts_a_version_with_weight_as_live_before_its_first_session(
    policy_agent, make_version, harness, actor
):
    """The first pin on a version happens on the hot path, which must not count
    anything: a version is counted from the routing change that gives it weight."""
    services.update_agent(policy_agent, changes={"max_live_versions": 2}, actor=actor)
    policy_agent.refresh_from_db()
    v1, v2, v3 = (make_version(policy_agent) for _ in range(3))
    engine.set_stable(policy_agent, v1, actor=actor)
    start(harness, policy_agent, "on-v1")
    engine.set_stable(policy_agent, v2, actor=actor)
    start(harness, policy_agent, "on-v2")
    engine.start_rollout(
        policy_agent, candidate=v3, stages=engine.validate_stages([5, 100]), gates=[], actor=actor
    )
    assert not Session.objects.filter(version=v3).exists()
    assert beat(harness, policy_agent, "on-v1") == "drain"
    assert beat(harness, policy_agent, "on-v2") == "continue"


def test_the_cap_applies_at_the_next_heartbeat_after_a_policy_change(
    policy_agent, make_version, harness, actor, release_manager, django_capture_on_commit_callbacks
):
    v1, v2, _ = three_live_versions(policy_agent, make_version, harness, actor)
    assert beat(harness, policy_agent, "on-v1") == "continue"  # cap 4: fine

    with django_capture_on_commit_callbacks(execute=True):
        response = release_manager.patch(
            f"/api/agents/{policy_agent.slug}/",
            {"drain_policy": {"max_live_versions": 1}},
            format="json",
        )
    assert response.status_code == 200, response.content
    assert beat(harness, policy_agent, "on-v1") == "drain"
    assert beat(harness, policy_agent, "on-v2") == "drain"
    assert beat(harness, policy_agent, "on-v3") == "continue"  # active: never forced
    assert {e.object_id for e in audits("version.force_drained")} == {str(v1.pk), str(v2.pk)}


def test_the_cap_applies_to_a_pin_reported_on_a_drained_version(
    policy_agent, make_version, harness, actor
):
    """A version without weight gets new sessions only from harnesses that routed
    locally while Prism was down. Their first heartbeat brings the version back to
    life, and the cap with it."""
    services.update_agent(policy_agent, changes={"max_live_versions": 2}, actor=actor)
    policy_agent.refresh_from_db()
    v1, v2, v3 = (make_version(policy_agent) for _ in range(3))
    engine.set_stable(policy_agent, v1, actor=actor)
    start(harness, policy_agent, "gone")
    engine.set_stable(policy_agent, v2, actor=actor)
    harness.post(END.format(slug=policy_agent.slug, sid="gone"), {}, format="json")
    assert Lifecycle.objects.get(pk=v1.pk).drained_at is not None
    start(harness, policy_agent, "on-v2")
    engine.set_stable(policy_agent, v3, actor=actor)  # v2 draining, v3 active: 2 live

    response = harness.post(
        START.format(slug=policy_agent.slug),
        {"session_id": "offline", "version": v1.pk, "started_at": timezone.now().isoformat()},
        format="json",
    )
    assert response.status_code == 201, response.content
    assert beat(harness, policy_agent, "offline") == "drain"
    assert Lifecycle.objects.get(pk=v1.pk).drained_at is None  # live again, then forced
    assert beat(harness, policy_agent, "on-v2") == "continue"
    assert [e.object_id for e in audits("version.force_drained")] == [str(v1.pk)]


def test_a_heartbeat_counts_nothing(policy_agent, make_version, harness, actor):
    """Directives come from the session's row and its version's marks, read in one
    statement: no count of live sessions or versions, however big the fleet."""
    three_live_versions(policy_agent, make_version, harness, actor)
    for i in range(20):
        start(harness, policy_agent, f"more-{i}")
    with CaptureQueriesContext(connection) as queries:
        directive = sessions.heartbeat(policy_agent.slug, "on-v1").directive
    assert directive == "continue"
    assert len(queries) == 2  # the read and the last_seen_at update
    assert not [q for q in queries if "COUNT(" in q["sql"].upper()]


def test_a_session_pinned_from_the_table_before_an_evacuating_rollback_drains(
    policy_agent, make_version, harness, actor
):
    """A pin computed from the routing just before the rollback committed lands on the
    candidate after the evacuation marked its sessions: the version's mark catches it."""
    v1, v2 = make_version(policy_agent), make_version(policy_agent)
    engine.set_stable(policy_agent, v1, actor=actor)
    rollout = engine.start_rollout(
        policy_agent, candidate=v2, stages=engine.validate_stages([50, 100]), gates=[], actor=actor
    )
    before = Routing.objects.get(agent=policy_agent)
    table = Table.compile(before.epoch, {int(k): v for k, v in before.weights.items()})
    late = next(
        f"late-{i}"
        for i in itertools.count()
        if table.pick(bucket(policy_agent.slug, f"late-{i}")) == v2.pk
    )
    engine.transition(rollout.pk, "rollback", actor=actor, reason="bad", evacuate=True)

    # What the hot path writes for a table compiled before the rollback: the pin.
    now = timezone.now()
    Session.objects.create(
        agent=policy_agent,
        session_id=late,
        version=v2,
        started_at=now,
        last_seen_at=now,
        epoch=before.epoch,
    )

    assert beat(harness, policy_agent, late) == "drain"
    assert Session.objects.get(session_id=late).drain_at is not None
    [entry] = audits("session.drain")
    assert "bad" in entry.reason
    age(late, drain_at=31)
    assert beat(harness, policy_agent, late) == "terminate"
    assert state(late) == "expired"


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_force_drain_is_decided_and_audited_once_under_concurrency(
    policy_agent, make_version, harness, actor
):
    """Two beat passes and a manual drain race for one version: the conditional update
    lets exactly one mark it, and only that one is audited."""
    v1, _, _ = three_live_versions(policy_agent, make_version, harness, actor)
    # Lowered behind the app's back (no save signal), so nothing has applied it yet.
    Agent.objects.filter(pk=policy_agent.pk).update(max_live_versions=2)
    policy_agent.refresh_from_db()
    version = Version.objects.get(pk=v1.pk)
    assert Lifecycle.objects.get(pk=v1.pk).forced_drain_at is None

    def attempt(index: int):
        if index < 2:
            return drain.enforce_max_live_versions(policy_agent, timezone.now())
        try:
            return drain.force_drain(version, actor=actor, reason="by hand")
        except drain.DrainRefused as exc:
            return exc

    results = race(3, attempt)

    entries = audits("version.force_drained", object_id=str(v1.pk))
    assert len(entries) == 1
    winners = [r for r in results[:2] if r == [v1.pk]]
    manual_won = isinstance(results[2], drain.ManualDrain)
    assert len(winners) + manual_won == 1, results
    assert entries[0].actor == (actor.username if manual_won else "system")
    assert beat(harness, policy_agent, "on-v1") == "drain"


def test_it_evacuates_on_agent_rollback(policy_agent, make_version, harness, actor):
    v1, v2 = make_version(policy_agent), make_version(policy_agent)
    engine.set_stable(policy_agent, v1, actor=actor)
    engine.set_stable(policy_agent, v2, actor=actor)
    start(harness, policy_agent, "on-v2")
    engine.rollback_agent(policy_agent, actor=actor, reason="bad answers", evacuate=True)

    assert beat(harness, policy_agent, "on-v2") == "drain"
    [entry] = audits("version.evacuated")
    assert entry.object_id == str(v2.pk)
    assert entry.reason == "bad answers"
    assert entry.after == {"sessions_told_to_drain": 1}
    age("on-v2", drain_at=31)
    assert beat(harness, policy_agent, "on-v2") == "terminate"
    assert state("on-v2") == "expired"


def test_it_evacuates_on_rollout_rollback(policy_agent, make_version, harness, actor):
    v1, v2 = make_version(policy_agent), make_version(policy_agent)
    engine.set_stable(policy_agent, v1, actor=actor)
    rollout = engine.start_rollout(
        policy_agent,
        candidate=v2,
        stages=[{"percent": 99}, {"percent": 100}],
        gates=[],
        actor=actor,
    )
    for i in range(20):
        start(harness, policy_agent, f"s{i}")
    engine.transition(rollout.pk, "rollback", actor=actor, reason="regression", evacuate=True)

    on_candidate = Session.objects.filter(version=v2).values_list("session_id", flat=True)
    assert on_candidate
    for sid in on_candidate:
        assert beat(harness, policy_agent, sid) == "drain"
    for sid in Session.objects.filter(version=v1).values_list("session_id", flat=True):
        assert beat(harness, policy_agent, sid) == "continue"
    assert audits("version.evacuated")[0].object_id == str(v2.pk)


# --- lifecycle ----------------------------------------------------------------------


def test_it_records_the_drain_start_and_the_drained_event(
    policy_agent, make_version, harness, actor
):
    v1, v2 = make_version(policy_agent), make_version(policy_agent)
    engine.set_stable(policy_agent, v1, actor=actor)
    for sid in ("a", "b", "c", "done"):
        start(harness, policy_agent, sid)
    harness.post(END.format(slug=policy_agent.slug, sid="done"), {}, format="json")

    before = timezone.now()
    engine.set_stable(policy_agent, v2, actor=actor)
    lifecycle = Lifecycle.objects.get(pk=v1.pk)
    assert lifecycle.drain_started_at >= before
    assert lifecycle.live_at_drain_start == 3
    assert lifecycle.drained_at is None
    assert Lifecycle.objects.get(pk=v2.pk).drain_started_at is None

    for sid in ("a", "b"):
        harness.post(END.format(slug=policy_agent.slug, sid=sid), {}, format="json")
        assert not audits("version.drained")
    harness.post(END.format(slug=policy_agent.slug, sid="c"), {}, format="json")
    [event] = audits("version.drained")
    assert event.object_id == str(v1.pk)
    assert event.actor == "system"
    assert event.reason
    assert Lifecycle.objects.get(pk=v1.pk).drained_at is not None
    assert drain.enforce_policies(policy_agent)["drained"] == []
    assert len(audits("version.drained")) == 1


def test_it_records_drained_when_the_last_session_expires_at_a_heartbeat(
    policy_agent, make_version, harness, actor
):
    v1, _ = superseded(policy_agent, make_version, harness, actor, "s")
    age("s", started_at=200, drain_at=40)
    assert beat(harness, policy_agent, "s") == "terminate"
    [event] = audits("version.drained")
    assert event.object_id == str(v1.pk)


def test_it_records_drained_when_the_beat_abandons_the_last_session(
    policy_agent, make_version, harness, actor
):
    v1, _ = superseded(policy_agent, make_version, harness, actor, "s")
    age("s", last_seen_at=61)
    result = drain.enforce_policies(policy_agent)
    assert result["abandoned"] == 1
    assert result["drained"] == [v1.pk]
    assert audits("version.drained")[0].object_id == str(v1.pk)


def test_a_version_drained_of_sessions_is_active_again_after_a_rollback_to_it(
    policy_agent, make_version, harness, actor
):
    v1, v2 = superseded(policy_agent, make_version, harness, actor, "s")
    harness.post(END.format(slug=policy_agent.slug, sid="s"), {}, format="json")
    states = {row.version.pk: row.state for row in fleet_view(policy_agent)}
    assert states == {v1.pk: "drained", v2.pk: "active"}

    engine.rollback_agent(policy_agent, actor=actor, reason="back")
    states = {row.version.pk: row.state for row in fleet_view(policy_agent)}
    assert states[v1.pk] == "active"
    lifecycle = Lifecycle.objects.get(pk=v1.pk)
    assert (lifecycle.drain_started_at, lifecycle.drained_at) == (None, None)
    assert start(harness, policy_agent, "new")["version"]["id"] == v1.pk
    # And v2 drains in turn.
    assert Lifecycle.objects.get(pk=v2.pk).drain_started_at is not None


def test_a_draining_version_is_active_again_when_it_gets_weight(
    policy_agent, make_version, harness, actor
):
    v1, v2 = superseded(policy_agent, make_version, harness, actor, "s")
    age("s", started_at=101)
    set_weights(policy_agent, {v1: 1, v2: FULL - 1})
    states = {row.version.pk: row.state for row in fleet_view(policy_agent)}
    assert states == {v1.pk: "active", v2.pk: "active"}
    # Active again: old sessions on it are no longer told to drain.
    assert beat(harness, policy_agent, "s") == "continue"


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_idle_sweeps_abandon_and_audit_each_session_once(
    policy_agent, make_version, harness, actor
):
    """Two workers may run the same tick. The sweep that locks second finds the sessions
    gone and writes nothing: no empty audit entry naming sessions it never ended, and no
    second count in the rollups."""
    engine.set_stable(policy_agent, make_version(policy_agent), actor=actor)
    for round_ in range(8):
        ids = [f"idle-{round_}-{i}" for i in range(5)]
        for session_id in ids:
            start(harness, policy_agent, session_id)
            age(session_id, last_seen_at=600)
        results = race(3, lambda _i: drain.abandon_idle(policy_agent, timezone.now()))
        assert sorted(results) == [0, 0, 5], results
        entries = [e for e in audits("sessions.abandoned") if set(e.after["sessions"]) & set(ids)]
        assert len(entries) == 1
        assert sorted(entries[0].after["sessions"]) == ids
    abandoned = Rollup.objects.filter(metric="abandon_rate").aggregate(
        n=Sum("n"), total=Sum("total")
    )
    assert abandoned == {"n": 40, "total": 40.0}

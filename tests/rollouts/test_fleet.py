"""GET /api/agents/{slug}/fleet/: states, counts, drain progress and retention."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from metrics import rollups
from rollouts import engine
from rollouts.models import Session
from tests.explain import RowsRead

START = "/api/agents/{slug}/sessions/"
END = "/api/agents/{slug}/sessions/{sid}/end/"
FLEET = "/api/agents/{slug}/fleet/"


def start(client, agent, sid: str) -> int:
    response = client.post(START.format(slug=agent.slug), {"session_id": sid}, format="json")
    assert response.status_code == 201
    return response.json()["version"]["id"]


def end(client, agent, sid: str) -> None:
    assert client.post(END.format(slug=agent.slug, sid=sid), {}, format="json").status_code == 200


def count_pins() -> None:
    """What the beat does every tick: count new pins into the rollups, which the
    totals read. No settle delay here: every pin of a test has committed."""
    rollups.count_assignments(settle_s=0)
    rollups.count_assignments(settle_s=0)


def fleet(client, agent) -> dict[int, dict]:
    response = client.get(FLEET.format(slug=agent.slug))
    assert response.status_code == 200, response.content
    return {row["id"]: row for row in response.json()["versions"]}


def test_it_lists_each_version_with_its_state_and_counts(
    agent, make_version, harness, viewer, actor
):
    v1 = make_version(agent, label="v1")
    v2 = make_version(agent, label="v2")
    v3 = make_version(agent, label="v3")
    engine.set_stable(agent, v1, actor=actor)
    for sid in ("a", "b", "c"):
        start(harness, agent, sid)
    end(harness, agent, "c")
    engine.set_stable(agent, v2, actor=actor)
    start(harness, agent, "d")
    count_pins()

    rows = fleet(viewer, agent)
    assert list(rows) == [v3.pk, v2.pk, v1.pk]
    for row in rows.values():
        assert {
            "id",
            "label",
            "state",
            "weight",
            "live_sessions",
            "total_sessions",
            "drain",
        } <= set(row)
    assert {
        k: rows[v3.pk][k]
        for k in ("label", "state", "weight", "live_sessions", "total_sessions", "drain")
    } == {
        "label": "v3",
        "state": "inactive",
        "weight": 0,
        "live_sessions": 0,
        "total_sessions": 0,
        "drain": {
            "started_at": None,
            "live_at_start": None,
            "progress": None,
            "eta_s": None,
            "forced": False,
            "forced_reason": "",
            "drained_at": None,
        },
    }
    assert rows[v2.pk]["drain"]["progress"] is None
    assert (
        rows[v2.pk]["state"],
        rows[v2.pk]["weight"],
        rows[v2.pk]["live_sessions"],
        rows[v2.pk]["total_sessions"],
    ) == ("active", 10000, 1, 1)
    draining = rows[v1.pk]
    assert (
        draining["state"],
        draining["weight"],
        draining["live_sessions"],
        draining["total_sessions"],
    ) == ("draining", 0, 2, 3)
    assert {"started_at", "live_at_start", "progress", "eta_s"} <= set(draining["drain"])
    assert draining["drain"]["live_at_start"] == 2
    assert draining["drain"]["progress"] == 0
    assert draining["drain"]["started_at"]


def test_it_reports_drain_progress_against_the_live_count_at_drain_start(
    agent, make_version, harness, viewer, actor
):
    v1, v2 = make_version(agent), make_version(agent)
    engine.set_stable(agent, v1, actor=actor)
    sids = [f"s{i}" for i in range(8)]
    for sid in sids:
        start(harness, agent, sid)
    engine.set_stable(agent, v2, actor=actor)
    start(harness, agent, "on-v2")  # sessions elsewhere do not count

    expected = []
    for ended in range(1, 8):
        end(harness, agent, sids[ended - 1])
        row = fleet(viewer, agent)[v1.pk]
        assert row["live_sessions"] == 8 - ended
        assert row["state"] == "draining"
        expected.append(row["drain"]["progress"])
    assert expected == pytest.approx([1 - live / 8 for live in range(7, 0, -1)], abs=1e-4)

    end(harness, agent, sids[-1])
    row = fleet(viewer, agent)[v1.pk]
    assert row["state"] == "drained"
    assert row["drain"]["progress"] == 1
    assert row["drain"]["eta_s"] == 0


def test_it_estimates_the_drain_eta_from_observed_durations(
    agent, make_version, harness, viewer, actor
):
    """Sessions of this agent last about 10 minutes; the ETA follows them, and moves
    when they change."""
    v1, v2 = make_version(agent), make_version(agent)
    engine.set_stable(agent, v1, actor=actor)
    now = timezone.now()
    for i in range(40):
        sid = f"hist-{i}"
        start(harness, agent, sid)
        end(harness, agent, sid)
        began = now - timedelta(seconds=700)
        Session.objects.filter(session_id=sid).update(
            started_at=began, ended_at=began + timedelta(seconds=580 + i)
        )
    start(harness, agent, "live")
    engine.set_stable(agent, v2, actor=actor)
    eta = fleet(viewer, agent)[v1.pk]["drain"]["eta_s"]
    assert 550 <= eta <= 640

    Session.objects.filter(session_id="live").update(started_at=now - timedelta(seconds=300))
    later = fleet(viewer, agent)[v1.pk]["drain"]["eta_s"]
    assert 250 <= later <= 340


@pytest.mark.parametrize("retain", [0, 1, 2, 5])
def test_it_lists_only_retain_drained_drained_versions(
    agent, make_version, harness, viewer, actor, retain
):
    agent.retain_drained = retain
    agent.save()
    versions = [make_version(agent) for _ in range(5)]
    for version in versions:
        engine.set_stable(agent, version, actor=actor)
    rows = fleet(viewer, agent)
    drained = [vid for vid, row in rows.items() if row["state"] == "drained"]
    assert len(drained) == min(retain, 4)
    # The most recently drained are kept.
    assert drained == [v.pk for v in versions[-2::-1]][:retain]
    assert rows[versions[-1].pk]["state"] == "active"


def test_it_keeps_the_most_recently_drained_version_listed(agent, make_version, viewer, actor):
    """v1 -> v2, rollback to v1 (v2 drains), then v3 (v1 drains): with room for one,
    v1, the previous stable and rollback target, stays listed rather than v2."""
    agent.retain_drained = 1
    agent.save()
    v1, v2, v3 = (make_version(agent) for _ in range(3))
    engine.set_stable(agent, v1, actor=actor)
    engine.set_stable(agent, v2, actor=actor)
    engine.rollback_agent(agent, actor=actor)
    engine.set_stable(agent, v3, actor=actor)
    rows = fleet(viewer, agent)
    assert {vid: row["state"] for vid, row in rows.items()} == {v3.pk: "active", v1.pk: "drained"}


def test_it_shows_forced_drains(agent, make_version, harness, viewer, actor):
    v1, v2 = make_version(agent), make_version(agent)
    engine.set_stable(agent, v1, actor=actor)
    engine.set_stable(agent, v2, actor=actor)
    start(harness, agent, "s")
    engine.rollback_agent(agent, actor=actor, reason="broken tool", evacuate=True)
    drain = fleet(viewer, agent)[v2.pk]["drain"]
    assert drain["forced"] is True
    assert drain["forced_reason"] == "broken tool"
    assert drain["live_at_start"] == 1


def test_totals_come_from_the_rollups_and_trail_the_newest_pins(
    agent, make_version, harness, viewer, actor
):
    """Live counts are exact at once; a total counts a pin once the beat has counted it
    (``sessions_assigned``), never by counting the history."""
    v1 = make_version(agent)
    engine.set_stable(agent, v1, actor=actor)
    for sid in ("a", "b", "c"):
        start(harness, agent, sid)
    end(harness, agent, "c")

    row = fleet(viewer, agent)[v1.pk]
    assert (row["live_sessions"], row["total_sessions"]) == (2, 0)
    count_pins()
    row = fleet(viewer, agent)[v1.pk]
    assert (row["live_sessions"], row["total_sessions"]) == (2, 3)
    start(harness, agent, "d")
    row = fleet(viewer, agent)[v1.pk]
    assert (row["live_sessions"], row["total_sessions"]) == (3, 3)


def test_an_evacuated_version_drains_within_its_grace(agent, make_version, harness, viewer, actor):
    """Sessions of this agent last two hours. Drained normally, a version waits for
    them; evacuated, its sessions are terminated once the grace runs out, so the ETA is
    at most the grace, not max_session_age_s + drain_grace_s."""
    v1, v2 = make_version(agent), make_version(agent)
    engine.set_stable(agent, v1, actor=actor)
    now = timezone.now()
    for i in range(30):
        sid = f"hist-{i}"
        start(harness, agent, sid)
        end(harness, agent, sid)
        began = now - timedelta(hours=3)
        Session.objects.filter(session_id=sid).update(
            started_at=began, ended_at=began + timedelta(seconds=7200 + 10 * i)
        )
    engine.set_stable(agent, v2, actor=actor)
    for i in range(5):
        start(harness, agent, f"live-{i}")
    engine.set_stable(agent, v1, actor=actor)  # v2 drains by itself
    assert 7000 <= fleet(viewer, agent)[v2.pk]["drain"]["eta_s"] <= 7600

    engine.set_stable(agent, v2, actor=actor)
    engine.rollback_agent(agent, actor=actor, reason="broken tool", evacuate=True)
    row = fleet(viewer, agent)[v2.pk]
    assert row["drain"]["forced"] is True
    assert 0 < row["drain"]["eta_s"] <= agent.drain_grace_s


@override_settings(PRISM_SURVIVAL_SAMPLE=30)
def test_a_long_live_session_keeps_its_place_in_a_sampled_estimate(
    agent, make_version, harness, viewer, actor
):
    """More sessions ended in the window than the sample holds, and more still before
    it. A long session still live on a draining version stays in the estimate
    (censored at its age) rather than count as ended; the estimate reads the sample,
    not the history."""
    v1, v2 = make_version(agent), make_version(agent)
    engine.set_stable(agent, v1, actor=actor)
    start(harness, agent, "marathon")
    now = timezone.now()
    Session.objects.filter(session_id="marathon").update(started_at=now - timedelta(hours=2))
    for i in range(120):  # 80 short and recent, 40 before the window
        sid = f"short-{i}"
        start(harness, agent, sid)
        end(harness, agent, sid)
        began = now - (timedelta(seconds=600 - i) if i < 80 else timedelta(days=8, seconds=i))
        Session.objects.filter(session_id=sid).update(
            started_at=began, ended_at=began + timedelta(seconds=60)
        )
    engine.set_stable(agent, v2, actor=actor)

    reads = RowsRead()
    with connection.execute_wrapper(reads):
        row = fleet(viewer, agent)[v1.pk]

    assert (row["state"], row["live_sessions"]) == ("draining", 1)
    # No session this old has ever ended: no estimate from the history, so the drain
    # policy bounds it (told to drain at max_session_age_s, then drain_grace_s).
    bound = agent.max_session_age_s - 2 * 3600 + agent.drain_grace_s
    assert row["drain"]["eta_s"] == pytest.approx(bound, abs=30)  # the test's own time
    # The first fleet computes the estimate: the live sessions, the sample's first try
    # (31 rows), then 24 strata of 2 rows each, and a few rows per version.
    assert reads.rows <= 1 + 31 + 24 * 2 + 10
    reads = RowsRead()
    with connection.execute_wrapper(reads):
        again = fleet(viewer, agent)[v1.pk]
    assert again["drain"]["eta_s"] == pytest.approx(bound, abs=30)
    assert reads.rows <= 10  # the stored estimate from now on
    assert reads.statements <= 8


@pytest.mark.parametrize(
    ("role", "status"),
    [
        ("viewer", 200),
        ("release_manager", 200),
        ("harness", 403),
        ("outsider", 403),
        ("anonymous", 401),
    ],
)
def test_it_answers_the_fleet_by_role(request, agent, role, status):
    client = request.getfixturevalue(role)
    assert client.get(FLEET.format(slug=agent.slug)).status_code == status


def test_it_answers_404_for_the_fleet_of_an_unknown_agent(viewer):
    assert viewer.get(FLEET.format(slug="nobody")).status_code == 404

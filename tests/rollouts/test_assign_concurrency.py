"""Concurrent starts: the unique constraint decides duplicates and every caller gets the
same pin, and a routing change in the middle of it all never mixes up which table
picked a pin."""

from __future__ import annotations

import threading

import pytest

from controlplane.models import ApiToken
from rollouts import engine, sessions
from rollouts import routing as routing_mod
from rollouts.models import FULL, Routing, Session
from tests.concurrency import race, token_client
from tests.rollouts.conftest import expected_version, set_weights

THREADS = 16


def epoch_of(agent) -> int:
    return Routing.objects.get(agent=agent).epoch


@pytest.fixture
def two_versions(agent, make_version, release_manager):
    v1, v2 = make_version(agent), make_version(agent)
    engine.set_stable(agent, v1, actor=release_manager.user)
    return v1, v2


@pytest.mark.django_db(transaction=True)
@pytest.mark.postgres
@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
def test_sixteen_concurrent_starts_of_one_session_pin_it_once_across_a_routing_change(
    agent, two_versions, harness, warm
):
    """Fifteen racers start the same session while one moves all traffic from v1 to v2.

    Whichever routing a racer read, one row holds, everybody gets its bytes, and the
    row's epoch is that of the table that picked its version.
    """
    v1, v2 = two_versions
    token = ApiToken.issue(harness.user)
    url = f"/api/agents/{agent.slug}/sessions/"
    if warm:
        # The process has seen the agent, its routing and v1's payload.
        assert token_client(token).post(url, {"session_id": "w"}, format="json").status_code == 201
    else:
        sessions._agent_ids.clear()
        routing_mod._tables.clear()
        sessions._payloads.clear()
    before = epoch_of(agent)

    def work(index: int) -> tuple[int, bytes] | None:
        if index == 0:
            set_weights(agent, {v1: 0, v2: FULL})
            return None
        response = token_client(token).post(url, {"session_id": "the-one"}, format="json")
        return response.status_code, response.content

    results = [r for r in race(THREADS, work) if r is not None]

    assert sorted(status for status, _ in results) == [200] * (THREADS - 2) + [201], results
    assert len({body for _, body in results}) == 1, "callers got different answers"
    row = Session.objects.get(agent=agent, session_id="the-one")
    assert Session.objects.filter(agent=agent, session_id="the-one").count() == 1
    assert {v1.pk: before, v2.pk: before + 1}[row.version_id] == row.epoch
    assert epoch_of(agent) == before + 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.postgres
def test_pins_made_during_routing_changes_follow_the_epoch_they_record(
    agent, two_versions, harness
):
    """Many new sessions race five routing changes: every pin is the documented choice
    of the table whose epoch it records."""
    v1, v2 = two_versions
    token = ApiToken.issue(harness.user)
    url = f"/api/agents/{agent.slug}/sessions/"
    tables = [{v1.pk: FULL, v2.pk: 0}, {v1.pk: 0, v2.pk: FULL}, {v1.pk: 5000, v2.pk: 5000}]
    set_weights(agent, tables[0])
    weights_at = {epoch_of(agent): tables[0]}
    changes, per_phase = 5, 3
    # In each phase the racers start new sessions while the changer changes the routing,
    # and nobody starts the next phase before the change has committed.
    phase = threading.Barrier(THREADS, timeout=30)

    def work(index: int) -> None:
        client = token_client(token)
        for change in range(1, changes + 1):
            phase.wait()
            if index == 0:
                weights = tables[change % len(tables)]
                set_weights(agent, weights)
                weights_at[epoch_of(agent)] = weights
                continue
            for n in range(per_phase):
                response = client.post(url, {"session_id": f"r{index}-{change}-{n}"}, format="json")
                assert response.status_code == 201, response.content

    race(THREADS, work)

    pins = list(
        Session.objects.filter(agent=agent).values_list("session_id", "version_id", "epoch")
    )
    assert len(pins) == (THREADS - 1) * changes * per_phase
    wrong = [
        (sid, version_id, epoch)
        for sid, version_id, epoch in pins
        if version_id != expected_version(agent.slug, sid, weights_at[epoch])
    ]
    assert wrong == []
    assert len(weights_at) == changes + 1
    # Phase k's pins record epoch k or k + 1: together at least three epochs.
    assert len({epoch for _, _, epoch in pins}) >= 3

"""Concurrent duplicates of one new session: the unique constraint decides the race and
every caller gets the same pin (DESIGN §5)."""

from __future__ import annotations

import pytest

from controlplane.models import ApiToken
from rollouts import engine
from rollouts.models import Session
from tests.concurrency import race, token_client
from tests.rollouts.conftest import set_weights

THREADS = 16


@pytest.mark.django_db(transaction=True)
@pytest.mark.postgres
@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
def test_it_pins_one_session_once_under_sixteen_concurrent_starts(
    agent, make_version, harness, release_manager, warm
):
    v1, v2 = make_version(agent), make_version(agent)
    engine.set_stable(agent, v1, actor=release_manager.user)
    # Two live versions, so a racer answering from its own computation could differ.
    set_weights(agent, {v1: 5000, v2: 5000})
    token = ApiToken.issue(harness.user)
    url = f"/api/agents/{agent.slug}/sessions/"
    if warm:
        # The process now knows the routing, so every racer takes the one-statement
        # path (read and pin in one CTE) rather than read-then-upsert.
        assert token_client(token).post(url, {"session_id": "w"}, format="json").status_code == 201

    def post(_: int) -> tuple[int, dict]:
        response = token_client(token).post(url, {"session_id": "the-one"}, format="json")
        return response.status_code, response.json()

    results = race(THREADS, post)

    assert len(results) == THREADS
    statuses = sorted(status for status, _ in results)
    assert statuses == [200] * (THREADS - 1) + [201], results
    versions = {body["version"]["id"] for _, body in results}
    assert len(versions) == 1
    assert {body["session_id"] for _, body in results} == {"the-one"}
    rows = list(Session.objects.filter(agent=agent, session_id="the-one"))
    assert len(rows) == 1
    assert rows[0].version_id == versions.pop()

"""Concurrent duplicates of one new session: the unique constraint decides the race and
every caller gets the same pin (DESIGN §5)."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, transaction
from django.utils import timezone
from rest_framework.test import APIClient

from controlplane.models import ApiToken
from rollouts import engine
from rollouts.models import Session

THREADS = 16


@pytest.mark.django_db(transaction=True)
@pytest.mark.postgres
def test_it_pins_one_session_once_under_sixteen_concurrent_starts(
    agent, make_version, harness, release_manager
):
    v1, v2 = make_version(agent), make_version(agent)
    engine.set_stable(agent, v1, actor=release_manager.user)
    # Two live versions, so a racer answering from its own computation could differ.
    with transaction.atomic():
        routing = engine._lock_routing(agent)
        engine._set_weights(routing, {v1.pk: 5000, v2.pk: 5000}, timezone.now())
    token = f"Token {ApiToken.issue(harness.user)}"
    url = f"/api/agents/{agent.slug}/sessions/"
    barrier = threading.Barrier(THREADS)
    results: list[tuple[int, dict]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def race() -> None:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=token)
        try:
            # Open this thread's connection before the barrier, so the requests meet
            # at the database rather than at connection setup.
            connection.ensure_connection()
            barrier.wait(timeout=30)
            response = client.post(url, {"session_id": "the-one"}, format="json")
            with lock:
                results.append((response.status_code, response.json()))
        except BaseException as exc:  # reported below; a thread must not die silently
            with lock:
                errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=race) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert len(results) == THREADS
    statuses = sorted(status for status, _ in results)
    assert statuses == [200] * (THREADS - 1) + [201], results
    versions = {body["version"]["id"] for _, body in results}
    assert len(versions) == 1
    assert {body["session_id"] for _, body in results} == {"the-one"}
    rows = list(Session.objects.filter(agent=agent, session_id="the-one"))
    assert len(rows) == 1
    assert rows[0].version_id == versions.pop()

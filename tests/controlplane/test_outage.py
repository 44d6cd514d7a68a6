"""controlplane.outage: a database that went away answers a prompt 503 with a JSON body,
and the next request after it is back succeeds on a fresh connection.

The outage is real: the test points Django's connection at a socket directory where no
server listens, so every connection attempt fails the way it does while PostgreSQL
restarts. tests/e2e/test_faults.py restarts a real PostgreSQL under load.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator

import pytest
from django.db import connection

from controlplane import settings as prism
from controlplane.outage import DatabaseOutageMiddleware
from rollouts import engine

pytestmark = pytest.mark.django_db(transaction=True)


@contextlib.contextmanager
def database_down() -> Iterator[None]:
    """Inside the block, the default connection reaches no server."""
    original = dict(connection.settings_dict)
    with tempfile.TemporaryDirectory() as nowhere:
        connection.close()
        connection.settings_dict.update(HOST=nowhere, PORT="")
        try:
            yield
        finally:
            connection.close()
            connection.settings_dict.clear()
            connection.settings_dict.update(original)


@pytest.fixture
def stable(agent, make_version):
    version = make_version(agent, label="v1")
    engine.set_stable(agent, version, actor="test")
    return version


def _assert_unavailable(response) -> None:
    assert response.status_code == 503
    assert response["Content-Type"] == "application/json"
    assert response["Retry-After"].isdigit()
    assert response.json()["code"] == "database_unavailable"
    assert "retry" in response.json()["detail"]


def test_the_session_hot_path_answers_503_json_then_recovers(agent, stable, harness, caplog):
    # Warm: this process has compiled the agent's routing, so the next start is the
    # one-statement path.
    first = harness.post("/api/agents/research/sessions/", {"session_id": "a"}, format="json")
    assert first.status_code == 201

    with caplog.at_level(logging.WARNING, logger="controlplane.outage"), database_down():
        response = harness.post(
            "/api/agents/research/sessions/", {"session_id": "b"}, format="json"
        )
    _assert_unavailable(response)
    assert "POST /api/agents/research/sessions/ answered 503" in caplog.text

    again = harness.post("/api/agents/research/sessions/", {"session_id": "b"}, format="json")
    assert again.status_code == 201
    assert again.json()["version"]["id"] == stable.pk


def test_a_drf_view_answers_503_json_then_recovers(agent, release_manager):
    with database_down():
        response = release_manager.get("/api/agents/")
    _assert_unavailable(response)
    assert response["X-Request-ID"]  # the outer middleware still ran
    assert release_manager.get("/api/agents/").json()[0]["slug"] == "research"


def test_a_write_answers_503_and_changes_nothing(agent, stable, make_version, release_manager):
    candidate = make_version(agent, label="v2")
    with database_down():
        response = release_manager.post(
            "/api/agents/research/rollouts/", {"candidate": candidate.pk}, format="json"
        )
    _assert_unavailable(response)
    assert not agent.rollouts.exists()


def test_other_errors_still_reach_the_usual_handler(rf):
    middleware = DatabaseOutageMiddleware(lambda request: None)
    assert middleware.process_exception(rf.get("/"), ValueError("boom")) is None


def test_the_connect_timeout_bounds_an_unreachable_database(monkeypatch):
    url = "postgresql://prism@db.internal/prism"
    assert prism.database_from_url("DATABASE_URL", url)["OPTIONS"]["connect_timeout"] == 3
    monkeypatch.setenv("DATABASE_CONNECT_TIMEOUT", "7")
    assert prism.database_from_url("DATABASE_URL", url)["OPTIONS"]["connect_timeout"] == 7

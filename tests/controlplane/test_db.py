"""Prepared statements on Django's connection (controlplane.db), on PostgreSQL."""

from __future__ import annotations

import psycopg
import pytest
from django.db import OperationalError, connection

from controlplane import db
from controlplane.models import ApiToken
from rollouts import engine
from rollouts.models import Session


def kill_our_backend() -> None:
    """Terminate this connection's server process from another connection, as a
    database restart would."""
    pid = connection.connection.info.backend_pid
    settings = connection.get_connection_params()
    with psycopg.connect(**settings, autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", [pid])


@pytest.mark.django_db(transaction=True)
@pytest.mark.postgres
def test_a_read_on_a_connection_that_died_is_run_again_on_a_new_one(agent, make_version):
    engine.set_stable(agent, make_version(agent), actor="test")
    connection.ensure_connection()
    dead = connection.connection
    kill_our_backend()

    row = db.fetchone("SELECT slug FROM versions_agent WHERE id = %s", [agent.pk], read_only=True)

    assert row == (agent.slug,)
    assert connection.connection is not dead


@pytest.mark.django_db(transaction=True)
@pytest.mark.postgres
def test_a_write_on_a_connection_that_died_is_not_retried(agent):
    connection.ensure_connection()
    kill_our_backend()

    with pytest.raises(OperationalError):
        db.fetchone("UPDATE versions_agent SET name = 'x' WHERE id = %s RETURNING id", [agent.pk])
    connection.close()  # as the end of a request would, so the test database can be flushed


@pytest.mark.django_db(transaction=True)
@pytest.mark.postgres
def test_the_hot_path_survives_a_database_restart_between_requests(agent, make_version, harness):
    engine.set_stable(agent, make_version(agent), actor="test")
    key = ApiToken.issue(harness.user)
    harness.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    url = f"/api/agents/{agent.slug}/sessions/"
    assert harness.post(url, {"session_id": "before"}, format="json").status_code == 201
    kill_our_backend()

    response = harness.post(url, {"session_id": "after"}, format="json")

    assert response.status_code == 201, response.content
    assert Session.objects.filter(session_id__in=["before", "after"]).count() == 2

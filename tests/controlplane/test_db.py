"""Prepared statements on Django's connection (controlplane.db), on PostgreSQL.

Outside a transaction they go through libpq directly, inside one through a cursor;
the tests that need the first are transactional (pytest-django wraps the others in a
transaction).
"""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
import pytest
from django.db import DataError, IntegrityError, OperationalError, connection, transaction

from controlplane import db
from controlplane.models import ApiToken
from rollouts import engine
from rollouts.models import Session
from versions.models import Agent

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres]


def kill_our_backend() -> None:
    """Terminate this connection's server process from another connection, as a
    database restart would."""
    pid = connection.connection.info.backend_pid
    settings = connection.get_connection_params()
    with psycopg.connect(**settings, autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", [pid])


def test_a_read_on_a_connection_that_died_is_run_again_on_a_new_one(agent, make_version):
    engine.set_stable(agent, make_version(agent), actor="test")
    connection.ensure_connection()
    dead = connection.connection
    kill_our_backend()

    row = db.fetchone("SELECT slug FROM versions_agent WHERE id = %s", [agent.pk], read_only=True)

    assert row == (agent.slug,)
    assert connection.connection is not dead


def test_a_write_on_a_connection_that_died_is_not_retried(agent):
    connection.ensure_connection()
    kill_our_backend()

    with pytest.raises(OperationalError):
        db.fetchone("UPDATE versions_agent SET name = 'x' WHERE id = %s RETURNING id", [agent.pk])
    connection.close()  # as the end of a request would, so the test database can be flushed


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


def through_libpq(sql: str, params: list) -> tuple | None:
    """``db.fetchone`` in autocommit, checking it took the libpq path."""
    assert connection.get_autocommit()
    row = db.fetchone(sql, params)
    name, _ = db._statement(sql)
    assert name in connection.connection._prism_prepared[0]
    return row


def test_it_reads_and_writes_values_as_djangos_cursor_does():
    sql = (
        "SELECT %s::bigint, %s::text, %s::timestamptz, %s::int, %s::boolean, "
        "'{\"a\": [1, null]}'::jsonb, 1.5::float8, NULL::text, %s::numeric"
    )
    params = [2**40, "ünï ✓ '; --", datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC), None, True,
              "12.50"]  # fmt: skip
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        expected = cursor.fetchone()

    assert through_libpq(sql, params) == expected
    assert expected[0] == 2**40
    assert expected[2].tzinfo is not None


def test_a_statement_prepared_with_small_values_takes_large_ones(agent):
    sql = "SELECT slug FROM versions_agent WHERE id = %s"
    assert through_libpq(sql, [agent.pk]) == (agent.slug,)
    assert through_libpq(sql, [2**62]) is None


def test_it_prepares_each_statement_once_per_connection(agent):
    sql = "SELECT name FROM versions_agent WHERE id = %s"
    for _ in range(3):
        through_libpq(sql, [agent.pk])
    name, _ = db._statement(sql)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE name = %s", [name.decode()]
        )
        assert cursor.fetchone() == (1,)


def test_errors_are_djangos_and_leave_the_connection_usable(agent):
    with pytest.raises(IntegrityError):
        db.fetchone(
            "INSERT INTO versions_agent (slug, name, created_at, idle_timeout_s, "
            "max_session_age_s, drain_grace_s, max_live_versions, retain_drained) "
            "VALUES (%s, 'dup', now(), 1, 1, 0, 1, 0) RETURNING id",
            [agent.slug],
        )
    with pytest.raises(DataError):
        db.fetchone("SELECT 1 / %s::int", [0])
    assert through_libpq("SELECT %s::int + 1", [41]) == (42,)


def test_inside_a_transaction_it_goes_through_the_cursor_and_rolls_back(agent):
    rename = "UPDATE versions_agent SET name = %s WHERE id = %s RETURNING name"
    with transaction.atomic():
        assert db.fetchone(rename, ["inside", agent.pk]) == ("inside",)
        transaction.set_rollback(True)
    assert Agent.objects.get(pk=agent.pk).name == agent.name

    assert through_libpq(rename, ["outside", agent.pk]) == ("outside",)
    assert Agent.objects.get(pk=agent.pk).name == "outside"


# --- several reads in one statement (db.fetchone_each) ---------------------------------------


def test_reads_put_together_answer_each_its_own_row(agent):
    from django.test.utils import CaptureQueriesContext

    reads = [
        ("SELECT slug FROM versions_agent WHERE id = %s", [agent.pk]),
        ("SELECT %s::int * 2, %s::text", [21, "ünï"]),
        ("SELECT slug FROM versions_agent WHERE id = %s", [2**62]),  # finds nothing
        ("SELECT NULL::int AS nothing", []),  # finds a row of nulls
        ("SELECT n FROM generate_series(1, %s) n ORDER BY n DESC", [3]),  # its first row
    ]
    with CaptureQueriesContext(connection) as queries:
        rows = db.fetchone_each(reads)
    assert rows == [(agent.slug,), (42, "ünï"), None, (None,), (3,)]
    # One statement, prepared on the libpq path, logged as what it is.
    (query,) = queries
    assert all(sql in query["sql"] for sql, _ in reads)
    assert db._statement(query["sql"])[0] in connection.connection._prism_prepared[0]
    # Again, now that the statement and its widths are known, with other values.
    reads[0] = ("SELECT slug FROM versions_agent WHERE id = %s", [2**62])
    reads[1] = ("SELECT %s::int * 2, %s::text", [1, None])
    assert db.fetchone_each(reads) == [None, (2, None), None, (None,), (3,)]
    # One snapshot.
    first, second = db.fetchone_each(
        [("SELECT txid_current_if_assigned(), now()", []), ("SELECT now()", [])]
    )
    assert first[1] == second[0]


def test_a_read_naming_the_found_column_itself_is_refused(agent):
    with pytest.raises(ValueError, match="prism_found"):
        db.fetchone_each([("SELECT 1 AS prism_found", []), ("SELECT 2", [])])


def test_an_error_in_one_read_is_djangos_and_the_connection_stays_usable(agent):
    with pytest.raises(DataError):
        db.fetchone_each([("SELECT 1 / %s::int", [0]), ("SELECT %s::int", [1])])
    with pytest.raises(DataError):
        db.fetchone_each([("SELECT %s::int", [1]), ("SELECT 1 / %s::int", [0])])
    assert db.fetchone_each([("SELECT %s::int + 1", [41])]) == [(42,)]
    assert through_libpq("SELECT %s::int + 1", [1]) == (2,)


def test_reads_sent_together_on_a_connection_that_died_run_again_on_a_new_one(agent):
    connection.ensure_connection()
    dead = connection.connection
    kill_our_backend()

    rows = db.fetchone_each(
        [("SELECT slug FROM versions_agent WHERE id = %s", [agent.pk]), ("SELECT 1", [])]
    )

    assert rows == [(agent.slug,), (1,)]
    assert connection.connection is not dead


def test_inside_a_transaction_reads_sent_together_run_one_by_one(agent):
    with transaction.atomic():
        Agent.objects.filter(pk=agent.pk).update(name="inside")
        rows = db.fetchone_each(
            [("SELECT name FROM versions_agent WHERE id = %s", [agent.pk]), ("SELECT 2", [])]
        )
        assert rows == [("inside",), (2,)]
        transaction.set_rollback(True)
    assert Agent.objects.get(pk=agent.pk).name == agent.name

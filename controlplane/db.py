"""Server-side prepared statements on Django's own connection, for the few hot reads and
writes that run on every session start.

Planning a small statement costs PostgreSQL more than running it, and Django's
client-side binding plans every execution afresh. Preparing once per connection removes
that. Each app keeps its own SQL, naming only its own tables; this module only runs it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from django.db import DEFAULT_DB_ALIAS, OperationalError, connections

Params = Sequence[Any] | Mapping[str, Any]


def prepared_statements(wrapper: Any = None) -> bool:
    """Whether the connection may prepare statements: PostgreSQL, unless
    ``PRISM_PREPARED_STATEMENTS=false`` (a pooler without prepared-statement support)
    turned it off."""
    wrapper = wrapper or connections[DEFAULT_DB_ALIAS]
    return (
        wrapper.vendor == "postgresql"
        and wrapper.settings_dict["OPTIONS"].get("prepare_threshold") is not None
    )


def fetchone(sql: str, params: Params, *, read_only: bool = False) -> tuple | None:
    """Run one statement and return its first row: prepared where the connection allows
    it, else through Django's cursor.

    A prepared statement bypasses Django's cursor wrapper, and with it two things that
    wrapper does, which are done here instead:

    - it is logged by hand, so query counts in tests see it like any other query;
    - ``CONN_HEALTH_CHECKS`` would replace a persistent connection that died between
      requests (a database restart) before using it. Here a ``read_only`` statement
      that fails on a dead connection, outside a transaction, is run again on a new one;
      this costs nothing while the connection is alive, where the health check costs a
      round trip per request.
    """
    wrapper = connections[DEFAULT_DB_ALIAS]
    if not prepared_statements(wrapper):
        with wrapper.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchone()
    try:
        return _prepared_fetchone(wrapper, sql, params)
    except OperationalError:
        if not read_only or wrapper.in_atomic_block or wrapper.is_usable():
            raise
        wrapper.close()
        return _prepared_fetchone(wrapper, sql, params)


def _prepared_fetchone(wrapper: Any, sql: str, params: Params) -> tuple | None:
    # The connection is looked up once per call: every ``django.db.connection.x`` goes
    # through a thread-local proxy, and on this path that adds up. Likewise
    # ensure_connection's async check is only paid when there is no connection yet.
    if wrapper.connection is None:
        wrapper.ensure_connection()
    wrapper.validate_no_broken_transaction()
    logged = wrapper.queries_logged
    started = time.monotonic() if logged else 0.0
    with wrapper.wrap_database_errors:
        cursor = _cursor(wrapper.connection)
        cursor.execute(sql, params, prepare=True)
        row = cursor.fetchone()
    if logged:
        wrapper.queries_log.append({"sql": sql, "time": f"{time.monotonic() - started:.3f}"})
    return row


def _cursor(conn: psycopg.Connection) -> psycopg.Cursor:
    """One server-side-binding cursor per database connection, reused: a connection
    belongs to one thread, and each statement here reads its row before the next."""
    cursor = getattr(conn, "_prism_cursor", None)
    if cursor is None or cursor.closed:
        cursor = conn._prism_cursor = psycopg.Cursor(conn)
    return cursor

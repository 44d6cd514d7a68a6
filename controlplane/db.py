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
from django.db import connection

Params = Sequence[Any] | Mapping[str, Any]


def prepared_statements() -> bool:
    """Whether this connection may prepare statements: PostgreSQL, unless
    ``PRISM_PREPARED_STATEMENTS=false`` (a pooler without prepared-statement support)
    turned it off."""
    return (
        connection.vendor == "postgresql"
        and connection.settings_dict["OPTIONS"].get("prepare_threshold") is not None
    )


def fetchone(sql: str, params: Params) -> tuple | None:
    """Run one statement and return its first row: prepared where the connection allows
    it, else through Django's cursor.

    The prepared statement bypasses Django's cursor wrapper, so it is logged by hand:
    query counts in tests see it like any other query.
    """
    if not prepared_statements():
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchone()
    connection.ensure_connection()
    connection.validate_no_broken_transaction()
    started = time.monotonic()
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(sql, params, prepare=True)
        row = cursor.fetchone()
    if connection.queries_logged:
        connection.queries_log.append({"sql": sql, "time": f"{time.monotonic() - started:.3f}"})
    return row

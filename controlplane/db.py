"""Server-side prepared statements on Django's own connection, for the few hot reads and
writes that run on every session start.

Planning a small statement costs PostgreSQL more than running it, and Django's
client-side binding plans every execution afresh. Preparing once per connection removes
that. Each app keeps its own SQL, naming only its own tables; this module only runs it.

Outside a transaction a statement goes to libpq through psycopg's ``pq`` layer, with
psycopg's ``Transformer`` adapting values both ways. psycopg's cursor does the same
work with much more Python around it: measured with callgrind, a session start's three
statements cost about 250,000 fewer instructions this way, a sixth of the request.
Inside a transaction the cursor is used, because it issues the ``BEGIN`` that Django's
``atomic()`` left to the first statement.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from typing import Any

import psycopg
from django.db import DEFAULT_DB_ALIAS, OperationalError, connections
from psycopg import errors, pq
from psycopg.adapt import PyFormat, Transformer


def prepared_statements(wrapper: Any = None) -> bool:
    """Whether the connection may prepare statements: PostgreSQL, unless
    ``PRISM_PREPARED_STATEMENTS=false`` (a pooler without prepared-statement support)
    turned it off."""
    wrapper = wrapper or connections[DEFAULT_DB_ALIAS]
    return (
        wrapper.vendor == "postgresql"
        and wrapper.settings_dict["OPTIONS"].get("prepare_threshold") is not None
    )


def fetchone(sql: str, params: Sequence[Any], *, read_only: bool = False) -> tuple | None:
    """Run one statement (``%s`` placeholders) and return its first row: prepared where
    the connection allows it, else through Django's cursor.

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


Statement = tuple[str, Sequence[Any]]


def fetchone_each(statements: Sequence[Statement]) -> list[tuple | None]:
    """Run independent reads and return each one's first row, in one round trip where
    the connection allows it: prepared, sent together in a libpq pipeline ending in one
    sync, so PostgreSQL runs them back to back in one implicit transaction (one
    snapshot). Elsewhere (no prepared statements, inside a transaction, SQLite) each
    runs through ``fetchone`` in turn. A dead persistent connection is replaced and the
    reads run again, as for a ``read_only`` ``fetchone``."""
    wrapper = connections[DEFAULT_DB_ALIAS]
    if not prepared_statements(wrapper) or wrapper.in_atomic_block:
        return [fetchone(sql, params, read_only=True) for sql, params in statements]
    try:
        return _pipelined(wrapper, statements)
    except OperationalError:
        if wrapper.is_usable():
            raise
        wrapper.close()
        return _pipelined(wrapper, statements)


def _pipelined(wrapper: Any, statements: Sequence[Statement]) -> list[tuple | None]:
    if wrapper.connection is None:
        wrapper.ensure_connection()
    wrapper.validate_no_broken_transaction()
    logged = wrapper.queries_logged
    started = time.monotonic() if logged else 0.0
    with wrapper.wrap_database_errors:
        conn = wrapper.connection
        if not conn.autocommit:
            rows = [_cursor_fetchone(conn, sql, params) for sql, params in statements]
        else:
            rows = _pipeline(conn, statements)
    if logged:
        spent = f"{time.monotonic() - started:.3f}"
        wrapper.queries_log.extend({"sql": sql, "time": spent} for sql, _ in statements)
    return rows


def _pipeline(conn: psycopg.Connection, statements: Sequence[Statement]) -> list[tuple | None]:
    """The statements through libpq's pipeline mode, blocking (psycopg leaves the
    connection non-blocking; a pipeline this small never fills the socket, and blocking
    lets ``pipeline_sync`` flush it all at once)."""
    pgconn = conn.pgconn
    prepared, transformer = _state(conn)
    sends = []
    for sql, params in statements:
        name, text = _named(sql)
        if name not in prepared:
            _check(conn, pgconn.prepare(name, text), pq.ExecStatus.COMMAND_OK)
            prepared.add(name)
        sends.append((name, transformer.dump_sequence(params, [PyFormat.TEXT] * len(params))))
    nonblocking = pgconn.nonblocking
    pgconn.nonblocking = 0
    pgconn.enter_pipeline_mode()
    results: list[pq.abc.PGresult] = []
    try:
        for name, values in sends:
            pgconn.send_query_prepared(name, values)
        pgconn.pipeline_sync()
        # Each statement's result (or PIPELINE_ABORTED after an error), then the null
        # that ends it; then the sync's. A connection that broke stops the reading.
        nulls = 0
        while pgconn.status != pq.ConnStatus.BAD and nulls <= len(sends):
            result = pgconn.get_result()
            if result is None:
                nulls += 1
            elif result.status == pq.ExecStatus.PIPELINE_SYNC:
                break
            else:
                results.append(result)
    finally:
        if pgconn.status != pq.ConnStatus.BAD:
            try:
                pgconn.exit_pipeline_mode()
                pgconn.nonblocking = nonblocking
            except psycopg.Error:
                # Results left unread (an error while sending): the connection's state
                # cannot be trusted, so it goes, and the next use opens a new one.
                conn.close()
    if pgconn.status == pq.ConnStatus.BAD or len(results) != len(sends):
        message = pgconn.error_message.decode(errors="replace").strip()
        raise psycopg.OperationalError(message or "the connection is lost")
    rows: list[tuple | None] = []
    for result in results:
        _check(conn, result, pq.ExecStatus.TUPLES_OK)
        if result.ntuples == 0:
            rows.append(None)
        else:
            transformer.set_pgresult(result)
            rows.append(transformer.load_row(0, tuple))
    return rows


def _prepared_fetchone(wrapper: Any, sql: str, params: Sequence[Any]) -> tuple | None:
    # The connection is looked up once per call: every ``django.db.connection.x`` goes
    # through a thread-local proxy, and on this path that adds up. Likewise
    # ensure_connection's async check is only paid when there is no connection yet.
    if wrapper.connection is None:
        wrapper.ensure_connection()
    wrapper.validate_no_broken_transaction()
    logged = wrapper.queries_logged
    started = time.monotonic() if logged else 0.0
    with wrapper.wrap_database_errors:
        conn = wrapper.connection
        row = (
            _execute(conn, sql, params) if conn.autocommit else _cursor_fetchone(conn, sql, params)
        )
    if logged:
        wrapper.queries_log.append({"sql": sql, "time": f"{time.monotonic() - started:.3f}"})
    return row


def _statement(sql: str) -> tuple[bytes, bytes]:
    """The statement's name (from its text, so every thread and connection agrees) and
    its text with ``$n`` placeholders."""
    parts = sql.split("%s")
    text = parts[0] + "".join(f"${n}{part}" for n, part in enumerate(parts[1:], 1))
    return b"prism_" + hashlib.sha1(sql.encode()).hexdigest()[:20].encode(), text.encode()


_statements: dict[str, tuple[bytes, bytes]] = {}


def _named(sql: str) -> tuple[bytes, bytes]:
    statement = _statements.get(sql)
    if statement is None:
        statement = _statements[sql] = _statement(sql)
    return statement


def _state(conn: psycopg.Connection) -> tuple[set[bytes], Transformer]:
    """The names prepared on this connection, and its value adapters."""
    state = getattr(conn, "_prism_prepared", None)
    if state is None:
        state = conn._prism_prepared = (set(), Transformer.from_context(conn))
    return state


def _execute(conn: psycopg.Connection, sql: str, params: Sequence[Any]) -> tuple | None:
    """One prepared statement through libpq, in autocommit mode.

    1. Prepare it on this connection the first time, letting PostgreSQL infer the
       parameter types from the statement; parameters always travel as text, so any
       Python value of the right kind fits whatever was inferred.
    2. Execute it (libpq blocks with the GIL released) and load the first row with the
       connection's own adapters, as a cursor would.
    3. Errors become psycopg's exceptions, which Django's wrapper turns into its own; a
       connection that broke is an ``OperationalError``, as it is for a cursor.
    """
    name, text = _named(sql)
    pgconn = conn.pgconn
    prepared, transformer = _state(conn)
    values = transformer.dump_sequence(params, [PyFormat.TEXT] * len(params))
    if name not in prepared:
        _check(conn, pgconn.prepare(name, text), pq.ExecStatus.COMMAND_OK)
        prepared.add(name)
    result = pgconn.exec_prepared(name, values)
    _check(conn, result, pq.ExecStatus.TUPLES_OK)
    if result.ntuples == 0:
        return None
    transformer.set_pgresult(result)
    return transformer.load_row(0, tuple)


def _check(conn: psycopg.Connection, result: pq.abc.PGresult, expected: pq.ExecStatus) -> None:
    if result.status == expected:
        return
    if conn.pgconn.status == pq.ConnStatus.BAD:
        message = conn.pgconn.error_message.decode(errors="replace").strip()
        raise psycopg.OperationalError(message or "the connection is lost")
    raise errors.error_from_result(result, encoding=conn.info.encoding)


def _cursor_fetchone(conn: psycopg.Connection, sql: str, params: Sequence[Any]) -> tuple | None:
    """The same statement through a psycopg cursor, prepared: inside a transaction."""
    cursor = getattr(conn, "_prism_cursor", None)
    if cursor is None or cursor.closed:
        cursor = conn._prism_cursor = psycopg.Cursor(conn)
    cursor.execute(sql, params, prepare=True)
    return cursor.fetchone()

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
    """Run independent key lookups and return each one's first row (None for none), as
    one statement where the connection allows it.

    Each read becomes a subquery of one prepared statement (``_fused``), so PostgreSQL
    binds, runs and answers one statement in one snapshot, and the reads pay one
    statement's fixed cost between them. Each read is still its own app's SQL; this only
    puts them side by side. Elsewhere (no prepared statements, inside a transaction,
    SQLite) each runs through ``fetchone`` in turn. A dead persistent connection is
    replaced and the reads run again, as for a ``read_only`` ``fetchone``.
    """
    wrapper = connections[DEFAULT_DB_ALIAS]
    if not prepared_statements(wrapper) or wrapper.in_atomic_block:
        return [fetchone(sql, params, read_only=True) for sql, params in statements]
    reads = tuple(sql for sql, _ in statements)
    sql = _fusions.get(reads)
    if sql is None:
        sql = _fusions[reads] = _fused(reads)
    params = [value for _, values in statements for value in values]
    try:
        row = _prepared_fetchone(wrapper, sql, params)
    except OperationalError:
        if wrapper.is_usable():
            raise
        wrapper.close()
        row = _prepared_fetchone(wrapper, sql, params)
    assert row is not None  # the outer SELECT always answers one row
    widths = _widths.get(sql) or _described(wrapper, sql, len(reads))
    rows: list[tuple | None] = []
    at = 0
    for width in widths:
        rows.append(row[at + 1 : at + width] if row[at] else None)
        at += width
    return rows


_FOUND = "prism_found"
_fusions: dict[tuple[str, ...], str] = {}
_widths: dict[str, tuple[int, ...]] = {}


def _fused(reads: Sequence[str]) -> str:
    """One statement that always answers one row: each read's first row, led by a
    ``prism_found`` column that is null when the read found nothing."""
    joins = "".join(
        f" LEFT JOIN (SELECT true AS {_FOUND}, q.* FROM ({sql.strip()}) q LIMIT 1) r{n} ON true"
        for n, sql in enumerate(reads)
    )
    columns = ", ".join(f"r{n}.*" for n in range(len(reads)))
    return f"SELECT {columns} FROM (SELECT) one{joins}"


def _described(wrapper: Any, sql: str, reads: int) -> tuple[int, ...]:
    """Each read's width in the fused row, ``prism_found`` included, from PostgreSQL's
    description of the statement just run (once per process)."""
    with wrapper.wrap_database_errors:
        conn = wrapper.connection
        result = conn.pgconn.describe_prepared(_named(sql)[0])
        _check(conn, result, pq.ExecStatus.COMMAND_OK)
    names = [result.fname(i) for i in range(result.nfields)]
    starts = [i for i, name in enumerate(names) if name == _FOUND.encode()]
    if len(starts) != reads:
        raise ValueError(f"a fused read names a column {_FOUND!r} of its own: {sql}")
    ends = [*starts[1:], len(names)]
    widths = _widths[sql] = tuple(end - start for start, end in zip(starts, ends, strict=True))
    return widths


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

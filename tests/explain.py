"""What a piece of code costs the database: every SELECT it runs, explained with
``EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)`` on PostgreSQL.

    with Explained() as cost:
        client.get("/api/agents/research/fleet/")
    assert cost.rows_read <= 4 * live

``rows_read`` is what the scans touched: the rows each scan node returned plus those its
filter or recheck threw away, over all its loops. ``buffers`` is the shared buffers
hit and read by each statement's execution (planning left out: it reads the catalogs).
An index that stopped being used, or a scan that grew with the history, shows up as
rows and pages, not as seconds.

``reads_of`` replays the reads of one table from captured queries
(``CaptureQueriesContext``), for tests that bound each statement on its own.
``RowsRead`` (an execute wrapper) counts the statements and the rows they hand back,
without explaining anything.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from django.db import connection

SCANS = {
    "Seq Scan",
    "Index Scan",
    "Index Only Scan",
    "Bitmap Heap Scan",
    "Tid Scan",
    "Tid Range Scan",
}


def explain(sql: str, params: Any = None) -> dict[str, Any]:
    """The top of the plan of one statement, run for real (ANALYZE)."""
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", params)
        plan = cursor.fetchone()[0]
    return (plan if isinstance(plan, list) else json.loads(plan))[0]


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of a plan, depth first."""
    yield plan
    for child in plan.get("Plans", ()):
        yield from nodes(child)


def _visited(node: dict[str, Any]) -> int:
    per_loop = (
        node.get("Actual Rows", 0)
        + node.get("Rows Removed by Filter", 0)
        + node.get("Rows Removed by Index Recheck", 0)
    )
    return round(per_loop * max(node.get("Actual Loops", 1), 1))


def rows_read(plan: dict[str, Any], table: str | None = None) -> int:
    """Rows the scan nodes visited, kept or thrown away; of ``table`` only, if named."""
    return sum(
        _visited(node)
        for node in nodes(plan["Plan"])
        if node["Node Type"] in SCANS and (table is None or node.get("Relation Name") == table)
    )


def buffers(plan: dict[str, Any]) -> int:
    top = plan["Plan"]
    return int(top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0))


@dataclass
class Explained:
    """Captures the SELECTs run inside it, and explains each on the way out."""

    statements: list[tuple[str, Any]] = field(default_factory=list)
    plans: list[dict[str, Any]] = field(default_factory=list)

    def _capture(self, execute, sql, params, many, context):
        if not many and sql.lstrip().upper().startswith(("SELECT", "WITH")):
            self.statements.append((sql, params))
        return execute(sql, params, many, context)

    def __enter__(self) -> Explained:
        self._wrapper = connection.execute_wrapper(self._capture)
        self._wrapper.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._wrapper.__exit__(*exc)
        if exc[0] is None:
            self.plans = [explain(sql, params) for sql, params in self.statements]

    @property
    def rows_read(self) -> int:
        return sum(rows_read(plan) for plan in self.plans)

    @property
    def buffers(self) -> int:
        return sum(buffers(plan) for plan in self.plans)

    def worst(self) -> list[tuple[int, int, str]]:
        """(rows read, buffers, statement) of each statement, the costliest first."""
        return sorted(
            (
                (rows_read(p), buffers(p), sql[:200])
                for p, (sql, _) in zip(self.plans, self.statements, strict=True)
            ),
            reverse=True,
        )


@dataclass(frozen=True)
class Reading:
    """What one statement read of one table."""

    sql: str
    rows: int  # rows of the table that scan nodes visited, kept or filtered out
    buffers: int  # pages the whole statement touched, any table or index
    plan: dict[str, Any]  # the top plan node


def read(sql: str, params: Any = None, *, table: str) -> Reading:
    """Run ``sql`` under EXPLAIN ANALYZE and sum what it read of ``table``."""
    explained = explain(sql, params)
    return Reading(sql, rows_read(explained, table), buffers(explained), explained["Plan"])


def reads_of(queries: list[dict[str, Any]], table: str) -> list[Reading]:
    """Replay the captured SELECTs that name ``table`` (``CaptureQueriesContext``
    entries, parameters already bound) under EXPLAIN. Writes are not replayed."""
    return [
        read(query["sql"], table=table)
        for query in queries
        if table in query["sql"] and query["sql"].lstrip().upper().startswith(("SELECT", "WITH"))
    ]


def relation_pages(table: str) -> int:
    """The table's size in 8 kB pages."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_relation_size(%s) / 8192", [table])
        return cursor.fetchone()[0]


class RowsRead:
    """Rows the database hands back to Python, summed over every statement."""

    def __init__(self) -> None:
        self.rows = 0
        self.statements = 0

    def __call__(self, execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if sql.lstrip().upper().startswith(("SELECT", "WITH")):
            self.statements += 1
            self.rows += max(context["cursor"].rowcount, 0)
        return result

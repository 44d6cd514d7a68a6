"""What a statement really read, from PostgreSQL's own account of running it.

``EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)`` runs the statement and reports, per plan
node, the rows it produced and those its filters threw away, and the buffers (8 kB
pages) it touched. A test captures the statements a piece of code issues, replays the
reads under EXPLAIN, and bounds those figures: an index that stopped being used, or a
scan that grew with the history, shows up as rows and pages, not as seconds.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.db import connection


@dataclass(frozen=True)
class Reading:
    sql: str
    rows: int  # rows of ``table`` that plan nodes visited, kept or filtered out
    buffers: int  # pages touched by the whole statement, any table or index
    plan: dict


def _nodes(plan: dict) -> Iterator[dict]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from _nodes(child)


def _rows_visited(node: dict) -> int:
    per_loop = (
        node.get("Actual Rows", 0)
        + node.get("Rows Removed by Filter", 0)
        + node.get("Rows Removed by Index Recheck", 0)
    )
    return round(per_loop * max(node.get("Actual Loops", 1), 1))


def explain(sql: str, params: Any = None, *, table: str) -> Reading:
    """Run ``sql`` under EXPLAIN ANALYZE and sum what it read of ``table``."""
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", params)
        raw = cursor.fetchone()[0]
    plan = (raw if isinstance(raw, list) else json.loads(raw))[0]["Plan"]
    rows = sum(_rows_visited(n) for n in _nodes(plan) if n.get("Relation Name") == table)
    buffers = plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0)
    return Reading(sql, rows, buffers, plan)


def reads_of(queries: list[dict], table: str) -> list[Reading]:
    """Replay the captured SELECTs that name ``table`` (``CaptureQueriesContext``
    entries, parameters already bound) under EXPLAIN. Writes are not replayed."""
    readings = []
    for query in queries:
        sql = query["sql"]
        if table in sql and sql.lstrip().upper().startswith(("SELECT", "WITH")):
            readings.append(explain(sql, table=table))
    return readings


def relation_pages(table: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_relation_size(%s) / 8192", [table])
        return cursor.fetchone()[0]

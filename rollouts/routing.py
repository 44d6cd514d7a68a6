"""Routing tables and sticky session assignment.

The hash and the ordering are a contract: a harness that caches ``GET /routing/`` can
compute the same assignment locally and keep working while the control plane is down.
"""

from __future__ import annotations

import bisect
import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from rollouts.models import FULL, Routing

BUCKETS = FULL


def bucket(slug: str, session_id: str) -> int:
    """The session's bucket in [0, 10000): the documented, portable hash."""
    digest = hashlib.sha256(f"{slug}:{session_id}".encode()).hexdigest()
    return int(digest[:16], 16) % BUCKETS


def validate_weights(weights: dict[int, int]) -> None:
    if any(w < 0 for w in weights.values()):
        raise ValueError("weights must not be negative")
    total = sum(weights.values())
    if total != FULL:
        raise ValueError(f"weights must sum to {FULL} basis points, not {total}")


@dataclass(frozen=True)
class Table:
    """Cumulative weight ranges over versions ordered by id."""

    epoch: int
    version_ids: tuple[int, ...]
    upper_bounds: tuple[int, ...]  # exclusive upper bound of each version's range

    @classmethod
    def compile(cls, epoch: int, weights: dict[int, int]) -> Table:
        ids, bounds, total = [], [], 0
        for version_id in sorted(weights):
            weight = weights[version_id]
            if weight <= 0:
                continue
            total += weight
            ids.append(version_id)
            bounds.append(total)
        return cls(epoch=epoch, version_ids=tuple(ids), upper_bounds=tuple(bounds))

    def routes(self, version_id: int) -> bool:
        """Whether the version gets new sessions (weight above 0)."""
        return version_id in self.version_ids

    def pick(self, bucket_: int) -> int | None:
        """The version whose cumulative range holds ``bucket_``; None for an empty table."""
        if not self.version_ids:
            return None
        index = bisect.bisect_right(self.upper_bounds, bucket_)
        return self.version_ids[min(index, len(self.version_ids) - 1)]


# Per-process cache of compiled tables. The key includes the epoch, which every request
# reads fresh from the database together with the agent, so a routing change is visible
# to the very next assignment: there is no stale window to tune. ``updated_at`` guards
# against a recreated agent reusing an (id, epoch) pair.
_tables: dict[tuple[int, int, datetime], Table] = {}
_tables_lock = threading.Lock()
_MAX_TABLES = 4096


def table_for(routing: Routing) -> Table:
    return cached_table(
        routing.agent_id, routing.epoch, routing.updated_at, lambda: routing.weights
    )


def cached_table(
    agent_id: int, epoch: int, updated_at: datetime, load_weights: Callable[[], dict]
) -> Table:
    """The compiled table for this epoch; ``load_weights`` runs only on a miss."""
    key = (agent_id, epoch, updated_at)
    table = _tables.get(key)
    if table is None:
        weights = {int(k): int(v) for k, v in load_weights().items() if int(v) > 0}
        table = Table.compile(epoch, weights)
        with _tables_lock:
            if len(_tables) >= _MAX_TABLES:
                _tables.clear()
            # Older epochs of this agent can never be asked for again.
            for stale in [k for k in _tables if k[0] == agent_id]:
                _tables.pop(stale, None)
            _tables[key] = table
    return table


def etag(routing: Routing) -> str:
    return f'"{routing.agent_id}-{routing.epoch}"'

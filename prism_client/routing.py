"""Local routing: the same assignment Prism computes, from a cached routing table.

The bucket hash and the ordering are part of Prism's REST contract, so a harness that
holds a copy of ``GET /api/agents/{slug}/routing/`` pins a session to exactly the version
Prism would have chosen from that table. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

BUCKETS = 10000  # basis points


def bucket(slug: str, session_id: str) -> int:
    """The session's bucket in [0, 10000): the first 16 hex digits of
    ``sha256(f"{slug}:{session_id}")`` as an integer, modulo 10000."""
    digest = hashlib.sha256(f"{slug}:{session_id}".encode()).hexdigest()
    return int(digest[:16], 16) % BUCKETS


@dataclass(frozen=True)
class RoutingTable:
    """One agent's routing: weights in basis points per version id, and its epoch."""

    epoch: int
    stable: int | None
    weights: dict[int, int]
    etag: str | None = None

    @classmethod
    def from_payload(cls, payload: dict[str, Any], etag: str | None = None) -> RoutingTable:
        weights = {int(k): int(v) for k, v in (payload.get("weights") or {}).items()}
        return cls(
            epoch=int(payload.get("epoch") or 0),
            stable=payload.get("stable"),
            weights=weights,
            etag=etag,
        )

    def pick(self, slug: str, session_id: str) -> int | None:
        """The version whose cumulative weight range holds the session's bucket, with
        versions in ascending id order; None when nothing has weight."""
        point = bucket(slug, session_id)
        upper = 0
        chosen = None
        for version_id in sorted(self.weights):
            weight = self.weights[version_id]
            if weight <= 0:
                continue
            upper += weight
            chosen = version_id
            if point < upper:
                return version_id
        # Weights always sum to 10000; should a table not, the last range takes the rest.
        return chosen

    @property
    def routed(self) -> list[int]:
        """Versions that receive new sessions."""
        return sorted(v for v, w in self.weights.items() if w > 0)

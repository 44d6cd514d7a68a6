"""Prism's process-local Prometheus series, observed where they happen.

Under gunicorn with ``PROMETHEUS_MULTIPROC_DIR`` set, prometheus_client keeps each
worker's values in a file of its own there, and ``GET /metrics`` sums them over every
worker (``rollouts.exposition``); without it (runserver, tests, the Celery worker) they
live in this process's memory.

Labels stay bounded: an agent's slug and a version's id are only recorded once the
assignment found the agent, so neither grows with anything but the fleet, and no session
id is ever a label.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

NEW, EXISTING, REPORTED = "new", "existing", "reported"

ASSIGNMENTS = Counter(
    "prism_assignments",
    "Session starts answered, by agent, the version of the pin, and whether the pin was "
    "new, already there, or reported by a harness that routed locally.",
    ["agent", "version", "outcome"],
)
ASSIGNMENT_SECONDS = Histogram(
    "prism_assignment_seconds",
    "Time to answer a session start in sessions.assign: the routing read, the pin's "
    "upsert and, for an existing pin, its directive.",
    ["agent"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)

# (agent, version id, outcome) -> the two children to bump. ``labels()`` validates and
# joins its arguments under a lock on every call; a dict hit costs a hash of the tuple.
# Bounded like the labels: slugs of agents that exist, their versions, three outcomes.
_children: dict[tuple[str, int, str], tuple] = {}


def assignment(agent: str, version_id: int, outcome: str, seconds: float) -> None:
    """Count one answered session start and observe how long it took."""
    key = (agent, version_id, outcome)
    children = _children.get(key)
    if children is None:
        children = (
            ASSIGNMENTS.labels(agent, str(version_id), outcome),
            ASSIGNMENT_SECONDS.labels(agent),
        )
        _children[key] = children
    children[0].inc()
    children[1].observe(seconds)

"""The scale fixture: a migrated Prism database holding N sessions and their outcomes,
built once per size and reused by the scale benchmarks (fleet, beat, gates, dashboard,
assign at size).

``python -m bench.fixtures --sessions 1e5,1e6`` builds what is missing and lists the
cache; bench/README.md describes the shape and the figures.

Where the data lives: a persistent PostgreSQL cluster under ``var/bench/pg`` (git-ignored),
started by whichever benchmark needs it and stopped when it is done; with
``BENCH_DATABASE_URL`` set, that server is used instead. Each size is one database named
by the size and a hash of the migrations and of this builder, so a new migration or a new
builder rebuilds it. A benchmark never touches the cached database: it runs on a copy
(``CREATE DATABASE … TEMPLATE … STRATEGY FILE_COPY``) whose live sessions are brought up to
the present, and drops the copy afterwards.

Shape, for N sessions:

- 50 agents. The busiest (``fx-00``) has 20 versions: 19 stables rolled out one after
  the other over 30 days, then a running rollout of the 20th at 5%. The three stables
  before the current one are still draining (their long sessions are live), the 15
  before them are drained. The other 49 agents have three versions each: a drained
  first stable, the current stable, and a running rollout. So 50 running rollouts.
- Every version and routing change goes through the engine (``set_stable``,
  ``start_rollout``), so epochs, ``RoutingChange`` rows, lifecycles and audit entries
  are the app's own; their timestamps are then moved back onto the 30-day timeline.
- Sessions are written by ``INSERT … SELECT … generate_series`` per routing epoch: the
  busiest agent holds 30% of them, the others share the rest. About 1% are live, the
  rest ended over 30 days: 90% ended by the harness (95% of those with an outcome), 7%
  abandoned, 3% expired. Durations are lognormal with a long tail (median 5 min,
  sigma 1.3); live sessions on draining versions are days old.
- Outcomes for ended sessions: success 92%, errors on most failures, latency lognormal
  around 1.5 s, cost proportional to latency, 2% hallucinations, feedback on 20%.
- Rollups: the outcomes' sums are written by the app when an outcome is recorded, one
  statement per end. Replaying millions of ends through it would take hours, so the
  builder computes the same sufficient statistics in SQL (counts, sums, sums of
  squares, and the DDSketch buckets of latency and cost with the sketch's own bucket
  formula) and writes one row per (version, epoch, metric). The app spreads a key's
  rows over 16 shards to spare concurrent ends a lock wait; every reader sums the
  shards, so the fixture writes shard 0 only. ``tests/bench/test_fixtures.py`` checks
  these rows against a replay through ``metrics.rollups`` on a small build.
- Then the real beat work, once, by calling the tasks' functions: ``count_assignments``
  until the cursor has caught up, the drain policies, a fleet snapshot, and an
  evaluation of every running rollout.
- A release manager, a harness and a viewer (with a password, for the dashboard), and
  the floor's table (``bench.floor``) with N rows, for ``bench.assign --sessions``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

BASE_DIR = Path(__file__).resolve().parent.parent
CLUSTER_DIR = BASE_DIR / "var" / "bench" / "pg"
#: Bump when the fixture's shape changes without a migration changing.
BUILDER_VERSION = 2
META_TABLE = "bench_fixture"

AGENTS = 50
BUSIEST_VERSIONS = 20
BUSIEST_SHARE = 0.30
DRAINING = 3  # stables before the current one that still have live sessions
LIVE_SHARE = 0.01
HISTORY = timedelta(days=30)
ROLLOUT_AGE = timedelta(hours=24)
PASSWORD = "bench-viewer-password"

# Shares of the ended sessions, and of those ended by the harness.
ABANDONED_SHARE, EXPIRED_SHARE, WITH_OUTCOME_SHARE = 0.07, 0.03, 0.95
DURATION_MEDIAN_S, DURATION_SIGMA = 300.0, 1.3


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_sizes(text: str) -> list[int]:
    """``"1e6,1e7"`` -> ``[1000000, 10000000]``."""
    sizes = []
    for part in text.split(","):
        value = float(part.strip())
        if value < 100 or value != int(value):
            raise argparse.ArgumentTypeError(f"a size is a whole number >= 100, not {part!r}")
        sizes.append(int(value))
    return sizes


def label(n: int) -> str:
    """1000000 -> '1m', 500000 -> '500k', 12345 -> '12345'."""
    for unit, size in (("m", 1_000_000), ("k", 1_000)):
        if n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


# --- the build, on the current Django connection --------------------------------------------


@dataclass
class AgentPlan:
    """One agent's timeline: its versions' stable periods and its running rollout."""

    slug: str
    sessions: int
    versions: int
    draining: int
    policy: dict[str, int]


def plan(sessions: int) -> list[AgentPlan]:
    busiest = round(sessions * BUSIEST_SHARE)
    rest, extra = divmod(sessions - busiest, AGENTS - 1)
    # A coding agent's sessions last days, so the busiest keeps draining versions for
    # days; the others use the default policy.
    long_lived = {
        "idle_timeout_s": 1800,
        "max_session_age_s": 7 * 86400,
        "drain_grace_s": 300,
        "max_live_versions": DRAINING + 3,
        "retain_drained": 3,
    }
    agents = [AgentPlan("fx-00", busiest, BUSIEST_VERSIONS, DRAINING, long_lived)]
    for n in range(1, AGENTS):
        agents.append(
            AgentPlan(
                f"fx-{n:02d}",
                rest + (1 if n <= extra else 0),
                3,
                0,
                {
                    "idle_timeout_s": 1800,
                    "max_session_age_s": 86400,
                    "drain_grace_s": 300,
                    "max_live_versions": 4,
                    "retain_drained": 3,
                },
            )
        )
    return agents


def version_layers(slug: str, n: int) -> dict[str, Any]:
    """A realistic tuple (a 1 kB prompt, three tools); the code ref differs per version."""
    tool = {
        "type": "object",
        "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}},
        "required": ["query"],
    }
    return {
        "code": {"ref": f"git:{slug}-{n:04d}", "image": f"registry.local/{slug}:{n}"},
        "model": {
            "provider": "anthropic",
            "name": "claude-sonnet",
            "params": {"temperature": 0.2, "max_tokens": 4096},
        },
        "prompts": {"system": "You are a careful research assistant. Cite sources.\n" * 20},
        "tools": [
            {"name": name, "description": f"{name} tool", "input_schema": tool}
            for name in ("search", "fetch", "summarise")
        ],
    }


#: The running rollouts hold at their first stage: their gates are evaluated every tick,
#: but a benchmark's tick never moves them, so every run measures the same work.
ROLLOUT_STAGES = [
    {"percent": 5, "min_duration_s": 365 * 86400},
    {"percent": 50, "min_duration_s": 3600},
    {"percent": 100},
]
ROLLOUT_GATES = [
    {"metric": "error_rate", "max_increase": 0.03},
    {"metric": "latency_ms", "stat": "p95", "max_relative_change": 0.25},
    {"metric": "cost_usd", "max_relative_change": 0.2},
]


@dataclass
class Segment:
    """The sessions started while one routing epoch was in force."""

    agent_id: int
    epoch: int
    start: datetime
    end: datetime
    weights: dict[int, int]  # version id -> basis points


@dataclass
class Built:
    sessions: int
    info: dict[str, Any] = field(default_factory=dict)
    steps: list[tuple[str, float]] = field(default_factory=list)


def _users() -> dict[str, str]:
    from django.contrib.auth import get_user_model

    from controlplane.models import ApiToken, Profile, Role

    User = get_user_model()
    tokens = {}
    for name, role in (
        ("fx-release-manager", Role.RELEASE_MANAGER),
        ("fx-harness", Role.HARNESS),
        ("fx-viewer", Role.VIEWER),
    ):
        user = User.objects.create_user(username=name, password=PASSWORD)
        Profile.objects.create(user=user, role=role)
        tokens[role.value] = ApiToken.issue(user)
    return tokens


def _timeline(agent_plan: AgentPlan, now: datetime) -> list[datetime]:
    """When each version became the routed one: stables spread over the history, the
    last version's rollout ``ROLLOUT_AGE`` ago."""
    stables = agent_plan.versions - 1
    first, last = now - HISTORY, now - ROLLOUT_AGE - timedelta(hours=6)
    step = (last - first) / max(stables - 1, 1)
    return [first + step * k for k in range(stables)] + [now - ROLLOUT_AGE]


def _agents(now: datetime) -> tuple[list[Segment], dict[str, Any]]:
    """Steps 1 and 2 of ``build``: agents, versions and routing history through the
    engine, then its timestamps moved onto the timeline."""
    from metrics.gates import validate_gates
    from rollouts import engine
    from rollouts.models import Lifecycle, Rollout, RolloutEvent, RoutingChange
    from versions import services
    from versions.models import AuditEntry

    segments: list[Segment] = []
    agents: dict[str, Any] = {}
    for agent_plan in PLAN:
        agent = services.create_agent(
            slug=agent_plan.slug,
            name=f"Fixture agent {agent_plan.slug}",
            drain_policy=agent_plan.policy,
            actor="bench",
        )
        versions = [
            services.register_version(
                agent,
                layers=version_layers(agent_plan.slug, k),
                label=f"v{k}",
                notes="",
                actor="bench",
            )[0]
            for k in range(1, agent_plan.versions + 1)
        ]
        engine.set_stable(agent, versions[0], actor="bench")
        for version in versions[1:-1]:
            engine.start_rollout(
                agent, candidate=version, stages=[{"percent": 100}], gates=[], actor="bench"
            )
        rollout = engine.start_rollout(
            agent,
            candidate=versions[-1],
            stages=engine.validate_stages(ROLLOUT_STAGES),
            gates=validate_gates(ROLLOUT_GATES),
            actor="bench",
        )
        times = _timeline(agent_plan, now)
        changes = list(RoutingChange.objects.filter(agent=agent).order_by("epoch"))
        assert len(changes) == len(times), (len(changes), len(times))
        for change, at in zip(changes, times, strict=True):
            RoutingChange.objects.filter(pk=change.pk).update(at=at)
        for k, version in enumerate(versions):
            updates: dict[str, Any] = {"first_routed_at": times[k]}
            if k < len(versions) - 2:  # lost its weight when the next version came in
                updates["drain_started_at"] = times[k + 1]
            Lifecycle.objects.filter(version=version).update(**updates)
        Rollout.objects.filter(agent=agent, state="promoted").update(
            started_at=times[-2], stage_started_at=times[-2], ended_at=times[-2]
        )
        Rollout.objects.filter(pk=rollout.pk).update(
            started_at=times[-1], stage_started_at=times[-1]
        )
        RolloutEvent.objects.filter(rollout__agent=agent).update(at=times[-1])
        AuditEntry.objects.filter(agent=agent).update(at=now - HISTORY)
        for change, start, end in zip(changes, times, [*times[1:], now], strict=True):
            weights = {int(k): int(v) for k, v in change.weights.items()}
            segments.append(Segment(agent.pk, change.epoch, start, end, weights))
        agents[agent_plan.slug] = {
            "id": agent.pk,
            "versions": [v.pk for v in versions],
            "rollout": rollout.pk,
            "draining": [v.pk for v in versions[-2 - agent_plan.draining : -2]],
        }
    return segments, agents


_ENDED_SQL = """
INSERT INTO rollouts_session
    (agent_id, session_id, version_id, state, started_at, last_seen_at, ended_at,
     drain_at, end_reason, epoch)
SELECT %(agent)s, %(prefix)s || g, v.version, v.state, v.started, v.seen, v.ended, NULL,
       CASE v.state WHEN 'ended' THEN 'completed' WHEN 'abandoned' THEN 'idle timeout'
                    ELSE 'drain grace passed' END,
       %(epoch)s
FROM generate_series(1, %(n)s) AS g,
LATERAL (
    SELECT r.*,
           CASE WHEN r.u_state < %(abandoned)s THEN 'abandoned'
                WHEN r.u_state < %(abandoned)s + %(expired)s THEN 'expired'
                ELSE 'ended' END AS state,
           least(r.started + r.duration * interval '1 second',
                 %(now)s::timestamptz - interval '1 minute') AS seen,
           least(r.started + r.duration * interval '1 second',
                 %(now)s::timestamptz - interval '1 minute') AS ended
    FROM (
        SELECT g AS gg,
               %(start)s::timestamptz + random() * %(span)s * interval '1 second' AS started,
               exp(ln(%(median)s) + %(sigma)s * sqrt(-2 * ln(1 - random()))
                   * cos(2 * pi() * random())) AS duration,
               random() AS u_state,
               CASE WHEN random() < %(cand_share)s THEN %(cand)s ELSE %(base)s END AS version
    ) AS r
) AS v
"""

# Live sessions: ages lognormal (minutes to hours) on the routed versions, days on the
# draining ones; a few are idle past the timeout, as a real fleet's crashed harnesses.
_LIVE_SQL = """
INSERT INTO rollouts_session
    (agent_id, session_id, version_id, state, started_at, last_seen_at, ended_at,
     drain_at, end_reason, epoch)
SELECT %(agent)s, %(prefix)s || g, r.version, 'live', r.started,
       CASE WHEN r.u_idle < 0.002 THEN %(now)s::timestamptz - interval '2 hours'
            ELSE greatest(r.started, %(now)s::timestamptz - random() * interval '60 seconds')
       END,
       NULL, NULL, '', %(epoch)s
FROM generate_series(1, %(n)s) AS g,
LATERAL (
    SELECT greatest(%(start)s::timestamptz,
                    %(end)s::timestamptz - exp(ln(%(median)s) + %(sigma)s
                        * sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random()))
                        * interval '1 second') AS started,
           random() AS u_idle,
           CASE WHEN random() < %(cand_share)s THEN %(cand)s ELSE %(base)s END AS version,
           g AS gg
) AS r
"""


def _split(weights: dict[int, int]) -> tuple[int, int, float]:
    """(baseline, candidate, candidate share) of an epoch's weights (one or two versions)."""
    ordered = sorted(weights.items(), key=lambda item: -item[1])
    base = ordered[0][0]
    cand, share = (ordered[1][0], ordered[1][1] / 10000) if len(ordered) > 1 else (base, 0.0)
    return base, cand, share


def _sessions(segments: list[Segment], agents: dict[str, Any], now: datetime) -> int:
    """Step 3: the sessions, per agent and epoch, with the live ones on top."""
    from django.db import connection

    by_agent: dict[int, list[Segment]] = {}
    for segment in segments:
        by_agent.setdefault(segment.agent_id, []).append(segment)
    written = 0
    with connection.cursor() as cursor:
        cursor.execute("SELECT setseed(0.42)")
        for agent_plan in PLAN:
            info = agents[agent_plan.slug]
            mine = by_agent[info["id"]]
            live_total = max(round(agent_plan.sessions * LIVE_SHARE), 1)
            ended_total = agent_plan.sessions - live_total
            span_total = sum((s.end - s.start).total_seconds() for s in mine)
            # Ended sessions: spread over the history in proportion to each epoch's length.
            left = ended_total
            for k, segment in enumerate(mine):
                span = (segment.end - segment.start).total_seconds()
                n = left if k == len(mine) - 1 else round(ended_total * span / span_total)
                n, left = min(n, left), left - min(n, left)
                if n <= 0:
                    continue
                base, cand, share = _split(segment.weights)
                cursor.execute(
                    _ENDED_SQL,
                    {
                        "agent": info["id"], "prefix": f"e{segment.epoch}-", "n": n,
                        "epoch": segment.epoch, "start": segment.start, "span": span,
                        "now": now, "median": DURATION_MEDIAN_S, "sigma": DURATION_SIGMA,
                        "abandoned": ABANDONED_SHARE, "expired": EXPIRED_SHARE,
                        "base": base, "cand": cand, "cand_share": share,
                    },
                )  # fmt: skip
                written += n
            # Live sessions: most on the current epoch; on the busiest agent a share on
            # each draining version, started before that version lost its weight.
            draining = mine[-2 - agent_plan.draining : -2] if agent_plan.draining else []
            on_draining = max(round(live_total * 0.15), len(draining)) if draining else 0
            current = mine[-1]
            base, cand, share = _split(current.weights)
            batches = [(current, live_total - on_draining, base, cand, share, 1800.0, 1.0)]
            for segment in draining:
                (vid,) = segment.weights
                # Ages of days: these are the long sessions a drain waits for.
                batches.append((segment, on_draining // len(draining), vid, vid, 0.0, 86400.0, 0.6))
            for segment, n, base, cand, share, median, sigma in batches:
                if n <= 0:
                    continue
                cursor.execute(
                    _LIVE_SQL,
                    {
                        "agent": info["id"], "prefix": f"l{segment.epoch}-", "n": n,
                        "epoch": segment.epoch, "start": segment.start, "end": segment.end,
                        "now": now, "median": median, "sigma": sigma,
                        "base": base, "cand": cand, "cand_share": share,
                    },
                )  # fmt: skip
                written += n
    return written


_OUTCOMES_SQL = """
INSERT INTO metrics_outcome
    (agent_id, version_id, session_id, started_at, epoch, ended_at, success, error,
     latency_ms, cost_usd, hallucination, feedback, feedback_at, source)
SELECT o.agent_id, o.version_id, o.session_id, o.started_at, o.epoch, o.ended_at,
       o.ok, NOT o.ok AND o.u_err < 0.7, o.latency,
       round((o.latency * 0.00002 * (0.5 + o.u_cost))::numeric, 6)::float8,
       o.u_hal < 0.02,
       CASE WHEN o.u_fb < 0.2 THEN round(1 + 4 * o.u_fbv) END,
       CASE WHEN o.u_fb < 0.2 THEN o.ended_at + interval '1 hour' END,
       'api'
FROM (
    SELECT s.agent_id, s.version_id, s.session_id, s.started_at, s.epoch, s.ended_at,
           random() < 0.92 AS ok, random() AS u_err, random() AS u_cost,
           random() AS u_hal, random() AS u_fb, random() AS u_fbv,
           round(exp(ln(1500) + 0.5 * sqrt(-2 * ln(1 - random()))
                     * cos(2 * pi() * random()))::numeric, 3)::float8 AS latency,
           random() AS u_has
    FROM rollouts_session s
    WHERE s.state = 'ended'
) AS o
WHERE o.u_has < %(with_outcome)s
"""


def _outcomes() -> int:
    """Step 4: an outcome for most sessions the harness ended."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(_OUTCOMES_SQL, {"with_outcome": WITH_OUTCOME_SHARE})
        return cursor.rowcount


def _rollups() -> int:
    """Step 5: the outcome-fed rollup rows, computed in SQL as the app would sum them.

    1. Per (version, epoch): each metric's count, sum and sum of squares (booleans as
       0/1), the sessions with an outcome, and the abandon rate's samples (every ended
       session; 1 when abandoned, expired, or ended without an outcome).
    2. Per (version, epoch, bucket): the latency and cost sketches' bucket counts, with
       the sketch's own bucket formula, turned into ``Sketch`` JSON here.
    3. One row per (version, epoch, metric), in shard 0.
    """
    from django.db import connection

    from metrics import rollups, sketch
    from metrics.models import Rollup
    from metrics.sketch import Sketch

    fields = dict(rollups.FIELD_METRICS)
    gamma = (1 + sketch.RELATIVE_ACCURACY) / (1 - sketch.RELATIVE_ACCURACY)
    reported = " OR ".join(f"{name} IS NOT NULL" for name in rollups.REPORTED_FIELDS)
    columns = []
    for name in fields:
        value = f"{name}::int" if name in ("success", "error", "hallucination") else name
        columns += [
            f"count({name})",
            f"coalesce(sum({value}), 0)",
            f"coalesce(sum(({value})^2), 0)",
        ]
    rows: dict[tuple[int, int, str], list[Any]] = {}
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT version_id, coalesce(epoch, -1), count(*) FILTER (WHERE {reported}), "
            f"{', '.join(columns)} FROM metrics_outcome GROUP BY 1, 2"
        )
        for version_id, epoch, with_outcome, *stats in cursor.fetchall():
            rows[(version_id, epoch, rollups.WITH_OUTCOME)] = [with_outcome, 0.0, 0.0, None]
            for k, metric in enumerate(fields.values()):
                n, total, total_sq = stats[3 * k : 3 * k + 3]
                if n:
                    rows[(version_id, epoch, metric)] = [n, float(total), float(total_sq), None]
        cursor.execute(
            """
            SELECT s.version_id, coalesce(s.epoch, -1), count(*),
                   count(*) FILTER (WHERE s.state <> 'ended' OR o.id IS NULL)
            FROM rollouts_session s
            LEFT JOIN metrics_outcome o ON o.agent_id = s.agent_id AND o.session_id = s.session_id
            WHERE s.state <> 'live'
            GROUP BY 1, 2
            """
        )
        for version_id, epoch, n, abandoned in cursor.fetchall():
            rows[(version_id, epoch, rollups.ABANDON_RATE)] = [
                n,
                float(abandoned),
                float(abandoned),
                None,
            ]
        for name in sorted(rollups.SKETCHED):
            metric = fields[name]
            cursor.execute(
                f"""
                SELECT version_id, coalesce(epoch, -1),
                       CASE WHEN {name} > %s THEN ceil(ln({name}) / %s)::int END AS bucket,
                       count(*), min({name}), max({name})
                FROM metrics_outcome WHERE {name} IS NOT NULL
                GROUP BY 1, 2, 3
                """,
                # The sketch's own constant, derived the way it derives it.
                [sketch.MIN_POSITIVE, math.log(gamma)],
            )
            sketches: dict[tuple[int, int], Sketch] = {}
            for version_id, epoch, bucket, count, low, high in cursor.fetchall():
                part = Sketch()
                if bucket is None:
                    part.zero = count
                else:
                    part.buckets[bucket] = count
                part.count, part.minimum, part.maximum = count, low, high
                sketches.setdefault((version_id, epoch), Sketch()).update(part)
            for (version_id, epoch), whole in sketches.items():
                rows[(version_id, epoch, metric)][3] = whole.to_json()
    Rollup.objects.bulk_create(
        [
            Rollup(version_id=v, epoch=e, metric=m, shard=0, n=n, total=t, total_sq=sq, sketch=sk)
            for (v, e, m), (n, t, sq, sk) in sorted(rows.items())
        ],
        batch_size=2000,
    )
    return len(rows)


def _floor_table(rows: int) -> None:
    """The floor's table holding as many rows as Prism's sessions, for bench.assign."""
    from django.db import connection

    from bench.floor import CREATE_TABLE, TABLE

    with connection.cursor() as cursor:
        cursor.execute(CREATE_TABLE)
        # Filled without its unique key, which is then built once: the same index a
        # table grown one pin at a time ends up with, in a fraction of the time.
        cursor.execute(f"ALTER TABLE {TABLE} DROP CONSTRAINT {TABLE}_session_id_key")
        cursor.execute(
            f"INSERT INTO {TABLE} (session_id, created_at) "
            "SELECT 'fx-' || g, now() - random() * interval '30 days' "
            "FROM generate_series(1, %s) AS g",
            [rows],
        )
        cursor.execute(
            f"ALTER TABLE {TABLE} ADD CONSTRAINT {TABLE}_session_id_key UNIQUE (session_id)"
        )


def _beat(now: datetime) -> dict[str, Any]:
    """Step 7: the read models, by the beat's own task functions, once."""
    from django.db.models import F, Value
    from django.db.models.functions import Least

    from metrics import rollups
    from rollouts.models import Lifecycle, Rollout
    from rollouts.tasks import (
        enforce_agent_drain_policies,
        estimate_survival,
        evaluate_rollout,
        record_fleet_snapshots,
    )
    from versions.models import Agent

    # The task counts a bounded step per tick, after pins have settled; here every pin
    # has, so the cursor is run to the end with no settling.
    counted = 0
    while step := rollups.count_assignments(settle_s=0):
        counted += step
    # The tick's tasks fan out one task per agent; here each agent's task runs in turn.
    agent_ids = list(Agent.objects.order_by("pk").values_list("pk", flat=True))
    for agent_id in agent_ids:
        enforce_agent_drain_policies(agent_id)
    # The sweep marks empty versions drained as of now; they drained days ago.
    Lifecycle.objects.filter(drained_at__isnull=False, drain_started_at__isnull=False).update(
        drained_at=Least(F("drain_started_at") + timedelta(days=2), Value(now))
    )
    record_fleet_snapshots()
    for agent_id in agent_ids:
        estimate_survival(agent_id)
    decisions = [
        evaluate_rollout(pk, stage)
        for pk, stage in Rollout.objects.filter(state="running").values_list("pk", "stage")
    ]
    return {"assigned_counted": counted, "evaluations": decisions}


PLAN: list[AgentPlan] = []


def build(
    sessions: int, *, now: datetime | None = None, floor: bool = True, vacuum: bool = True
) -> Built:
    """Fill the (migrated, empty) database Django is connected to.

    1. Users and tokens.
    2. Agents, versions and routing history through the engine; timestamps moved back.
    3. Sessions, per routing epoch, by ``generate_series``.
    4. Outcomes for sessions the harness ended.
    5. The outcome-fed rollups (see ``_rollups``).
    6. The floor's table, and fresh planner statistics.
    7. The beat's work, once: assignments counted, drain policies, a snapshot, an
       evaluation of every running rollout.
    """
    from django.db import connection

    now = now or datetime.now(UTC)
    PLAN[:] = plan(sessions)
    built = Built(sessions)
    clock = time.monotonic()

    def step(name: str) -> None:
        nonlocal clock
        built.steps.append((name, time.monotonic() - clock))
        clock = time.monotonic()
        say(f"  {name}: {built.steps[-1][1]:.1f} s")

    tokens = _users()
    segments, agents = _agents(now)
    step("agents and routing history")
    written = _sessions(segments, agents, now)
    step(f"{written} sessions")
    outcomes = _outcomes()
    step(f"{outcomes} outcomes")
    rollup_rows = _rollups()
    step(f"{rollup_rows} rollup rows")
    if floor:
        _floor_table(sessions)
        step(f"floor table, {sessions} rows")
    if vacuum:
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")
        step("vacuum analyze")
    beat = _beat(now)
    step("the beat's work, once")
    busiest = PLAN[0].slug
    built.info = {
        "sessions": written,
        "outcomes": outcomes,
        "rollup_rows": rollup_rows,
        "built_at": now.isoformat(),
        "tokens": tokens,
        "viewer": {"username": "fx-viewer", "password": PASSWORD},
        "busiest": busiest,
        "agents": agents,
        "beat": beat,
    }
    return built


# --- the cache: a persistent cluster, one database per size --------------------------------


def migrations_hash() -> str:
    """A hash of every migration file and of the builder's version."""
    digest = hashlib.sha256(f"builder {BUILDER_VERSION}".encode())
    for path in sorted(BASE_DIR.glob("*/migrations/*.py")):
        digest.update(str(path.relative_to(BASE_DIR)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


class Cluster:
    """The persistent PostgreSQL cluster under var/bench/pg, on a Unix socket."""

    def __init__(self, root: Path = CLUSTER_DIR) -> None:
        self.root = root
        self.data = root / "data"
        self.run_dir = root / "run"
        self.bindir = self._bindir()
        self.started_here = False

    @staticmethod
    def _bindir() -> Path:
        found = shutil.which("initdb")
        if found:
            return Path(found).resolve().parent
        candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
        if not candidates:
            raise SystemExit("This needs the PostgreSQL server binaries (initdb, pg_ctl).")
        return candidates[-1]

    def _as_owner(self, command: list[str]) -> list[str]:
        # initdb and the server refuse to run as root: use the Debian package's account.
        return ["runuser", "-u", "postgres", "--", *command] if os.getuid() == 0 else command

    @property
    def admin_url(self) -> str:
        return f"postgresql://prism@/postgres?host={self.run_dir}"

    def running(self) -> bool:
        if not (self.data / "PG_VERSION").exists():
            return False
        status = subprocess.run(
            self._as_owner([str(self.bindir / "pg_ctl"), "-D", str(self.data), "status"]),
            capture_output=True,
        )
        return status.returncode == 0

    def start(self) -> None:
        if self.running():
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if os.getuid() == 0:
            subprocess.run(["chown", "-R", "postgres", str(self.root)], check=True)
        if not (self.data / "PG_VERSION").exists():
            say(f"Creating the benchmark cluster at {self.data} …")
            subprocess.run(
                self._as_owner(
                    [str(self.bindir / "initdb"), "-D", str(self.data), "-U", "prism",
                     "--auth=trust", "-E", "UTF8"]
                ),
                check=True, stdout=subprocess.DEVNULL,
            )  # fmt: skip
        options = (
            f"-c listen_addresses='' -c unix_socket_directories='{self.run_dir}' "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200 -c shared_buffers=1GB -c maintenance_work_mem=512MB "
            "-c work_mem=64MB -c max_wal_size=8GB -c checkpoint_timeout=30min "
            "-c autovacuum=off"
        )
        subprocess.run(
            self._as_owner(
                [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-s", "-w",
                 "-l", str(self.root / "log"), "-o", options, "start"]
            ),
            check=True,
        )  # fmt: skip
        self.started_here = True

    def others_connected(self) -> bool:
        """Whether another benchmark is using the cluster (it must stay up for it)."""
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            (count,) = conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
            ).fetchone()
        return count > 0

    def stop(self) -> None:
        if self.started_here and not self.others_connected():
            subprocess.run(
                self._as_owner(
                    [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-s", "-m", "fast", "stop"]
                ),
                check=False,
            )
            self.started_here = False


def with_database(admin_url: str, name: str) -> str:
    return urlunsplit(urlsplit(admin_url)._replace(path="/" + name))


@dataclass
class Cached:
    name: str
    sessions: int
    info: dict[str, Any]
    build_s: float
    bytes: int


class Cache:
    """The built fixtures on one server, by size."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.key = migrations_hash()

    def name(self, sessions: int) -> str:
        return f"prism_fx_{label(sessions)}_{self.key}"

    def _databases(self) -> list[str]:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE 'prism_fx\\_%%'"
            ).fetchall()
        return [name for (name,) in rows]

    def load(self, sessions: int) -> Cached | None:
        name = self.name(sessions)
        if name not in self._databases():
            return None
        with psycopg.connect(with_database(self.admin_url, name), autocommit=True) as conn:
            try:
                row = conn.execute(f"SELECT info, build_s FROM {META_TABLE}").fetchone()
            except psycopg.errors.UndefinedTable:
                return None  # a build that did not finish
            size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        if row is None:
            return None
        return Cached(name, sessions, row[0], row[1], size)

    def ensure(self, sessions: int) -> Cached:
        """The fixture of this size, built now if missing (or if its build broke off)."""
        found = self.load(sessions)
        if found is not None:
            say(
                f"Fixture {found.name}: cached ({found.bytes / 1e9:.2f} GB, built in "
                f"{found.build_s:.0f} s)."
            )
            return found
        for stale in self._databases():
            if stale.startswith(f"prism_fx_{label(sessions)}_"):
                say(f"Dropping {stale}: a broken build, or built from other migrations.")
                self._drop(stale)
        name = self.name(sessions)
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        say(f"Building fixture {name} ({sessions:,} sessions) …")
        began = time.monotonic()
        env = {
            **os.environ,
            "DATABASE_URL": with_database(self.admin_url, name),
            "DJANGO_SETTINGS_MODULE": "controlplane.settings",
            "DEBUG": "false",
            "CELERY_BROKER_URL": "memory://",
        }
        env.setdefault("SECRET_KEY", secrets.token_urlsafe(50))
        subprocess.run(
            [sys.executable, "-m", "bench.fixtures", "--build-into-current", str(sessions)],
            cwd=BASE_DIR, env=env, check=True,
        )  # fmt: skip
        found = self.load(sessions)
        if found is None:
            raise RuntimeError(f"the build of {name} wrote no {META_TABLE} row")
        say(f"Built {name} in {time.monotonic() - began:.0f} s, {found.bytes / 1e9:.2f} GB.")
        return found

    def _drop(self, name: str) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def settle(self) -> None:
        """Write out what the copies dirtied (a checkpoint, then the OS's write-back), so
        timings taken next are not sharing the machine with that write-back. Without
        the right to CHECKPOINT (a role on someone else's server), only the OS part."""
        try:
            with psycopg.connect(self.admin_url, autocommit=True) as conn:
                conn.execute("CHECKPOINT")
        except psycopg.errors.InsufficientPrivilege:
            pass
        os.sync()

    @contextlib.contextmanager
    def copy(self, sessions: int) -> Iterator[Copy]:
        """A throwaway copy of the fixture, its live sessions moved to the present."""
        cached = self.ensure(sessions)
        name = f"prism_run_{label(sessions)}_{os.getpid()}_{secrets.token_hex(3)}"
        began = time.monotonic()
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{cached.name}" STRATEGY FILE_COPY')
        url = with_database(self.admin_url, name)
        shift = refresh(url, cached.info)
        say(
            f"Copied to {name} in {time.monotonic() - began:.1f} s; live sessions moved "
            f"{shift / 3600:.1f} h forward."
        )
        try:
            yield Copy(url, name, cached)
        finally:
            self._drop(name)


@dataclass
class Copy:
    url: str
    name: str
    cached: Cached

    @property
    def info(self) -> dict[str, Any]:
        return self.cached.info


def refresh(url: str, info: dict[str, Any]) -> float:
    """Move the copy's present to now: live sessions, the running rollouts' clocks and
    the snapshots shift by the time since the build, so the beat sees the same live
    state whenever the copy is made. Ended history stays where it was. Returns the
    shift in seconds."""
    built_at = datetime.fromisoformat(info["built_at"])
    shift = max((datetime.now(UTC) - built_at).total_seconds(), 0.0)
    with psycopg.connect(url, autocommit=True) as conn:
        delta = timedelta(seconds=shift)
        conn.execute(
            "UPDATE rollouts_session SET started_at = started_at + %s, "
            "last_seen_at = last_seen_at + %s, drain_at = drain_at + %s "
            "WHERE agent_id = ANY(%s) AND state = 'live'",
            [delta, delta, delta, [a["id"] for a in info["agents"].values()]],
        )
        for table, columns, where in (
            ("rollouts_rollout", ("started_at", "stage_started_at"), "state = 'running'"),
            (
                "rollouts_lifecycle",
                ("drain_started_at", "forced_drain_at", "drain_eta_at"),
                "drained_at IS NULL",
            ),
            ("rollouts_fleetsnapshot", ("at",), "true"),
            ("controlplane_beattick", ("at",), "true"),
        ):
            sets = ", ".join(f"{c} = {c} + %s" for c in columns)
            conn.execute(f"UPDATE {table} SET {sets} WHERE {where}", [delta] * len(columns))
        conn.execute("ANALYZE rollouts_session")
    return shift


def admin_url() -> tuple[str, Cluster | None]:
    """The server the cache lives on: ``BENCH_DATABASE_URL``, or the local cluster."""
    url = os.environ.get("BENCH_DATABASE_URL", "")
    if url:
        return url, None
    cluster = Cluster()
    cluster.start()
    return cluster.admin_url, cluster


@contextlib.contextmanager
def cache() -> Iterator[Cache]:
    url, cluster = admin_url()
    try:
        yield Cache(url)
    finally:
        if cluster is not None:
            cluster.stop()


# --- entry point ------------------------------------------------------------------------


def _build_into_current(sessions: int) -> int:
    """The build subprocess: migrate the database DATABASE_URL names, fill it, and write
    the meta row last (its presence marks a finished build)."""
    import django

    django.setup()
    import logging

    from django.core.management import call_command
    from django.db import connection

    # The beat logs every agent's drain pass; a build is not the place to read them.
    logging.getLogger("rollouts").setLevel(logging.WARNING)
    began = time.monotonic()
    call_command("migrate", verbosity=0, interactive=False)
    say(f"  migrate: {time.monotonic() - began:.1f} s")
    built = build(sessions)
    build_s = time.monotonic() - began
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE {META_TABLE} (info jsonb NOT NULL, build_s float8 NOT NULL)")
        cursor.execute(
            f"INSERT INTO {META_TABLE} VALUES (%s::jsonb, %s)",
            [json.dumps({**built.info, "steps": built.steps}), build_s],
        )
        cursor.execute("CHECKPOINT")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="python -m bench.fixtures",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sessions", type=parse_sizes, default=[100_000], help="e.g. 1e6,1e7")
    parser.add_argument("--drop", action="store_true", help="drop these sizes from the cache")
    parser.add_argument("--build-into-current", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.build_into_current:
        return _build_into_current(args.build_into_current)
    with cache() as fixtures:
        for n in args.sessions:
            if args.drop:
                fixtures._drop(fixtures.name(n))
                say(f"Dropped {fixtures.name(n)}.")
                continue
            found = fixtures.ensure(n)
            steps = found.info.get("steps", [])
            print(
                f"fixture {label(n):>6}  {found.info['sessions']:>10,} sessions  "
                f"{found.info['outcomes']:>10,} outcomes  {found.bytes / 1e9:6.2f} GB  "
                f"built in {found.build_s:6.0f} s  ("
                + ", ".join(f"{k} {v:.0f} s" for k, v in steps)
                + ")",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

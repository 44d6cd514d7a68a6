"""Session assignment, heartbeats and ends: the hot path (DESIGN §5).

Assignment is one read of the agent's routing row (joined with the agent), a compiled
table cached by epoch, and one upsert that both pins new sessions and returns existing
pins. With token authentication that is three queries in all.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone
from rest_framework.utils.encoders import JSONEncoder as DRFJSONEncoder

from metrics import outcomes, rollups
from rollouts import routing as routing_mod
from rollouts.drain import mark_drained_if_empty, revive
from rollouts.models import Routing, Session, SessionState
from versions.api import version_payload as serialize_version
from versions.audit import SYSTEM, record
from versions.models import Agent, Version

CONTINUE, DRAIN, TERMINATE = "continue", "drain", "terminate"


class NotFound(Exception):
    pass


class NoRoute(Exception):
    """The agent has no version to route to (no stable has been set)."""


class UnknownVersion(Exception):
    """A reported version that is not a version of this agent."""


class PinConflict(Exception):
    """A reported version that disagrees with the session's existing pin."""

    def __init__(self, pinned: int) -> None:
        super().__init__(f"the session is pinned to version {pinned}")
        self.pinned = pinned


def valid_session_id(session_id: str) -> bool:
    return 1 <= len(session_id) <= 200 and session_id.isprintable()


# --- directives ------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    directive: str
    start_drain: bool = False  # record drain_at = now
    expire: bool = False  # mark the session expired
    reason: str = ""  # why drain starts, when not the maximum age
    terminated_by: str = ""  # a forced terminate expires the session at once: why


@dataclass(frozen=True)
class ForcedDrain:
    """A version's force-drain mark (evacuation, the live-version cap, a manual drain)."""

    at: datetime
    reason: str
    terminate: bool = False


def decide(
    *,
    state: str,
    started_at: datetime,
    drain_at: datetime | None,
    version_active: bool,
    policy: dict[str, int],
    now: datetime,
    forced: ForcedDrain | None = None,
) -> Verdict:
    """The directive for a session, from the policy and fleet state at this moment.

    1. A session that is no longer live is told to terminate.
    2. A session on a version force-drained with ``terminate`` is expired and told to
       terminate.
    3. A session already told to drain keeps draining until its grace runs out, then is
       expired and told to terminate.
    4. A session on a force-drained version that was not told yet (it was pinned after
       the mark, from a routing table read before it) is told to drain from now on.
    5. A session on a version that gets no new traffic, older than the maximum age, is
       told to drain from now on.
    6. Everything else continues.

    A force-drain mark counts only while the version has no weight; giving it weight
    clears the mark anyway.
    """
    if state != SessionState.LIVE:
        return Verdict(TERMINATE)
    if version_active:
        forced = None
    if forced is not None and forced.terminate:
        return Verdict(TERMINATE, expire=True, terminated_by=f"version terminated: {forced.reason}")
    grace = timedelta(seconds=policy["drain_grace_s"])
    if drain_at is not None:
        if now >= drain_at + grace:
            return Verdict(TERMINATE, expire=True)
        return Verdict(DRAIN)
    if forced is not None:
        reason = f"version force-drained: {forced.reason}"
    elif not version_active and now - started_at > timedelta(seconds=policy["max_session_age_s"]):
        reason = ""
    else:
        return Verdict(CONTINUE)
    if grace.total_seconds() == 0:
        return Verdict(TERMINATE, start_drain=True, expire=True, reason=reason)
    return Verdict(DRAIN, start_drain=True, reason=reason)


def _apply_verdict(
    session: Session, verdict: Verdict, agent: Agent, now: datetime, *, version_active: bool
) -> None:
    """Persist what a verdict implies, conditionally, and audit the forced action. A
    session expiring last on a weightless version drains that version at once, as an
    end does, rather than at the beat's next sweep."""
    if not (verdict.start_drain or verdict.expire):
        return
    expired = False
    with transaction.atomic():
        if verdict.start_drain:
            updated = Session.objects.filter(
                pk=session.pk, state=SessionState.LIVE, drain_at__isnull=True
            ).update(drain_at=now)
            if updated:
                session.drain_at = now
                record(
                    "session.drain",
                    session,
                    actor=SYSTEM,
                    agent=agent,
                    reason=verdict.reason
                    or f"older than max_session_age_s={agent.max_session_age_s} on a "
                    "version that no longer receives new sessions",
                    after={"version": session.version_id, "drain_at": now.isoformat()},
                )
        if verdict.expire:
            forced = bool(verdict.terminated_by)
            updated = Session.objects.filter(pk=session.pk, state=SessionState.LIVE).update(
                state=SessionState.EXPIRED,
                ended_at=now,
                end_reason="terminated by a forced drain" if forced else "drain grace elapsed",
            )
            if updated:
                rollups.sessions_ended(
                    SessionState.EXPIRED,
                    list(
                        Session.objects.filter(pk=session.pk).values_list(
                            "version_id", "epoch", "session_id"
                        )
                    ),
                )
                session.state = SessionState.EXPIRED
                record(
                    "session.expired",
                    session,
                    actor=SYSTEM,
                    agent=agent,
                    reason=verdict.terminated_by
                    or f"drain_grace_s={agent.drain_grace_s} elapsed after drain",
                    after={"version": session.version_id},
                )
                expired = True
    if expired and not version_active:
        mark_drained_if_empty(agent, session.version_id, now)


# --- version payloads ------------------------------------------------------------------

# Versions are immutable and never deleted, so an id always names the same tuple and its
# API form can be cached per process for good, as a dict and as encoded JSON.
_payloads: dict[int, tuple[dict, bytes]] = {}
_payloads_lock = threading.Lock()
_encoder = DRFJSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def version_payload(version_id: int) -> tuple[dict, bytes]:
    cached = _payloads.get(version_id)
    if cached is not None:
        return cached
    version = Version.objects.select_related("agent", "created_by").get(pk=version_id)
    payload = serialize_version(version)
    cached = (payload, _encoder.encode(payload).encode())
    with _payloads_lock:
        if len(_payloads) > 10000:
            _payloads.clear()
        _payloads[version_id] = cached
    return cached


# --- assignment --------------------------------------------------------------------------


@dataclass
class Assignment:
    session_id: str
    version_id: int
    created: bool
    directive: str
    started_at: datetime
    state: str


# An existing pin wins the (agent, session_id) conflict; asking again counts as a sign
# of life for a live session. xmax = 0 only on the row version this statement inserted.
_ON_CONFLICT_KEEP_PIN = """
ON CONFLICT (agent_id, session_id) DO UPDATE
    SET last_seen_at = CASE WHEN rollouts_session.state = 'live'
                            THEN EXCLUDED.last_seen_at
                            ELSE rollouts_session.last_seen_at END
"""

_UPSERT_PG = (
    """
INSERT INTO rollouts_session
    (agent_id, session_id, version_id, state, started_at, last_seen_at, end_reason, epoch)
VALUES (%s, %s, %s, 'live', %s, %s, '', %s)"""
    + _ON_CONFLICT_KEEP_PIN
    + "RETURNING id, version_id, state, started_at, drain_at, (xmax = 0) AS inserted"
)

_INSERT_SQLITE = """
INSERT INTO rollouts_session
    (agent_id, session_id, version_id, state, started_at, last_seen_at, end_reason, epoch)
VALUES (%s, %s, %s, 'live', %s, %s, '', %s)
ON CONFLICT (agent_id, session_id) DO NOTHING
RETURNING id, version_id, state, started_at, drain_at
"""


def _upsert(
    agent_id: int, session_id: str, version_id: int, now: datetime, epoch: int | None
) -> tuple:
    """Pin the session to ``version_id`` unless it is pinned already; one statement on
    PostgreSQL. The unique (agent, session_id) constraint decides concurrent duplicates,
    and every caller gets the row that won."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(_UPSERT_PG, [agent_id, session_id, version_id, now, now, epoch])
            return cursor.fetchone()
        # SQLite serialises writers, so insert-or-read is race-free there.
        with transaction.atomic():
            cursor.execute(_INSERT_SQLITE, [agent_id, session_id, version_id, now, now, epoch])
            row = cursor.fetchone()
            if row is not None:
                return (*row, True)
            session = Session.objects.get(agent_id=agent_id, session_id=session_id)
            if session.state == SessionState.LIVE:
                Session.objects.filter(pk=session.pk).update(last_seen_at=now)
            return (
                session.pk,
                session.version_id,
                session.state,
                session.started_at,
                session.drain_at,
                False,
            )


def _as_datetime(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    # SQLite hands raw cursors ISO strings.
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def assign(slug: str, session_id: str, reported: int | None = None) -> Assignment:
    """Pin a new session by weight, or return the existing pin, and decide its directive.

    ``reported`` is a version the harness already ran the session on, having routed it
    locally while the control plane was unreachable ("fail static"): the pin records
    that version instead of computing one. It must be a version of this agent, and it
    must agree with a pin that already exists (``PinConflict`` otherwise).
    """
    now = timezone.now()
    try:
        routing = Routing.objects.select_related("agent").get(agent__slug=slug)
    except Routing.DoesNotExist:
        if Agent.objects.filter(slug=slug).exists():
            raise NoRoute(slug) from None
        raise NotFound(slug) from None
    table = routing_mod.table_for(routing)
    if reported is not None:
        if not Version.objects.filter(pk=reported, agent_id=routing.agent_id).exists():
            raise UnknownVersion(reported)
        target = reported
    else:
        target = table.pick(routing_mod.bucket(slug, session_id))
    if target is None:
        raise NoRoute(slug)
    pk, version_id, state, started_at, drain_at, inserted = _upsert(
        routing.agent_id, session_id, target, now, None if reported is not None else routing.epoch
    )
    if reported is not None and version_id != reported:
        raise PinConflict(version_id)
    started_at = _as_datetime(started_at)
    directive = CONTINUE
    if not inserted:
        session = Session(
            pk=pk,
            agent=routing.agent,
            session_id=session_id,
            version_id=version_id,
            state=state,
            started_at=started_at,
            drain_at=_as_datetime(drain_at),
        )
        active = table.routes(version_id)
        verdict = decide(
            state=state,
            started_at=started_at,
            drain_at=session.drain_at,
            version_active=active,
            policy=routing.agent.drain_policy,
            now=now,
        )
        _apply_verdict(session, verdict, routing.agent, now, version_active=active)
        directive, state = verdict.directive, session.state
    return Assignment(session_id, version_id, bool(inserted), directive, started_at, state)


def assignment_json(assignment: Assignment) -> bytes:
    """The answer to a session start, encoded once. Both the hot path and the full path
    use it, so their answers are the same bytes."""
    _, version = version_payload(assignment.version_id)
    encode = _encoder.encode
    return b"".join((
        b'{"session_id":', encode(assignment.session_id).encode(),
        b',"version":', version,
        b',"directive":', encode(assignment.directive).encode(),
        b',"state":', encode(assignment.state).encode(),
        b',"started_at":', encode(assignment.started_at).encode(),
        b"}",
    ))  # fmt: skip


# Everything the hot path reads, in one round trip: the caller's token, user and role,
# and the agent's routing row and drain policy.
_CALLER_AND_ROUTE = """
WITH caller AS (
    SELECT u.is_active, u.is_superuser, p.role
    FROM controlplane_apitoken t
    JOIN auth_user u ON u.id = t.user_id
    LEFT JOIN controlplane_profile p ON p.user_id = u.id
    WHERE t.key_hash = %(key)s
), route AS (
    SELECT r.agent_id, r.epoch, r.updated_at, r.weights, a.max_session_age_s, a.drain_grace_s
    FROM versions_agent a JOIN rollouts_routing r ON r.agent_id = a.id
    WHERE a.slug = %(slug)s
)"""

_HOT_READ = (
    _CALLER_AND_ROUTE
    + """
SELECT route.*, caller.* FROM route CROSS JOIN caller
"""
)

# The same read with the pin in the same statement (PostgreSQL). The pin is written only
# if the routing row is still the one the caller's table was compiled from and the
# caller may start sessions; otherwise its columns come back null and nothing changed.
_HOT_READ_AND_PIN = (
    _CALLER_AND_ROUTE
    + """, pin AS (
    INSERT INTO rollouts_session
        (agent_id, session_id, version_id, state, started_at, last_seen_at, end_reason, epoch)
    SELECT route.agent_id, %(session_id)s, %(version)s, 'live', %(now)s, %(now)s, '', route.epoch
    FROM route CROSS JOIN caller
    WHERE route.agent_id = %(agent_id)s AND route.epoch = %(epoch)s
      AND route.updated_at = %(updated_at)s
      AND caller.is_active AND (caller.is_superuser OR caller.role = ANY(%(roles)s))"""
    + _ON_CONFLICT_KEEP_PIN
    + """RETURNING version_id, state, started_at, drain_at, (xmax = 0) AS inserted
)
SELECT route.*, caller.*, pin.*
FROM route CROSS JOIN caller LEFT JOIN pin ON true
"""
)


def _prepared_fetchone(sql: str, params: dict[str, Any]) -> tuple | None:
    """Run one statement as a server-side prepared statement on Django's connection.

    Planning the hot statement costs more than running it, and Django's client-side
    binding plans every execution afresh. Preparing it once per connection removes
    that. The query is logged like any other, so query counts in tests still see it.
    """
    if connection.settings_dict["OPTIONS"].get("prepare_threshold") is None:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchone()
    connection.ensure_connection()
    started = time.monotonic()
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(sql, params, prepare=True)
        row = cursor.fetchone()
    if connection.queries_logged:
        connection.queries_log.append({"sql": sql, "time": f"{time.monotonic() - started:.3f}"})
    return row


# slug -> (agent_id, epoch, updated_at, table): the routing this process saw last, so
# the next pin can be written in the same statement as the read that checks it.
_known_routes: dict[str, tuple[int, int, datetime, routing_mod.Table]] = {}


def assign_for_token(
    slug: str, session_id: str, key_hash: str, roles: frozenset[str]
) -> Assignment | None:
    """The hot path for a harness with an API token: one round trip when warm.

    1. Pick the version from the table this process compiled for the agent's last seen
       routing, and send one statement that reads the caller's role and the agent's
       routing row and writes the pin, if that routing is still current.
    2. If the routing moved on (or this process has not seen the agent yet), compile
       the table for the epoch just read and upsert the pin: a second round trip.
    3. For an existing pin, decide the directive.

    Anything short of plainly fine (unknown token or agent, a role that may not start
    sessions, nothing to route to, a directive that must write) returns None, and the
    caller takes the full path, which gives the canonical answer or error. Nothing is
    written for a caller that may not start sessions.
    """
    now = timezone.now()
    bucket = routing_mod.bucket(slug, session_id)
    known = _known_routes.get(slug)
    guess = known[3].pick(bucket) if known is not None else None
    if guess is not None and connection.vendor == "postgresql":
        row = _prepared_fetchone(_HOT_READ_AND_PIN, {
            "key": key_hash, "slug": slug, "session_id": session_id, "version": guess,
            "now": now, "agent_id": known[0], "epoch": known[1], "updated_at": known[2],
            "roles": [str(role) for role in roles],
        })  # fmt: skip
    else:
        with connection.cursor() as cursor:
            cursor.execute(_HOT_READ, {"key": key_hash, "slug": slug})
            row = cursor.fetchone()
    if row is None:
        return None
    agent_id, epoch, updated_at, weights, max_age, grace, is_active, superuser, role = row[:9]
    if not is_active or not (superuser or role in roles):
        return None
    pin = row[9:]
    if not pin or pin[0] is None:
        updated_at = _as_datetime(updated_at)
        table = routing_mod.cached_table(
            agent_id, epoch, updated_at,
            lambda: json.loads(weights) if isinstance(weights, str | bytes) else weights,
        )  # fmt: skip
        _known_routes[slug] = (agent_id, epoch, updated_at, table)
        target = table.pick(bucket)
        if target is None:
            return None
        pin = _upsert(agent_id, session_id, target, now, epoch)[1:]
    version_id, state, started_at, drain_at, inserted = pin
    started_at = _as_datetime(started_at)
    directive = CONTINUE
    if not inserted:
        verdict = decide(
            state=state,
            started_at=started_at,
            drain_at=_as_datetime(drain_at),
            version_active=_known_routes[slug][3].routes(version_id),
            policy={"max_session_age_s": max_age, "drain_grace_s": grace},
            now=now,
        )
        if verdict.start_drain or verdict.expire:
            return None
        directive = verdict.directive
    return Assignment(session_id, version_id, bool(inserted), directive, started_at, state)


# --- heartbeat, end, feedback ------------------------------------------------------------


def _find_session(slug: str, session_id: str, *, lock: bool = False) -> Session:
    sessions = Session.objects.select_related("agent__routing")
    if lock:
        sessions = sessions.select_for_update(of=("self",))
    try:
        return sessions.get(agent__slug=slug, session_id=session_id)
    except Session.DoesNotExist:
        raise NotFound(session_id) from None


def _find_session_and_marks(slug: str, session_id: str) -> Session:
    """The session with its agent, routing row and its version's lifecycle marks, in
    one statement: everything a heartbeat decides from."""
    lifecycle = "version__lifecycle__"
    sessions = Session.objects.select_related("agent__routing").annotate(
        lc_version=F(f"{lifecycle}version_id"),
        lc_forced_drain_at=F(f"{lifecycle}forced_drain_at"),
        lc_forced_reason=F(f"{lifecycle}forced_drain_reason"),
        lc_forced_terminate=F(f"{lifecycle}forced_terminate"),
        lc_drained_at=F(f"{lifecycle}drained_at"),
    )
    try:
        return sessions.get(agent__slug=slug, session_id=session_id)
    except Session.DoesNotExist:
        raise NotFound(session_id) from None


def _mark(at: datetime | None, reason: str | None, terminate: bool | None) -> ForcedDrain | None:
    return None if at is None else ForcedDrain(at, reason or "", bool(terminate))


def heartbeat(slug: str, session_id: str) -> Session:
    """Record that the session is alive and decide its directive (set on the result as
    ``directive``) from the policy in force right now.

    1. Read the session, its agent and routing, and its version's force-drain mark, in
       one statement. Nothing is counted: the live-version cap is applied where the
       fleet changes, and leaves its mark on the version.
    2. A live session on a weightless version that is drained, or was never routed to,
       revives that version (a pin reported by a harness that routed locally): note it
       and apply the cap, once per revival.
    3. Update ``last_seen_at``, decide, and persist what the verdict implies.
    """
    now = timezone.now()
    session = _find_session_and_marks(slug, session_id)
    agent = session.agent
    routing = getattr(agent, "routing", None)
    active = routing is not None and routing.weight_of(session.version_id) > 0
    forced = _mark(
        session.lc_forced_drain_at, session.lc_forced_reason, session.lc_forced_terminate
    )
    if (
        session.state == SessionState.LIVE
        and routing is not None
        and not active
        and (session.lc_version is None or session.lc_drained_at is not None)
    ):
        lifecycle = revive(agent, session.version_id, now)
        if lifecycle is not None:
            forced = _mark(
                lifecycle.forced_drain_at,
                lifecycle.forced_drain_reason,
                lifecycle.forced_terminate,
            )
    verdict = decide(
        state=session.state,
        started_at=session.started_at,
        drain_at=session.drain_at,
        version_active=active,
        policy=agent.drain_policy,
        now=now,
        forced=forced,
    )
    if session.state == SessionState.LIVE:
        Session.objects.filter(pk=session.pk, state=SessionState.LIVE).update(last_seen_at=now)
        session.last_seen_at = now
    _apply_verdict(session, verdict, agent, now, version_active=active)
    session.directive = verdict.directive
    return session


def end(slug: str, session_id: str, outcome: dict[str, Any]) -> tuple[Session, bool]:
    """End a session and record its outcome. Ending twice is harmless: the first outcome
    stands and the second call changes nothing. Returns (session, changed)."""
    now = timezone.now()
    with transaction.atomic():
        session = _find_session(slug, session_id, lock=True)
        if session.state == SessionState.ENDED:
            return session, False
        rollups.session_ending(
            session.version_id, session.epoch, session.session_id, session.state, outcome
        )
        if session.state in (SessionState.LIVE, SessionState.ABANDONED):
            Session.objects.filter(pk=session.pk).update(
                state=SessionState.ENDED, ended_at=now, end_reason="ended by harness"
            )
            session.state, session.ended_at = SessionState.ENDED, now
        elif outcomes.has_ended(session.agent_id, session.session_id):
            # Expired by the policy and already reported: the first end stands.
            return session, False
        outcomes.record_outcome(
            agent_id=session.agent_id,
            version_id=session.version_id,
            session_id=session.session_id,
            started_at=session.started_at,
            ended_at=session.ended_at or now,
            outcome=outcome,
            epoch=session.epoch,
        )
    routing = getattr(session.agent, "routing", None)
    if routing is not None and routing.weight_of(session.version_id) == 0:
        mark_drained_if_empty(session.agent, session.version_id)
    return session, True


def feedback(slug: str, session_id: str, value: float) -> Session:
    """Late user feedback, accepted during or after the session."""
    with transaction.atomic():
        session = _find_session(slug, session_id)
        outcomes.record_feedback(
            agent_id=session.agent_id,
            version_id=session.version_id,
            session_id=session.session_id,
            started_at=session.started_at,
            feedback=value,
            epoch=session.epoch,
        )
    return session

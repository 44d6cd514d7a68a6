"""Session assignment, heartbeats and ends: the hot path.

Assignment is one read of the agent's routing row, a compiled table cached by epoch,
and one upsert that both pins new sessions and returns existing pins: two prepared
statements. The fast path reads the caller's token and the routing row in one statement
(``db.fetchone_each``), so a new session costs two statements in two round trips.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone
from rest_framework.utils.encoders import JSONEncoder as DRFJSONEncoder

from controlplane import db
from metrics import outcomes, rollups
from rollouts import instruments
from rollouts import routing as routing_mod
from rollouts.drain import REPORTED_START_SKEW, mark_drained_if_empty, revive
from rollouts.models import Session, SessionState
from versions.api import version_payload as serialize_version
from versions.audit import SYSTEM, record
from versions.models import Agent, Version

CONTINUE, DRAIN, TERMINATE = "continue", "drain", "terminate"


class NotFound(Exception):
    pass


class NoRoute(Exception):
    """The agent has no version to route to (no stable has been set)."""


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

# A pin reported by a harness that routed locally began at most this long ago, and at
# most this far ahead of our clock (the harness's clock may run a little fast).
REPORT_MAX_AGE = timedelta(days=30)
REPORT_CLOCK_SKEW = REPORTED_START_SKEW


@dataclass(frozen=True)
class Report:
    """A pin the harness made itself while Prism was unreachable ("fail static")."""

    version: int
    started_at: datetime
    epoch: int | None = None  # the routing epoch of the table it routed with, if it knows


class InvalidReport(Exception):
    """A reported pin that cannot be true; ``errors`` maps each field to why."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__(errors)
        self.errors = errors


@dataclass
class Assignment:
    session_id: str
    version_id: int
    created: bool
    directive: str
    started_at: datetime
    state: str


@dataclass(frozen=True)
class Route:
    agent_id: int
    epoch: int
    table: routing_mod.Table


# The routing row, read on every assignment so that a change is seen by the very next
# one; the weights are compiled only when the epoch moved (routing.cached_table).
_READ_ROUTING = """
SELECT epoch, updated_at, weights FROM rollouts_routing WHERE agent_id = %s
"""

# An existing pin wins the (agent, session_id) conflict; asking again counts as a sign
# of life for a live session. xmax = 0 only on the row version this statement inserted.
_UPSERT_PG = """
INSERT INTO rollouts_session
    (agent_id, session_id, version_id, state, started_at, last_seen_at, end_reason, epoch)
VALUES (%s, %s, %s, 'live', %s, %s, '', %s)
ON CONFLICT (agent_id, session_id) DO UPDATE
    SET last_seen_at = CASE WHEN rollouts_session.state = 'live'
                            THEN EXCLUDED.last_seen_at
                            ELSE rollouts_session.last_seen_at END
RETURNING id, version_id, state, started_at, drain_at, (xmax = 0) AS inserted
"""

_INSERT_SQLITE = """
INSERT INTO rollouts_session
    (agent_id, session_id, version_id, state, started_at, last_seen_at, end_reason, epoch)
VALUES (%s, %s, %s, 'live', %s, %s, '', %s)
ON CONFLICT (agent_id, session_id) DO NOTHING
RETURNING id, version_id, state, started_at, drain_at
"""

# slug -> agent id. Slugs never change, and ids are never reused, so the only way this
# goes wrong is an agent deleted (its routing row goes with it): see _route.
_agent_ids: dict[str, int] = {}
_MAX_AGENTS = 10000


def _agent_id(slug: str) -> int:
    agent_id = Agent.objects.filter(slug=slug).values_list("pk", flat=True).first()
    if agent_id is None:
        raise NotFound(slug)
    if len(_agent_ids) >= _MAX_AGENTS:
        _agent_ids.clear()
    _agent_ids[slug] = agent_id
    return agent_id


def routing_statement(slug: str) -> db.Statement | None:
    """The routing read of ``assign``, for a caller that sends it along with its own
    reads (``db.fetchone_each``) and hands the row to ``assign``; None while the
    agent's id is not known yet (``assign`` then reads it itself)."""
    agent_id = _agent_ids.get(slug)
    return (_READ_ROUTING, [agent_id]) if agent_id else None


_UNREAD = object()


def _route(slug: str, row: Any = _UNREAD) -> Route:
    """The agent's routing as of now: one statement once the agent's id is known, or
    none if the caller read ``routing_statement`` already (``row``).

    A missing routing row for a remembered id means the agent is gone (or was deleted
    and created again): look the slug up afresh, once.
    """
    agent_id = _agent_ids.get(slug)
    if row is _UNREAD:
        row = db.fetchone(_READ_ROUTING, [agent_id], read_only=True) if agent_id else None
    if row is None or agent_id is None:
        _agent_ids.pop(slug, None)
        agent_id = _agent_id(slug)
        row = db.fetchone(_READ_ROUTING, [agent_id], read_only=True)
        if row is None:
            raise NoRoute(slug)
    epoch, updated_at, weights = row
    table = routing_mod.cached_table(
        agent_id, epoch, _as_datetime(updated_at),
        lambda: json.loads(weights) if isinstance(weights, str | bytes) else weights,
    )  # fmt: skip
    return Route(agent_id, epoch, table)


def _upsert(
    agent_id: int,
    session_id: str,
    version_id: int,
    started_at: datetime,
    now: datetime,
    epoch: int | None,
) -> tuple:
    """Pin the session to ``version_id`` unless it is pinned already, and return
    (id, version_id, state, started_at, drain_at, inserted) of the pin that holds.

    One prepared statement on PostgreSQL: the unique (agent, session_id) constraint
    decides concurrent duplicates, and every caller gets the row that won.
    """
    params = [agent_id, session_id, version_id, started_at, now, epoch]
    if connection.vendor == "postgresql":
        return db.fetchone(_UPSERT_PG, params)
    # SQLite serialises writers, so insert-or-read is race-free there.
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_INSERT_SQLITE, params)
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


def _checked(report: Report, route: Route, now: datetime) -> Report:
    """The report as it will be stored, or InvalidReport with every reason at once.

    1. The version must be one of this agent's.
    2. ``started_at`` must lie in the window a fail-static session can have begun in.
    3. An epoch the agent has not reached yet cannot be the table's: stored as unknown.
    """
    errors = {}
    if not Version.objects.filter(pk=report.version, agent_id=route.agent_id).exists():
        errors["version"] = f"Version {report.version} is not a version of this agent."
    if report.started_at > now + REPORT_CLOCK_SKEW:
        errors["started_at"] = "The session cannot start in the future."
    elif report.started_at < now - REPORT_MAX_AGE:
        errors["started_at"] = (
            f"A reported session must have started in the last {REPORT_MAX_AGE.days} days."
        )
    if errors:
        raise InvalidReport(errors)
    if report.epoch is not None and report.epoch > route.epoch:
        return Report(report.version, report.started_at, None)
    return report


def assign(
    slug: str, session_id: str, report: Report | None = None, *, routing_row: Any = _UNREAD
) -> Assignment:
    """Pin a new session by weight, or return the existing pin, and decide its directive.

    1. Read the agent's routing row (two statements, one once the agent's id is known,
       none when the caller read ``routing_statement`` and passes its ``routing_row``).
    2. Pick the version by the session's bucket, or take the one the harness reports it
       already ran the session on (``report``), if that report can be true.
    3. Upsert the pin with the epoch its version came from: one statement.
    4. A reported pin must agree with a pin that already exists (``PinConflict``).
    5. An existing pin gets the directive the policy in force gives it now (reading the
       agent's policy: one more statement), and what that implies is written.
    6. Count the answer and observe its time (``rollouts.instruments``); a refusal
       (an unknown agent, no route, a bad report) is not counted.
    """
    clock = time.perf_counter()
    now = timezone.now()
    route = _route(slug, routing_row)
    if report is not None:
        report = _checked(report, route, now)
        target, started_at, epoch = report.version, report.started_at, report.epoch
    else:
        target = route.table.pick(routing_mod.bucket(slug, session_id))
        started_at, epoch = now, route.epoch
    if target is None:
        raise NoRoute(slug)
    pk, version_id, state, started_at, drain_at, inserted = _upsert(
        route.agent_id, session_id, target, started_at, now, epoch
    )
    if report is not None and version_id != report.version:
        raise PinConflict(version_id)
    started_at = _as_datetime(started_at)
    if inserted:
        outcome = instruments.NEW if report is None else instruments.REPORTED
        instruments.assignment(slug, version_id, outcome, time.perf_counter() - clock)
        return Assignment(session_id, version_id, True, CONTINUE, started_at, state)
    agent = Agent.objects.get(pk=route.agent_id)
    session = Session(
        pk=pk,
        agent=agent,
        session_id=session_id,
        version_id=version_id,
        state=state,
        started_at=started_at,
        drain_at=_as_datetime(drain_at),
    )
    active = route.table.routes(version_id)
    verdict = decide(
        state=state,
        started_at=started_at,
        drain_at=session.drain_at,
        version_active=active,
        policy=agent.drain_policy,
        now=now,
    )
    _apply_verdict(session, verdict, agent, now, version_active=active)
    instruments.assignment(slug, version_id, instruments.EXISTING, time.perf_counter() - clock)
    return Assignment(session_id, version_id, False, verdict.directive, started_at, session.state)


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
    stands and the second call changes nothing. Returns (session, changed).

    1. Lock the session's row (not the agent's routing row: ends on one version run in
       parallel), record the outcome, feed the rollups and end it, in one transaction.
    2. After that commits, an end on a weightless version asks whether the version is
       drained now: one probe of the live index, without any lock, answers "no" while
       other sessions are live; only when none is left is the routing row locked to
       mark it drained (``drain.mark_drained_if_empty``).
    """
    now = timezone.now()
    with transaction.atomic():
        session = _find_session(slug, session_id, lock=True)
        if session.state == SessionState.ENDED:
            return session, False
        rollups.session_ending(
            session.version_id, session.epoch, session.session_id, session.state, outcome
        )
        if session.state in (SessionState.LIVE, SessionState.ABANDONED):
            # With the agent, so a database distributed by agent routes it to one node.
            Session.objects.filter(pk=session.pk, agent_id=session.agent_id).update(
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

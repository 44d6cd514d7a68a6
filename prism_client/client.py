"""The harness client: start, heartbeat, end and feedback, with local routing.

A ``Client`` talks to one agent. ``start`` asks Prism to pin a session and returns a
``Session`` holding the pinned version tuple and the current directive. When Prism
cannot be reached, ``start`` pins the session itself from the last routing table it saw
(the hash is part of Prism's contract, so the pin is the one Prism would have made from
that table), and keeps a note; the notes are reported once Prism answers again, so
Prism learns every pin it missed ("fail static"). Heartbeats, ends and feedback that
cannot be delivered are kept and sent later the same way.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import quote

from prism_client.errors import PrismError, Refused, Unavailable
from prism_client.routing import RoutingTable
from prism_client.transport import Observer, Transport

log = logging.getLogger("prism_client")

OUTCOME_FLAGS = ("success", "error", "hallucination")
OUTCOME_NUMBERS = ("latency_ms", "cost_usd")


class Directive(StrEnum):
    """What Prism tells a live session to do."""

    CONTINUE = "continue"
    DRAIN = "drain"  # finish the current step, checkpoint, end
    TERMINATE = "terminate"  # stop now: the session is over as far as Prism is concerned


@dataclass(frozen=True)
class Version:
    """An immutable version tuple, as Prism serves it."""

    id: int
    label: str | None
    fingerprint: str
    code: dict[str, Any]
    model: dict[str, Any]
    prompts: dict[str, Any]
    tools: list[dict[str, Any]]
    payload: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Version:
        return cls(
            id=int(payload["id"]),
            label=payload.get("label"),
            fingerprint=payload.get("fingerprint", ""),
            code=payload.get("code") or {},
            model=payload.get("model") or {},
            prompts=payload.get("prompts") or {},
            tools=payload.get("tools") or [],
            payload=payload,
        )

    @property
    def name(self) -> str:
        return self.label or self.fingerprint.removeprefix("sha256:")[:12]


@dataclass(frozen=True)
class Flush:
    """What reporting the kept notes achieved."""

    delivered: int
    rejected: int
    remaining: int


DirectiveCallback = Callable[["Session", Directive], None]


class Session:
    """One session, pinned to ``version`` for its whole life.

    ``local`` is True while the pin was made by this client and Prism has not yet been
    told about it. ``directive`` is the latest directive received.
    """

    def __init__(
        self,
        client: Client,
        session_id: str,
        version: Version,
        directive: Directive,
        *,
        started_at: datetime,
        created: bool,
        local: bool,
    ) -> None:
        self.client = client
        self.session_id = session_id
        self.version = version
        self.directive = directive
        self.started_at = started_at
        self.created = created
        self.local = local
        self.ended = False
        # Set when Prism refused a reported pin (it holds another one): what this session
        # sends afterwards would be counted against the wrong version, so it is dropped.
        self.rejected: Refused | None = None

    def __repr__(self) -> str:
        where = "local" if self.local else "prism"
        return f"<Session {self.session_id!r} on {self.version.name} ({where}, {self.directive})>"

    @property
    def draining(self) -> bool:
        return self.directive == Directive.DRAIN

    @property
    def terminated(self) -> bool:
        return self.directive == Directive.TERMINATE

    def heartbeat(self) -> Directive:
        """Tell Prism the session is alive; returns (and records) the directive.

        With Prism unreachable, the last directive is returned (fail static), or
        ``Unavailable`` is raised if the client was made with ``fail_static=False``.
        """
        return self.client._heartbeat(self)

    def end(self, outcome: Mapping[str, Any] | None = None, **fields: Any) -> None:
        """End the session with its outcome (``success``, ``error``, ``latency_ms``,
        ``cost_usd``, ``hallucination``, ``feedback``; all optional). Ending twice is
        harmless. Delivered later if Prism is unreachable."""
        merged = {**(outcome or {}), **fields}
        self.client._end(self, validate_outcome(merged))

    def feedback(self, value: float) -> None:
        """Late user feedback in [-1, 1]; may come after the end. The latest wins."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("feedback must be a number in [-1, 1]")
        if not (math.isfinite(value) and -1 <= value <= 1):
            raise ValueError("feedback must be a number in [-1, 1]")
        self.client._feedback(self, float(value))


def validate_outcome(outcome: Mapping[str, Any]) -> dict[str, Any]:
    """Check an outcome before it is sent or kept: a typo would otherwise surface only
    as a 400 long after the session ended, when the note is delivered."""
    clean: dict[str, Any] = {}
    for key, value in outcome.items():
        if key in OUTCOME_FLAGS:
            if value is not None and not isinstance(value, bool):
                raise ValueError(f"outcome {key} must be true, false or None")
        elif key in OUTCOME_NUMBERS:
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise ValueError(f"outcome {key} must be a number >= 0 or None")
        elif key == "feedback":
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not (math.isfinite(value) and -1 <= value <= 1)
            ):
                raise ValueError("outcome feedback must be a number in [-1, 1] or None")
        else:
            raise ValueError(f"unknown outcome field {key!r}")
        clean[key] = value
    return clean


def valid_session_id(session_id: str) -> bool:
    return isinstance(session_id, str) and 1 <= len(session_id) <= 200 and session_id.isprintable()


class Client:
    """A harness's connection to Prism for one agent.

    - ``timeout``: seconds per HTTP attempt.
    - ``retries``: extra attempts for idempotent calls (every harness call is one:
      Prism answers a repeated start with the same pin, a repeated end is harmless,
      and the latest feedback wins).
    - ``routing_refresh_s``: how often ``start`` revalidates the cached routing table
      (a conditional GET; usually a 304).
    - ``offline_s``: after Prism proved unreachable, calls fail fast (and starts pin
      locally at once) for this long before the network is tried again, so an outage
      does not add a timeout to every session.
    - ``fail_static``: pin locally and keep notes while Prism is down (default); with
      False every call raises ``Unavailable`` instead.
    - ``on_directive``: called as ``on_directive(session, directive)`` whenever a
      session is told to ``drain`` or ``terminate``.
    - ``observer``: called with every HTTP attempt (``transport.Call``), for metrics.
    - ``cache_path``: a JSON file keeping the routing table and version tuples, so a
      harness restarted during an outage can still pin locally.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        agent: str,
        *,
        timeout: float = 5.0,
        retries: int = 3,
        backoff_s: float = 0.1,
        routing_refresh_s: float = 10.0,
        offline_s: float = 2.0,
        fail_static: bool = True,
        on_directive: DirectiveCallback | None = None,
        observer: Observer | None = None,
        cache_path: str | os.PathLike | None = None,
        max_notes: int = 100_000,
    ) -> None:
        if not agent:
            raise ValueError("agent (the agent's slug) is required")
        self.agent = agent
        self.transport = Transport(
            base_url,
            token,
            timeout=timeout,
            retries=retries,
            backoff_s=backoff_s,
            observer=observer,
        )
        self.routing_refresh_s = routing_refresh_s
        self.offline_s = offline_s
        self.fail_static = fail_static
        self.on_directive = on_directive
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self.max_notes = max_notes
        self.problems: deque[tuple[str, str, PrismError]] = deque(maxlen=1000)
        self.dropped_notes = 0

        self._base = f"/api/agents/{quote(agent, safe='')}"
        self._table: RoutingTable | None = None
        self._table_at = -math.inf
        self._versions: dict[int, Version] = {}
        self._down_until = 0.0
        self._notes: deque[tuple[str, Session, Any]] = deque()
        self._notes_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._load_cache()

    # --- plumbing -------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        name: str,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        """An idempotent call through the outage breaker."""
        if time.monotonic() < self._down_until:
            raise Unavailable(f"{method} {path}: Prism was unreachable moments ago")
        try:
            answer = self.transport.request(
                method, path, body, idempotent=True, name=name, headers=headers
            )
        except Unavailable:
            self._down_until = time.monotonic() + self.offline_s
            raise
        self._down_until = 0.0
        return answer.status, answer.json() if answer.status != 304 else None, answer.headers

    def request(self, method: str, path: str, body: Any = None, *, idempotent: bool = False) -> Any:
        """Any other API call (e.g. a pipeline registering a version), returning the
        parsed answer. Only calls marked ``idempotent`` are retried."""
        answer = self.transport.request(method, path, body, idempotent=idempotent, name=path)
        return answer.json()

    def close(self) -> None:
        self.transport.close()

    @property
    def online(self) -> bool:
        """False while the client treats Prism as unreachable (see ``offline_s``)."""
        return time.monotonic() >= self._down_until

    # --- routing and version caches -------------------------------------------------

    @property
    def table(self) -> RoutingTable | None:
        """The routing table last seen, or None before the first one."""
        return self._table

    def refresh_routing(self) -> RoutingTable:
        """Revalidate the cached routing table (``If-None-Match``: 304 when unchanged),
        and fetch the tuple of every routed version not cached yet, so the client can
        still pin locally if Prism goes away."""
        with self._refresh_lock:
            known = self._table.etag if self._table else None
            headers = {"If-None-Match": known} if known else {}
            status, body, answer_headers = self._call(
                "GET", f"{self._base}/routing/", name="routing", headers=headers
            )
            if status != 304:
                self._table = RoutingTable.from_payload(body, answer_headers.get("etag"))
            self._table_at = time.monotonic()
            table = self._table
            missing = [v for v in table.routed if v not in self._versions]
            for version_id in missing:
                _, payload, _ = self._call("GET", f"/api/versions/{version_id}/", name="version")
                self._versions[version_id] = Version.from_payload(payload)
            if status != 304 or missing:
                self._save_cache()
        return table

    def version(self, version_id: int) -> Version:
        """A version tuple, from the cache or ``GET /api/versions/{id}/``. Tuples are
        immutable, so a cached one never goes stale."""
        cached = self._versions.get(version_id)
        if cached is None:
            _, payload, _ = self._call("GET", f"/api/versions/{version_id}/", name="version")
            cached = self._versions[version_id] = Version.from_payload(payload)
        return cached

    def _routing_if_due(self) -> None:
        if time.monotonic() - self._table_at < self.routing_refresh_s:
            return
        if self._refresh_lock.locked():
            return  # another thread is at it; the table it has is good enough meanwhile
        try:
            self.refresh_routing()
        except Unavailable:
            pass  # the start itself finds out, and falls back on the cached table
        except Refused as exc:
            # The start will be refused too, or will work without a local table; either
            # way, asking again at every start would only add a round trip.
            self._table_at = time.monotonic()
            log.warning("could not read the routing table of %s: %s", self.agent, exc)

    def _load_cache(self) -> None:
        if self.cache_path is None or not self.cache_path.exists():
            return
        try:
            data = json.loads(self.cache_path.read_text())
            if data.get("agent") != self.agent:
                return
            self._table = RoutingTable.from_payload(data["routing"], data.get("etag"))
            self._versions = {
                int(k): Version.from_payload(v) for k, v in data.get("versions", {}).items()
            }
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable routing cache %s: %s", self.cache_path, exc)

    def _save_cache(self) -> None:
        if self.cache_path is None or self._table is None:
            return
        table = self._table
        data = {
            "agent": self.agent,
            "etag": table.etag,
            "routing": {
                "epoch": table.epoch,
                "stable": table.stable,
                "weights": {str(k): v for k, v in table.weights.items()},
            },
            "versions": {str(k): v.payload for k, v in self._versions.items()},
        }
        # Written aside and renamed: a crash mid-write must not leave a torn cache.
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.cache_path.parent, prefix=".prism-cache-")
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(data, handle)
            os.replace(tmp, self.cache_path)
        except OSError as exc:
            log.warning("could not write routing cache %s: %s", self.cache_path, exc)
            Path(tmp).unlink(missing_ok=True)

    # --- sessions -------------------------------------------------------------------

    def start(self, session_id: str) -> Session:
        """Pin a session (or get its existing pin) and return it.

        1. Revalidate the routing table if it is due (best effort).
        2. Ask Prism: ``POST /api/agents/{slug}/sessions/ {session_id}``.
        3. If Prism cannot be reached, pin locally from the cached table with the cached
           tuple, and keep a note to report the pin later.
        4. With no table or tuple cached, there is nothing to pin to: ``Unavailable``.
        """
        if not valid_session_id(session_id):
            raise ValueError("session_id must be 1 to 200 printable characters")
        self._routing_if_due()
        try:
            status, body, _ = self._call(
                "POST", f"{self._base}/sessions/", {"session_id": session_id}, name="start"
            )
        except Unavailable:
            if not self.fail_static:
                raise
            return self._start_locally(session_id)
        version = Version.from_payload(body["version"])
        self._versions.setdefault(version.id, version)
        session = Session(
            self,
            session_id,
            version,
            Directive(body.get("directive", Directive.CONTINUE)),
            started_at=_parse_time(body.get("started_at")),
            created=status == 201,
            local=False,
        )
        self._tell(session, None)
        self._flush_soon()
        return session

    def _start_locally(self, session_id: str) -> Session:
        table = self._table
        if table is None:
            raise Unavailable("Prism is unreachable and no routing table is cached yet")
        version_id = table.pick(self.agent, session_id)
        if version_id is None or version_id not in self._versions:
            raise Unavailable("Prism is unreachable and the cached table routes nowhere known")
        session = Session(
            self,
            session_id,
            self._versions[version_id],
            Directive.CONTINUE,
            started_at=datetime.now(UTC),
            created=True,
            local=True,
        )
        self._note("pin", session, None)
        return session

    def _report(self, session: Session) -> None:
        """Tell Prism about a pin made locally. 409 means Prism holds another pin."""
        body = {
            "session_id": session.session_id,
            "version": session.version.id,
            "started_at": session.started_at.isoformat(),
        }
        try:
            _, answer, _ = self._call("POST", f"{self._base}/sessions/", body, name="report")
        except Refused as exc:
            session.rejected = exc
            self.problems.append(("report", session.session_id, exc))
            log.warning("Prism refused the local pin of %s: %s", session.session_id, exc)
            raise
        session.local = False
        if answer and answer.get("directive"):
            self._tell(session, Directive(answer["directive"]))

    def _ensure_reported(self, session: Session) -> None:
        if session.rejected is not None:
            raise session.rejected
        if session.local:
            self._report(session)

    def _heartbeat(self, session: Session) -> Directive:
        path = f"{self._base}/sessions/{quote(session.session_id, safe='')}/heartbeat/"
        try:
            self._ensure_reported(session)
            _, body, _ = self._call("POST", path, name="heartbeat")
        except Unavailable:
            if not self.fail_static:
                raise
            return session.directive
        self._tell(session, Directive(body["directive"]))
        self._flush_soon()
        return session.directive

    def _end(self, session: Session, outcome: dict[str, Any]) -> None:
        if session.ended:
            return
        session.ended = True
        if session.local:
            self._note("end", session, outcome)
            self._flush_soon()
            return
        try:
            self._send_end(session, outcome)
        except Unavailable:
            if not self.fail_static:
                raise
            self._note("end", session, outcome)
            return
        self._flush_soon()

    def _send_end(self, session: Session, outcome: dict[str, Any]) -> None:
        path = f"{self._base}/sessions/{quote(session.session_id, safe='')}/end/"
        self._call("POST", path, {"outcome": outcome}, name="end")

    def _feedback(self, session: Session, value: float) -> None:
        if session.local:
            self._note("feedback", session, value)
            self._flush_soon()
            return
        try:
            self._send_feedback(session, value)
        except Unavailable:
            if not self.fail_static:
                raise
            self._note("feedback", session, value)
            return
        self._flush_soon()

    def _send_feedback(self, session: Session, value: float) -> None:
        path = f"{self._base}/sessions/{quote(session.session_id, safe='')}/feedback/"
        self._call("POST", path, {"feedback": value}, name="feedback")

    def _tell(self, session: Session, directive: Directive | None) -> None:
        """Record a directive; call ``on_directive`` when it is news and not continue."""
        previous = session.directive
        if directive is not None:
            session.directive = directive
        news = directive is None or directive != previous
        if news and session.directive != Directive.CONTINUE and self.on_directive is not None:
            self.on_directive(session, session.directive)

    # --- notes kept during an outage ------------------------------------------------

    @property
    def pending(self) -> int:
        """Notes (local pins, ends, feedback) not delivered to Prism yet."""
        return len(self._notes)

    def _note(self, kind: str, session: Session, value: Any) -> None:
        with self._notes_lock:
            if len(self._notes) >= self.max_notes:
                self._notes.popleft()
                self.dropped_notes += 1
            self._notes.append((kind, session, value))

    def _flush_soon(self) -> None:
        """After a call got through, deliver kept notes, unless another thread is."""
        if self._notes and self._flush_lock.acquire(blocking=False):
            try:
                self._deliver()
            except Unavailable:
                pass
            finally:
                self._flush_lock.release()

    def report_pending(self) -> Flush:
        """Deliver every kept note now, oldest first: pins made locally (with their
        version and start time), then the ends and feedback that followed. Stops at the
        first call Prism cannot answer; a note Prism refuses is dropped and listed in
        ``problems``."""
        with self._flush_lock:
            try:
                delivered, rejected = self._deliver()
            except Unavailable:
                delivered = rejected = 0
        return Flush(delivered, rejected, self.pending)

    def _deliver(self) -> tuple[int, int]:
        delivered = rejected = 0
        while True:
            with self._notes_lock:
                if not self._notes:
                    return delivered, rejected
                kind, session, value = self._notes[0]
            try:
                if session.rejected is not None:
                    rejected += 1
                elif kind == "pin":
                    if session.local:
                        self._report(session)
                    delivered += 1
                elif kind == "end":
                    self._ensure_reported(session)
                    self._send_end(session, value)
                    delivered += 1
                else:
                    self._ensure_reported(session)
                    self._send_feedback(session, value)
                    delivered += 1
            except Refused as exc:
                if session.rejected is None:
                    self.problems.append((kind, session.session_id, exc))
                rejected += 1
            # Unavailable propagates with the note still first in line.
            with self._notes_lock:
                if self._notes and self._notes[0][1] is session and self._notes[0][0] == kind:
                    self._notes.popleft()


def _parse_time(value: Any) -> datetime:
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        except ValueError:
            pass
    return datetime.now(UTC)

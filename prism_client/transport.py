"""HTTP to Prism: keep-alive connections, timeouts, and retries for idempotent calls.

Standard library only (``http.client``), so a harness takes on no dependency.
"""

from __future__ import annotations

import http.client
import json
import random
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from prism_client.errors import Unavailable, refused

# Statuses that mean "try again later": the request did not take effect, or taking it
# again is harmless for the idempotent calls that are retried.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
# What sending on a kept-alive connection the server has just closed looks like.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


@dataclass(frozen=True)
class Call:
    """One HTTP attempt, as reported to an observer: ``status`` is None when no answer
    came (``error`` then names the failure)."""

    name: str
    method: str
    path: str
    attempt: int
    status: int | None
    error: str | None
    seconds: float
    # A kept-alive connection the server had closed: the request was sent again at once.
    stale: bool = False


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


Observer = Callable[[Call], None]


class Transport:
    """Sends requests to one Prism base URL with a token.

    ``timeout`` bounds each attempt (connect, send and read). Idempotent calls are
    retried up to ``retries`` more times after a network error, a timeout or a
    retryable status, waiting ``backoff_s * 2**n`` seconds (capped at ``max_backoff_s``)
    with jitter, so a fleet of harnesses does not retry in lockstep. Other calls are
    sent once. A 5xx other than 502, 503 and 504 is a fault, not a pause, and is not
    retried either. Each thread keeps its own keep-alive connection, and opens a new one
    after ``idle_s`` idle seconds rather than race the server closing it.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 5.0,
        retries: int = 3,
        backoff_s: float = 0.1,
        max_backoff_s: float = 5.0,
        observer: Observer | None = None,
        user_agent: str = "prism-client/1",
        idle_s: float = 1.0,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        if timeout <= 0 or retries < 0 or backoff_s < 0 or max_backoff_s < 0:
            raise ValueError("timeout must be > 0; retries and backoffs must be >= 0")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.observer = observer
        self.idle_s = idle_s
        self._headers = {
            "Authorization": f"Token {token}",
            "Accept": "application/json",
            "User-Agent": user_agent,
        }
        self._local = threading.local()
        self._random = random.Random()

    # --- connections ----------------------------------------------------------------

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        """This thread's connection, and whether it has carried a request before."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and conn.sock is not None:
            idle = time.monotonic() - getattr(self._local, "used_at", 0.0)
            if idle > self.idle_s or _dropped(conn.sock):
                # Servers close idle keep-alive connections (gunicorn after 2 s by
                # default); one closed meanwhile would fail the request after the fact.
                conn.close()
        if conn is None:
            if self.scheme == "https":
                conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout)
            else:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._local.conn = conn
        return conn, conn.sock is not None

    def _discard(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local.conn = None

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        self._discard()

    # --- requests -------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        idempotent: bool,
        headers: dict[str, str] | None = None,
        name: str = "",
        retries: int | None = None,
    ) -> Answer:
        """Send one call and return its answer (2xx or 304).

        Raises ``Refused`` (or a subclass) for a 4xx other than a retried 429, and
        ``Unavailable`` when no usable answer came within the attempts allowed.
        """
        payload = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        sent_headers = dict(self._headers)
        if payload is not None:
            sent_headers["Content-Type"] = "application/json"
        sent_headers.update(headers or {})
        allowed = (self.retries if retries is None else retries) if idempotent else 0
        url = self.prefix + path
        attempt = 0
        while True:
            started = time.monotonic()
            status: int | None = None
            error: str | None = None
            answer: Answer | None = None
            reused = False
            try:
                conn, reused = self._connection()
                conn.request(method, url, body=payload, headers=sent_headers)
                response = conn.getresponse()
                data = response.read()
                status = response.status
                answer = Answer(status, {k.lower(): v for k, v in response.getheaders()}, data)
                self._local.used_at = time.monotonic()
                if response.will_close:
                    self._discard()
            except (OSError, http.client.HTTPException) as exc:
                self._discard()
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                if reused and idempotent and isinstance(exc, _STALE):
                    # The server closed the kept-alive connection just as the request
                    # went out: it never saw the request. Say so, and send it afresh at
                    # once; this is not one of the retries.
                    self._observe(
                        name or path, method, path, attempt, None, error, started, stale=True
                    )
                    continue
            self._observe(name or path, method, path, attempt, status, error, started)
            if answer is not None and (200 <= answer.status < 300 or answer.status == 304):
                return answer
            if answer is not None and 400 <= answer.status < 500 and answer.status != 429:
                raise refused(answer.status, _parsed(answer.body))
            if attempt >= allowed or (answer is not None and answer.status not in RETRY_STATUSES):
                if answer is not None:
                    raise Unavailable(
                        f"{method} {path}: Prism answered {answer.status}", status=answer.status
                    )
                raise Unavailable(f"{method} {path}: {error}")
            time.sleep(self._delay(attempt, answer))
            attempt += 1

    def _delay(self, attempt: int, answer: Answer | None) -> float:
        """Exponential backoff with jitter: a random wait in [cap/2, cap]. A Retry-After
        in seconds is honoured when it is not longer than the cap."""
        cap = min(self.max_backoff_s, self.backoff_s * (2**attempt))
        if answer is not None:
            try:
                hinted = float(answer.headers.get("retry-after", ""))
            except ValueError:
                hinted = -1.0
            if 0 <= hinted <= self.max_backoff_s:
                return hinted
        return cap / 2 + self._random.uniform(0, cap / 2)

    def _observe(
        self,
        name: str,
        method: str,
        path: str,
        attempt: int,
        status: int | None,
        error: str | None,
        started: float,
        *,
        stale: bool = False,
    ) -> None:
        if self.observer is not None:
            seconds = time.monotonic() - started
            self.observer(Call(name, method, path, attempt, status, error, seconds, stale))


def _parsed(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError:
        return body.decode(errors="replace")


def _dropped(sock) -> bool:
    """Whether an idle connection's socket is readable: the peer closed it (or sent
    something unasked for), either way it cannot carry the next request."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)

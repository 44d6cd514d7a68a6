"""``http_json``: the agent platform's export of per-session outcomes, polled by cursor.

The export answers ``GET <url>`` (first poll) or ``GET <url>?cursor=<cursor>`` with::

    {"outcomes": [{"session_id": "...", "success": true, "latency_ms": 812, ...}, ...],
     "next_cursor": "..."}

Each outcome is a session's end, recorded exactly as the API's end records it (the same
function ends the session and feeds the rollups), so the first report of a session wins
whichever way it arrives. Outcome fields are those of the API's end; other keys are
ignored. Prism sends ``next_cursor`` back on the next request; an empty page, or a
cursor that does not move, ends a poll until the next tick.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from django.db.models import F
from django.utils import timezone

from metrics import outcomes
from metrics.feed import UnknownSession, sessions
from metrics.models import MetricSource
from metrics.rollups import ABANDON_RATE, FIELD_METRICS
from metrics.sources.base import ConfigError, PollResult, SourceError, fetch_json

#: Pages fetched per poll at most; the rest waits for the next tick.
MAX_PAGES = 10
MAX_OUTCOMES_PER_PAGE = 1000
MAX_CURSOR_CHARS = 1000
RECENT_UNKNOWN = 20


def validate_config(config: Any) -> dict[str, Any]:
    """An http_json source takes no options yet: ``config`` must be empty."""
    if config in (None, {}):
        return {}
    if not isinstance(config, dict):
        raise ConfigError({"config": "Expected an object."})
    raise ConfigError({"config": f"Unknown option {sorted(config)[0]!r} for http_json."})


def metrics_of(config: dict[str, Any]) -> list[str]:
    """Every outcome metric can come from an export."""
    return [*FIELD_METRICS.values(), ABANDON_RATE]


def page_url(url: str, cursor: str | None) -> str:
    """``url`` with ``cursor`` set in its query, keeping its other parameters."""
    if not cursor:
        return url
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "cursor"]
    return urlunsplit(parts._replace(query=urlencode([*query, ("cursor", cursor)])))


def _page(data: Any) -> tuple[list[Any], str | None]:
    if not isinstance(data, dict) or not isinstance(data.get("outcomes"), list):
        raise SourceError('expected {"outcomes": [...], "next_cursor": ...}')
    if len(data["outcomes"]) > MAX_OUTCOMES_PER_PAGE:
        raise SourceError(f"a page holds more than {MAX_OUTCOMES_PER_PAGE} outcomes")
    cursor = data.get("next_cursor")
    if cursor is not None:
        if isinstance(cursor, bool) or not isinstance(cursor, str | int):
            raise SourceError("next_cursor must be a string, a number or null")
        cursor = str(cursor)
        if len(cursor) > MAX_CURSOR_CHARS or "\x00" in cursor:
            raise SourceError(f"next_cursor must be at most {MAX_CURSOR_CHARS} characters")
    return data["outcomes"], cursor


def _session_id(entry: Any) -> str | None:
    session_id = entry.get("session_id") if isinstance(entry, dict) else None
    if isinstance(session_id, str) and 1 <= len(session_id) <= 200 and session_id.isprintable():
        return session_id
    return None


def _remaining(deadline: datetime, timeout: float) -> float | None:
    left = (deadline - timezone.now()).total_seconds()
    return None if left <= 0 else min(timeout, left)


def poll(source: MetricSource, now: datetime, *, deadline: datetime) -> PollResult:
    """Fetch pages from the source's cursor on and record each outcome.

    1. Fetch a page at the current cursor.
    2. For each outcome: skip one without a valid session id or fields (counted as
       invalid); end its session as the API's end does; count it as recorded, as a
       duplicate when the session had ended already, or as unknown when no such session
       was ever started here (the most recent such ids are kept on the status).
    3. Store the page's counts and the cursor that follows it, together: a poll that
       fails later resumes after this page, and one that dies before this step repeats
       the page harmlessly (its outcomes are duplicates now).
    4. Repeat until a page is empty, the cursor stays put, ``MAX_PAGES`` pages are done,
       or the deadline nears (the rest waits for the next tick).
    """
    total = PollResult()
    cursor: str | None = source.cursor or None
    feed = sessions()
    for _ in range(MAX_PAGES):
        timeout = _remaining(deadline, source.timeout_s)
        if timeout is None:
            break
        entries, next_cursor = _page(fetch_json(page_url(source.url, cursor), timeout))
        page = PollResult()
        with outcomes.reported_by(f"http_json:{source.pk}"):
            for entry in entries:
                _record(feed, source.agent.slug, entry, page)
        moved = next_cursor is not None and next_cursor != cursor
        if moved:
            cursor = next_cursor
        _store(source, page, cursor)
        total.add(page)
        if not entries or not moved:
            break
    total.cursor = cursor or ""
    return total


def _record(feed, slug: str, entry: Any, page: PollResult) -> None:
    session_id = _session_id(entry)
    try:
        if session_id is None:
            raise ValueError("no valid session_id")
        values = outcomes.clean_outcome(
            {k: v for k, v in entry.items() if k != "session_id"}, ignore_unknown=True
        )
    except ValueError:
        page.invalid += 1
        return
    try:
        recorded = feed.end_reported(slug, session_id, values)
    except UnknownSession:
        page.unknown += 1
        page.unknown_ids.insert(0, session_id)
        return
    if recorded:
        page.recorded += 1
    else:
        page.duplicates += 1


def _store(source: MetricSource, page: PollResult, cursor: str | None) -> None:
    changes: dict[str, Any] = {
        "cursor": cursor or "",
        "recorded_count": F("recorded_count") + page.recorded,
        "duplicate_count": F("duplicate_count") + page.duplicates,
        "unknown_count": F("unknown_count") + page.unknown,
        "invalid_count": F("invalid_count") + page.invalid,
    }
    if page.unknown_ids:
        # Only this poll writes it: the lease keeps other polls off the source.
        source.last_unknown = (page.unknown_ids + list(source.last_unknown))[:RECENT_UNKNOWN]
        changes["last_unknown"] = source.last_unknown
    MetricSource.objects.filter(pk=source.pk).update(**changes)
    source.cursor = cursor or ""

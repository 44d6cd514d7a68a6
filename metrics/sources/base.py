"""What every kind of metric source shares: its errors, URL checks, and fetching JSON over
HTTP with a bound on time and size."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

ALLOWED_SCHEMES = ("http", "https")
MAX_RESPONSE_BYTES = 8 * 1024 * 1024
MAX_ERROR_CHARS = 500


class SourceError(Exception):
    """A poll that failed: unreachable, timed out, an HTTP error, or an answer that is
    not what the source kind expects. The message is shown on the source's status."""


class ConfigError(ValueError):
    """A source configuration that cannot work; ``errors`` maps field to message."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def validate_url(url: Any) -> str:
    """An absolute http(s) URL with a host and no credentials; raises ConfigError."""
    if not isinstance(url, str) or not url or len(url) > 2000:
        raise ConfigError({"url": "An http or https URL of at most 2000 characters."})
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url) or " " in url:
        raise ConfigError({"url": "The URL may not contain spaces or control characters."})
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (parsing the port validates it)
    except ValueError:
        raise ConfigError({"url": "Not a valid URL."}) from None
    if parts.scheme.lower() not in ALLOWED_SCHEMES:
        raise ConfigError({"url": "Only http and https URLs are allowed."})
    if not parts.hostname:
        raise ConfigError({"url": "The URL names no host."})
    if parts.username is not None or parts.password is not None:
        # Everyone who may read sources would see them.
        raise ConfigError({"url": "Put no credentials in the URL: viewers can read it."})
    return url


# --- HTTP ---------------------------------------------------------------------------------


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http and https only: urllib would also follow one to ftp."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urlsplit(newurl).scheme.lower() not in ALLOWED_SCHEMES:
            raise SourceError(f"refused a redirect to {urlsplit(newurl).scheme}:")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


# No proxies from the environment: sources are addressed directly.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _HttpOnlyRedirects())


def _detail(error: urllib.error.HTTPError) -> str:
    """The ``error`` an HTTP error's JSON body names (Prometheus gives one), if any."""
    try:
        body = json.loads(error.read(4096))
    except (OSError, ValueError):
        return ""
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return ": " + body["error"][:300]
    return ""


def fetch_json(url: str, timeout: float) -> Any:
    """GET ``url`` and parse its JSON body, within ``timeout`` seconds per socket
    operation and ``MAX_RESPONSE_BYTES``. Every failure is a SourceError."""
    request = urllib.request.Request(
        url, headers={"Accept": "application/json", "User-Agent": "prism-metric-source"}
    )
    try:
        with _opener.open(request, timeout=timeout) as response:
            body = response.read(MAX_RESPONSE_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise SourceError(f"HTTP {exc.code} from the source{_detail(exc)}") from None
    except TimeoutError:
        raise SourceError(f"timed out after {timeout:g} s") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            raise SourceError(f"timed out after {timeout:g} s") from None
        raise SourceError(f"unreachable: {reason}") from None
    except (OSError, ValueError) as exc:
        raise SourceError(f"request failed: {exc}") from None
    if len(body) > MAX_RESPONSE_BYTES:
        raise SourceError(f"the answer is larger than {MAX_RESPONSE_BYTES} bytes")
    try:
        return json.loads(body)
    except ValueError:
        raise SourceError("the answer is not JSON") from None


@dataclass
class PollResult:
    """What one poll did, added to the source's counters."""

    recorded: int = 0
    duplicates: int = 0
    unknown: int = 0
    invalid: int = 0
    unknown_ids: list[str] = field(default_factory=list)
    observations: int = 0
    cursor: str | None = None

    def add(self, other: PollResult) -> None:
        self.recorded += other.recorded
        self.duplicates += other.duplicates
        self.unknown += other.unknown
        self.invalid += other.invalid
        self.unknown_ids = (other.unknown_ids + self.unknown_ids)[:20]
        self.observations += other.observations

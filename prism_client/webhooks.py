"""Verifying Prism's webhook deliveries (standard library only).

    from prism_client import verify

    if not verify(secret, request.headers, request.body):
        return 401  # not from Prism, altered, or a replay

A delivery is signed with ``Prism-Signature: v1=<hex>``, the HMAC-SHA256 under the
webhook's secret of ``f"{Prism-Timestamp}.{body}"``. A timestamp older (or further in
the future) than ``tolerance_s`` is refused, so a captured delivery cannot be replayed
later.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

DEFAULT_TOLERANCE_S = 300


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """Whether ``body`` with these ``headers`` is a fresh delivery signed with ``secret``.

    1. Read ``Prism-Timestamp`` and ``Prism-Signature`` (header names in any case).
    2. Refuse a timestamp more than ``tolerance_s`` from now.
    3. Compare the expected signature with each ``v1=`` one given, in constant time.
    """
    lowered = {str(key).lower(): str(value) for key, value in headers.items()}
    stamp = lowered.get("prism-timestamp", "")
    given = lowered.get("prism-signature", "")
    if not stamp.isdigit() or not given:
        return False
    if abs((time.time() if now is None else now) - int(stamp)) > tolerance_s:
        return False
    mac = hmac.new(secret.encode(), stamp.encode() + b"." + bytes(body), hashlib.sha256)
    expected = mac.hexdigest()
    for part in given.split(","):
        scheme, _, value = part.strip().partition("=")
        if scheme == "v1" and hmac.compare_digest(value, expected):
            return True
    return False

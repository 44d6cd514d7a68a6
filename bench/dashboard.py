"""Benchmark of the fleet board's live partial at scale, as a logged-in viewer.

``make bench-dashboard`` (``python -m bench.dashboard --sessions 1e6,1e7``):

1. For each size, take a copy of the scale fixture (``bench.fixtures``): the busiest
   agent has 20 versions.
2. Start gunicorn (gthread, 2 workers x 2 threads) on each copy with Prism's settings,
   all at once, then let the copies' writes settle.
3. Log in as the fixture's viewer through the login form (``GET /login/`` for the CSRF
   token, ``POST /login/``), keeping Django's session cookie.
4. GET ``/agents/fx-00/`` with ``HX-Request: true`` and ``HX-Target: fleet``, the request
   the board polls, one at a time over one keep-alive connection per copy: a warm-up,
   then ``--requests`` timed ones per copy (fewer if ``--budget`` seconds per copy run
   out), the copies taking turns request by request. Each answer must be the partial
   (200 or htmx's 286), never a whole page.
5. Report the median and p99 per size; the target is a median <= 50 ms at the largest.

The last line is ``RESULT dashboard <ms> target 50 PASS|MISS``. A miss is reported.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import re
import sys
from http.cookies import SimpleCookie
from urllib.parse import urlencode

from bench import fixtures
from bench.fixtures import label
from bench.scale import (
    Target,
    finish,
    header,
    result,
    served_copy,
    side_by_side_args,
    time_side_by_side,
)
from bench.server import HOST

TARGET_MS = 50.0
PARTIAL = {200, 286}  # 286: htmx's "stop polling", for a board with nothing live


def parse_args(argv: list[str]) -> argparse.Namespace:
    return side_by_side_args("python -m bench.dashboard", __doc__, argv)


def cookies_of(response: http.client.HTTPResponse, jar: dict[str, str]) -> None:
    for header_value in response.headers.get_all("Set-Cookie") or []:
        cookie = SimpleCookie()
        cookie.load(header_value)
        jar.update({name: morsel.value for name, morsel in cookie.items()})


def log_in(port: int, username: str, password: str) -> str:
    """Step 3: the Cookie header of a logged-in session."""
    jar: dict[str, str] = {}
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        conn.request("GET", "/login/")
        response = conn.getresponse()
        page = response.read().decode()
        cookies_of(response, jar)
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        if token is None:
            raise RuntimeError("the login page has no CSRF token")
        body = urlencode(
            {"csrfmiddlewaretoken": token.group(1), "username": username, "password": password}
        )
        conn.request(
            "POST", "/login/", body=body,
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Cookie": "; ".join(f"{k}={v}" for k, v in jar.items()),
                "Referer": f"http://{HOST}:{port}/login/",
            },
        )  # fmt: skip
        response = conn.getresponse()
        response.read()
        cookies_of(response, jar)
        if response.status != 302 or "sessionid" not in jar:
            raise RuntimeError(f"logging in answered {response.status}, not a redirect")
    finally:
        conn.close()
    return "; ".join(f"{k}={v}" for k, v in jar.items())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    with fixtures.cache() as cache, contextlib.ExitStack() as stack:
        targets, infos = [], {}
        for n in args.sessions:
            copy, server = stack.enter_context(served_copy(cache, n))
            info = infos[n] = copy.info
            cookie = log_in(server.port, info["viewer"]["username"], info["viewer"]["password"])
            headers = {"Cookie": cookie, "HX-Request": "true", "HX-Target": "fleet"}
            targets.append(Target(label(n), server.port, f"/agents/{info['busiest']}/", headers))
        measured = time_side_by_side(cache, targets, args)
    rows = {}
    for n in args.sessions:
        timing = measured.timings[label(n)]
        body = timing.last_body.decode(errors="replace")
        rows[n] = {
            "sessions": infos[n]["sessions"],
            "timing": timing,
            "partial": "<html" not in body.lower() and 'id="fleet"' in body,
            "bytes": len(timing.last_body),
        }
    lines = header("Prism fleet board partial at scale")
    lines += [
        "request   GET /agents/fx-00/ with HX-Request: true, HX-Target: fleet (the board's "
        "poll), as a",
        "          logged-in viewer (session cookie); one at a time over one keep-alive "
        "connection per copy;",
        "          gunicorn gthread 2 x 2 on each; the copies taking turns request by request",
        "",
        "size       sessions  requests   median ms   p99 ms   partial bytes  statuses",
    ]
    ok = True
    for n, row in rows.items():
        timing = row["timing"]
        lines.append(
            f"{label(n):<6} {row['sessions']:>12,} {len(timing.ms):>9} {timing.median:>11.1f} "
            f"{timing.p99:>8.1f} {row['bytes']:>15}  {timing.statuses}"
        )
        if not set(timing.statuses) <= PARTIAL or not row["partial"]:
            ok = False
            lines.append("       FAIL: an answer was not the fleet partial")
    largest = rows[max(rows)]["timing"].median
    lines += [
        "",
        f"median at {label(max(rows))}: {largest:.1f} ms (target <= {TARGET_MS:g} ms)",
        result("dashboard", f"{largest:.1f}", f"{TARGET_MS:g}", ok and largest <= TARGET_MS),
    ]
    finish("dashboard", lines)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

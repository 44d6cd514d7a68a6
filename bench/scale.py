"""What the scale benchmarks (bench.fleet, bench.beat, bench.gates, bench.dashboard) share:
sizes, a gunicorn on a fixture copy, timed GETs over one keep-alive connection, and the
report with its RESULT line."""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import secrets
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.fixtures import parse_sizes
from bench.server import HOST, Gunicorn, GunicornConfig

BASE_DIR = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def django_env(url: str) -> dict[str, str]:
    """The environment of a Prism process on a fixture copy: production settings."""
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "DJANGO_SETTINGS_MODULE": "controlplane.settings",
        "DEBUG": "false",
        "DATABASE_CONN_MAX_AGE": "600",
    }
    env.setdefault("SECRET_KEY", secrets.token_urlsafe(50))
    return env


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    rank = max(min(round(q / 100 * len(ordered) + 0.5) - 1, len(ordered) - 1), 0)
    return ordered[rank]


@dataclass
class Timing:
    """Milliseconds per request, and what came back."""

    ms: list[float]
    statuses: dict[int, int]
    last_body: bytes

    @property
    def median(self) -> float:
        return statistics.median(self.ms)

    @property
    def p99(self) -> float:
        return percentile(self.ms, 99)


def timed_gets(
    port: int,
    path: str,
    headers: dict[str, str],
    *,
    requests: int,
    warmup: int,
    budget_s: float,
) -> Timing:
    """GET ``path`` one request at a time over one keep-alive connection: each figure is
    the server's time plus a loopback round trip (about 0.1 ms). Stops early once
    ``budget_s`` has passed, so a slow endpoint still reports."""
    conn = http.client.HTTPConnection(HOST, port, timeout=120)
    ms: list[float] = []
    statuses: dict[int, int] = {}
    body = b""
    deadline = None
    try:
        for n in range(warmup + requests):
            began = time.perf_counter()
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            body = response.read()
            elapsed = (time.perf_counter() - began) * 1000
            if n == warmup:
                deadline = time.monotonic() + budget_s
            if n >= warmup:
                ms.append(elapsed)
                statuses[response.status] = statuses.get(response.status, 0) + 1
                if deadline is not None and time.monotonic() > deadline and len(ms) >= 5:
                    break
    finally:
        conn.close()
    return Timing(ms, statuses, body)


def gunicorn_on(url: str, log: Path, workers: int = 2, threads: int = 2) -> Gunicorn:
    """Prism under gunicorn (gthread) on the copy at ``url``; not yet started."""
    return Gunicorn(GunicornConfig(workers, threads), django_env(url), log)


def machine() -> str:
    one, five, _ = os.getloadavg()
    return (
        f"{os.cpu_count()} CPUs, {platform.system()} {platform.release()}, Python "
        f"{platform.python_version()}; load average {one:.2f} (1 min), {five:.2f} (5 min)"
    )


def result(name: str, figures: str, target: str, passed: bool) -> str:
    return f"RESULT {name} {figures} target {target} {'PASS' if passed else 'MISS'}"


def finish(name: str, lines: list[str]) -> None:
    """Print the report (its last line the RESULT) and write it to bench/results/."""
    report = "\n".join(lines)
    print(report, flush=True)
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.txt"
    path.write_text(report + "\n")
    say(f"Written to {path.relative_to(BASE_DIR)}")


def header(title: str) -> list[str]:
    return [f"{title}, {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC", "", f"machine   {machine()}"]


def timed_gets_args(prog: str, doc: str | None, argv: list[str]) -> argparse.Namespace:
    """The options of a benchmark that times GETs of one page at fixture sizes
    (``bench.fleet``, ``bench.dashboard``)."""
    parser = argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=parse_sizes, default=parse_sizes("1e6,1e7"))
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--budget", type=float, default=90, help="seconds of requests per size")
    return parser.parse_args(argv)

"""What the scale benchmarks (bench.fleet, bench.beat, bench.gates, bench.dashboard) share:
sizes, a gunicorn on a fixture copy, timed GETs over one keep-alive connection, and the
report with its RESULT line."""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench import fixtures
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


@dataclass
class Target:
    """One page to time: the server it is on and the request."""

    name: str
    port: int
    path: str
    headers: dict[str, str]


@dataclass
class Interleaved:
    """What ``interleaved_gets`` measured: every target's requests, and each round's
    median per target."""

    timings: dict[str, Timing]
    rounds: list[dict[str, float]]

    def ratio(self, numerator: str, denominator: str) -> float:
        """One target's median over another's, both over all their requests, which
        took turns one by one."""
        below = self.timings[denominator].median
        return self.timings[numerator].median / below if below else float("nan")

    def ratios(self, numerator: str, denominator: str) -> list[float]:
        """The same ratio per round: how much it moves."""
        return [r[numerator] / r[denominator] for r in self.rounds if r[denominator]]


def interleaved_gets(
    targets: list[Target], *, requests: int, rounds: int, warmup: int, budget_s: float
) -> Interleaved:
    """GET every target's path ``requests`` times, over one keep-alive connection per
    target, one request at a time; each figure is the server's time plus a loopback
    round trip (about 0.1 ms).

    The targets take turns request by request, in an order reversed every round, so a
    drift of the machine (write-back after a copy, a busy neighbour, the CPU's clock)
    falls on all of them alike: the ratio of two targets' medians compares the targets,
    not the moments they were measured at. The requests are split into ``rounds`` to
    show how much a ratio moves; rounds stop early once ``budget_s`` per target has
    passed (after at least two), so a slow page still reports."""
    conns = {t.name: http.client.HTTPConnection(HOST, t.port, timeout=120) for t in targets}
    timings = {t.name: Timing([], {}, b"") for t in targets}
    per_round = max(requests // max(rounds, 1), 1)

    def get(target: Target) -> float:
        conn = conns[target.name]
        began = time.perf_counter()
        conn.request("GET", target.path, headers=target.headers)
        response = conn.getresponse()
        body = response.read()
        elapsed = (time.perf_counter() - began) * 1000
        timing = timings[target.name]
        timing.statuses[response.status] = timing.statuses.get(response.status, 0) + 1
        timing.last_body = body
        return elapsed

    measured: list[dict[str, float]] = []
    try:
        for target in targets:
            for _ in range(warmup):
                get(target)
            timings[target.name].statuses.clear()
        deadline = time.monotonic() + budget_s * len(targets)
        for n in range(max(rounds, 1)):
            order = targets if n % 2 == 0 else targets[::-1]
            ms: dict[str, list[float]] = {t.name: [] for t in targets}
            for _ in range(per_round):
                for target in order:
                    ms[target.name].append(get(target))
            for name, figures in ms.items():
                timings[name].ms.extend(figures)
            measured.append({name: statistics.median(figures) for name, figures in ms.items()})
            if n >= 1 and time.monotonic() > deadline:
                break
    finally:
        for conn in conns.values():
            conn.close()
    return Interleaved(timings, measured)


def gunicorn_on(url: str, log: Path, workers: int = 2, threads: int = 2) -> Gunicorn:
    """Prism under gunicorn (gthread) on the copy at ``url``; not yet started."""
    return Gunicorn(GunicornConfig(workers, threads), django_env(url), log)


@contextlib.contextmanager
def served_copy(
    cache: fixtures.Cache, sessions: int, prepare: Callable[[fixtures.Copy], None] | None = None
) -> Iterator[tuple[fixtures.Copy, Gunicorn]]:
    """A copy of the ``sessions`` fixture (``prepare``d first, if given) with Prism
    under gunicorn (gthread, 2 workers x 2 threads) on it, answering; both removed on
    exit."""
    with cache.copy(sessions) as copy, tempfile.TemporaryDirectory(prefix="prism-bench-") as tmp:
        if prepare is not None:
            prepare(copy)
        server = gunicorn_on(copy.url, Path(tmp) / "gunicorn.log")
        say(f"Starting gunicorn on {copy.name} …")
        server.start("/login/", {})
        try:
            yield copy, server
        finally:
            server.stop()


def time_side_by_side(
    cache: fixtures.Cache, targets: list[Target], args: argparse.Namespace
) -> Interleaved:
    """Settle the copies' writes, then time the targets taking turns, with the options of
    ``side_by_side_args``."""
    cache.settle()
    say(f"Timing {', '.join(t.name for t in targets)}, taking turns …")
    return interleaved_gets(
        targets, requests=args.requests, rounds=args.rounds, warmup=args.warmup,
        budget_s=args.budget,
    )  # fmt: skip


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


def side_by_side_args(prog: str, doc: str | None, argv: list[str]) -> argparse.Namespace:
    """The options of a benchmark that times GETs of one page at fixture sizes, side by
    side (``bench.fleet``, ``bench.dashboard``)."""
    parser = argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=parse_sizes, default=parse_sizes("1e6,1e7"))
    parser.add_argument("--requests", type=int, default=200, help="timed requests per size")
    parser.add_argument("--rounds", type=int, default=10, help="rounds the requests are split in")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--budget", type=float, default=90, help="seconds of requests per size")
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= args.requests:
        parser.error(f"--rounds must be from 1 to --requests ({args.requests}), not {args.rounds}")
    return args

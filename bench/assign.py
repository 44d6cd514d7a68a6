"""Benchmark of session assignment, the hot path, against a floor.

``make bench`` runs it; bench/README.md explains what it measures and how to read it.

1. Create a fresh database on the PostgreSQL server ``DATABASE_URL`` names (without
   one, re-run under ``scripts/with-postgres``, which starts a throwaway cluster) and
   migrate it.
2. Create a harness token and an agent routed over three versions, as mid-rollout.
3. Start gunicorn with Prism's settings (plus the floor's URL) on 127.0.0.1.
4. Warm up, then run rounds: each round drives both arms, in alternating order, with
   the same client, connections and duration. Every request is a new session.
5. Check correctness: every Prism response was 201, the database holds exactly the
   sessions sent, and every pin is the one the documented hash gives.
6. Report medians across rounds, the Prism/floor throughput ratio and Prism's p99,
   against the targets; write the report to bench/results/.

With ``--sessions 1e7`` the run happens on a copy of the scale fixture
(``bench.fixtures``) instead of an empty database: Prism's sessions table and the floor's
table then both hold that many rows before the first request, so the ratio still
measures what Prism adds, not an index size. ``--sessions 0,1e7`` runs both sizes, one
after the other, and ends with a RESULT line covering both.

Missing a target is reported, not failed: the exit status is non-zero only when the
benchmark could not run or a correctness check failed.
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.cpu import Meter, Usage, children, connections_by_process, parent_of
from bench.load import Client, Load, PythonClient, WrkClient, find_wrk
from bench.server import FreshDatabase, Gunicorn, GunicornConfig, gunicorn_version

BASE_DIR = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"

SLUG = "bench"
LABELS_AND_WEIGHTS = (("v1", 6000), ("v2", 3000), ("v3", 1000))  # basis points
TARGET_RATIO = 0.85
TARGET_P99_MS = 20.0
FLOOR, PRISM = "floor", "prism"
NOISY_SHARE = 0.10  # other processes' CPU, as a share of the machine, worth a warning


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.assign",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=10, help="seconds per arm per round")
    parser.add_argument("--warmup", type=float, default=5, help="seconds per arm")
    parser.add_argument("--connections", type=int, default=8, help="concurrent clients")
    parser.add_argument("--workers", type=int, default=3, help="gunicorn workers")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker")
    parser.add_argument(
        "--client",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="load generator (auto: wrk, installed with apt if missing, else the asyncio client)",
    )
    parser.add_argument(
        "--no-reuse-port", action="store_true", help="one listener shared by all workers"
    )
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--no-install", action="store_true", help="never run apt-get")
    parser.add_argument(
        "--keep-db", action="store_true", help="keep the benchmark database afterwards"
    )
    parser.add_argument(
        "--sessions",
        type=parse_sessions,
        default=[0],
        help="rows already in the tables: 0 (an empty database) or fixture sizes, e.g. 0,1e7",
    )
    return parser.parse_args(argv)


def parse_sessions(text: str) -> list[int]:
    from bench.fixtures import parse_sizes

    parts = [p.strip() for p in text.split(",")]
    sizes = [0] * sum(1 for p in parts if float(p) == 0)
    rest = [p for p in parts if float(p) != 0]
    return sizes + (parse_sizes(",".join(rest)) if rest else [])


# --- setup ---------------------------------------------------------------------------------


def version_layers(n: int) -> dict[str, Any]:
    """A realistic tuple: a system prompt of about 1 kB and three tools."""
    tool = {
        "type": "object",
        "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}},
        "required": ["query"],
    }
    return {
        "code": {"ref": f"git:{n:040x}", "image": f"registry.local/agent:{n}"},
        "model": {
            "provider": "anthropic",
            "name": "claude-sonnet",
            "params": {"temperature": 0.2, "max_tokens": 4096},
        },
        "prompts": {"system": "You are a careful research assistant. Cite sources.\n" * 20},
        "tools": [
            {"name": name, "description": f"{name} tool", "input_schema": tool}
            for name in ("search", "fetch", "summarise")
        ],
    }


@dataclass
class Fixture:
    slug: str
    agent_id: int
    token: str
    version_ids: dict[int, str]  # id -> label
    epoch: int


def create_fixture(slug: str) -> Fixture:
    """An agent with a stable version and a three-way split, and a harness token."""
    from django.contrib.auth import get_user_model
    from django.db import transaction

    from controlplane.models import ApiToken, Profile, Role
    from rollouts import engine
    from rollouts import routing as routing_mod
    from rollouts.models import Routing
    from versions.models import Agent, Version

    user = get_user_model().objects.create_user(username=f"{slug}-harness")
    Profile.objects.create(user=user, role=Role.HARNESS)
    token = ApiToken.issue(user)
    agent = Agent.objects.create(slug=slug, name="Benchmark agent")
    versions = []
    for n, (label, _) in enumerate(LABELS_AND_WEIGHTS, start=1):
        version = Version(agent=agent, label=label, **version_layers(n))
        version.save()
        versions.append(version)
    engine.set_stable(agent, versions[0], actor="bench", reason="benchmark setup")
    # The engine routes at most a baseline and a candidate; a rainbow mid-flight can
    # have more versions with weight, so the table is written directly, as the engine
    # does: under the row lock, with a new epoch.
    weights = {v.pk: w for v, (_, w) in zip(versions, LABELS_AND_WEIGHTS, strict=True)}
    routing_mod.validate_weights(weights)
    with transaction.atomic():
        routing = Routing.objects.select_for_update().get(agent=agent)
        routing.weights = {str(k): w for k, w in weights.items()}
        routing.epoch += 1
        routing.save(update_fields=["weights", "epoch", "updated_at"])
    return Fixture(slug, agent.pk, token, {v.pk: v.label for v in versions}, routing.epoch)


def create_floor_table() -> None:
    from django.db import connection

    from bench.floor import CREATE_TABLE

    with connection.cursor() as cursor:
        cursor.execute(CREATE_TABLE)


def count_rows(arm: str, prefix: str, fixture: Fixture, sent: int) -> int:
    """Rows the server wrote for one run. The client stops with requests in flight, so
    wait until all ``sent`` have landed, or until the count has not moved for 2 s."""
    from django.db import connection

    from bench.floor import TABLE

    if arm == PRISM:
        sql = (
            "SELECT count(*) FROM rollouts_session "
            "WHERE agent_id = %s AND starts_with(session_id, %s)"
        )
        params: list[Any] = [fixture.agent_id, prefix + "-"]
    else:
        sql = f"SELECT count(*) FROM {TABLE} WHERE starts_with(session_id, %s)"
        params = [prefix + "-"]
    last, moved = -1, time.monotonic()
    while True:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            count = cursor.fetchone()[0]
        if count != last:
            last, moved = count, time.monotonic()
        if count >= sent or time.monotonic() - moved > 2:
            return count
        time.sleep(0.1)


def server_facts() -> dict[str, str]:
    from django.conf import settings
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_setting('server_version'), current_setting('fsync'), "
            "current_setting('synchronous_commit')"
        )
        version, fsync, sync_commit = cursor.fetchone()
    db = settings.DATABASES["default"]
    return {
        "postgres": f"PostgreSQL {version} (fsync={fsync}, synchronous_commit={sync_commit})",
        "django": (
            f"DEBUG={settings.DEBUG}, CONN_MAX_AGE={db['CONN_MAX_AGE']}, "
            f"CONN_HEALTH_CHECKS={db['CONN_HEALTH_CHECKS']}"
        ),
    }


# --- the run ---------------------------------------------------------------------------------


@dataclass
class Run:
    arm: str
    round: str  # "warm-up" or "1", "2", …
    prefix: str
    load: Load
    rows: int  # rows the database gained for this run
    usage: Usage
    spread: list[int] | None  # the client's connections held by each worker, mid-run

    def cpu_ms(self, part: str) -> float | None:
        """CPU milliseconds per response spent by the server, database or client."""
        spent = getattr(self.usage, part)
        if spent is None or not self.load.requests:
            return None
        return 1000 * spent / self.load.requests


@dataclass
class Arm:
    name: str
    path: str
    auth: str


def pick_client(args: argparse.Namespace) -> Client:
    if args.client != "python":
        path = find_wrk(install=not args.no_install, log=say)
        if path:
            return WrkClient(path, threads=args.wrk_threads)
        if args.client == "wrk":
            raise SystemExit("wrk is not installed and could not be installed.")
        say("Falling back to the asyncio client: it competes with the server for CPU.")
    return PythonClient()


@dataclass
class Driver:
    """Drives one arm for one run and records what happened."""

    client: Client
    server: Gunicorn
    meter: Meter
    fixture: Fixture
    connections: int

    def drive(self, arm: Arm, round_: str, duration: float) -> Run:
        prefix = f"{arm.name[0]}{'w' if round_ == 'warm-up' else round_}"
        spread: list[list[int] | None] = [None]

        def look() -> None:
            workers = children(self.server.process.pid)
            spread[0] = connections_by_process(self.server.port, workers)

        halfway = threading.Timer(duration / 2, look)
        before = self.meter.snapshot()
        halfway.start()
        load = self.client.run(
            self.server.base_url + arm.path, prefix=prefix, auth=arm.auth, expected=201,
            connections=self.connections, duration_s=duration,
        )  # fmt: skip
        usage = self.meter.usage(before, self.meter.snapshot())
        halfway.cancel()
        halfway.join()
        rows = count_rows(arm.name, prefix, self.fixture, load.sent)
        run = Run(arm.name, round_, prefix, load, rows, usage, spread[0])
        say(
            f"  {round_:>7} {arm.name:<6} {load.rps:8.1f} req/s  p50 {load.p50_ms:6.2f} ms  "
            f"p99 {load.p99_ms:6.2f} ms  ({load.requests} responses, {rows} rows)"
        )
        return run


def preflight(server: Gunicorn, arms: list[Arm]) -> None:
    """One request per arm, so a broken endpoint fails loudly before the load starts."""
    for arm in arms:
        headers = {"Authorization": arm.auth} if arm.auth else {}
        status, body = server.post(arm.path, '{"session_id": "preflight"}', headers)
        if status != 201:
            raise RuntimeError(f"{arm.name}: POST {arm.path} answered {status}: {body[:500]!r}")


def postmaster_pid() -> int | None:
    """The local PostgreSQL server's main process, to account for its CPU."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    try:
        if Path(f"/proc/{backend}/comm").read_text().strip() != "postgres":
            return None  # a remote server, or not one we can see
    except OSError:
        return None
    return parent_of(backend)


def benchmark(args: argparse.Namespace, db: FreshDatabase, preloaded: int = 0) -> int:
    os.environ.update(DATABASE_URL=db.url, DJANGO_SETTINGS_MODULE="bench.settings", DEBUG="false")
    os.environ.setdefault("SECRET_KEY", secrets.token_urlsafe(50))
    # Persistent connections that outlive the whole run: no reconnects mid-measurement.
    os.environ.setdefault("DATABASE_CONN_MAX_AGE", "600")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    say(f"Migrating {'fresh ' if db.fresh else ''}database {db.name} …")
    call_command("migrate", verbosity=0, interactive=False)
    # A database in use may hold an agent called "bench" already.
    fixture = create_fixture(SLUG if db.fresh else f"{SLUG}-{secrets.token_hex(4)}")
    if preloaded:
        say(f"Preloaded: {preloaded:,} sessions and as many floor rows.")
    else:
        create_floor_table()
    facts = server_facts()
    database_pid = postmaster_pid()

    config = GunicornConfig(args.workers, args.threads, reuse_port=not args.no_reuse_port)
    arms = [
        Arm(FLOOR, "/bench/floor/", ""),
        Arm(PRISM, f"/api/agents/{fixture.slug}/sessions/", f"Token {fixture.token}"),
    ]
    client = pick_client(args)
    runs: list[Run] = []
    one, five, _ = os.getloadavg()
    facts["load"] = f"load average {one:.2f} (1 min), {five:.2f} (5 min) before the run"
    with tempfile.TemporaryDirectory(prefix="prism-bench-") as tmp:
        server = Gunicorn(config, dict(os.environ), Path(tmp) / "gunicorn.log")
        say(f"Starting gunicorn ({config.describe()}) on {server.base_url} …")
        server.start(f"/api/agents/{fixture.slug}/routing/", {"Authorization": arms[1].auth})
        meter = Meter(server.process.pid, database_pid)
        driver = Driver(client, server, meter, fixture, args.connections)
        try:
            preflight(server, arms)
            say(
                f"Load: {client.name}, {args.connections} connections; warm-up "
                f"{args.warmup:g} s per arm, then {args.rounds} rounds of {args.duration:g} s "
                "per arm, alternating."
            )
            for arm in arms:
                runs.append(driver.drive(arm, "warm-up", args.warmup))
            with connection.cursor() as cursor:  # fresh statistics after the warm-up
                cursor.execute("VACUUM ANALYZE rollouts_session")
                cursor.execute("VACUUM ANALYZE bench_floor_pin")
            for n in range(1, args.rounds + 1):
                for arm in arms if n % 2 else arms[::-1]:
                    runs.append(driver.drive(arm, str(n), args.duration))
        except BaseException:
            say(server.log_tail())
            raise
        finally:
            server.stop()
        server_log = server.log_tail(20)

    checks = verify(runs, fixture)
    facts["preloaded"] = preloaded
    report = render(args, config, client, facts, fixture, runs, checks, server_log)
    print(report, flush=True)
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"assign-{stamp}.txt"
    path.write_text(report + "\n")
    say(f"Written to {path.relative_to(BASE_DIR)}")
    connection.close()
    return 0 if all(ok for _, ok in checks) else 1


# --- checks and report ----------------------------------------------------------------------


def verify(runs: list[Run], fixture: Fixture) -> list[tuple[str, bool]]:
    """Correctness of what the benchmark did, as (description, passed) lines."""
    from rollouts import routing as routing_mod
    from rollouts.models import Routing, Session

    checks = []
    for arm in (PRISM, FLOOR):
        mine = [r for r in runs if r.arm == arm]
        responses = sum(r.load.requests for r in mine)
        bad = sum(r.load.unexpected for r in mine)
        errors = sum(sum(r.load.errors.values()) for r in mine)
        checks.append(
            (
                f"{arm}: {responses - bad} of {responses} responses were 201, "
                f"{errors} socket errors",
                bad == 0 and errors == 0,
            )
        )
        sent, rows = sum(r.load.sent for r in mine), sum(r.rows for r in mine)
        exact = all(r.rows == r.load.sent for r in mine)
        checks.append(
            (
                f"{arm}: rows in the database == requests sent: {rows} == {sent}"
                + (
                    ""
                    if exact
                    else " (per run: "
                    + ", ".join(f"{r.prefix} {r.rows}/{r.load.sent}" for r in mine)
                    + ")"
                ),
                exact,
            )
        )

    routing = Routing.objects.get(agent_id=fixture.agent_id)
    table = routing_mod.table_for(routing)
    pins = Session.objects.filter(agent_id=fixture.agent_id).values_list("session_id", "version_id")
    split: Counter[int] = Counter()
    wrong = 0
    for session_id, version_id in pins.iterator(chunk_size=10000):
        split[version_id] += 1
        if table.pick(routing_mod.bucket(fixture.slug, session_id)) != version_id:
            wrong += 1
    total = sum(split.values())
    checks.append(
        (
            f"prism: {total - wrong} of {total} pins match the documented hash "
            "and the routing table",
            wrong == 0 and total > 0,
        )
    )
    shares = ", ".join(
        f"{label} {100 * split[vid] / max(total, 1):.1f}% (weight "
        f"{routing.weight_of(vid) / 100:g}%)"
        for vid, label in fixture.version_ids.items()
    )
    checks.append((f"prism: split by version: {shares}", True))
    return checks


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def fmt(value: float | None, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{spec}}"


@dataclass
class Summary:
    rps: float
    p50: float
    p99: float
    server_ms: float | None
    database_ms: float | None
    client_ms: float | None

    @property
    def cpu_ms(self) -> float | None:
        """All the CPU one request costs the machine."""
        parts = (self.server_ms, self.database_ms, self.client_ms)
        return None if None in parts else sum(parts)

    @classmethod
    def of(cls, runs: list[Run]) -> Summary:
        return cls(
            rps=median([r.load.rps for r in runs]) or 0.0,
            p50=median([r.load.p50_ms for r in runs]) or 0.0,
            p99=median([r.load.p99_ms for r in runs]) or 0.0,
            server_ms=median([r.cpu_ms("server") for r in runs]),
            database_ms=median([r.cpu_ms("database") for r in runs]),
            client_ms=median([r.cpu_ms("client") for r in runs]),
        )


def render(args, config, client, facts, fixture, runs, checks, server_log) -> str:
    timed = [r for r in runs if r.round != "warm-up"]
    by_arm = {arm: [r for r in timed if r.arm == arm] for arm in (FLOOR, PRISM)}
    med = {arm: Summary.of(rs) for arm, rs in by_arm.items()}
    ratio = med[PRISM].rps / med[FLOOR].rps if med[FLOOR].rps else float("nan")
    pairs = zip(by_arm[FLOOR], by_arm[PRISM], strict=True)
    per_round = [p.load.rps / f.load.rps for f, p in pairs if f.load.rps]
    p99 = med[PRISM].p99
    lines = [
        f"Prism session assignment benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC",
        "",
        f"machine   {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}; {facts['load']}",
        f"database  {facts['postgres']}",
        f"server    gunicorn {gunicorn_version()} {config.describe()}; {facts['django']}",
        f"client    {client.version()}, {args.connections} keep-alive connections, closed loop",
        f"plan      warm-up {args.warmup:g} s per arm, then {args.rounds} rounds x "
        f"{args.duration:g} s per arm, order alternating",
        f"prism     POST /api/agents/{fixture.slug}/sessions/ with a harness token; "
        "every request a new session; weights "
        + ", ".join(f"{label} {w / 100:g}%" for label, w in LABELS_AND_WEIGHTS)
        + f" (routing epoch {fixture.epoch})",
        "floor     POST /bench/floor/: plain Django view, one INSERT ... ON CONFLICT DO NOTHING",
        f"tables    {facts['preloaded']:,} rows in Prism's sessions and in the floor's table "
        "before the first request",
        "",
        "Per run. CPU columns: milliseconds of CPU per request spent by gunicorn, by",
        "PostgreSQL and by the client; 'others' is CPU taken by unrelated processes, as a",
        "share of the machine (high values mean a noisy run); conns/worker: how the",
        "client's connections were spread over the gunicorn workers, halfway through.",
        "",
        "round    arm     requests    req/s   p50 ms   p99 ms   max ms"
        "   server       db   client   others   conns/worker",
    ]
    for r in runs:
        others = r.usage.others_share()
        lines.append(
            f"{r.round:<8} {r.arm:<6} {r.load.requests:>9} {r.load.rps:>8.1f} "
            f"{r.load.p50_ms:>8.2f} {r.load.p99_ms:>8.2f} {r.load.max_ms:>8.2f} "
            f"{fmt(r.cpu_ms('server'), '.2f', 8)} {fmt(r.cpu_ms('database'), '.2f', 8)} "
            f"{fmt(r.cpu_ms('client'), '.2f', 8)} "
            f"{fmt(None if others is None else 100 * others, '.0f', 7)}%"
            f"   {'/'.join(map(str, r.spread)) if r.spread else '-'}"
        )
    lines += [
        "",
        f"Medians over {args.rounds} rounds",
        "arm     requests/s   p50 ms   p99 ms   server CPU ms/req   db CPU ms/req",
    ]
    for arm in (FLOOR, PRISM):
        m = med[arm]
        lines.append(
            f"{arm:<6} {m.rps:>11.1f} {m.p50:>8.2f} {m.p99:>8.2f} "
            f"{fmt(m.server_ms, '.2f', 19)} {fmt(m.database_ms, '.2f', 15)}"
        )
    noise = median([r.usage.others_share() for r in timed])
    if noise is not None and noise > NOISY_SHARE:
        lines += [
            "",
            f"WARNING: other processes took {100 * noise:.0f}% of the machine's CPU during the "
            "median run, so the",
            "absolute figures are low and noisy. The ratio, from interleaved rounds, and the "
            "CPU per request",
            "hold up better; rerun on a quiet machine for figures to quote.",
        ]
    lines += [
        "",
        f"Prism/floor throughput ratio  {ratio:.2f}   target >= {TARGET_RATIO:g}: "
        f"{'PASS' if ratio >= TARGET_RATIO else 'MISS'}"
        f"   (per round: {', '.join(f'{x:.2f}' for x in per_round)})",
        f"Prism p99                     {p99:.2f} ms   target <= {TARGET_P99_MS:g} ms: "
        f"{'PASS' if p99 <= TARGET_P99_MS else 'MISS'}",
    ]
    if med[FLOOR].cpu_ms and med[PRISM].cpu_ms:
        lines += [
            f"CPU-cost ratio                {med[FLOOR].cpu_ms / med[PRISM].cpu_ms:.2f}   "
            f"(floor {med[FLOOR].cpu_ms:.2f} / Prism {med[PRISM].cpu_ms:.2f} ms of CPU per "
            "request, server + db + client):",
            "                                     the throughput ratio of a quiet, CPU-bound "
            "machine",
        ]
    lines += [
        "",
        "Correctness",
        *(f"  {'ok  ' if ok else 'FAIL'} {text}" for text, ok in checks),
    ]
    if server_log.strip():
        lines += ["", "gunicorn log (tail)", *(f"  {line}" for line in server_log.splitlines())]
    passed = ratio >= TARGET_RATIO and p99 <= TARGET_P99_MS and all(ok for _, ok in checks)
    lines += [
        "",
        f"RESULT assign ratio={ratio:.2f} p99_ms={p99:.2f} rows={facts['preloaded']} "
        f"target {TARGET_RATIO:g},{TARGET_P99_MS:g}ms {'PASS' if passed else 'MISS'}",
    ]
    return "\n".join(lines)


# --- entry point ----------------------------------------------------------------------------


def without_sessions(argv: list[str]) -> list[str]:
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--sessions":
            skip = True
        elif not arg.startswith("--sessions="):
            kept.append(arg)
    return kept


def each_size(args: argparse.Namespace, argv: list[str]) -> int:
    """One run per size, each in its own process (Django is set up once per process),
    then one RESULT line for all of them."""
    results = []
    for n in args.sessions:
        out = subprocess.run(
            [sys.executable, "-m", "bench.assign", *without_sessions(argv), "--sessions", str(n)],
            cwd=BASE_DIR, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        sys.stdout.write(out.stdout)
        last = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
        if out.returncode or not last.startswith("RESULT assign "):
            say(f"The run at {n:,} rows failed (exit status {out.returncode}).")
            return out.returncode or 1
        figures = dict(part.split("=", 1) for part in last.split() if "=" in part)
        results.append(
            (n, float(figures["ratio"]), float(figures["p99_ms"]), last.endswith("PASS"))
        )
    print("\nAll sizes", flush=True)
    for n, ratio, p99, passed in results:
        print(
            f"  {n:>12,} rows  ratio {ratio:.2f}  p99 {p99:.2f} ms  {'PASS' if passed else 'MISS'}"
        )
    worst_ratio = min(r for _, r, _, _ in results)
    worst_p99 = max(p for _, _, p, _ in results)
    print(
        f"RESULT assign ratio={worst_ratio:.2f} p99_ms={worst_p99:.2f} sizes="
        + ",".join(str(n) for n, *_ in results)
        + f" target {TARGET_RATIO:g},{TARGET_P99_MS:g}ms "
        + ("PASS" if all(passed for *_, passed in results) else "MISS"),
        flush=True,
    )
    return 0


def on_fixture(args: argparse.Namespace, sessions: int) -> int:
    """A run on a copy of the scale fixture of this size (see bench.fixtures)."""
    from bench import fixtures

    with fixtures.cache() as cache, cache.copy(sessions) as copy:
        db = FreshDatabase(cache.admin_url, copy.url, copy.name, fresh=True)
        return benchmark(args, db, preloaded=copy.info["sessions"])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if len(args.sessions) > 1:
        return each_size(args, argv)
    if args.sessions[0]:
        return on_fixture(args, args.sessions[0])
    url = os.environ.get("DATABASE_URL", "")
    if not url:
        # No server given: run again under a throwaway PostgreSQL cluster.
        script = BASE_DIR / "scripts" / "with-postgres"
        os.chdir(BASE_DIR)
        os.execv(script, [str(script), sys.executable, "-m", "bench.assign", *argv])
    if not url.startswith(("postgres://", "postgresql://")):
        raise SystemExit(f"bench.assign measures PostgreSQL; DATABASE_URL is {url!r}")
    db = FreshDatabase.create(url, f"prism_bench_{datetime.now(UTC):%Y%m%d%H%M%S}_{os.getpid()}")
    if not db.fresh:
        say(f"No CREATEDB privilege: using {db.name} as it is.")
    try:
        return benchmark(args, db)
    finally:
        if args.keep_db:
            say(f"Kept database {db.name}.")
        else:
            db.drop()


if __name__ == "__main__":
    sys.exit(main())

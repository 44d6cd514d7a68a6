"""Soak: the simulator's steady mixed traffic against the production processes.

``python -m bench.soak`` (``make soak``):

1. Create a fresh database on the PostgreSQL server ``DATABASE_URL`` names (without one,
   re-run under ``scripts/with-postgres``; without ``CELERY_BROKER_URL``, under
   ``scripts/with-redis``) and migrate it.
2. Create an agent mid-rollout (v1 stable, v2 at 50%, gates that keep the beat busy) and
   a harness token, through Prism's services.
3. Start gunicorn (gthread), a Celery worker and the beat as separate processes, as
   docker-compose runs them; the beat ticks every second.
4. Run the ``soak`` scenario in this process through ``prism_client``: Poisson arrivals at
   ``--rate`` sessions/s, long-tailed durations, heartbeats, outcomes, late feedback.
5. After ``--warmup`` seconds, note every server process's RSS and start measuring;
   ``--duration`` seconds later note them again and stop.
6. Report the sessions/s held, errors (5xx, socket errors, unexpected statuses), the p99
   of assign, heartbeat and end over the measured window, and RSS growth per process.
   The last line is ``RESULT soak errors=<n> sessions_per_s=<x> rss_growth=<pct>
   PASS|MISS``: PASS when there were no errors, the rate held (>= 90% of --rate) and no
   process grew by more than 10%.

A miss is reported, not failed: the exit status is non-zero only when the soak could
not run.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.cpu import children
from bench.server import FreshDatabase, Gunicorn, GunicornConfig
from prism_client import Client
from simulator import demo
from simulator.fleet import AgentRun, Driver, Fleet, Stats
from simulator.scenarios import SCENARIOS

BASE_DIR = Path(__file__).resolve().parent.parent
SLUG = "soak"
TARGET_GROWTH = 0.10
TARGET_HELD = 0.9


def say(message: str) -> None:
    print(message, flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=120, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=20, help="seconds before measuring")
    parser.add_argument("--rate", type=float, default=10, help="new sessions per second")
    parser.add_argument("--accel", type=float, default=60, help="simulated s per real s")
    parser.add_argument("--concurrency", type=int, default=32, help="client threads")
    parser.add_argument("--workers", type=int, default=3, help="gunicorn workers")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep-db", action="store_true")
    return parser.parse_args(argv)


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def process_rss(roots: dict[str, int]) -> dict[str, int]:
    """RSS (kB) of each named process and of its children (gunicorn's workers, the Celery
    worker's pool), keyed by role and pid."""
    found = {}
    for name, root in roots.items():
        for n, pid in enumerate([root, *sorted(children(root))]):
            rss = rss_kb(pid)
            if rss is not None:
                found[f"{name}{'' if n == 0 else f'.{n}'} ({pid})"] = rss
    return found


def create_fixture(accel: float) -> str:
    """The soak agent, mid-rollout, and a harness token; returns the token."""
    from django.contrib.auth import get_user_model

    from controlplane.models import ApiToken, Profile, Role
    from metrics.gates import validate_gates
    from rollouts import engine
    from versions import services

    user = get_user_model().objects.create_user(username="soak-harness")
    Profile.objects.create(user=user, role=Role.HARNESS)
    token = ApiToken.issue(user)
    spec = demo.BY_SCENARIO["soak"]
    agent = services.create_agent(
        slug=SLUG,
        name=spec.name,
        drain_policy=demo.scaled_policy(spec.policy, accel),
        actor="bench",
    )
    layers = spec.versions[0][1]
    v1, _ = services.register_version(agent, layers=layers, label="v1", notes="", actor="bench")
    v2, _ = services.register_version(
        agent, layers=demo.deploy_layers(spec, 1, "soak"), label="v2", notes="", actor="bench"
    )
    engine.set_stable(agent, v1, actor="bench")
    engine.start_rollout(
        agent,
        candidate=v2,
        stages=engine.validate_stages([{"percent": 50, "min_duration_s": 86400}, {"percent": 100}]),
        gates=validate_gates(demo.GATES),
        actor="bench",
    )
    return token


def soak(args: argparse.Namespace, db: FreshDatabase) -> int:
    os.environ.update(
        DATABASE_URL=db.url,
        DJANGO_SETTINGS_MODULE="controlplane.settings",
        DEBUG="false",
        PRISM_BEAT_SECONDS="1",
    )
    os.environ.setdefault("SECRET_KEY", secrets.token_urlsafe(50))
    import django

    django.setup()
    from django.core.management import call_command

    say(f"Migrating {'fresh ' if db.fresh else ''}database {db.name} …")
    call_command("migrate", verbosity=0, interactive=False)
    token = create_fixture(args.accel)
    env = dict(os.environ)
    celery = [sys.executable, "-m", "celery", "-A", "controlplane"]
    with tempfile.TemporaryDirectory(prefix="prism-soak-") as tmp:
        logs = Path(tmp)
        server = Gunicorn(GunicornConfig(args.workers, args.threads), env, logs / "web.log")
        say(f"Starting gunicorn ({server.config.describe()}), a Celery worker and the beat …")
        server.start(f"/api/agents/{SLUG}/routing/", {"Authorization": f"Token {token}"})
        others = {}
        for name, command in (
            ("worker", [*celery, "worker", "--loglevel=WARNING", "--concurrency=2"]),
            ("beat", [*celery, "beat", "--loglevel=WARNING", f"--schedule={tmp}/beat"]),
        ):
            with (logs / f"{name}.log").open("wb") as log:
                others[name] = subprocess.Popen(
                    command, cwd=BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT
                )
        try:
            return drive(args, server, others, token)
        finally:
            for process in others.values():
                process.send_signal(signal.SIGTERM)
            for name, process in others.items():
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    say(f"{name} did not stop in 30 s; killed")
            server.stop()


class Window:
    """Forwards the client's observations to the stats of the current window."""

    def __init__(self, stats) -> None:
        self.stats = stats

    def __call__(self, call) -> None:
        self.stats.observe(call)


def drive(args: argparse.Namespace, server: Gunicorn, others: dict, token: str) -> int:
    """Steps 4 to 6."""
    roots = {"web": server.process.pid, **{n: p.pid for n, p in others.items()}}
    warm, measured = Stats(args.seed), Stats(args.seed)
    window = Window(warm)
    fleet = Fleet(accel=args.accel, concurrency=args.concurrency, stats=warm)
    client = Client(server.base_url, token, SLUG, timeout=10, retries=2, observer=window)
    run = AgentRun(SLUG, SCENARIOS["soak"], args.rate)
    fleet.drivers.append(Driver(fleet, run, client, None, args.seed, f"soak{args.seed}"))
    stop = threading.Event()
    runner = threading.Thread(target=fleet.run, args=(None, stop), daemon=True)
    say(
        f"Soak: {args.rate:g} sessions/s, clock {args.accel:g}x, {args.concurrency} client "
        f"threads; warm-up {args.warmup:g} s, then {args.duration:g} s measured."
    )
    runner.start()
    try:
        time.sleep(args.warmup)
        before = process_rss(roots)
        started_before = warm.counts["started"]
        window.stats = fleet.stats = measured
        began = time.monotonic()
        time.sleep(args.duration)
        after = process_rss(roots)
        elapsed = time.monotonic() - began
    finally:
        stop.set()
        runner.join(timeout=60)
    requests = sum(measured.seen.values())
    held = measured.counts["started"] / elapsed
    errors = warm.error_count + measured.error_count
    say(
        f"Warm-up: {started_before} sessions; measured: {measured.counts['started']} sessions "
        f"in {elapsed:.1f} s, {requests / elapsed:.0f} requests/s, scheduler lag "
        f"{fleet.lag_s:.2f} s at the end."
    )
    say(f"Sessions/s held: {held:.2f} (target {args.rate:g}, at least {TARGET_HELD:.0%})")
    for name in ("start", "heartbeat", "end", "feedback"):
        p50, p99 = measured.percentile_ms(name, 50), measured.percentile_ms(name, 99)
        if p99 is not None:
            label = "assign" if name == "start" else name
            say(f"  {label:<9} n={measured.seen[name]:>6}  p50 {p50:7.1f} ms  p99 {p99:7.1f} ms")
    say(f"Errors: {errors}")
    for error, count in (warm.errors + measured.errors).most_common(10):
        say(f"  {count} x {error}")
    say("RSS (MB) after warm-up -> at the end:")
    growth = 0.0
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key), after.get(key)
        if a is None or b is None:
            say(
                f"  {key:<24} {'-' if a is None else f'{a / 1024:.1f}'} -> "
                f"{'-' if b is None else f'{b / 1024:.1f}'} (process came or went)"
            )
            growth = max(growth, 1.0) if a is not None else growth
            continue
        change = (b - a) / a
        growth = max(growth, change)
        say(f"  {key:<24} {a / 1024:7.1f} -> {b / 1024:7.1f}  ({change:+.1%})")
    ok = errors == 0 and growth <= TARGET_GROWTH and held >= TARGET_HELD * args.rate
    say(
        f"RESULT soak errors={errors} sessions_per_s={held:.2f} rss_growth={growth * 100:.1f} "
        f"{'PASS' if ok else 'MISS'}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    url = os.environ.get("DATABASE_URL", "")
    wrappers = []
    if not url:
        wrappers.append(str(BASE_DIR / "scripts" / "with-postgres"))
    if not os.environ.get("CELERY_BROKER_URL"):
        wrappers.append(str(BASE_DIR / "scripts" / "with-redis"))
    if wrappers:
        # No servers given: run again under throwaway ones.
        os.chdir(BASE_DIR)
        os.execv(wrappers[0], [*wrappers, sys.executable, "-m", "bench.soak", *argv])
    if not url.startswith(("postgres://", "postgresql://")):
        raise SystemExit(f"bench.soak runs on PostgreSQL; DATABASE_URL is {url!r}")
    db = FreshDatabase.create(url, f"prism_soak_{datetime.now(UTC):%Y%m%d%H%M%S}_{os.getpid()}")
    try:
        return soak(args, db)
    finally:
        if args.keep_db:
            say(f"Kept database {db.name}.")
        else:
            db.drop()


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark of one full beat tick at scale, with a real worker and broker.

``make bench-beat`` (``python -m bench.beat --sessions 5e5,5e6``):

1. Without ``CELERY_BROKER_URL``, re-run under ``scripts/with-redis`` (a throwaway Redis).
2. For each size, take a copy of the scale fixture (``bench.fixtures``): 50 agents, each
   with a running rollout, the busiest with 20 versions and three draining.
3. Start a Celery worker on the copy (``--concurrency 2``, task events on: ``-E``) and
   listen to its events on the broker.
4. A tick: send every entry of the beat's schedule (``CELERY_BEAT_SCHEDULE``, by task
   name, with its options) that falls due at least every ``PRISM_EVALUATE_SECONDS``
   (drain policies, snapshots, the rollouts' evaluations, the pin count, the webhook
   sweep, the beat's own tick), as the beat does when they fall due together. Wait
   until every task the worker received since (the tick's own and every batch they
   fanned out) has finished and no new one arrived for ``--quiet`` seconds. The tick's
   time runs from the first send to the last task's end, as the worker's events stamp
   it.
5. One warm-up round of every entry (it also does the copy's pending drain work: idle
   sessions abandoned, overdue drains expired), then ``--ticks`` timed ticks, ``--gap``
   seconds apart; then ``--ticks`` rounds of the entries on a slower clock (survival
   estimates, retention, metric-source polls: once a minute or rarer), timed the same
   way and reported beside the tick.
6. Report per size the warm-up round, the median and the slowest timed tick, the tasks
   per tick by name and the slowest task, and the slower round's median; the target is
   a tick's median <= 1 s at the largest size. A task that expired or failed makes the
   run count as a miss.

The last line is ``RESULT beat <s> target 1s PASS|MISS``. A miss is reported, not failed.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench import fixtures
from bench.fixtures import label, parse_sizes
from bench.scale import BASE_DIR, django_env, finish, header, result, say

TARGET_S = 1.0
FINISHED = ("task-succeeded", "task-failed", "task-revoked", "task-rejected")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.beat",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sessions", type=parse_sizes, default=parse_sizes("5e5,5e6"))
    parser.add_argument("--ticks", type=int, default=5, help="timed ticks per size")
    parser.add_argument("--gap", type=float, default=2.0, help="seconds between ticks")
    parser.add_argument("--quiet", type=float, default=1.0, help="seconds with no new task")
    parser.add_argument("--timeout", type=float, default=300, help="seconds a tick may take")
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes")
    return parser.parse_args(argv)


@dataclass
class Events:
    """The worker's task events, as they arrive (a receiver thread appends)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    received: dict[str, tuple[str, float]] = field(default_factory=dict)  # uuid -> name, at
    finished: dict[str, tuple[str, float, float]] = field(default_factory=dict)  # type, at, s
    last_at: float = 0.0

    def __call__(self, event: dict) -> None:
        kind, uuid = event.get("type", ""), event.get("uuid")
        if uuid is None:
            return
        with self.lock:
            self.last_at = time.monotonic()
            if kind == "task-received":
                self.received[uuid] = (event.get("name", "?"), event["timestamp"])
            elif kind in FINISHED:
                self.finished[uuid] = (kind, event["timestamp"], event.get("runtime") or 0.0)


@dataclass
class Tick:
    seconds: float
    tasks: Counter
    slowest: tuple[str, float]
    problems: Counter  # finish kinds other than success


def listen(app, events: Events) -> tuple[threading.Thread, object]:
    conn = app.connection()
    receiver = app.events.Receiver(conn, handlers={"*": events})
    thread = threading.Thread(
        target=lambda: receiver.capture(limit=None, timeout=None, wakeup=True), daemon=True
    )
    thread.start()
    return thread, receiver


def tick(app, schedule: dict, events: Events, args: argparse.Namespace) -> Tick:
    """Step 4."""
    with events.lock:
        seen = set(events.received)
    began = time.time()
    sent = []
    for entry in schedule.values():
        options = dict(entry.get("options", {}))
        result_ = app.send_task(
            entry["task"], args=entry.get("args", ()), kwargs=entry.get("kwargs", {}), **options
        )
        sent.append(result_.id)
    deadline = time.monotonic() + args.timeout
    while True:
        time.sleep(0.05)
        with events.lock:
            mine = {u: v for u, v in events.received.items() if u not in seen}
            done = all(u in events.finished for u in mine) and all(u in mine for u in sent)
            quiet = time.monotonic() - events.last_at >= args.quiet
            if done and quiet:
                ends = [events.finished[u] for u in mine]
                break
        if time.monotonic() > deadline:
            raise RuntimeError(f"the tick did not finish within {args.timeout:g} s")
    names = Counter(name for name, _ in mine.values())
    slowest = max(((mine[u][0], events.finished[u][2]) for u in mine), key=lambda x: x[1])
    problems = Counter(kind for kind, _, _ in ends if kind != "task-succeeded")
    return Tick(max(at for _, at, _ in ends) - began, names, slowest, problems)


def wait_for_worker(app, worker: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited:\n{log.read_text()[-3000:]}")
        if app.control.ping(timeout=0.5):
            return
    raise RuntimeError("the worker did not answer a ping within 60 s")


def split(schedule: dict, every_s: float) -> tuple[dict, dict]:
    """The entries due at least every ``every_s`` (a tick's), and the rest."""
    often = {k: v for k, v in schedule.items() if float(v["schedule"]) <= every_s}
    return often, {k: v for k, v in schedule.items() if k not in often}


def measure(app, schedule, cache, sessions: int, args: argparse.Namespace) -> dict:
    """Steps 2 to 5 for one size."""
    with cache.copy(sessions) as copy, tempfile.TemporaryDirectory(prefix="prism-beat-") as tmp:
        log = Path(tmp) / "worker.log"
        env = django_env(copy.url)
        command = [
            sys.executable, "-m", "celery", "-A", "controlplane", "worker", "-E",
            f"--concurrency={args.concurrency}", "--loglevel=WARNING",
            "--without-mingle", "--without-gossip", f"--hostname=bench-{os.getpid()}@%h",
        ]  # fmt: skip
        events = Events()
        thread, receiver = listen(app, events)
        with log.open("wb") as out:
            worker = subprocess.Popen(
                command, cwd=BASE_DIR, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        try:
            wait_for_worker(app, worker, log)
            say(f"Worker up on {copy.name}; warm-up tick …")
            warm = tick(app, {**schedule["tick"], **schedule["slower"]}, events, args)
            say(f"  warm-up round: {warm.seconds:.3f} s, {sum(warm.tasks.values())} tasks")
            rounds: dict[str, list[Tick]] = {"tick": [], "slower": []}
            for part, entries in schedule.items():
                for n in range(args.ticks):
                    time.sleep(args.gap)
                    rounds[part].append(tick(app, entries, events, args))
                    last = rounds[part][-1]
                    say(
                        f"  {part} {n + 1}: {last.seconds:.3f} s, {sum(last.tasks.values())} "
                        f"tasks, slowest {last.slowest[0]} {last.slowest[1]:.3f} s"
                    )
        finally:
            receiver.should_stop = True
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
            thread.join(timeout=5)
        return {
            "info": copy.info,
            "warm": warm,
            "ticks": rounds["tick"],
            "slower": rounds["slower"],
        }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if not os.environ.get("CELERY_BROKER_URL"):
        script = BASE_DIR / "scripts" / "with-redis"
        os.chdir(BASE_DIR)
        os.execv(script, [str(script), sys.executable, "-m", "bench.beat", *argv])
    # This process only sends tasks and reads events: Django's settings give it the
    # broker and the schedule. No database is opened here.
    os.environ.update(django_env("postgresql://unused@/unused"))
    import django

    django.setup()
    from django.conf import settings

    from controlplane.celery import app

    often, slower = split(settings.CELERY_BEAT_SCHEDULE, float(settings.PRISM_EVALUATE_SECONDS))
    schedule = {"tick": often, "slower": slower}
    rows = {}
    with fixtures.cache() as cache:
        for n in args.sessions:
            rows[n] = measure(app, schedule, cache, n, args)
    lines = header("Prism beat tick at scale")
    lines += [
        f"worker    celery, {args.concurrency} processes, broker {settings.CELERY_BROKER_URL}; "
        f"fan-out batches of {settings.PRISM_BEAT_BATCH}",
        f"tick      the entries due every {settings.PRISM_EVALUATE_SECONDS} s or more often, "
        f"sent at once ({', '.join(often)});",
        "          timed from the first send to the last fanned-out task's end (worker events)",
        f"slower    the other entries, sent at once the same way ({', '.join(slower)})",
        "",
        "size       sessions   warm-up s   median s   slowest s   tasks per tick   slowest task"
        "                        slower round median s",
    ]
    medians = {}
    clean = True
    for n, row in rows.items():
        ticks = row["ticks"]
        medians[n] = statistics.median(t.seconds for t in ticks)
        worst = max(ticks, key=lambda t: t.seconds)
        task_name, task_s = max((t.slowest for t in ticks), key=lambda x: x[1])
        slow = statistics.median(t.seconds for t in row["slower"])
        lines.append(
            f"{label(n):<6} {row['info']['sessions']:>12,} {row['warm'].seconds:>11.3f} "
            f"{medians[n]:>10.3f} {worst.seconds:>11.3f} {sum(ticks[0].tasks.values()):>16}   "
            f"{task_name + f' {task_s:.3f} s':<44} {slow:>8.3f}"
        )
        problems = sum((t.problems for t in [row["warm"], *ticks, *row["slower"]]), Counter())
        if problems:
            clean = False
            lines.append(f"       tasks that did not succeed: {dict(problems)}")
    for part, title in (("ticks", "tick"), ("slower", "slower round")):
        lines += ["", f"Tasks per {title} (the first timed one at the largest size):"]
        for name, count in sorted(rows[max(rows)][part][0].tasks.items()):
            lines.append(f"  {count:>4} x {name}")
    largest = medians[max(rows)]
    lines += [
        "",
        f"median tick at {label(max(rows))}: {largest:.3f} s (target <= {TARGET_S:g} s)",
        result("beat", f"{largest:.3f}s", f"{TARGET_S:g}s", clean and largest <= TARGET_S),
    ]
    finish("beat", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())

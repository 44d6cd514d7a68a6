"""Benchmark of one rollout's gate evaluation at scale.

``make bench-gates`` (``python -m bench.gates --sessions 1e6,1e7``):

1. For each size, take a copy of the scale fixture (``bench.fixtures``; the 10 M build
   holds about 8.5 M stored outcomes). The busiest agent's rollout started 24 h ago and
   holds at its first stage (5%): its window is the 24 h of sessions since.
2. In a child process with Prism's settings on the copy, time ``--runs`` calls of each
   (after three warm-up calls):
   - ``rollouts.evaluation.assess``: the judgement alone (reads only);
   - ``rollouts.tasks.evaluate_rollout``, the beat's task function, called in-process:
     the judgement plus what the engine does with it (the routing lock, the recorded
     evaluation). Its decision is ``hold``, so every call does the same work.
   Also the queries each makes (Django's query log, one call).
3. Report the medians and p99s; the target is the task's median <= 10 ms at the largest
   size.

The last line is ``RESULT gates <ms> target 10ms PASS|MISS``. A miss is reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from bench import fixtures
from bench.fixtures import label, parse_sizes
from bench.scale import BASE_DIR, django_env, finish, header, percentile, result, say

TARGET_MS = 10.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gates",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--sessions", type=parse_sizes, default=parse_sizes("1e6,1e7"))
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def child(info: dict, runs: int) -> dict:
    """Step 2, in a process whose settings point at the copy."""
    import django

    django.setup()
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from metrics.models import Outcome
    from rollouts import evaluation
    from rollouts.models import Rollout, Routing
    from rollouts.tasks import evaluate_rollout

    busiest = info["agents"][info["busiest"]]
    rollout = Rollout.objects.select_related("agent").get(pk=busiest["rollout"])

    def assess() -> str:
        epoch = Routing.objects.get(agent_id=rollout.agent_id).epoch
        return evaluation.assess(Rollout.objects.get(pk=rollout.pk), epoch).decision

    def task() -> str:
        return evaluate_rollout(rollout.pk, rollout.stage)

    figures: dict = {"outcomes": Outcome.objects.count()}
    for name, call in (("assess", assess), ("task", task)):
        for _ in range(3):
            answer = call()
        with CaptureQueriesContext(connection) as queries:
            call()
        ms = []
        for _ in range(runs):
            began = time.perf_counter()
            answer = call()
            ms.append((time.perf_counter() - began) * 1000)
        figures[name] = {"ms": ms, "queries": len(queries), "answer": answer}
    return figures


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        info = json.loads(args.child)
        print(json.dumps(child(info, args.runs)), flush=True)
        return 0
    rows = {}
    with fixtures.cache() as cache:
        for n in args.sessions:
            with cache.copy(n) as copy:
                env = {**django_env(copy.url), "CELERY_BROKER_URL": "memory://"}
                out = subprocess.run(
                    [sys.executable, "-m", "bench.gates", "--runs", str(args.runs),
                     "--child", json.dumps(copy.info)],
                    cwd=BASE_DIR, env=env, check=True, capture_output=True, text=True,
                )  # fmt: skip
                rows[n] = json.loads(out.stdout.strip().splitlines()[-1])
                say(
                    f"  {label(n)}: assess {statistics.median(rows[n]['assess']['ms']):.2f} ms, "
                    f"task {statistics.median(rows[n]['task']['ms']):.2f} ms"
                )
    lines = header("Prism gate evaluation at scale")
    lines += [
        "rollout   the busiest agent's, started 24 h ago, at 5%: gates error_rate, latency_ms "
        "p95, cost_usd",
        f"runs      {args.runs} timed calls each after 3 warm-up calls, in-process",
        "",
        "size    stored outcomes   call      median ms   p99 ms   queries   answer",
    ]
    for n, row in rows.items():
        for name, title in (("assess", "assess"), ("task", "task")):
            ms = row[name]["ms"]
            lines.append(
                f"{label(n):<6} {row['outcomes']:>16,}   {title:<8} {statistics.median(ms):>10.2f} "
                f"{percentile(ms, 99):>8.2f} {row[name]['queries']:>9}   {row[name]['answer']}"
            )
    largest = statistics.median(rows[max(rows)]["task"]["ms"])
    lines += [
        "",
        f"evaluate_rollout median at {label(max(rows))}: {largest:.2f} ms "
        f"(target <= {TARGET_MS:g} ms)",
        result("gates", f"{largest:.2f}ms", f"{TARGET_MS:g}ms", largest <= TARGET_MS),
    ]
    finish("gates", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark of the fleet endpoint at scale: ``GET /api/agents/{busiest}/fleet/``.

``make bench-fleet`` (``python -m bench.fleet --sessions 1e6,1e7``):

1. For each size, take a copy of the scale fixture (``bench.fixtures``; built first if
   the cache lacks it): 50 agents, the busiest with 20 versions, 1% of sessions live.
2. Start gunicorn (gthread, 2 workers x 2 threads) on the copy with Prism's settings.
3. With the release manager's token, GET the busiest agent's fleet one request at a time
   over one keep-alive connection: a warm-up, then ``--requests`` timed requests (or as
   many as ``--budget`` seconds allow).
4. Report the median and p99 per size and the ratio of the largest size's median to the
   smallest's. Targets: median <= 50 ms at the largest size, and that ratio <= 1.5.
5. The fixture keeps 1% of sessions live at every size, so the largest size has more
   live sessions as well as more history, and live counts are exact (an O(live) read).
   To show what history alone costs, the largest size is measured once more on a copy
   whose live sessions are thinned to one in ``size ratio`` (the others ended now), so
   its live state is the smallest size's and only the history is larger. Reported
   beside the RESULT, which stays the one the target names.

The last line is ``RESULT fleet median_ms=<m> ratio=<r> target 50ms,1.5x PASS|MISS``.
A miss is reported, not failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import psycopg

from bench import fixtures
from bench.fixtures import label
from bench.scale import finish, gunicorn_on, header, result, say, timed_gets, timed_gets_args

TARGET_MS = 50.0
TARGET_GROWTH = 1.5


def parse_args(argv: list[str]) -> argparse.Namespace:
    return timed_gets_args("python -m bench.fleet", __doc__, argv)


def thin_live(url: str, keep_one_in: int) -> int:
    """End all but one in ``keep_one_in`` of the copy's live sessions (step 5). Then
    leave the table as every copy is left: VACUUM clears the ended rows' dead entries
    (autovacuum would), and the kept live rows are written once more, as the copy's
    refresh writes every live row, so their pages are not all-visible either."""
    with psycopg.connect(url, autocommit=True) as conn:
        ended = conn.execute(
            "UPDATE rollouts_session SET state = 'ended', ended_at = now(), "
            "end_reason = 'bench: thinned' WHERE state = 'live' AND id %% %s <> 0",
            [keep_one_in],
        ).rowcount
        conn.execute("VACUUM rollouts_session")
        conn.execute(
            "UPDATE rollouts_session SET started_at = started_at + interval '1 microsecond' "
            "WHERE state = 'live'"
        )
        conn.execute("ANALYZE rollouts_session")
    return ended


def measure(
    cache: fixtures.Cache, sessions: int, args: argparse.Namespace, *, thin: int = 1
) -> dict:
    with cache.copy(sessions) as copy, tempfile.TemporaryDirectory(prefix="prism-fleet-") as tmp:
        if thin > 1:
            say(f"  thinned: {thin_live(copy.url, thin):,} live sessions ended")
        info = copy.info
        slug = info["busiest"]
        path = f"/api/agents/{slug}/fleet/"
        headers = {"Authorization": f"Token {info['tokens']['release-manager']}"}
        server = gunicorn_on(copy.url, Path(tmp) / "gunicorn.log")
        say(f"Starting gunicorn on {copy.name} …")
        server.start(f"/api/agents/{slug}/routing/", headers)
        try:
            timing = timed_gets(
                server.port, path, headers,
                requests=args.requests, warmup=args.warmup, budget_s=args.budget,
            )  # fmt: skip
        finally:
            server.stop()
        answer = json.loads(timing.last_body) if timing.statuses.get(200) else {}
        versions = answer.get("versions", [])
        figures = {
            "sessions": info["sessions"],
            "requests": len(timing.ms),
            "statuses": timing.statuses,
            "median": timing.median,
            "p99": timing.p99,
            "versions": len(versions),
            "states": sorted({v["state"] for v in versions}),
            "live": sum(v["live_sessions"] for v in versions),
        }
        say(
            f"  {label(sessions)}: median {timing.median:.1f} ms, p99 {timing.p99:.1f} ms over "
            f"{len(timing.ms)} requests"
        )
        return figures


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    rows = {}
    thin = max(args.sessions) // min(args.sessions)
    with fixtures.cache() as cache:
        for n in args.sessions:
            rows[n] = measure(cache, n, args)
        thinned = measure(cache, max(args.sessions), args, thin=thin) if thin > 1 else None
    lines = header("Prism fleet endpoint at scale")
    lines += [
        "endpoint  GET /api/agents/fx-00/fleet/ (the busiest agent: 20 versions), release-"
        "manager token,",
        "          one request at a time over one keep-alive connection; gunicorn gthread 2 x 2",
        "",
        "size       sessions  requests   median ms   p99 ms   versions listed  live listed  "
        "states  statuses",
    ]
    for n, row in rows.items():
        lines.append(
            f"{label(n):<6} {row['sessions']:>12,} {row['requests']:>9} {row['median']:>11.1f} "
            f"{row['p99']:>8.1f} {row['versions']:>17} {row['live']:>12}  "
            f"{','.join(row['states'])}  {row['statuses']}"
        )
    small, large = rows[min(rows)], rows[max(rows)]
    growth = large["median"] / small["median"] if small["median"] else float("nan")
    ok_status = all(set(r["statuses"]) == {200} for r in rows.values())
    if thinned is not None:
        ok_status = ok_status and set(thinned["statuses"]) == {200}
        lines.append(
            f"{label(max(rows)) + '*':<6} {thinned['sessions']:>12,} {thinned['requests']:>9} "
            f"{thinned['median']:>11.1f} {thinned['p99']:>8.1f} {thinned['versions']:>17} "
            f"{thinned['live']:>12}  {','.join(thinned['states'])}  {thinned['statuses']}"
        )
    lines += [
        "",
        f"median at {label(max(rows))}: {large['median']:.1f} ms (target <= {TARGET_MS:g} ms); "
        f"{label(max(rows))}/{label(min(rows))} median ratio {growth:.2f} "
        f"(target <= {TARGET_GROWTH:g})",
    ]
    if thinned is not None:
        lines.append(
            f"{label(max(rows))}* is {label(max(rows))} with its live sessions thinned to one in "
            f"{thin} (the live state of {label(min(rows))}, {thin}x its history): "
            f"{thinned['median'] / small['median']:.2f}x the {label(min(rows))} median. The "
            "rest of the ratio above is the exact live counts, which the target's sizes grow "
            f"{thin}x too."
        )
    if not ok_status:
        lines.append("FAIL: some responses were not 200")
    passed = ok_status and large["median"] <= TARGET_MS and growth <= TARGET_GROWTH
    lines.append(
        result(
            "fleet",
            f"median_ms={large['median']:.1f} ratio={growth:.2f}",
            f"{TARGET_MS:g}ms,{TARGET_GROWTH:g}x",
            passed,
        )
    )
    finish("fleet", lines)
    return 0 if ok_status else 1


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark of the fleet endpoint at scale: ``GET /api/agents/{busiest}/fleet/``.

``make bench-fleet`` (``python -m bench.fleet --sessions 1e6,1e7``):

1. For each size, take a copy of the scale fixture (``bench.fixtures``; built first if
   the cache lacks it): 50 agents, the busiest with 20 versions, 1% of sessions live.
   The fixture keeps 1% of sessions live at every size, so the largest size has more
   live sessions as well as more history, and live counts are exact (an O(live) read).
   To show what history alone costs, the largest size is copied once more with its live
   sessions thinned to one in ``size ratio`` (the others ended now): its live state is
   the smallest size's and only the history is larger (row ``10m*``).
2. Start gunicorn (gthread, 2 workers x 2 threads) on each copy with Prism's settings,
   all at once, then let the copies' writes settle (a checkpoint and the OS's
   write-back).
3. With the release manager's token, GET the busiest agent's fleet on every copy one
   request at a time over one keep-alive connection per copy: a warm-up, then
   ``--requests`` timed requests per copy, the copies taking turns request by request
   (in an order reversed every round), so the machine's drift falls on every size
   alike.
4. Report the median and p99 per size, and the ratio of the largest size's median to
   the smallest's, with that ratio per round of ``--requests / --rounds`` requests to
   show its spread. Targets: median <= 50 ms at the largest size, and that ratio
   <= 1.5.

The last line is ``RESULT fleet median_ms=<m> ratio=<r> target 50ms,1.5x PASS|MISS``
(the ratio is the sizes' as the target names them, not the thinned copy's). A miss is
reported, not failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable

import psycopg

from bench import fixtures
from bench.fixtures import label
from bench.scale import (
    Target,
    Timing,
    finish,
    header,
    result,
    say,
    served_copy,
    side_by_side_args,
    time_side_by_side,
)

TARGET_MS = 50.0
TARGET_GROWTH = 1.5


def parse_args(argv: list[str]) -> argparse.Namespace:
    return side_by_side_args("python -m bench.fleet", __doc__, argv)


def thin_live(url: str, keep_one_in: int) -> int:
    """End all but one in ``keep_one_in`` of the copy's live sessions (step 1). Then
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


def thinning(keep_one_in: int) -> Callable[[fixtures.Copy], None]:
    """Step 1's preparation of the thinned copy."""

    def prepare(copy: fixtures.Copy) -> None:
        say(f"  thinned: {thin_live(copy.url, keep_one_in):,} live sessions ended")

    return prepare


def figures(info: dict, timing: Timing) -> dict:
    answer = json.loads(timing.last_body) if timing.statuses.get(200) else {}
    versions = answer.get("versions", [])
    return {
        "sessions": info["sessions"],
        "requests": len(timing.ms),
        "statuses": timing.statuses,
        "median": timing.median,
        "p99": timing.p99,
        "versions": len(versions),
        "states": sorted({v["state"] for v in versions}),
        "live": sum(v["live_sessions"] for v in versions),
    }


def row(name: str, figures: dict) -> str:
    return (
        f"{name:<6} {figures['sessions']:>12,} {figures['requests']:>9} "
        f"{figures['median']:>11.1f} {figures['p99']:>8.1f} {figures['versions']:>17} "
        f"{figures['live']:>12}  {','.join(figures['states'])}  {figures['statuses']}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    small, large = min(args.sessions), max(args.sessions)
    thin = large // small
    # (label, size, how the copy is prepared): every size, and the thinned largest one.
    copies = [(label(n), n, None) for n in args.sessions]
    if thin > 1:
        copies.append((label(large) + "*", large, thinning(thin)))
    with fixtures.cache() as cache, contextlib.ExitStack() as stack:
        targets, infos = [], {}
        for name, n, prepare in copies:
            copy, server = stack.enter_context(served_copy(cache, n, prepare))
            info = infos[name] = copy.info
            headers = {"Authorization": f"Token {info['tokens']['release-manager']}"}
            targets.append(
                Target(name, server.port, f"/api/agents/{info['busiest']}/fleet/", headers)
            )
        measured = time_side_by_side(cache, targets, args)
    rows = {name: figures(infos[name], measured.timings[name]) for name, _, _ in copies}
    lines = header("Prism fleet endpoint at scale")
    lines += [
        "endpoint  GET /api/agents/fx-00/fleet/ (the busiest agent: 20 versions), release-"
        "manager token,",
        "          one request at a time over one keep-alive connection per copy; gunicorn "
        "gthread 2 x 2 on each;",
        "          the copies taking turns request by request",
        "",
        "size       sessions  requests   median ms   p99 ms   versions listed  live listed  "
        "states  statuses",
    ]
    lines += [row(name, rows[name]) for name, _, _ in copies]
    big, little = label(large), label(small)
    growth = measured.ratio(big, little)
    per_round = ", ".join(f"{r:.2f}" for r in measured.ratios(big, little))
    median_ms = rows[big]["median"]
    lines += [
        "",
        f"median at {big}: {median_ms:.1f} ms (target <= {TARGET_MS:g} ms); {big}/{little} "
        f"median ratio {growth:.2f} (target <= {TARGET_GROWTH:g}); per round of "
        f"{args.requests // args.rounds}: {per_round}",
    ]
    if thin > 1:
        lines.append(
            f"{big}* is {big} with its live sessions thinned to one in {thin} (the live state "
            f"of {little}, {thin}x its history): {measured.ratio(big + '*', little):.2f}x the "
            f"{little} median. The rest of the ratio above is the exact live counts, which "
            f"the target's sizes grow {thin}x too."
        )
    ok_status = all(set(r["statuses"]) == {200} for r in rows.values())
    if not ok_status:
        lines.append("FAIL: some responses were not 200")
    passed = ok_status and median_ms <= TARGET_MS and growth <= TARGET_GROWTH
    lines.append(
        result(
            "fleet",
            f"median_ms={median_ms:.1f} ratio={growth:.2f}",
            f"{TARGET_MS:g}ms,{TARGET_GROWTH:g}x",
            passed,
        )
    )
    finish("fleet", lines)
    return 0 if ok_status else 1


if __name__ == "__main__":
    sys.exit(main())

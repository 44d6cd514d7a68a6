"""How fast five judges halt a doubled error rate, and how often they halt a healthy one.

    python -m bench.detection            # a few minutes on one core
    python -m bench.detection --scale 0.3

The streams (``bench.streams``): stages 5% -> 25% -> 50% -> 100%, a look every 50
sessions, 100 sessions per arm per stage; error rate 5% on both arms (A/A) or 10% on the
candidate (doubled). The judges:

(a) Prism's ``judge()``, with one ``error_rate`` gate at ``max_increase: 0`` (and the
    sample-ratio check), then with the default gate set. A stage advances when its
    sessions are there and every critical gate passes (the engine's rule); a gate at
    ``max_increase: 0`` cannot pass identical arms, so those runs hold at 5% until the
    horizon, which is the harshest test of false halts.
(b) Argo-Rollouts-style: at every look, the candidate's error rate over its last 50
    sessions is a measurement; it fails above ``threshold``; the rollout aborts when more
    than ``failure_limit`` measurements have failed.
(c) A two-proportion z-test (pooled, over all sessions since the rollout began) at every
    look; halts when ``z > z_crit``.
(d) Kayenta-style: a Mann-Whitney test of the stage's sessions at the end of each stage
    (one-sided, candidate worse); halts when ``p < alpha``.
(e) Wald's SPRT on the candidate's sessions with both rates known (5% against 10%,
    alpha = beta = 0.05): the unreachable ideal. It halts on crossing the upper boundary
    and lets the rollout proceed on crossing the lower one.

(b)-(e) advance when the stage's sessions are there and they have not halted. (b)-(d)
are tuned over a declared grid and reported at the best setting whose A/A false halts
are at most 5% (best: the most doublings halted, then the least exposure), and at their
usual defaults. Exposure is the number of candidate
sessions before the halt; a promoted regression counts as unbounded. The last line is
``RESULT detection exposure=<median> false_halts=<pct> target 160 PASS|MISS``.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench.streams import DOUBLED, HEALTHY, LOOK, PER_STAGE, STAGES, run_prism
from metrics.gates import DEFAULT_GATES, validate_gate

TARGET = 160
BASE_RATE, BAD_RATE = 0.05, 0.10


@dataclass
class Look:
    stage: int
    # Per stage so far: [k_c, n_c, k_b, n_b]; and the candidate's outcomes in order.
    counts: list[list[int]]
    candidate: list[int]
    stage_end: bool
    promoted: bool  # the schedule reaches 100% after this look


def scheduled_stream(seed: int, rate: float) -> list[Look]:
    """Sessions of one rollout that advances on schedule (100 sessions per arm per
    stage), as a list of looks; the judges (b)-(d) read it and stop where they halt."""
    rng = random.Random(seed)
    looks: list[Look] = []
    counts: list[list[int]] = [[0, 0, 0, 0]]
    candidate: list[int] = []
    stage = 0
    while True:
        share = STAGES[stage] / 10000
        current = counts[-1]
        for _ in range(LOOK):
            if rng.random() < share:
                error = rng.random() < rate
                current[0] += error
                current[1] += 1
                candidate.append(error)
            else:
                current[2] += rng.random() < BASE_RATE
                current[3] += 1
        end = min(current[1], current[3]) >= PER_STAGE
        promoted = end and STAGES[stage + 1] >= 10000
        looks.append(Look(stage, [c[:] for c in counts], candidate[:], end, promoted))
        if promoted:
            return looks
        if end:
            stage += 1
            counts.append([0, 0, 0, 0])


def argo(threshold: float, failure_limit: int, window: int = 50) -> Callable:
    def judge(look: Look, state: dict) -> bool:
        recent = look.candidate[-window:]
        if len(recent) < 10:
            return False
        if sum(recent) / len(recent) > threshold:
            state["failed"] = state.get("failed", 0) + 1
        return state.get("failed", 0) > failure_limit

    return judge


def z_test(z_crit: float) -> Callable:
    def judge(look: Look, state: dict) -> bool:
        k_c = sum(c[0] for c in look.counts)
        n_c = sum(c[1] for c in look.counts)
        k_b = sum(c[2] for c in look.counts)
        n_b = sum(c[3] for c in look.counts)
        if not n_c or not n_b:
            return False
        pooled = (k_c + k_b) / (n_c + n_b)
        if pooled in (0, 1):
            return False
        z = (k_c / n_c - k_b / n_b) / math.sqrt(pooled * (1 - pooled) * (1 / n_c + 1 / n_b))
        return z > z_crit

    return judge


def mann_whitney_p(k_c: int, n_c: int, k_b: int, n_b: int) -> float:
    """One-sided p-value (candidate larger) of the Mann-Whitney U test on 0/1 outcomes,
    normal approximation with the tie correction (as Kayenta's judge computes it)."""
    n = n_c + n_b
    ones = k_c + k_b
    if not n_c or not n_b or ones in (0, n):
        return 1.0
    # Ranks: the zeros share rank (n - ones + 1) / 2, the ones (n - ones + 1 + n) / 2.
    zeros = n - ones
    rank_one = zeros + (ones + 1) / 2
    rank_zero = (zeros + 1) / 2
    r_c = k_c * rank_one + (n_c - k_c) * rank_zero
    u = r_c - n_c * (n_c + 1) / 2
    mean = n_c * n_b / 2
    ties = (zeros**3 - zeros) + (ones**3 - ones)
    var = n_c * n_b / 12 * ((n + 1) - ties / (n * (n - 1)))
    if var <= 0:
        return 1.0
    z = (u - mean) / math.sqrt(var)
    return 0.5 * math.erfc(z / math.sqrt(2))


def kayenta(alpha: float) -> Callable:
    def judge(look: Look, state: dict) -> bool:
        if not look.stage_end:
            return False
        k_c, n_c, k_b, n_b = look.counts[-1]
        return mann_whitney_p(k_c, n_c, k_b, n_b) < alpha

    return judge


#: The share of doubled error rates a judge must halt to be compared on exposure.
MIN_POWER = 0.95


@dataclass
class Row:
    name: str
    false_halts: float
    halted: float
    exposure: float  # median; inf when most regressions were promoted
    promote: float  # median candidate sessions to promote a healthy candidate


def play(looks: list[Look], judge: Callable) -> tuple[bool, int]:
    """(halted, candidate sessions at the end) for one scheduled stream."""
    state: dict = {}
    for look in looks:
        if judge(look, state):
            return True, len(look.candidate)
    return False, len(looks[-1].candidate)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.inf


def evaluate_scheduled(name: str, judge: Callable, healthy, doubled) -> Row:
    aa = [play(s, judge) for s in healthy]
    bad = [play(s, judge) for s in doubled]
    return Row(
        name,
        sum(h for h, _ in aa) / len(aa),
        sum(h for h, _ in bad) / len(bad),
        median([n if h else math.inf for h, n in bad]),
        median([math.inf if h else n for h, n in aa]),
    )


def sprt(seed: int, rate: float, alpha: float = 0.05, beta: float = 0.05) -> tuple[bool, int]:
    """Wald's SPRT on the candidate's sessions at the 5% stage, decided at looks; returns
    (halted, candidate sessions at the decision)."""
    rng = random.Random(seed)
    upper, lower = math.log((1 - beta) / alpha), math.log(beta / (1 - alpha))
    step_bad = math.log(BAD_RATE / BASE_RATE)
    step_good = math.log((1 - BAD_RATE) / (1 - BASE_RATE))
    llr, n = 0.0, 0
    share = STAGES[0] / 10000
    while True:
        for _ in range(LOOK):
            if rng.random() < share:
                n += 1
                llr += step_bad if rng.random() < rate else step_good
        if llr >= upper:
            return True, n
        if llr <= lower:
            return False, n


def prism_row(name: str, gates, runs: int, horizon: int, promote_runs: int, seed0: int) -> Row:
    aa = [run_prism(seed0 + i, gates, HEALTHY, horizon=horizon) for i in range(runs)]
    bad = [run_prism(seed0 + 10**6 + i, gates, DOUBLED, horizon=4000) for i in range(runs)]
    promote = aa
    if promote_runs < runs:
        promote = aa[:promote_runs]
    return Row(
        name,
        sum(o.halted for o in aa) / len(aa),
        sum(o.halted for o in bad) / len(bad),
        median([o.exposure if o.halted else math.inf for o in bad]),
        median([o.exposure if o.promoted else math.inf for o in promote]),
    )


def fmt(value: float) -> str:
    return "unbounded" if math.isinf(value) else f"{value:.0f}"


def table(rows: list[Row]) -> str:
    lines = [
        f"{'judge':<46} {'A/A false halts':>15} {'doublings halted':>17} "
        f"{'median exposure':>16} {'median to promote':>18}"
    ]
    for r in rows:
        lines.append(
            f"{r.name:<46} {r.false_halts:>14.1%} {r.halted:>17.1%} "
            f"{fmt(r.exposure):>16} {fmt(r.promote):>18}"
        )
    return "\n".join(lines)


def best(name: str, grid: dict[str, Callable], healthy, doubled) -> tuple[Row, list[Row]]:
    rows = [evaluate_scheduled(f"{name} {label}", j, healthy, doubled) for label, j in grid.items()]
    eligible = [r for r in rows if r.false_halts <= 0.05]
    # Best: halts the most doublings; among those, the least exposure. (Ranking by the
    # median alone would crown a setting that promotes a quarter of the regressions.)
    chosen = min(eligible, key=lambda r: (-r.halted, r.exposure)) if eligible else None
    return chosen, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every run count")
    parser.add_argument("--grid", action="store_true", help="print every grid point")
    args = parser.parse_args(argv)
    scale = args.scale
    started = time.process_time()

    n_sched = max(50, int(1000 * scale))
    healthy = [scheduled_stream(i, BASE_RATE) for i in range(n_sched)]
    doubled = [scheduled_stream(10**6 + i, BAD_RATE) for i in range(n_sched)]

    grids = {
        "(b) Argo threshold/failureLimit": {
            f"{t:.2f}/{k}": argo(t, k)
            for t in (0.08, 0.10, 0.12, 0.15, 0.20, 0.25, 0.30)
            for k in (0, 1, 2, 3, 5, 8)
        },
        "(c) z-test every look, z_crit": {
            f"{z:.2f}": z_test(z) for z in (1.645, 1.96, 2.33, 2.58, 3.0, 3.29, 3.5, 3.72, 4.0)
        },
        "(d) Kayenta Mann-Whitney per stage, alpha": {
            f"{a:g}": kayenta(a) for a in (0.001, 0.005, 0.01, 0.025, 0.05, 0.1)
        },
    }
    defaults = {
        "(b) Argo threshold/failureLimit": ("0.10/0", argo(0.10, 0)),
        "(c) z-test every look, z_crit": ("1.96", z_test(1.96)),
        "(d) Kayenta Mann-Whitney per stage, alpha": ("0.05", kayenta(0.05)),
    }

    rows: list[Row] = []
    rival_best: list[Row] = []
    grid_rows: list[Row] = []
    for name, grid in grids.items():
        chosen, all_rows = best(name, grid, healthy, doubled)
        grid_rows += all_rows
        label, judge = defaults[name]
        default_row = evaluate_scheduled(f"{name} {label} (default)", judge, healthy, doubled)
        if chosen is not None:
            chosen.name += " (best, A/A <= 5%)"
            rows.append(chosen)
            rival_best.append(chosen)
        else:
            rows.append(Row(f"{name}: no setting keeps A/A <= 5%", *(math.nan,) * 4))
        rows.append(default_row)

    n_sprt = max(100, int(2000 * scale))
    aa = [sprt(i, BASE_RATE) for i in range(n_sprt)]
    bad = [sprt(10**6 + i, BAD_RATE) for i in range(n_sprt)]
    rows.append(
        Row(
            "(e) Wald SPRT, both rates known (ideal)",
            sum(h for h, _ in aa) / n_sprt,
            sum(h for h, _ in bad) / n_sprt,
            median([n if h else math.inf for h, n in bad]),
            # accepted at n, then the two remaining stages' 100 sessions each
            median([math.inf if h else max(n, PER_STAGE) + 2 * PER_STAGE for h, n in aa]),
        )
    )

    strict = [validate_gate({"metric": "error_rate", "max_increase": 0})]
    n_prism = max(40, int(400 * scale))
    prism = prism_row(
        "(a) Prism judge(), error_rate max_increase 0",
        strict,
        n_prism,
        horizon=1000,
        promote_runs=n_prism,
        seed0=0,
    )
    loose = [validate_gate({"metric": "error_rate", "max_increase": 0.02})]
    n_loose = max(20, int(100 * scale))
    loose_row = prism_row(
        "(a) Prism judge(), error_rate max_increase 0.02",
        loose,
        n_loose,
        horizon=4000,
        promote_runs=n_loose,
        seed0=2 * 10**6,
    )
    n_default = max(10, int(40 * scale))
    default_row = prism_row(
        "(a) Prism judge(), default gate set",
        DEFAULT_GATES,
        n_default,
        horizon=8000,
        promote_runs=n_default,
        seed0=3 * 10**6,
    )
    rows = [prism, loose_row, default_row, *rows]

    print("Detection of a doubled error rate (5% -> 10%); stages 5/25/50/100%, a look every")
    print(f"{LOOK} sessions, {PER_STAGE} sessions per arm per stage. Runs: scheduled judges")
    print(f"{n_sched} per arm, SPRT {n_sprt}, Prism {n_prism} (max_increase 0, A/A horizon")
    print(f"1000 candidate sessions), {n_loose} (0.02) and {n_default} (default gates, A/A")
    print("horizon 8000). A regression halted in none of a judge's runs shows as unbounded.")
    print()
    print(table(rows))
    if args.grid:
        print()
        print(table(grid_rows))
    print()
    print(f"CPU time {time.process_time() - started:.0f} s")
    # A rival counts when, at its best setting that keeps A/A false halts <= 5%, it also
    # halts at least 95% of the doublings: the power asked of Prism itself. A judge that
    # promotes a third of the regressions has a small median exposure only because the
    # regressions it misses are never counted against the median's half.
    competing = [r for r in rival_best if r.halted >= MIN_POWER]
    for rival in rival_best:
        if rival not in competing:
            print(
                f"not compared: {rival.name} halts only {100 * rival.halted:.0f}% of doublings "
                f"(median exposure {fmt(rival.exposure)})"
            )
    beats = all(prism.exposure < r.exposure for r in competing)
    print(
        f"Prism below every rival with A/A <= 5% and power >= {100 * MIN_POWER:.0f}%: "
        f"{'yes' if beats else 'no'}"
    )
    ok = (
        prism.false_halts <= 0.05
        and prism.halted >= MIN_POWER
        and prism.exposure <= TARGET
        and beats
    )
    print(
        f"RESULT detection exposure={fmt(prism.exposure)} "
        f"false_halts={100 * prism.false_halts:.1f} target {TARGET} {'PASS' if ok else 'MISS'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

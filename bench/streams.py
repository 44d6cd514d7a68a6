"""Simulated rollouts for the gate statistics: sessions, looks and stages, in pure Python.

The design every simulation here shares:

- stages at 5% -> 25% -> 50% -> 100% of new sessions (``STAGES``, basis points); reaching
  100% promotes;
- a look every ``LOOK`` = 50 sessions (both arms together);
- a stage may end once both arms have ``PER_STAGE`` = 100 sessions in it.

Per look, the number of candidate sessions is binomial with the stage's weight; per arm,
rate metrics are binomial, means are drawn as exact normal sums (the sum and the sum of
squares of ``n`` normal samples), and latency comes from a small discrete distribution so
that its quantile sketch fills quickly. Seeds are fixed per run, so every judge sees the
same sessions.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace

from metrics.judge import SrmStratum, Stratum, judge
from metrics.sketch import Sketch
from metrics.summary import Summary

STAGES = (500, 2500, 5000, 10000)
LOOK = 50
PER_STAGE = 100
LATENCY_VALUES = (180.0, 250.0, 320.0, 400.0, 520.0, 700.0, 950.0, 1400.0)


@dataclass(frozen=True)
class Profile:
    """One arm's true behaviour."""

    error: float = 0.05
    success: float = 0.90
    hallucination: float = 0.02
    abandon: float = 0.03
    cost: tuple[float, float] = (0.02, 0.01)  # mean, sd (USD)
    feedback: tuple[float, float] = (0.4, 0.5)
    latency: tuple[float, ...] = (0.10, 0.20, 0.20, 0.18, 0.14, 0.10, 0.05, 0.03)


HEALTHY = Profile()
DOUBLED = replace(HEALTHY, error=0.10)


def _normal_sums(rng: random.Random, n: int, mean: float, sd: float) -> Summary:
    """The summary of ``n`` normal samples, drawn exactly without drawing each one."""
    if n == 0:
        return Summary()
    total = n * mean + sd * math.sqrt(n) * rng.gauss(0.0, 1.0)
    spread = sd * sd * rng.gammavariate((n - 1) / 2, 2.0) if n > 1 else 0.0
    return Summary(n, total, total * total / n + spread)


def _latency(rng: random.Random, n: int, probs: tuple[float, ...], sketch: Sketch) -> float:
    """Add ``n`` draws to ``sketch`` (multinomial by sequential binomials); their sum."""
    left, mass, total = n, 1.0, 0.0
    for value, p in zip(LATENCY_VALUES, probs, strict=True):
        if left == 0:
            break
        k = left if p >= mass else rng.binomialvariate(left, min(1.0, p / mass))
        if k:
            sketch.add(value, k)
            total += value * k
        left -= k
        mass -= p
    return total


RATE_FIELDS = {
    "error_rate": "error",
    "success_rate": "success",
    "hallucination_rate": "hallucination",
    "abandon_rate": "abandon",
}


class Arm:
    """One arm's summaries for the current stage."""

    def __init__(self, metrics: list[str]) -> None:
        self.metrics = metrics
        self.summaries = {
            m: Summary(sketch=Sketch() if m == "latency_ms" else None) for m in metrics
        }
        self.n = 0

    def add(self, rng: random.Random, n: int, profile: Profile) -> None:
        if n == 0:
            return
        self.n += n
        for metric in self.metrics:
            summary = self.summaries[metric]
            if metric in RATE_FIELDS:
                k = rng.binomialvariate(n, getattr(profile, RATE_FIELDS[metric]))
                summary.n += n
                summary.total += k
                summary.total_sq += k
            elif metric == "latency_ms":
                total = _latency(rng, n, profile.latency, summary.sketch)
                summary.n += n
                summary.total += total
            else:
                mean, sd = profile.cost if metric == "cost_usd" else profile.feedback
                summary.update(_normal_sums(rng, n, mean, sd))


@dataclass
class Rollout:
    """A simulated rollout: stages, looks and the sessions behind them."""

    seed: int
    candidate: Profile
    baseline: Profile
    metrics: list[str]  # in a fixed order: the draws must not depend on hashing
    rng: random.Random = field(init=False)
    stage: int = 0
    arms: list[tuple[Arm, Arm]] = field(default_factory=list)
    srm: list[list[int]] = field(default_factory=list)  # per stage: [cand, base] assigned

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.start_stage()

    @property
    def weight(self) -> int:
        return STAGES[self.stage]

    def start_stage(self) -> None:
        self.arms.append((Arm(self.metrics), Arm(self.metrics)))
        self.srm.append([0, 0])

    def look(self, sessions: int = LOOK) -> None:
        n_c = self.rng.binomialvariate(sessions, self.weight / 10000)
        cand, base = self.arms[-1]
        cand.add(self.rng, n_c, self.candidate)
        base.add(self.rng, sessions - n_c, self.baseline)
        self.srm[-1][0] += n_c
        self.srm[-1][1] += sessions - n_c

    def stage_done(self) -> bool:
        cand, base = self.arms[-1]
        return min(cand.n, base.n) >= PER_STAGE

    def advance(self) -> bool:
        """Move to the next stage; True when that stage is 100% (promoted)."""
        self.stage += 1
        if STAGES[self.stage] >= 10000:
            return True
        self.start_stage()
        return False

    @property
    def candidate_sessions(self) -> int:
        return sum(c.n for c, _ in self.arms)

    def strata(self) -> dict[str, list[Stratum]]:
        return {
            m: [Stratum(c.summaries[m], b.summaries[m]) for c, b in self.arms] for m in self.metrics
        }

    def srm_strata(self) -> list[SrmStratum]:
        return [SrmStratum(c, b, STAGES[i], 10000 - STAGES[i]) for i, (c, b) in enumerate(self.srm)]


@dataclass(frozen=True)
class Outcome:
    halted: bool
    promoted: bool
    exposure: int  # candidate sessions when the rollout ended
    reason: str | None


def run_prism(
    seed: int,
    gates: list[dict],
    candidate: Profile,
    baseline: Profile = HEALTHY,
    *,
    horizon: int = 4000,
    advance: str = "pass",
    on_look=None,
) -> Outcome:
    """One rollout judged by ``metrics.judge.judge`` at every look.

    ``advance="pass"`` is the engine's rule: a stage advances once both arms have their
    sessions and every critical gate passes. ``advance="schedule"`` advances as soon as
    the sessions are there (as a release manager's ``advance`` would): the error
    guarantee holds for any rule that depends only on the past, so the schedule does not
    change what an A/A run tests, and it takes every run through all four stages.
    ``horizon`` caps the candidate sessions.
    """
    rollout = Rollout(seed, candidate, baseline, sorted({g["metric"] for g in gates}))
    while rollout.candidate_sessions < horizon:
        rollout.look()
        verdict = judge(gates, rollout.strata(), rollout.srm_strata())
        if on_look is not None:
            on_look(rollout, verdict)
        if verdict.halt_reason:
            return Outcome(True, False, rollout.candidate_sessions, verdict.halt_reason)
        ready = rollout.stage_done() and (advance == "schedule" or verdict.all_pass)
        if ready and rollout.advance():
            return Outcome(False, True, rollout.candidate_sessions, None)
    return Outcome(False, False, rollout.candidate_sessions, None)

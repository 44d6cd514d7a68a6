"""What simulated sessions look like: durations, outcomes and feedback. Pure and seeded:
the same seed gives the same sessions.

All times here are simulated seconds; the fleet's clock turns them into real seconds
by dividing by the acceleration factor.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Durations:
    """A long-tailed mixture of two lognormals: most sessions last minutes, a share
    ``long_share`` of them hours."""

    short_median_s: float = 240.0
    short_sigma: float = 1.0
    long_share: float = 0.08
    long_median_s: float = 3 * 3600.0
    long_sigma: float = 0.6
    cap_s: float = 48 * 3600.0

    def draw(self, rng: random.Random) -> float:
        if rng.random() < self.long_share:
            median, sigma = self.long_median_s, self.long_sigma
        else:
            median, sigma = self.short_median_s, self.short_sigma
        return min(rng.lognormvariate(math.log(median), sigma), self.cap_s)


@dataclass(frozen=True)
class Quality:
    """How a version behaves, per session."""

    error_rate: float = 0.04
    success_rate: float = 0.85  # among sessions without an error
    hallucination_rate: float = 0.03
    latency_median_ms: float = 900.0
    latency_sigma: float = 0.4
    cost_median_usd: float = 0.012
    cost_sigma: float = 0.5
    feedback_share: float = 0.3  # sessions whose user rates them afterwards
    feedback_delay_median_s: float = 600.0

    def worse(self, *, errors: float = 1.0, cost: float = 1.0, latency: float = 1.0) -> Quality:
        return replace(
            self,
            error_rate=min(self.error_rate * errors, 1.0),
            cost_median_usd=self.cost_median_usd * cost,
            latency_median_ms=self.latency_median_ms * latency,
        )


@dataclass(frozen=True)
class Ending:
    """A session's outcome, and its late feedback if the user gives one."""

    outcome: dict[str, Any]
    feedback: float | None
    feedback_delay_s: float


def ending(quality: Quality, rng: random.Random) -> Ending:
    """Draw one session's outcome from a version's quality.

    1. An error with ``error_rate``; without one, success with ``success_rate``.
    2. Hallucination, latency (lognormal) and cost (lognormal) independently.
    3. With ``feedback_share``, feedback arrives after a lognormal delay: mostly positive
       after a success, mostly negative otherwise, clipped to [-1, 1].
    """
    error = rng.random() < quality.error_rate
    success = not error and rng.random() < quality.success_rate
    outcome = {
        "success": success,
        "error": error,
        "hallucination": rng.random() < quality.hallucination_rate,
        "latency_ms": round(
            rng.lognormvariate(math.log(quality.latency_median_ms), quality.latency_sigma), 1
        ),
        "cost_usd": round(
            rng.lognormvariate(math.log(quality.cost_median_usd), quality.cost_sigma), 6
        ),
    }
    feedback = None
    if rng.random() < quality.feedback_share:
        feedback = max(-1.0, min(1.0, rng.gauss(0.6 if success else -0.4, 0.35)))
        feedback = round(feedback, 3)
    delay = rng.lognormvariate(math.log(quality.feedback_delay_median_s), 0.8)
    return Ending(outcome, feedback, delay)


@dataclass(frozen=True)
class SessionPlan:
    """Everything random about one session, drawn when it arrives. Its ending is drawn
    later from ``seed``, once the version it is pinned to (and so its quality) is known."""

    number: int
    duration_s: float
    heartbeat_phase: float  # in [0, 1): when in the interval the first heartbeat falls
    seed: int

    def ending(self, quality: Quality) -> Ending:
        return ending(quality, random.Random(self.seed))


class Arrivals:
    """The session plans of one agent's traffic, in order, from one seed."""

    def __init__(self, seed: int, durations: Durations) -> None:
        self.rng = random.Random(seed)
        # Gaps from a stream of their own: the sessions a seed gives do not depend on
        # the rate they arrive at.
        self.gaps = random.Random(f"gaps-{seed}")
        self.durations = durations
        self.count = 0

    def gap(self, rate_per_s: float) -> float:
        """Real seconds until the next arrival of a Poisson stream."""
        return self.gaps.expovariate(rate_per_s)

    def next(self) -> SessionPlan:
        plan = SessionPlan(
            number=self.count,
            duration_s=self.durations.draw(self.rng),
            heartbeat_phase=self.rng.random(),
            seed=self.rng.getrandbits(63),
        )
        self.count += 1
        return plan

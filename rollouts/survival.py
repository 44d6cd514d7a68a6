"""Session survival and drain ETAs. Pure: no Django, no I/O.

A draining version is done when its last live session ends. How long that takes is
read from the agent's own history: a Kaplan-Meier curve over session durations, where
ended sessions are events and live ones are censored at their current age. The ETA is
then the median time until every live session has ended, each one following the curve
conditioned on having already survived to its age.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# Above this many candidate end times left in the final bracket, keep narrowing with
# pivots instead of sorting them all. Clustered durations (e.g. idle timeouts) can put
# thousands of events into one bracket for every live session.
_COLLECT_LIMIT = 20_000


@dataclass(frozen=True)
class SurvivalCurve:
    """The Kaplan-Meier step function.

    ``survival[i]`` is S(t) for ``times[i] <= t < times[i + 1]``; S(t) is 1 before the
    first event time and ``survival[-1]`` after the last. ``times`` holds the distinct
    event times only, strictly increasing.
    """

    times: tuple[float, ...]
    survival: tuple[float, ...]
    events: int = 0
    observations: int = 0

    def __post_init__(self) -> None:
        if len(self.times) != len(self.survival):
            raise ValueError("times and survival must have the same length")
        if any(b <= a for a, b in zip(self.times, self.times[1:], strict=False)):
            raise ValueError("times must be strictly increasing")

    def at(self, t: float) -> float:
        """S(t), right-continuous: the drop at an event time applies at that time."""
        i = bisect_right(self.times, t)
        return self.survival[i - 1] if i else 1.0

    @property
    def tail(self) -> float:
        """S after the last event: above 0 when the longest observations are censored."""
        return self.survival[-1] if self.survival else 1.0


def kaplan_meier(durations: Iterable[float], observed: Iterable[bool]) -> SurvivalCurve:
    """The product-limit estimate of S(t) from durations in seconds.

    ``observed[i]`` is True when session i ended at ``durations[i]`` and False when it
    was still live at that age (censored).

    1. Materialise both inputs and validate them: equal lengths, durations finite and
       not negative.
    2. Sort the observations by duration: O(n log n), the only superlinear step.
    3. Walk the groups of equal durations in order. Everyone not yet passed is at risk,
       including censorings tied with the group, so events come before censorings.
    4. At a group with d > 0 events among n at risk, S *= (n - d) / n, and record the
       time and the new S.
    """
    values = [float(d) for d in durations]
    flags = [bool(o) for o in observed]
    if len(values) != len(flags):
        raise ValueError(f"{len(values)} durations but {len(flags)} observed flags")
    for d in values:
        if not math.isfinite(d) or d < 0:
            raise ValueError(f"durations must be finite and >= 0, got {d!r}")

    pairs = sorted(zip(values, flags, strict=True))
    times: list[float] = []
    survival: list[float] = []
    s = 1.0
    n = len(pairs)
    i = 0
    while i < n:
        t = pairs[i][0]
        at_risk = n - i
        deaths = 0
        while i < n and pairs[i][0] == t:
            deaths += pairs[i][1]
            i += 1
        if deaths:
            # (n - d) / n rather than 1 - d / n: exact 0 when everyone at risk ends.
            s = s * (at_risk - deaths) / at_risk
            times.append(t)
            survival.append(s)
    return SurvivalCurve(
        times=tuple(times), survival=tuple(survival), events=sum(flags), observations=n
    )


def policy_drain_bound(
    live_ages: Sequence[float], *, max_session_age_s: float, drain_grace_s: float
) -> float | None:
    """The longest a draining version can keep a live session under the drain policy.

    A session of age a is told to drain once older than ``max_session_age_s`` and is
    terminated ``drain_grace_s`` later, so it has at most
    ``max(max_session_age_s - a, 0) + drain_grace_s`` left. None with no live sessions.
    """
    if not live_ages:
        return None
    return max(max(max_session_age_s - a, 0.0) + drain_grace_s for a in live_ages)


def drain_eta(
    curve: SurvivalCurve,
    live_ages: Sequence[float],
    *,
    policy_bound_s: float | None = None,
    confidence: float = 0.5,
) -> float | None:
    """Seconds until no session is live, reached with probability ``confidence``.

    Session i, now of age a_i, ends within x more seconds with probability
    F_i(x) = 1 - S(a_i + x) / S(a_i), independently of the others, so the version is
    drained by x with probability G(x) = prod_i F_i(x). G only steps up, and only at
    the candidates x = t_j - a_i (event times t_j > a_i); the answer is the smallest
    candidate with G(x) >= confidence.

    1. Validate. With no live sessions the version is drained already: 0.0.
    2. Drop the sessions the curve says cannot still be live (S(a_i) = 0): they end
       now, F_i = 1. If none is left, 0.0.
    3. Check the largest candidate of the youngest session, past which G no longer
       changes. If G is still below ``confidence`` there (the tail of S stays above 0
       because the longest sessions are censored), there is no estimate: return the
       policy bound, or None.
    4. Coarse search: binary search over the youngest session's candidates brackets
       the answer between two of them, lo (G < confidence) and hi (G >= confidence).
    5. Fine search: the other sessions' candidates strictly inside (lo, hi) remain.
       While there are many, evaluate G at the weighted median of each session's
       median candidate, which removes at least a quarter of them either way.
    6. Sort the few that are left and binary search them; the answer is the first one
       with G >= confidence, or hi.
    7. Cap with the policy bound and round to 0.1 s.

    Each evaluation of G is O(m log k) for m live sessions and k event times, and
    steps 4 to 6 take O(log(m k)) of them.
    """
    if not 0 < confidence <= 1:
        raise ValueError(f"confidence must be in (0, 1], got {confidence!r}")
    if policy_bound_s is not None and not (math.isfinite(policy_bound_s) and policy_bound_s >= 0):
        raise ValueError(f"policy_bound_s must be finite and >= 0, got {policy_bound_s!r}")
    ages = [float(a) for a in live_ages]
    for a in ages:
        if not math.isfinite(a) or a < 0:
            raise ValueError(f"live ages must be finite and >= 0, got {a!r}")
    if not ages:
        return 0.0

    times, survival = curve.times, curve.survival
    k = len(times)
    rows = [(a, s0) for a in ages if (s0 := curve.at(a)) > 0]
    if not rows:
        return 0.0

    def cap(estimate: float | None) -> float | None:
        if policy_bound_s is not None:
            estimate = policy_bound_s if estimate is None else min(estimate, policy_bound_s)
        return None if estimate is None else round(estimate, 1)

    def reaches(x: float) -> bool:
        """G(x) >= confidence."""
        p = 1.0
        for a, s0 in rows:
            j = _first_above(times, a, x, 0, k)
            p *= 1.0 - (survival[j - 1] if j else 1.0) / s0
            if p < confidence:
                # Every factor is at most 1: the product can only fall further.
                return False
        return True

    young = min(a for a, _ in rows)
    first = bisect_right(times, young)
    if first == k or not reaches(times[k - 1] - young):
        return cap(None)

    # Step 4. lo is an index of the youngest session's candidates; first - 1 stands
    # for x = 0, where G = 0 because every remaining session has S(a_i) > 0.
    lo, hi = first - 1, k - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if reaches(times[mid] - young):
            hi = mid
        else:
            lo = mid
    lo_x = times[lo] - young if lo >= first else 0.0
    hi_x = times[hi] - young

    # Step 5. Each window [start, end) indexes one session's candidates in (lo_x, hi_x).
    windows = []
    for a, _ in rows:
        start = _first_above(times, a, lo_x, 0, k)
        end = _first_at_least(times, a, hi_x, start, k)
        if start < end:
            windows.append((a, start, end))
    while sum(end - start for _, start, end in windows) > _COLLECT_LIMIT:
        pivot = _weighted_median_of_medians(times, windows)
        if reaches(pivot):
            hi_x = pivot
            windows = [(a, s, _first_at_least(times, a, pivot, s, e)) for a, s, e in windows]
        else:
            lo_x = pivot
            windows = [(a, _first_above(times, a, pivot, s, e), e) for a, s, e in windows]
        windows = [w for w in windows if w[1] < w[2]]

    # Step 6.
    candidates = sorted({times[j] - a for a, start, end in windows for j in range(start, end)})
    lo, hi = -1, len(candidates)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if reaches(candidates[mid]):
            hi = mid
        else:
            lo = mid
    return cap(candidates[hi] if hi < len(candidates) else hi_x)


# Candidates are defined by the float difference t_j - a, and bisecting on a + x can
# land one ulp away from it. Both helpers settle the index on that same difference, so
# G steps exactly at the candidates and the search stays exact.


def _first_above(times: Sequence[float], a: float, x: float, lo: int, hi: int) -> int:
    """The first j in [lo, hi) with times[j] - a > x, or hi."""
    j = bisect_right(times, a + x, lo, hi)
    while j < hi and times[j] - a <= x:
        j += 1
    while j > lo and times[j - 1] - a > x:
        j -= 1
    return j


def _first_at_least(times: Sequence[float], a: float, x: float, lo: int, hi: int) -> int:
    """The first j in [lo, hi) with times[j] - a >= x, or hi."""
    j = bisect_left(times, a + x, lo, hi)
    while j < hi and times[j] - a < x:
        j += 1
    while j > lo and times[j - 1] - a >= x:
        j -= 1
    return j


def _weighted_median_of_medians(
    times: Sequence[float], windows: list[tuple[float, int, int]]
) -> float:
    """A candidate with at least a quarter of all window candidates on each side.

    Half the weight lies in windows whose median is on each side of the weighted median,
    and half of each such window lies beyond its own median.
    """
    medians = sorted((times[(s + e) // 2] - a, e - s) for a, s, e in windows)
    half = sum(w for _, w in medians) / 2
    seen = 0
    for value, weight in medians:
        seen += weight
        if seen >= half:
            return value
    return medians[-1][0]

"""Session survival and drain ETAs. Pure: no Django, no I/O.

A draining version is done when its last live session ends. How long that takes is
read from the agent's own history: a Kaplan-Meier curve over the durations of the
sessions that were live at some point in a recent time window. Ended sessions are
events; live ones, and those a policy cut short, are censored; a session that started
before the window enters it at its age at the window's start (delayed entry), so a
week of long sessions counts as much as a minute of short ones. The ETA is then the
median time until every live session has ended, each one following the curve
conditioned on having already survived to its age, and none outliving what the drain
policy leaves it.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

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


def kaplan_meier(
    durations: Iterable[float],
    observed: Iterable[bool],
    *,
    entries: Iterable[float] | None = None,
    weights: Iterable[float] | None = None,
    resolution: float | None = None,
) -> SurvivalCurve:
    """The product-limit estimate of S(t) from durations in seconds.

    ``observed[i]`` is True when session i ended at ``durations[i]`` and False when it
    was still live at that age, or was cut short by a policy (censored). ``entries[i]``
    is the age at which session i came under observation (delayed entry, or left
    truncation): 0 for a session that started inside the window, its age at the window's
    start for one that started before. ``weights[i]`` is how many sessions it stands for
    in a sample. ``resolution`` rounds end times up to a grid (see ``grid_ceil``), which
    bounds the number of steps whatever the sample size.

    1. Materialise the inputs and validate them: equal lengths, durations finite and
       not negative, entries within [0, duration], weights positive.
    2. Sort the observations by duration and the entries by age: O(n log n), the only
       superlinear step.
    3. Walk the groups of equal durations in order. At time t, everyone who entered at
       or before t and has not yet left is at risk, including censorings tied with the
       group, so events come before censorings.
    4. At a group with (weighted) d > 0 events among n at risk, S *= (n - d) / n, and
       record the time and the new S.
    """
    values = [float(d) for d in durations]
    flags = [bool(o) for o in observed]
    if len(values) != len(flags):
        raise ValueError(f"{len(values)} durations but {len(flags)} observed flags")
    for d in values:
        if not math.isfinite(d) or d < 0:
            raise ValueError(f"durations must be finite and >= 0, got {d!r}")
    starts = [0.0] * len(values) if entries is None else [float(e) for e in entries]
    sizes = [1.0] * len(values) if weights is None else [float(w) for w in weights]
    if len(starts) != len(values) or len(sizes) != len(values):
        raise ValueError("entries and weights must have one value per duration")
    for e, d in zip(starts, values, strict=True):
        if not 0 <= e <= d:
            raise ValueError(f"entries must be within [0, duration], got {e!r} for {d!r}")
    for w in sizes:
        if not (math.isfinite(w) and w > 0):
            raise ValueError(f"weights must be finite and > 0, got {w!r}")
    if resolution is not None:
        values = [max(grid_ceil(d, resolution), e) for d, e in zip(values, starts, strict=True)]

    rows = sorted(zip(values, flags, sizes, strict=True))
    entered = sorted(zip(starts, sizes, strict=True))
    times: list[float] = []
    survival: list[float] = []
    s = 1.0
    n = len(rows)
    i = e = 0
    inside = 0.0  # weight that has entered and not yet left
    while i < n:
        t = rows[i][0]
        while e < n and entered[e][0] <= t:
            inside += entered[e][1]
            e += 1
        at_risk = inside
        deaths = 0.0
        while i < n and rows[i][0] == t:
            if rows[i][1]:
                deaths += rows[i][2]
            inside -= rows[i][2]
            i += 1
        if deaths:
            # (n - d) / n rather than 1 - d / n: exact 0 when everyone at risk ends.
            s = s * max(at_risk - deaths, 0.0) / at_risk
            times.append(t)
            survival.append(s)
    return SurvivalCurve(
        times=tuple(times), survival=tuple(survival), events=sum(flags), observations=n
    )


def grid_ceil(t: float, resolution: float) -> float:
    """``t`` rounded up to a grid that is absolute (steps of ``resolution`` seconds) up
    to 1 s and relative (steps of a factor ``1 + resolution``) above: about 1,600 points
    from 0 to 30 days at 1%, so a stored curve stays small."""
    if not 0 < resolution < 1:
        raise ValueError(f"resolution must be in (0, 1), got {resolution!r}")
    if t <= 1.0:
        return math.ceil(round(t / resolution, 9)) * resolution
    step = math.log1p(resolution)
    return math.exp(math.ceil(round(math.log(t) / step, 9)) * step)


# --- observations over a time window ---------------------------------------------------

LIVE, ENDED, ABANDONED, EXPIRED = "live", "ended", "abandoned", "expired"


@dataclass(frozen=True)
class Span:
    """One session as the estimate sees it: observed from age ``entry`` to age
    ``exit``, and ``ended`` by itself at ``exit`` (an event) or not (censored)."""

    entry: float
    exit: float
    ended: bool


def window_span(
    *,
    state: str,
    started_at: datetime,
    ended_at: datetime | None,
    last_seen_at: datetime,
    drain_at: datetime | None,
    window_start: datetime,
    now: datetime,
) -> Span | None:
    """How a session that was live at some point in [window_start, now] enters the
    estimate, or None if it was not.

    1. It enters at its age at the window's start, or at 0 if it started inside it:
       the window sees only the part of a long session's life inside it.
    2. Live: censored at its current age.
    3. Abandoned: an event at its last heartbeat, when it really stopped.
    4. Expired (the maximum age, a forced drain's grace), or ended after being told to
       drain: censored at its end. The policy cut it short; left to itself it would have
       lasted at least that long, so counting it as an event would teach the estimate
       that sessions end when the policy ends them.
    5. Ended otherwise: an event at its end.
    """

    def age(at: datetime) -> float:
        return max((at - started_at).total_seconds(), 0.0)

    entry = age(window_start)
    if state == LIVE:
        span = Span(entry, age(now), False)
    elif state == ABANDONED:
        span = Span(entry, age(last_seen_at), True)
    elif state == EXPIRED or drain_at is not None:
        span = Span(entry, age(ended_at or last_seen_at), False)
    else:
        span = Span(entry, age(ended_at or last_seen_at), True)
    return span if span.entry <= span.exit else None


def slice_weight(ends: Sequence[float], start: float, end: float, limit: int) -> tuple[int, float]:
    """A stratum [start, end) of the window, of which only the first ``limit`` ends
    (sorted, in seconds) were read: how many of them to keep, and the weight each kept
    one carries.

    1. Fewer than ``limit`` read: that is the whole stratum, weight 1.
    2. Otherwise the read ones cover [start, last): keep those strictly before the last
       end time read (ends tied with it may continue past what was read), and weight
       them by the stratum's length over the length they cover, as if the ends were
       spread evenly through the stratum.
    """
    if len(ends) < limit:
        return len(ends), 1.0
    last = ends[-1]
    kept = bisect_left(ends, last)
    if kept == 0 or last <= start:
        return 0, 1.0
    return kept, (end - start) / (last - start)


def policy_drain_bound(
    age_s: float,
    *,
    max_session_age_s: float,
    drain_grace_s: float,
    drained_for_s: float | None = None,
    forced: bool = False,
) -> float:
    """The most seconds one live session of a draining version can still last under the
    drain policy: its cap in ``drain_eta``.

    1. Told to drain ``drained_for_s`` ago (a forced drain, an evacuation, or its age):
       it is terminated once the grace has run out, so at most what is left of that.
    2. On a force-drained version but not told yet: it is told at its next heartbeat,
       then has the grace.
    3. Otherwise it is told to drain once older than ``max_session_age_s``, and has the
       grace after that.
    """
    if drained_for_s is not None:
        return max(drain_grace_s - max(drained_for_s, 0.0), 0.0)
    if forced:
        return float(drain_grace_s)
    return max(max_session_age_s - age_s, 0.0) + drain_grace_s


def drain_eta(
    curve: SurvivalCurve,
    live_ages: Sequence[float],
    *,
    caps: Sequence[float | None] | None = None,
    confidence: float = 0.5,
) -> float | None:
    """Seconds until no session is live, reached with probability ``confidence``.

    Session i, now of age a_i, ends within x more seconds with probability
    F_i(x) = 1 - S(a_i + x) / S(a_i), independently of the others, and for certain once
    x reaches its cap c_i (``caps[i]``: the most the drain policy lets it last, None for
    no cap). The version is drained by x with probability G(x) = prod_i F_i(x). G only
    steps up, and only at the candidates x = t_j - a_i (event times t_j with
    a_i < t_j < a_i + c_i) and x = c_i; the answer is the smallest candidate with
    G(x) >= confidence.

    1. Validate. With no live sessions the version is drained already: 0.0.
    2. Drop the sessions that end now: the curve says they cannot still be live
       (S(a_i) = 0), or their cap is 0. If none is left, 0.0.
    3. Check the largest candidate, past which G no longer changes. If G is still below
       ``confidence`` there (an uncapped session whose S stays above 0 because the
       longest sessions are censored), there is no estimate: None.
    4. Coarse search: binary search over the youngest session's candidates and the caps
       brackets the answer between two of them, lo (G < confidence) and hi (G >=
       confidence).
    5. Fine search: the other candidates strictly inside (lo, hi) remain. While there
       are many, evaluate G at the weighted median of each window's median candidate,
       which removes at least a quarter of them either way.
    6. Sort the few that are left and binary search them; the answer is the first one
       with G >= confidence, or hi. Round it to 0.1 s.

    Each evaluation of G is O(m log k) for m live sessions and k event times, and
    steps 4 to 6 take O(log(m k)) of them.
    """
    if not 0 < confidence <= 1:
        raise ValueError(f"confidence must be in (0, 1], got {confidence!r}")
    ages = [float(a) for a in live_ages]
    for a in ages:
        if not math.isfinite(a) or a < 0:
            raise ValueError(f"live ages must be finite and >= 0, got {a!r}")
    limits = [math.inf] * len(ages) if caps is None else [_cap(c) for c in caps]
    if len(limits) != len(ages):
        raise ValueError(f"{len(ages)} live ages but {len(limits)} caps")
    if not ages:
        return 0.0

    times, survival = curve.times, curve.survival
    k = len(times)
    rows = [
        (a, s0, c) for a, c in zip(ages, limits, strict=True) if c > 0 and (s0 := curve.at(a)) > 0
    ]
    if not rows:
        return 0.0

    def reaches(x: float) -> bool:
        """G(x) >= confidence."""
        p = 1.0
        for a, s0, c in rows:
            if x >= c:
                continue
            j = _first_above(times, a, x, 0, k)
            p *= 1.0 - (survival[j - 1] if j else 1.0) / s0
            if p < confidence:
                # Every factor is at most 1: the product can only fall further.
                return False
        return True

    # Step 3. Past its cap, or past its last event time, a session's F no longer moves.
    capped = sorted(c for _, _, c in rows if c < math.inf)
    last = max(c if c < math.inf else max(times[-1] - a, 0.0) if k else 0.0 for a, _, c in rows)
    if not reaches(last):
        return None

    # Step 4. 0.0 stands for x = 0, where G = 0: every remaining F_i(0) is 0.
    young, _, young_cap = min(rows)
    first = bisect_right(times, young)
    coarse = sorted(
        {0.0, *capped, *(x for j in range(first, k) if (x := times[j] - young) < young_cap)}
    )
    if not reaches(coarse[-1]):
        coarse.append(last)
    lo, hi = 0, len(coarse) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if reaches(coarse[mid]):
            hi = mid
        else:
            lo = mid
    lo_x, hi_x = coarse[lo], coarse[hi]

    # Step 5. A window (values, offset, start, end) holds the candidates
    # values[j] - offset, start <= j < end, in (lo_x, hi_x): one session's event times
    # below its cap, or the caps.
    windows = []
    for a, _, c in rows:
        start = _first_above(times, a, lo_x, 0, k)
        end = _first_at_least(times, a, min(hi_x, c), start, k)
        if start < end:
            windows.append((times, a, start, end))
    start = _first_above(capped, 0.0, lo_x, 0, len(capped))
    end = _first_at_least(capped, 0.0, hi_x, start, len(capped))
    if start < end:
        windows.append((capped, 0.0, start, end))
    while sum(end - start for *_, start, end in windows) > _COLLECT_LIMIT:
        pivot = _weighted_median_of_medians(windows)
        if reaches(pivot):
            hi_x = pivot
            windows = [(v, a, s, _first_at_least(v, a, pivot, s, e)) for v, a, s, e in windows]
        else:
            lo_x = pivot
            windows = [(v, a, _first_above(v, a, pivot, s, e), e) for v, a, s, e in windows]
        windows = [w for w in windows if w[2] < w[3]]

    # Step 6.
    candidates = sorted({v[j] - a for v, a, start, end in windows for j in range(start, end)})
    lo, hi = -1, len(candidates)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if reaches(candidates[mid]):
            hi = mid
        else:
            lo = mid
    return round(candidates[hi] if hi < len(candidates) else hi_x, 1)


def _cap(c: float | None) -> float:
    if c is None:
        return math.inf
    c = float(c)
    if not (math.isfinite(c) and c >= 0):
        raise ValueError(f"caps must be finite and >= 0, or None; got {c!r}")
    return c


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


def _weighted_median_of_medians(windows: list[tuple[Sequence[float], float, int, int]]) -> float:
    """A candidate with at least a quarter of all window candidates on each side.

    Half the weight lies in windows whose median is on each side of the weighted median,
    and half of each such window lies beyond its own median.
    """
    medians = sorted((v[(s + e) // 2] - a, e - s) for v, a, s, e in windows)
    half = sum(w for _, w in medians) / 2
    seen = 0
    for value, weight in medians:
        seen += weight
        if seen >= half:
            return value
    return medians[-1][0]

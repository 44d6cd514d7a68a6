"""The drain forecast: how many versions a deploy cadence and a drain policy keep live.
Pure: no Django, no I/O.

The model, over the next ``horizon_h`` hours (t = 0 is now, times in hours):

- New sessions arrive as a Poisson stream, ``arrivals_per_h`` in all, split over the
  versions that have weight now in proportion to it, until the first deploy.
- A deploy every ``deploy_every_h`` hours, the first one at ``first_deploy_h``. Each is a
  cutover: from then on the new version gets every new session and the previous ones
  get none ("old" versions).
- A session lasts its natural duration D, drawn from the agent's observed survival curve
  S (Kaplan-Meier, independent across sessions), unless the drain policy ends it first:
  on an old version, a session older than ``max_session_age`` is told to drain, and is
  gone ``drain_grace`` later; when a deploy leaves more versions with live sessions
  than ``max_live_versions``, the oldest old versions are force-drained (every session
  told to drain at once) until the excess is covered, counting versions already
  force-drained. So a session started at s on a version retired at r and force-drained
  at f is live at t when ``t < s + D`` and ``t < min(max(s + A, r), f) + G``.
- The sessions live now keep their ages and versions.

With the force-drain times fixed, the number of a version's sessions live at t is a
thinned Poisson count (plus the independent survivors among the sessions live now), so
its expectation has a closed form in the integrals of S, and the chance that the version
has a live session at all is ``1 - exp(-E) * prod(1 - p_i)``. The force-drains depend on
which versions happen to be live at each deploy; the forecast decides them on the
expected fleet: at a deploy a version counts as live when that chance is at least one
half. That is exact when versions are clearly live or clearly drained at deploy times,
which is the case with more than a handful of sessions per version.

Each point reports, at ``t_h``, the expected number of versions with live sessions, and
the expected session-hours run on old versions during the step that ends at ``t_h``
(the previous point to this one): the traffic that the deploys leave on stale versions.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from rollouts.survival import SurvivalCurve

HOUR = 3600.0
MAX_POINTS = 200
MAX_DEPLOYS = 500
LIVE_AT_DEPLOY = 0.5  # chance of a live session from which a version counts at a deploy
NEGLIGIBLE = 1e-9  # expected sessions below which a retired version is dropped


class ForecastError(ValueError):
    """A parameter out of bounds; ``field`` names it."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


@dataclass(frozen=True)
class Policy:
    max_session_age_h: float
    drain_grace_h: float
    max_live_versions: int


@dataclass(frozen=True)
class VersionNow:
    """A version as it stands now: its share of new sessions (basis points, 0 if it
    gets none), the sessions live on it as ``(age_h, count)`` groups, when it stopped
    getting new sessions (hours, at or before 0) and when it was force-drained."""

    weight: int = 0
    live: tuple[tuple[float, int], ...] = ()
    retired_h: float | None = None
    forced_h: float | None = None


@dataclass(frozen=True)
class Point:
    t_h: float
    live_versions: float
    old_session_hours: float


@dataclass(frozen=True)
class Forecast:
    horizon_h: float
    step_h: float
    deploys_h: tuple[float, ...]
    points: tuple[Point, ...]
    # (version number, hour): 0.. are the versions now, by age, then one per deploy.
    forced: tuple[tuple[int, float], ...] = ()


class _Curve:
    """S(x), I(x) = integral of S over [0, x], and J(x) = integral of I over [0, x], in
    hours. S is a step function, so I is piecewise linear and J piecewise quadratic,
    both exact from cumulative sums at the event times."""

    def __init__(self, curve: SurvivalCurve) -> None:
        self.times = [t / HOUR for t in curve.times]
        self.survival = list(curve.survival)
        self.i_at: list[float] = []
        self.j_at: list[float] = []
        s, i, j, last = 1.0, 0.0, 0.0, 0.0
        for t, after in zip(self.times, self.survival, strict=True):
            width = t - last
            j += i * width + s * width * width / 2
            i += s * width
            self.i_at.append(i)
            self.j_at.append(j)
            s, last = after, t

    def _segment(self, x: float) -> tuple[float, float, float, float]:
        """(start, S, I(start), J(start)) of the constant piece of S holding x."""
        k = bisect.bisect_right(self.times, x)
        if k == 0:
            return 0.0, 1.0, 0.0, 0.0
        return self.times[k - 1], self.survival[k - 1], self.i_at[k - 1], self.j_at[k - 1]

    def s(self, x: float) -> float:
        return 1.0 if x < 0 else self._segment(x)[1]

    def i(self, x: float) -> float:
        if x <= 0:
            return 0.0
        start, s, i0, _ = self._segment(x)
        return i0 + s * (x - start)

    def j(self, x: float) -> float:
        if x <= 0:
            return 0.0
        start, s, i0, j0 = self._segment(x)
        width = x - start
        return j0 + i0 * width + s * width * width / 2


@dataclass
class _Version:
    """A version in the model: arrival streams ``(from_h, rate_per_h)`` that run until it
    is retired, groups of sessions live now, and its retirement and force-drain."""

    number: int
    retired_h: float = math.inf
    forced_h: float = math.inf
    streams: list[tuple[float, float]] = field(default_factory=list)
    groups: list[tuple[float, int]] = field(default_factory=list)


class _Model:
    def __init__(self, curve: _Curve, policy: Policy) -> None:
        self.curve = curve
        self.age = policy.max_session_age_h
        self.grace = policy.drain_grace_h

    def live(self, v: _Version, t: float) -> tuple[float, float]:
        """(expected sessions of v live at t, chance that none is)."""
        if t >= v.forced_h + self.grace:
            return 0.0, 1.0
        curve, expected, none = self.curve, 0.0, 1.0
        for start, rate in v.streams:
            # Sessions started in [lo, hi) are live at t if D > t - s; once the version
            # has been retired for longer than the grace, only those younger than the
            # age limit plus the grace are.
            lo = start if t < v.retired_h + self.grace else max(start, t - self.age - self.grace)
            hi = min(v.retired_h, t)
            if hi > lo:
                mean = rate * (curve.i(t - lo) - curve.i(t - hi))
                expected += mean
                none *= math.exp(-mean)
        for age, count in v.groups:
            s0 = curve.s(age)
            if s0 <= 0 or t >= self._deadline(v, age):
                continue
            p = curve.s(age + t) / s0
            expected += count * p
            none *= (1 - p) ** count
        return expected, none

    def ends_by(self, v: _Version) -> float:
        """When v's last session is gone at the latest: every session of a version
        retired at r is told to drain by max(r, 0) + A, or when it is force-drained."""
        return min(v.forced_h, max(v.retired_h, 0.0) + self.age) + self.grace

    def _deadline(self, v: _Version, age: float) -> float:
        return min(max(self.age - age, v.retired_h), v.forced_h) + self.grace

    def old_hours(self, v: _Version, t1: float, t2: float) -> float:
        """Expected session-hours v runs during [t1, t2] while retired."""
        curve, total = self.curve, 0.0
        r = v.retired_h
        limit = self.age + self.grace
        for start, rate in v.streams:
            u1 = max(t1, r)
            u2 = min(t2, v.forced_h + self.grace, r + limit)
            if u2 <= u1:
                continue
            # The lower end of the live start times is `start` until u = start + A + G
            # (and always before r + G), then u - A - G; the upper end is r throughout.
            cuts = sorted({u1, u2, *(c for c in (r + self.grace, start + limit) if u1 < c < u2)})
            part = 0.0
            for p, q in itertools.pairwise(cuts):
                middle = (p + q) / 2
                if middle < r + self.grace or middle - limit <= start:
                    part += curve.j(q - start) - curve.j(p - start)
                else:
                    part += curve.i(limit) * (q - p)
                part -= curve.j(q - r) - curve.j(p - r)
            total += rate * part
        for age, count in v.groups:
            s0 = curve.s(age)
            u1, u2 = max(t1, r, 0.0), min(t2, self._deadline(v, age))
            if s0 > 0 and u2 > u1:
                total += count * (curve.i(age + u2) - curve.i(age + u1)) / s0
        return total


def forecast(
    curve: SurvivalCurve,
    *,
    arrivals_per_h: float,
    deploy_every_h: float,
    policy: Policy,
    horizon_h: float,
    step_h: float,
    first_deploy_h: float,
    now: Sequence[VersionNow] = (),
) -> Forecast:
    """Forecast the fleet under a deploy cadence and a drain policy (see the module).

    1. Validate the parameters and bound the work: at most MAX_POINTS points and
       MAX_DEPLOYS deploys within the horizon.
    2. Build the versions: those live or routed now, oldest first, then one per deploy;
       each deploy retires every version that had weight.
    3. Apply the live-version cap now and at each deploy, in time order, on the
       expected fleet, fixing each force-drain time.
    4. For each point, sum over versions the chance of a live session, and the
       session-hours run while retired during the step that ends there. A version is
       dropped once the policy has surely ended its last session, or once it is retired
       and its expected sessions fell below NEGLIGIBLE, since that count never rises
       again.
    """
    _validate(arrivals_per_h, deploy_every_h, policy, horizon_h, step_h, first_deploy_h)
    for state in now:
        _validate_now(state)
    model = _Model(_Curve(curve), policy)
    deploys = []
    t = first_deploy_h
    while t < horizon_h:
        deploys.append(t)
        t += deploy_every_h
    if len(deploys) > MAX_DEPLOYS:
        raise ForecastError("deploy_every_h", f"more than {MAX_DEPLOYS} deploys within the horizon")
    first = deploys[0] if deploys else math.inf

    versions: list[_Version] = []
    for number, state in enumerate(now):
        v = _Version(number, groups=[(a, c) for a, c in state.live if c > 0])
        if state.weight > 0:
            v.retired_h = first
            v.streams.append((0.0, arrivals_per_h * state.weight / 10000))
        else:
            v.retired_h = min(state.retired_h if state.retired_h is not None else 0.0, 0.0)
        if state.forced_h is not None:
            v.forced_h = min(state.forced_h, 0.0)
        versions.append(v)
    forced: list[tuple[int, float]] = []
    _cap(model, versions, 0.0, policy.max_live_versions, None, forced)
    for k, at in enumerate(deploys):
        new = _Version(len(versions), streams=[(at, arrivals_per_h)] if arrivals_per_h else [])
        new.retired_h = deploys[k + 1] if k + 1 < len(deploys) else math.inf
        for v in versions:
            v.retired_h = min(v.retired_h, at)
        versions.append(new)
        _cap(model, versions, at, policy.max_live_versions, new, forced)

    points = []
    steps = round(horizon_h / step_h)
    alive = list(versions)
    previous = 0.0
    for n in range(steps + 1):
        t = min(n * step_h, horizon_h)
        live_versions = old = 0.0
        keep = []
        for v in alive:
            expected, none = model.live(v, t)
            live_versions += 1 - none
            if t > previous:
                old += model.old_hours(v, previous, t)
            # A retired version's expected sessions only fall: once negligible, the
            # session-hours it has left are too.
            if t < model.ends_by(v) and (v.retired_h > t or expected >= NEGLIGIBLE):
                keep.append(v)
        alive = keep
        points.append(Point(round(t, 6), live_versions, old))
        previous = t
    return Forecast(horizon_h, step_h, tuple(deploys), tuple(points), tuple(forced))


def _cap(
    model: _Model,
    versions: list[_Version],
    at: float,
    cap: int,
    new: _Version | None,
    forced: list[tuple[int, float]],
) -> None:
    """Force-drain the oldest retired versions while more than ``cap`` versions count as
    live at ``at``; versions force-drained earlier and still live cover the excess."""
    live = [
        v
        for v in versions
        if v is not new and at < model.ends_by(v) and 1 - model.live(v, at)[1] >= LIVE_AT_DEPLOY
    ]
    if new is not None and new.streams:
        live.append(new)
    excess = len(live) - cap
    covered = sum(1 for v in live if v.forced_h <= at)
    for v in sorted(
        (v for v in live if v.retired_h <= at and v.forced_h > at),
        key=lambda v: (v.retired_h, v.number),
    ):
        if covered >= excess:
            break
        v.forced_h = at
        forced.append((v.number, at))
        covered += 1


def _validate(
    arrivals_per_h: float,
    deploy_every_h: float,
    policy: Policy,
    horizon_h: float,
    step_h: float,
    first_deploy_h: float,
) -> None:
    def finite(name: str, value: float, low: float, high: float, *, open_low: bool = False):
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ForecastError(name, "must be a finite number")
        if value < low or value > high or (open_low and value == low):
            bound = f"({low}" if open_low else f"[{low}"
            raise ForecastError(name, f"must lie in {bound}, {high}]")

    finite("arrivals_per_h", arrivals_per_h, 0, 1e7)
    finite("deploy_every_h", deploy_every_h, 0, 24 * 365, open_low=True)
    finite("horizon_h", horizon_h, 0, 24 * 365, open_low=True)
    finite("step_h", step_h, 0, horizon_h, open_low=True)
    finite("first_deploy_h", first_deploy_h, 0, math.inf)
    finite("max_session_age_h", policy.max_session_age_h, 0, 24 * 365, open_low=True)
    finite("drain_grace_h", policy.drain_grace_h, 0, 24 * 365)
    if isinstance(policy.max_live_versions, bool) or not isinstance(policy.max_live_versions, int):
        raise ForecastError("max_live_versions", "must be a whole number")
    if policy.max_live_versions < 1:
        raise ForecastError("max_live_versions", "must be at least 1")
    if horizon_h / step_h > MAX_POINTS + 1e-9:
        raise ForecastError("step_h", f"at most {MAX_POINTS} steps over the horizon")


def _validate_now(state: VersionNow) -> None:
    if not 0 <= state.weight <= 10000:
        raise ForecastError("weight", "must lie in [0, 10000] basis points")
    for age, count in state.live:
        if not (math.isfinite(age) and age >= 0) or count < 0:
            raise ForecastError("live", "ages must be finite and >= 0, counts >= 0")
    for name, value in (("retired_h", state.retired_h), ("forced_h", state.forced_h)):
        if value is not None and not math.isfinite(value):
            raise ForecastError(name, "must be finite")

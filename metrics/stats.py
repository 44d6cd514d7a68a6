"""Anytime-valid confidence sequences for gates, and the sample-ratio check.

Pure functions of metric summaries: no Django, no I/O, no numpy. Every interval here is
a *confidence sequence*: it covers the true value at every look at once, so the beat may
look as often as it likes and stop whenever an interval clears a tolerance.

Common ground
-------------
Each comparison reduces, at a look, to a standardised statistic ``z(delta)`` for the
null "the contrast equals ``delta``" and an *intrinsic time* ``info``: the effective
number of sessions, ``1 / (1/n_c + a^2/n_b)`` summed over stages. The boundary that
``z`` must cross is the one-sided normal mixture of Robbins (1970), in the form of
Howard, Ramdas, McAuliffe & Sekhon (2021, "Time-uniform, nonparametric, nonasymptotic
confidence sequences", Ann. Statist. 49(2), eq. (14)-(15)): a half-normal mixture over
standardised effects with precision ``rho`` (in sessions). Each bound of an interval
spends ``alpha / 2``, so an interval at ``alpha`` covers with probability at least
``1 - alpha`` at every look, and its worse-side bound alone errs with at most
``alpha / 2``.

Stages
------
Allocation changes from stage to stage, and time confounds a pooled comparison (a drift
in the baseline's rate during the 5% stage weighs 19 times more on the baseline than on
the candidate). So each stage is compared within itself and the stages are combined:

- proportions: a common difference across stages, with one nuisance rate per stage,
  estimated by the stratified profile likelihood (the likelihood is a product over
  stages, so its evidence accumulates exactly as a sequential test's does);
- means: the precision-weighted average of per-stage differences;
- quantiles: per-stage intervals, each at a share ``alpha / (s (s + 1))`` of the budget
  (the shares sum to ``alpha`` however many stages follow), averaged with size weights.

Methods and references
----------------------
- Proportions (``diff_proportions``): the signed root of the stratified profile
  likelihood ratio against the mixture boundary. The nuisance rates are the restricted
  maximum-likelihood estimates *under the null* (Miettinen & Nurminen 1985), so with a
  5% arm and zero or one event the interval stays wide: it is the null's variance, not
  the observed one, that sets the width. The approach is the asymptotic confidence
  sequence of Waudby-Smith, Arbour, Sinha, Kennedy & Ramdas (2021, "Time-uniform central
  limit theory and asymptotic confidence sequences"), with the exact binomial
  likelihood in place of a normal approximation, which keeps the skew of rare events.
- Means (``diff_means``): the same asymptotic confidence sequence with a variance that
  never drops below the pooled within-stage variance (the variance under "no
  difference"), so an arm with a handful of samples cannot claim a tiny spread.
- Quantiles (``quantile_bounds``, ``diff_quantiles``): Howard & Ramdas (2022,
  "Sequential estimation of quantiles with applications to A/B-testing and best-arm
  identification", Bernoulli 28(3)): the count of samples below the true quantile is a
  Bernoulli(q) sum, so a beta-binomial mixture confidence sequence for it gives ranks,
  and the order statistics at those ranks bound the quantile, with no assumption on the
  distribution. The sketch's relative accuracy widens each bound by its error.
- Sample-ratio mismatch (``srm_log_e``): the Dirichlet-multinomial mixture e-process of
  Lindon & Malek (2022, "Anytime-valid inference for multinomial count data", NeurIPS),
  with two arms a beta-binomial one, per stage; stages multiply, because each stage's
  process starts afresh at 1 with the weights then in force.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from metrics.sketch import RELATIVE_ACCURACY, Sketch
from metrics.summary import Summary

#: Precision of the mixture over standardised effects, in effective sessions. The boundary
#: is tightest near a few times ``rho`` sessions, where a doubling of a 5% error rate is
#: decided; it widens only logarithmically later on.
RHO = 16.0
#: Prior size of the beta-binomial mixtures (quantile ranks and the sample-ratio check).
CONCENTRATION = 16.0

INF = math.inf


@dataclass(frozen=True)
class Interval:
    """A confidence sequence's value at one look, for a contrast ``candidate - a x
    baseline``. ``info`` is the effective number of sessions behind it."""

    estimate: float | None
    lower: float
    upper: float
    info: float

    def contains(self, value: float) -> bool:
        return self.lower <= value <= self.upper

    # How the verdicts read an interval. A proportion's interval answers these from the
    # likelihood ratio at ``value`` alone, without searching for its bounds.
    def lower_above(self, value: float) -> bool:
        return self.lower > value

    def upper_at_most(self, value: float) -> bool:
        return self.upper <= value

    def upper_below(self, value: float) -> bool:
        return self.upper < value

    def lower_at_least(self, value: float) -> bool:
        return self.lower >= value


UNBOUNDED = Interval(None, -INF, INF, 0.0)


# The boundary ---------------------------------------------------------------------------


def _log_phi(u: float) -> float:
    """log of the standard normal distribution function, accurate in the far left tail."""
    if u > -30:
        return math.log(0.5 * math.erfc(-u / math.sqrt(2)))
    return -0.5 * u * u - math.log(-u) - 0.5 * math.log(2 * math.pi)


def mixture_boundary(info: float, alpha: float, rho: float = RHO) -> float:
    """The z-value a standardised statistic must exceed for the one-sided normal mixture
    e-process to reach ``1 / alpha`` at intrinsic time ``info``.

    1. The half-normal mixture over effects ``theta >= 0`` with precision ``rho`` of
       ``exp(theta S - theta^2 info / 2)`` is ``2 sqrt(rho / (rho + info)) exp(u^2 / 2)
       Phi(u)`` with ``u = S / sqrt(rho + info)``.
    2. Solve ``u^2 / 2 + log Phi(u) = log(1 / (2 alpha)) + log(1 + info / rho) / 2`` for
       ``u`` by Newton's method; the left side increases in ``u`` (its derivative is
       ``u + phi(u) / Phi(u) > 0``).
    3. Return ``u sqrt(rho + info) / sqrt(info)``.
    """
    if info <= 0:
        return INF
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), not {alpha!r}")
    target = math.log(1 / (2 * alpha)) + 0.5 * math.log1p(info / rho)
    u = math.sqrt(2 * max(target, 0.0)) + 0.1
    for _ in range(50):
        log_phi = _log_phi(u)
        f = 0.5 * u * u + log_phi - target
        slope = u + math.exp(-0.5 * u * u - 0.5 * math.log(2 * math.pi) - log_phi)
        step = f / slope
        u -= step
        if abs(step) < 1e-12:
            break
    return u * math.sqrt((rho + info) / info)


def effective_n(n_c: float, n_b: float, a: float = 1.0) -> float:
    """Sessions that a contrast ``candidate - a x baseline`` is worth: the harmonic
    combination ``1 / (1/n_c + a^2/n_b)`` (0 when an arm is empty)."""
    if n_c <= 0 or n_b <= 0:
        return 0.0
    return 1.0 / (1.0 / n_c + a * a / n_b)


# Proportions ----------------------------------------------------------------------------


def _xlogy(x: float, y: float) -> float:
    if x == 0:
        return 0.0
    return x * math.log(y) if y > 0 else -INF


def _restricted(
    k_c: float, n_c: float, k_b: float, n_b: float, a: float, theta: float, start: float = -1.0
) -> tuple[float, float, float]:
    """Maximise one stage's log-likelihood over the baseline rate ``p`` with the
    candidate's rate tied to ``q = a p + theta``. Returns (log-likelihood, its derivative
    in ``theta`` at the maximum, which by the envelope theorem is the partial
    derivative, and the maximising ``p``).

    1. The feasible rates are ``p`` in [lo, hi] with ``0 <= a p + theta <= 1``.
    2. The log-likelihood is concave in ``p``; a positive count at an end makes the slope
       there infinite inwards, a zero count drops its term, so an end can be the maximum.
    3. Newton's method on the slope from ``start`` (the maximiser at a nearby theta) or
       the pooled estimate, kept inside a shrinking bracket (bisection when a step
       leaves it).
    """
    m_c, m_b = n_c - k_c, n_b - k_b
    if a == 1.0 and k_c and m_c and k_b and m_b:  # no zero count: the maximum is inside
        closed = _restricted_difference(k_c, n_c, k_b, n_b, theta)
        if closed is not None:
            return closed
    lo, hi = max(0.0, -theta / a), min(1.0, (1.0 - theta) / a)
    if lo > hi:
        return -INF, 0.0, lo
    if not _slope(k_c, m_c, k_b, m_b, a, theta, lo) > 0:
        return _finish(k_c, m_c, k_b, m_b, a, theta, lo, tied=lo > 0)
    if not _slope(k_c, m_c, k_b, m_b, a, theta, hi) < 0:
        return _finish(k_c, m_c, k_b, m_b, a, theta, hi, tied=hi < 1)
    width = hi - lo
    p = start if lo < start < hi else (k_b + k_c - n_c * theta) / (n_b + a * n_c)
    if not lo < p < hi:
        p = lo + 0.5 * width
    for _ in range(60):
        q = a * p + theta
        r, s = 1.0 - q, 1.0 - p
        if not (q > 0 and r > 0 and s > 0):  # rounding at an end of the bracket
            p = 0.5 * (lo + hi)
            continue
        slope = a * (k_c / q - m_c / r) + k_b / p - m_b / s
        if slope > 0:
            lo = p
        else:
            hi = p
        curv = -a * a * (k_c / (q * q) + m_c / (r * r)) - k_b / (p * p) - m_b / (s * s)
        step = slope / curv
        nxt = p - step
        if not lo < nxt < hi:
            nxt = 0.5 * (lo + hi)
        elif abs(step) < 1e-10 * width:
            p = nxt
            break
        p = nxt
    return _finish(k_c, m_c, k_b, m_b, a, theta, p)


def _restricted_difference(
    k_c: float, n_c: float, k_b: float, n_b: float, delta: float
) -> tuple[float, float, float] | None:
    """The same maximum for ``a = 1`` in closed form: the root of a cubic (Farrington &
    Manning 1990; Miettinen & Nurminen 1985). None when it is not strictly inside, where
    the general search handles the ends."""
    r_c, r_b, ratio = k_c / n_c, k_b / n_b, n_b / n_c
    a3 = 1 + ratio
    b3 = -(1 + ratio + r_c + ratio * r_b + delta * (ratio + 2))
    c3 = delta * delta + delta * (2 * r_c + ratio + 1) + r_c + ratio * r_b
    d3 = -r_c * delta * (1 + delta)
    v = b3**3 / (27 * a3**3) - b3 * c3 / (6 * a3 * a3) + d3 / (2 * a3)
    u2 = b3 * b3 / (9 * a3 * a3) - c3 / (3 * a3)
    if u2 <= 0:
        return None
    u = math.copysign(math.sqrt(u2), v) if v else math.sqrt(u2)
    w = (math.pi + math.acos(max(-1.0, min(1.0, v / u**3)))) / 3
    q = 2 * u * math.cos(w) - b3 / (3 * a3)
    p = q - delta
    edge = 1e-9  # a root this close to an end is an end the general search decides
    if not (edge < p < 1 - edge and edge < q < 1 - edge):
        return None
    m_c, m_b = n_c - k_c, n_b - k_b
    ll = k_c * math.log(q) + m_c * math.log(1 - q) + k_b * math.log(p) + m_b * math.log(1 - p)
    return ll, k_c / q - m_c / (1 - q), p


def _slope(
    k_c: float, m_c: float, k_b: float, m_b: float, a: float, theta: float, p: float
) -> float:
    """d/dp of a stage's log-likelihood, with the terms of zero counts left out."""
    q = a * p + theta
    s = 0.0
    if k_c:
        s += a * k_c / q if q > 0 else INF
    if m_c:
        s -= a * m_c / (1 - q) if q < 1 else INF
    if k_b:
        s += k_b / p if p > 0 else INF
    if m_b:
        s -= m_b / (1 - p) if p < 1 else INF
    return s


def _finish(
    k_c: float,
    m_c: float,
    k_b: float,
    m_b: float,
    a: float,
    theta: float,
    p: float,
    tied: bool = False,
) -> tuple[float, float, float]:
    """The log-likelihood at ``p``, and its derivative in theta. When the maximum sits
    where the candidate's rate is 0 or 1, ``p`` moves with theta (``dp/dtheta = -1/a``)
    and the derivative is the baseline's slope times ``-1/a``."""
    q = min(max(a * p + theta, 0.0), 1.0)
    if tied:
        ll = _xlogy(k_c, q) + _xlogy(m_c, 1 - q) + _xlogy(k_b, p) + _xlogy(m_b, 1 - p)
        return ll, -_slope(0, 0, k_b, m_b, a, theta, p) / a, p
    if 0 < q < 1 and 0 < p < 1:  # the common case, without the zero-count guards
        ll = k_c * math.log(q) + m_c * math.log(1 - q) + k_b * math.log(p) + m_b * math.log(1 - p)
        return ll, k_c / q - m_c / (1 - q), p
    d = 0.0
    if k_c:
        d += k_c / q if q > 0 else INF
    if m_c:
        d -= m_c / (1 - q) if q < 1 else INF
    ll = _xlogy(k_c, q) + _xlogy(m_c, 1 - q) + _xlogy(k_b, p) + _xlogy(m_b, 1 - p)
    return ll, d, p


Rates = tuple[float, float, float, float]  # (events_c, n_c, events_b, n_b) for one stage


class _Profile:
    """The stratified profile log-likelihood of ``theta = p_c - a p_b`` over stages."""

    def __init__(self, stages: Sequence[Rates], a: float) -> None:
        self.a = a
        self.stages = [s for s in stages if s[1] > 0 and s[3] > 0]
        self.lo, self.hi = -a, 1.0  # theta's range: p_c = 0, p_b = 1 to p_c = 1, p_b = 0
        self.starts = [-1.0] * len(self.stages)

    def at(self, theta: float) -> tuple[float, float]:
        total, slope = 0.0, 0.0
        for i, (k_c, n_c, k_b, n_b) in enumerate(self.stages):
            ll, d, p = _restricted(k_c, n_c, k_b, n_b, self.a, theta, self.starts[i])
            self.starts[i] = p  # successive thetas are close: warm-start the next one
            total += ll
            slope += d
        return total, slope

    def maximum(self) -> tuple[float, float]:
        """(theta-hat, log-likelihood there). The common maximiser lies between the
        stages' own maximisers, because each stage's term is concave in theta."""
        own = [k_c / n_c - self.a * k_b / n_b for k_c, n_c, k_b, n_b in self.stages]
        lo, hi = min(own), max(own)
        if hi - lo < 1e-12:
            return lo, self.at(lo)[0]
        # Regula falsi (Illinois) on the slope: positive at lo, negative at hi.
        g_lo, g_hi = self.at(lo)[1], self.at(hi)[1]
        if not g_lo > 0:
            return lo, self.at(lo)[0]
        if not g_hi < 0:
            return hi, self.at(hi)[0]
        side = 0
        x = lo
        for _ in range(100):
            if math.isinf(g_lo) or math.isinf(g_hi):
                x = 0.5 * (lo + hi)
            else:
                x = (lo * g_hi - hi * g_lo) / (g_hi - g_lo)
            g = self.at(x)[1]
            if g > 0:
                lo, g_lo = x, g
                if side == -1:
                    g_hi *= 0.5
                side = -1
            else:
                hi, g_hi = x, g
                if side == 1:
                    g_lo *= 0.5
                side = 1
            if hi - lo < 1e-12:
                break
        return x, self.at(x)[0]

    def bound(self, theta_hat: float, top: float, drop: float, guess: float) -> float:
        """The theta on ``guess``'s side of ``theta_hat`` where the log-likelihood has
        fallen by ``drop`` from ``top``: Newton's method on the convex ``top - l - drop``,
        inside a bracket that starts at the range's edge (bisecting when a step leaves
        it); the edge itself when the likelihood never falls that far."""
        edge = self.lo if guess < theta_hat else self.hi
        inner, outer, edge_open = theta_hat, edge, True
        x = guess
        if not min(inner, outer) < x < max(inner, outer):
            x = 0.5 * (inner + outer)
        for _ in range(100):
            ll, slope = self.at(x)
            h = top - ll - drop
            if h > 0:
                outer, edge_open = x, False
            else:
                inner = x
            nxt = x + h / slope if slope and math.isfinite(slope) else math.nan
            if not min(inner, outer) < nxt < max(inner, outer):
                if edge_open:
                    if top - self.at(edge)[0] <= drop:
                        return edge
                    edge_open = False
                nxt = 0.5 * (inner + outer)
            if abs(h) < 1e-9 or abs(nxt - x) < 1e-10 or abs(inner - outer) < 1e-10:
                return nxt if abs(h) >= 1e-9 else x
            x = nxt
        return x


class ProportionInterval(Interval):
    """A proportion's confidence sequence. Its bounds are found (and kept) on first use;
    comparisons with a tolerance need one likelihood evaluation: on the right of the
    estimate, ``upper <= v`` exactly when the log-likelihood at ``v`` has dropped by at
    least the boundary's ``drop`` (the profile is concave)."""

    def __init__(
        self, profile: _Profile, theta_hat: float, top: float, drop: float, reach: float, info
    ) -> None:
        fields = {"_profile": profile, "_top": top, "_drop": drop, "_reach": reach}
        for name, value in {**fields, "_bounds": None, "estimate": theta_hat, "info": info}.items():
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> float:
        if name in ("lower", "upper"):
            if self._bounds is None:
                t, p = self.estimate, self._profile
                bounds = (
                    p.bound(t, self._top, self._drop, t - self._reach),
                    p.bound(t, self._top, self._drop, t + self._reach),
                )
                object.__setattr__(self, "_bounds", bounds)
            return self._bounds[0] if name == "lower" else self._bounds[1]
        raise AttributeError(name)

    def __repr__(self) -> str:
        return f"ProportionInterval({self.estimate!r}, {self.lower!r}, {self.upper!r})"

    def _fallen(self, value: float) -> float:
        """How far past the boundary the log-likelihood at ``value`` has fallen."""
        return self._top - self._profile.at(value)[0] - self._drop

    def lower_above(self, value: float) -> bool:
        if value < self._profile.lo:
            return True
        return value < self.estimate and self._fallen(value) > 0

    def lower_at_least(self, value: float) -> bool:
        if value <= self._profile.lo:
            return True
        return value <= self.estimate and self._fallen(value) >= 0

    def upper_at_most(self, value: float) -> bool:
        if value >= self._profile.hi:
            return True
        return value >= self.estimate and self._fallen(value) >= 0

    def upper_below(self, value: float) -> bool:
        if value > self._profile.hi:
            return True
        return value > self.estimate and self._fallen(value) > 0


def diff_proportions(
    stages: Sequence[Rates], alpha: float, a: float = 1.0, rho: float = RHO
) -> Interval:
    """Confidence sequence for ``theta = p_c - a p_b``, common to all stages.

    1. Keep the stages where both arms have sessions; with none, the interval is the
       whole range.
    2. Find the stratified maximum-likelihood ``theta-hat`` (each stage keeps its own
       baseline rate).
    3. Intrinsic time: the summed effective sessions; the boundary ``b`` for ``alpha/2``.
    4. Each bound is where the signed root ``sqrt(2 (l(theta-hat) - l(theta)))`` of the
       profile likelihood ratio reaches ``b``: the null-restricted rates, not the
       observed ones, set how far a rare event lets the interval move.
    """
    if a <= 0:
        raise ValueError("the baseline's multiplier must be positive")
    profile = _Profile(stages, a)
    if not profile.stages:
        return Interval(None, -a, 1.0, 0.0)
    theta_hat, top = profile.maximum()
    info = sum(effective_n(s[1], s[3], a) for s in profile.stages)
    b = mixture_boundary(info, alpha / 2, rho)
    # Starting points for the bounds: a Wald interval with half an event added to each
    # count.
    precision = 0.0
    for k_c, n_c, k_b, n_b in profile.stages:
        r_c, r_b = (k_c + 0.5) / (n_c + 1), (k_b + 0.5) / (n_b + 1)
        precision += 1.0 / (r_c * (1 - r_c) / n_c + a * a * r_b * (1 - r_b) / n_b)
    return ProportionInterval(profile, theta_hat, top, 0.5 * b * b, b / math.sqrt(precision), info)


# Means ----------------------------------------------------------------------------------


def diff_means(
    stages: Sequence[tuple[Summary, Summary]], alpha: float, a: float = 1.0, rho: float = RHO
) -> Interval:
    """Confidence sequence for ``mean_c - a mean_b``, stratified by stage.

    1. A stage counts when each arm has at least two samples.
    2. Each arm's variance is at least the stage's pooled variance, so a small arm never
       claims less spread than the data as a whole show.
    3. Combine per-stage differences with weights ``1 / variance``.
    4. The interval is the estimate plus or minus the mixture boundary for ``alpha/2``
       at the summed effective sessions, times the combined standard error.
    """
    weights, total, info = 0.0, 0.0, 0.0
    for cand, base in stages:
        if cand.n < 2 or base.n < 2:
            continue
        v_c, v_b = cand.variance or 0.0, base.variance or 0.0
        pooled = ((cand.n - 1) * v_c + (base.n - 1) * v_b) / (cand.n + base.n - 2)
        var = max(v_c, pooled) / cand.n + a * a * max(v_b, pooled) / base.n
        scale = max(abs(cand.mean or 0.0), abs(base.mean or 0.0), 1e-12)
        var = max(var, (scale * 1e-9) ** 2)  # identical constant samples: no zero width
        weights += 1.0 / var
        total += (cand.mean - a * base.mean) / var
        info += effective_n(cand.n, base.n, a)
    if weights == 0:
        return UNBOUNDED
    estimate = total / weights
    radius = mixture_boundary(info, alpha / 2, rho) / math.sqrt(weights)
    return Interval(estimate, estimate - radius, estimate + radius, info)


# Quantiles ------------------------------------------------------------------------------


def _log_beta(x: float, y: float) -> float:
    return math.lgamma(x) + math.lgamma(y) - math.lgamma(x + y)


def quantile_rank_bounds(
    n: int, q: float, alpha: float, concentration: float = CONCENTRATION
) -> tuple[int, int]:
    """Bounds (lo, hi) on how many of ``n`` samples lie at or below the true
    ``q``-quantile, valid at every ``n`` at once with probability ``1 - alpha``.

    1. That count is a sum of Bernoulli(q) indicators (Howard & Ramdas 2022, section 2).
    2. Against it, the beta-binomial mixture with prior Beta(c q, c (1 - q)) is a test
       martingale; the counts where it stays below ``1 / alpha`` form an interval of
       integers around ``n q``.
    3. Find each end by bisection on the integer count.
    """
    if n <= 0:
        return 0, 0
    a0, b0 = concentration * q, concentration * (1 - q)
    base = _log_beta(a0, b0)
    log_q, log_r = math.log(q), math.log1p(-q)
    limit = math.log(1 / alpha)

    def rejects(k: int) -> bool:
        log_e = _log_beta(a0 + k, b0 + n - k) - base - k * log_q - (n - k) * log_r
        return log_e >= limit

    centre = min(max(int(n * q), 0), n)
    # hi: the largest k >= centre that is not rejected.
    if rejects(n):
        good, bad = centre, n
        while bad - good > 1:
            mid = (good + bad) // 2
            if rejects(mid):
                bad = mid
            else:
                good = mid
        hi = good
    else:
        hi = n
    if rejects(0):
        bad, good = 0, centre
        while good - bad > 1:
            mid = (good + bad) // 2
            if rejects(mid):
                bad = mid
            else:
                good = mid
        lo = good
    else:
        lo = 0
    return lo, hi


def quantile_bounds(sketch: Sketch, q: float, alpha: float) -> tuple[float, float]:
    """A confidence sequence for the ``q``-quantile of an arm, from its sketch: the order
    statistics at the rank bounds, widened by the sketch's relative accuracy. 0 and
    infinity when the ranks run off the data (sketched values are non-negative)."""
    n = sketch.count
    lo, hi = quantile_rank_bounds(n, q, alpha)
    # At least lo samples lie at or below the quantile: it is no smaller than the lo-th
    # order statistic. At most hi do: it is below the (hi + 1)-th.
    lower = sketch.order_statistic(lo - 1) / (1 + RELATIVE_ACCURACY) if lo >= 1 else 0.0
    upper = sketch.order_statistic(hi) / (1 - RELATIVE_ACCURACY) if hi < n else INF
    return lower, upper


def stage_alpha(alpha: float, stage: int) -> float:
    """The share of ``alpha`` for the 1-based ``stage``: ``alpha / (s (s + 1))``, which
    sums to ``alpha`` over any number of stages."""
    return alpha / (stage * (stage + 1))


def diff_quantiles(
    stages: Sequence[tuple[Sketch | None, Sketch | None]],
    q: float,
    alpha: float,
    a: float = 1.0,
) -> Interval:
    """Confidence sequence for ``Q_c(q) - a Q_b(q)``, stratified by stage.

    1. In stage ``s``, each arm's quantile gets a two-sided confidence sequence at half of
       ``stage_alpha(alpha / 2, s)``: all arms and stages hold together with probability
       ``1 - alpha / 2``, so each bound of the result errs with at most ``alpha / 2``,
       as the other intervals' bounds do.
    2. The stage's contrast interval is ``[L_c - a U_b, U_c - a L_b]``.
    3. Average the stages whose intervals are finite, weighted by effective sessions:
       when every stage's interval holds, any such average covers the same average of
       the stages' true contrasts.
    """
    parts: list[tuple[float, float, float, float]] = []  # weight, estimate, lower, upper
    info = 0.0
    for index, (cand, base) in enumerate(stages, start=1):
        if cand is None or base is None or cand.count == 0 or base.count == 0:
            continue
        share = stage_alpha(alpha / 2, index) / 2
        lc, uc = quantile_bounds(cand, q, share)
        lb, ub = quantile_bounds(base, q, share)
        weight = effective_n(cand.count, base.count, a)
        info += weight
        estimate = cand.quantile(q) - a * base.quantile(q)
        parts.append((weight, estimate, lc - a * ub, uc - a * lb))
    finite = [p for p in parts if math.isfinite(p[2]) and math.isfinite(p[3])]
    if not finite:
        if not parts:
            return UNBOUNDED
        weight = sum(p[0] for p in parts)
        estimate = sum(p[0] * p[1] for p in parts) / weight
        return Interval(estimate, -INF, INF, info)
    weight = sum(p[0] for p in finite)
    return Interval(
        sum(p[0] * p[1] for p in finite) / weight,
        sum(p[0] * p[2] for p in finite) / weight,
        sum(p[0] * p[3] for p in finite) / weight,
        info,
    )


# Sample-ratio mismatch ------------------------------------------------------------------


def srm_log_e(
    candidate: int, baseline: int, share: float, concentration: float = CONCENTRATION
) -> float:
    """log of the beta-binomial mixture e-value against "each assignment goes to the
    candidate with probability ``share``", after ``candidate`` and ``baseline``
    assignments (Lindon & Malek 2022, with two categories).

    The prior Beta(c share, c (1 - share)) is centred on the null, so the e-value grows
    only when the observed split leaves it. A share of 0 or 1 admits no assignment to
    the other arm: one is a certain mismatch.
    """
    if share <= 0:
        return INF if candidate > 0 else 0.0
    if share >= 1:
        return INF if baseline > 0 else 0.0
    a0, b0 = concentration * share, concentration * (1 - share)
    return (
        _log_beta(a0 + candidate, b0 + baseline)
        - _log_beta(a0, b0)
        - candidate * math.log(share)
        - baseline * math.log1p(-share)
    )

"""The survival estimate behind drain ETAs (rollouts/survival.py). Pure: no database."""

from __future__ import annotations

import bisect
import itertools
import math
import random
import statistics
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollouts import survival
from rollouts.survival import (
    Span,
    SurvivalCurve,
    drain_eta,
    grid_ceil,
    kaplan_meier,
    policy_drain_bound,
    slice_weight,
    window_span,
)

# Freireich et al. (1963), 6-MP arm, as analysed by Gehan (1965): weeks in remission,
# "+" marks a censored time. The textbook Kaplan-Meier table is below.
GEHAN_6MP = "6 6 6 6+ 7 9+ 10 10+ 11+ 13 16 17+ 19+ 20+ 22 23 25+ 32+ 32+ 34+ 35+"
GEHAN_6MP_KM = {6: 0.857, 7: 0.807, 10: 0.753, 13: 0.690, 16: 0.627, 22: 0.538, 23: 0.448}


def parse_remissions(text: str) -> tuple[list[float], list[bool]]:
    durations = [float(item.rstrip("+")) for item in text.split()]
    observed = [not item.endswith("+") for item in text.split()]
    return durations, observed


def ended(*durations: float) -> SurvivalCurve:
    return kaplan_meier(durations, [True] * len(durations))


# Kaplan-Meier


def test_it_matches_the_textbook_6mp_table():
    curve = kaplan_meier(*parse_remissions(GEHAN_6MP))

    assert curve.times == tuple(float(t) for t in GEHAN_6MP_KM)
    for t, expected in GEHAN_6MP_KM.items():
        assert round(curve.at(t), 3) == expected
    assert curve.events == 9
    assert curve.observations == 21


def test_the_6mp_curve_is_a_right_continuous_step_function():
    curve = kaplan_meier(*parse_remissions(GEHAN_6MP))

    assert curve.at(0) == 1.0
    assert curve.at(5.999) == 1.0
    assert round(curve.at(6.5), 3) == 0.857
    assert round(curve.at(9.999), 3) == 0.807
    for t in (23, 24, 25, 32, 35, 100, 1e9):
        assert round(curve.at(t), 3) == 0.448
    assert round(curve.tail, 3) == 0.448


def test_no_data_means_everyone_survives():
    curve = kaplan_meier([], [])

    assert curve.times == ()
    assert curve.survival == ()
    assert curve.at(0) == curve.at(1e6) == 1.0
    assert curve.tail == 1.0


def test_all_censored_means_everyone_survives():
    curve = kaplan_meier([5, 10, 10, 300], [False] * 4)

    assert curve.times == ()
    assert curve.at(1e6) == 1.0
    assert curve.events == 0
    assert curve.observations == 4


def test_a_single_event():
    curve = ended(42)

    assert curve.times == (42.0,)
    assert curve.survival == (0.0,)
    assert curve.at(41.9) == 1.0
    assert curve.at(42) == 0.0


def test_censorings_tied_with_events_are_still_at_risk():
    # At t=2, all four sessions are at risk: 1 of 4 ends, so S = 3/4. The censoring at
    # t=2 leaves 2 at risk for t=3, where 1 ends: S = 3/4 * 1/2.
    curve = kaplan_meier([2, 2, 3, 5], [True, False, True, False])

    assert curve.times == (2.0, 3.0)
    assert curve.survival == pytest.approx((0.75, 0.375))


def test_ties_between_events_count_together():
    curve = kaplan_meier([1, 1, 1, 2], [True, True, False, True])

    assert curve.survival == pytest.approx((0.5, 0.0))


def test_it_accepts_iterators():
    curve = kaplan_meier(iter([3.0, 1.0]), (o for o in (True, True)))

    assert curve.survival == (0.5, 0.0)


@pytest.mark.parametrize(
    ("durations", "observed", "message"),
    [
        ([1, 2], [True], "2 durations but 1 observed"),
        ([1], [True, False], "1 durations but 2 observed"),
        ([-1], [True], "finite and >= 0"),
        ([math.nan], [True], "finite and >= 0"),
        ([math.inf], [False], "finite and >= 0"),
    ],
)
def test_invalid_input_raises(durations, observed, message):
    with pytest.raises(ValueError, match=message):
        kaplan_meier(durations, observed)


def test_a_curve_checks_its_shape():
    with pytest.raises(ValueError, match="same length"):
        SurvivalCurve(times=(1.0, 2.0), survival=(0.5,))
    with pytest.raises(ValueError, match="strictly increasing"):
        SurvivalCurve(times=(2.0, 1.0), survival=(0.5, 0.2))


# Drain ETA


def test_sessions_that_always_last_100s():
    curve = ended(*[100] * 50)

    assert drain_eta(curve, [30]) == 70.0
    assert drain_eta(curve, [30, 0, 99.5]) == 100.0


def test_two_live_sessions_end_independently():
    # S = 1, 3/4, 1/2, 1/4, 0 from t = 0, 100, 200, 300, 400.
    # Aged 0: F1(x) = 1 - S(x).  Aged 150 (S = 3/4): F2(x) = 1 - S(150 + x) / (3/4).
    #   x   F1    F2    F1*F2
    #  100  1/4   1/3   1/12
    #  150  1/4   2/3   1/6
    #  200  1/2   2/3   1/3
    #  250  1/2   1     1/2   <- the first at or above 1/2
    curve = ended(100, 200, 300, 400)

    assert drain_eta(curve, [0, 150]) == 250.0
    # Alone, each is drained as soon as its own F reaches 1/2.
    assert drain_eta(curve, [0]) == 200.0
    assert drain_eta(curve, [150]) == 150.0
    # Two sessions aged 0 need F^2 >= 1/2, which first holds at F = 3/4.
    assert drain_eta(curve, [0, 0]) == 300.0
    assert drain_eta(curve, [0, 150], confidence=0.1) == 150.0
    assert drain_eta(curve, [0, 150], confidence=1.0) == 400.0


def test_no_live_sessions_is_drained_now():
    assert drain_eta(ended(100), []) == 0.0
    assert drain_eta(ended(100), [], caps=[]) == 0.0


def test_sessions_older_than_every_end_end_now():
    assert drain_eta(ended(100, 200), [250]) == 0.0


def test_a_censored_tail_has_no_estimate():
    # Half end at 100 s; the other half were still live at 500 s. S stays 1/2 for ever.
    curve = kaplan_meier([100, 500], [True, False])

    assert drain_eta(curve, [200]) is None
    assert drain_eta(curve, [200], caps=[1000]) == 1000.0
    # The young session ends at 100 with probability 1/2: just enough for the median.
    assert drain_eta(curve, [0]) == 100.0
    assert drain_eta(curve, [0], confidence=0.6) is None


def test_no_history_has_no_estimate():
    assert drain_eta(kaplan_meier([], []), [10]) is None
    assert drain_eta(kaplan_meier([], []), [10], caps=[60]) == 60.0


def test_the_policy_bound_caps_the_estimate():
    curve = ended(*[100] * 10)

    assert drain_eta(curve, [30], caps=[50]) == 50.0
    assert drain_eta(curve, [30], caps=[500]) == 70.0
    assert drain_eta(curve, [30], caps=[None]) == 70.0


def test_each_session_has_its_own_cap():
    # S = 1, 3/4, 1/2, 1/4, 0 from t = 0, 100, 200, 300, 400. Aged 0 and 150, the two
    # are drained by 250 s uncapped (see above). Cutting the older one off at 60 s
    # leaves the younger one alone: its median, 200 s.
    curve = ended(100, 200, 300, 400)

    assert drain_eta(curve, [0, 150], caps=[None, 60]) == 200.0
    # Cutting the younger one off at 120 s: G(120) = 1 * F2(120) = 1/3, and the older
    # one's F2 first reaches 1/2 at 150 s, where it is 2/3.
    assert drain_eta(curve, [0, 150], caps=[120, None]) == 150.0
    # A cap of 0 ends the session now.
    assert drain_eta(curve, [0, 150], caps=[0, None]) == 150.0
    # Caps make an estimate where a censored tail has none.
    tail = kaplan_meier([100, 500], [True, False])
    assert drain_eta(tail, [200, 300], caps=[400, 250]) == 400.0


def test_it_rounds_to_a_tenth_of_a_second():
    assert drain_eta(ended(100.04), [0.0]) == 100.0
    assert drain_eta(ended(100.26), [0.0]) == 100.3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"confidence": 0}, "confidence"),
        ({"confidence": 1.5}, "confidence"),
        ({"caps": [-1]}, "caps"),
        ({"caps": [math.nan]}, "caps"),
        ({"caps": [1, 2]}, "1 live ages but 2 caps"),
    ],
)
def test_drain_eta_rejects_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        drain_eta(ended(100), [1], **kwargs)


@pytest.mark.parametrize("age", [-1, math.nan, math.inf])
def test_drain_eta_rejects_bad_ages(age):
    with pytest.raises(ValueError, match="live ages"):
        drain_eta(ended(100), [age])


def test_policy_drain_bound():
    policy = {"max_session_age_s": 3600, "drain_grace_s": 300}

    # 3600 s until drain is sent, then 300 s of grace.
    assert policy_drain_bound(0, **policy) == 3900
    assert policy_drain_bound(3000, **policy) == 900
    assert policy_drain_bound(7200, **policy) == 300
    # Told to drain 100 s ago (an evacuation): what is left of the grace, whatever its age.
    assert policy_drain_bound(10, **policy, drained_for_s=100) == 200
    assert policy_drain_bound(10, **policy, drained_for_s=900) == 0
    # On a force-drained version, not told yet: told at its next heartbeat.
    assert policy_drain_bound(10, **policy, forced=True) == 300


# Properties

durations_st = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=1e5, allow_nan=False, allow_infinity=False),
        st.booleans(),
    ),
    max_size=60,
)


@given(durations_st, st.lists(st.floats(min_value=0, max_value=2e5), min_size=2, max_size=30))
def test_survival_is_a_nonincreasing_probability(observations, probes):
    curve = kaplan_meier([d for d, _ in observations], [o for _, o in observations])

    assert all(0.0 <= s <= 1.0 for s in curve.survival)
    assert all(b <= a for a, b in itertools.pairwise(curve.survival))
    probes.sort()
    values = [curve.at(t) for t in probes]
    assert all(b <= a for a, b in itertools.pairwise(values))


def _as_infinity(eta: float | None) -> float:
    return math.inf if eta is None else eta


@given(
    durations_st,
    st.lists(st.floats(min_value=0, max_value=2e5), max_size=20),
    st.floats(min_value=0, max_value=2e5),
    st.floats(min_value=0.01, max_value=1.0),
)
def test_another_live_session_never_drains_sooner(observations, ages, extra, confidence):
    curve = kaplan_meier([d for d, _ in observations], [o for _, o in observations])

    before = drain_eta(curve, ages, confidence=confidence)
    after = drain_eta(curve, [*ages, extra], confidence=confidence)

    assert _as_infinity(after) >= _as_infinity(before)


def brute_force_eta(
    curve: SurvivalCurve, ages: list[float], confidence: float, caps: list[float | None]
) -> float | None:
    """Try every candidate end time in order, straight from the definition."""
    rows = [
        (a, curve.at(a), math.inf if c is None else c)
        for a, c in zip(ages, caps, strict=True)
        if curve.at(a) > 0 and (c is None or c > 0)
    ]
    if not rows:
        return 0.0
    candidates = {t - a for a, _, c in rows for t in curve.times if t > a and t - a < c}
    candidates |= {c for _, _, c in rows if c < math.inf}
    for x in sorted(candidates):
        p = 1.0
        for a, s0, c in rows:
            p *= 1.0 if x >= c else 1.0 - curve.at(a + x) / s0
        if p >= confidence:
            return round(x, 1)
    return None


@settings(max_examples=300)
@given(
    st.lists(st.tuples(st.integers(0, 60), st.booleans()), max_size=60),
    st.lists(st.tuples(st.integers(0, 70), st.none() | st.integers(0, 80)), max_size=12),
    st.floats(min_value=0.01, max_value=1.0),
    st.sampled_from([1, survival._COLLECT_LIMIT]),
)
def test_drain_eta_finds_the_first_candidate(observations, live, confidence, collect_limit):
    # Integer times keep t - a exact, so the brute force sees the same candidates. A
    # collect limit of 1 drives the pivot narrowing down to its last candidate.
    curve = kaplan_meier([d for d, _ in observations], [o for _, o in observations])
    ages = [float(a) for a, _ in live]
    caps = [c for _, c in live]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(survival, "_COLLECT_LIMIT", collect_limit)
        eta = drain_eta(curve, ages, caps=caps, confidence=confidence)

    assert eta == brute_force_eta(curve, ages, confidence, caps)


# Simulation


def test_it_agrees_with_monte_carlo_on_exponential_sessions():
    rng = random.Random(7)
    mean = 600.0
    history = [rng.expovariate(1 / mean) for _ in range(3000)]
    live = [rng.uniform(0, 1800) for _ in range(50)]
    # Live sessions are censored at their age, as the fleet board feeds them.
    curve = kaplan_meier(history + live, [True] * len(history) + [False] * len(live))

    eta = drain_eta(curve, live)

    # Exponential sessions are memoryless: each live one has Exp(mean) left, whatever
    # its age, and the version is drained when the last of them ends.
    drained_at = [max(rng.expovariate(1 / mean) for _ in live) for _ in range(4000)]
    simulated = statistics.median(drained_at)
    assert eta is not None
    assert eta == pytest.approx(simulated, rel=0.25)


class CountedTuple(tuple):
    """A tuple that counts reads by index: the curve's times and survival values."""

    reads = 0

    def __getitem__(self, index):
        CountedTuple.reads += 1
        return tuple.__getitem__(self, index)


def reads_of_the_curve(curve: SurvivalCurve, fn) -> int:
    """How many values of ``curve`` ``fn(curve)`` reads: the work of any ETA algorithm,
    whatever its loops look like, and unlike seconds the same on every machine."""
    counted = SurvivalCurve(
        times=CountedTuple(curve.times),
        survival=CountedTuple(curve.survival),
        events=curve.events,
        observations=curve.observations,
    )
    CountedTuple.reads = 0
    fn(counted)
    return CountedTuple.reads


def budget(live: int, times: int) -> int:
    """O(m log k) per evaluation of G, O(log(m k)) evaluations (drain_eta's docstring),
    with room for the constants: far below the m * k candidates of a brute force."""
    return 50 * live * math.ceil(math.log2(times))


def test_it_reads_little_of_the_curve_for_a_large_fleet():
    rng = random.Random(11)
    history = [rng.expovariate(1 / 900) for _ in range(5000)]
    curve = ended(*history)
    live = [rng.uniform(0, 4000) for _ in range(2000)]

    assert len(curve.times) == 5000
    reads = reads_of_the_curve(curve, lambda c: drain_eta(c, live))
    # 10 million candidates; a few hundred thousand reads.
    assert reads <= budget(len(live), len(curve.times))
    assert reads_of_the_curve(curve, lambda c: drain_eta(c, live)) == reads  # deterministic


def test_it_reads_little_of_the_curve_when_durations_cluster():
    # Idle timeouts pile thousands of distinct durations just past one value. Here the
    # youngest session brackets the answer in the empty gap (100, 1000), and shifted by
    # their ages that gap covers the whole cluster for every other session: 8 million
    # candidates, which only the pivot narrowing gets through with few reads.
    rng = random.Random(13)
    history = [100.0] * 3000 + [1000 + rng.uniform(0, 5) for _ in range(4000)]
    curve = ended(*history)
    live = [0.0] + [rng.uniform(10, 900) for _ in range(1999)]

    eta = drain_eta(curve, live, confidence=0.3)

    assert eta is not None
    assert 100 < eta < 1000
    reads = reads_of_the_curve(curve, lambda c: drain_eta(c, live, confidence=0.3))
    assert reads <= budget(len(live), len(curve.times))


def test_the_read_count_catches_a_search_that_enumerates_the_candidates(monkeypatch):
    """Without the pivot narrowing (a collect limit nobody reaches), a clustered case
    enumerates every candidate in the bracket and blows the budget, even at a tenth of
    the size above; with it, the same case stays inside."""
    rng = random.Random(13)
    history = [100.0] * 300 + [1000 + rng.uniform(0, 5) for _ in range(400)]
    curve = ended(*history)
    live = [0.0] + [rng.uniform(10, 900) for _ in range(199)]
    narrowed = reads_of_the_curve(curve, lambda c: drain_eta(c, live, confidence=0.3))
    monkeypatch.setattr(survival, "_COLLECT_LIMIT", 10**9)
    enumerated = reads_of_the_curve(curve, lambda c: drain_eta(c, live, confidence=0.3))
    assert narrowed <= budget(len(live), len(curve.times)) < enumerated


# The estimate over a window: delayed entry, censoring, stratified samples

BASE = datetime(2026, 1, 1, tzinfo=UTC)


def median_of(curve: SurvivalCurve) -> float | None:
    return next((t for t, s in zip(curve.times, curve.survival, strict=True) if s <= 0.5), None)


def simulated_fleet(rng: random.Random, *, rate: float, history_s: float, median_s: float):
    """Sessions arriving at ``rate`` a second for ``history_s`` before BASE, lasting a
    lognormal time with median ``median_s``: [(started_at, duration_s)]."""
    sessions, t = [], -history_s
    while True:
        t += rng.expovariate(rate)
        if t >= 0:
            return sessions
        sessions.append((BASE + timedelta(seconds=t), rng.lognormvariate(math.log(median_s), 1.5)))


def window_estimate(sessions, *, window_s: float, strata: int, per_stratum: int):
    """What the fleet computes, from the raw sessions: every live one, and the ended ones
    of the window through a stratified sample of ``per_stratum`` per stratum."""
    window_start = BASE - timedelta(seconds=window_s)
    spans, weights, ended = [], [], []
    for started_at, duration in sessions:
        ends = started_at + timedelta(seconds=duration)
        if ends > BASE:
            span = window_span(
                state="live", started_at=started_at, ended_at=None, last_seen_at=BASE,
                drain_at=None, window_start=window_start, now=BASE,
            )  # fmt: skip
            spans.append(span)
            weights.append(1.0)
        elif ends >= window_start:
            ended.append((ends, started_at))
    ended.sort()
    keys = [e.timestamp() for e, _ in ended]
    width = window_s / strata
    for h in range(strata):
        low = window_start.timestamp() + h * width
        i = bisect.bisect_left(keys, low)
        read = ended[i : i + per_stratum]
        read = [row for row in read if row[0].timestamp() < low + width]
        kept, weight = slice_weight([e.timestamp() for e, _ in read], low, low + width, per_stratum)
        for ends, started_at in read[:kept]:
            span = window_span(
                state="ended", started_at=started_at, ended_at=ends, last_seen_at=ends,
                drain_at=None, window_start=window_start, now=BASE,
            )  # fmt: skip
            if span is not None:
                spans.append(span)
                weights.append(weight)
    return kaplan_meier(
        [s.exit for s in spans],
        [s.ended for s in spans],
        entries=[s.entry for s in spans],
        weights=weights,
        resolution=0.01,
    )


def test_the_window_estimate_recovers_a_lognormal_median():
    """A session a second for two days, lasting a lognormal time with a median of
    two hours (about 5% last more than a day). The 5,000 most recently started span
    83 minutes and cannot see the median at all; the window of one day, sampled 24 x
    200 ends with every live session censored and those older than the window entering
    late, finds it within 10%."""
    rng = random.Random(2026)
    median_s = 7200.0
    sessions = simulated_fleet(rng, rate=1.0, history_s=2 * 86400, median_s=median_s)
    assert sum(d > 86400 for _, d in sessions) > 5000  # long ones, past the old cut-off

    curve = window_estimate(sessions, window_s=86400, strata=24, per_stratum=200)
    assert curve.observations < 0.4 * len(sessions)
    assert median_of(curve) == pytest.approx(median_s, rel=0.10)
    # The long tail too: S(1 day) of this lognormal is 1 - Phi(ln(12) / 1.5) = 0.049.
    assert curve.at(86400) == pytest.approx(0.049, abs=0.015)

    # The previous estimate: the 5,000 most recently started, live ones censored.
    recent = sorted(sessions, reverse=True)[:5000]
    age = [(BASE - s).total_seconds() for s, _ in recent]
    old = kaplan_meier([min(d, a) for (_, d), a in zip(recent, age, strict=True)],
                       [d <= a for (_, d), a in zip(recent, age, strict=True)])  # fmt: skip
    assert median_of(old) is None


def test_policy_cuts_are_censored_not_events():
    start = BASE - timedelta(hours=2)
    window_start = BASE - timedelta(hours=1)

    def span(state, *, ended_after_s=None, seen_after_s=600, drained=False):
        ended_at = None if ended_after_s is None else start + timedelta(seconds=ended_after_s)
        return window_span(
            state=state,
            started_at=start,
            ended_at=ended_at,
            last_seen_at=start + timedelta(seconds=seen_after_s),
            drain_at=start + timedelta(seconds=60) if drained else None,
            window_start=window_start,
            now=BASE,
        )

    # Started an hour before the window: enters at 3600 s.
    assert span("live") == Span(3600.0, 7200.0, False)
    assert span("ended", ended_after_s=5000) == Span(3600.0, 5000.0, True)
    assert span("expired", ended_after_s=5000) == Span(3600.0, 5000.0, False)
    assert span("ended", ended_after_s=5000, drained=True) == Span(3600.0, 5000.0, False)
    # Abandoned: its end is its last heartbeat, here inside the window.
    assert span("abandoned", ended_after_s=6000, seen_after_s=4000) == Span(3600, 4000, True)
    # Its last heartbeat before the window: it was not live in it.
    assert span("abandoned", ended_after_s=4000, seen_after_s=3000) is None


def test_delayed_entry_keeps_late_entrants_out_of_early_risk_sets():
    # Two sessions from 0; one seen only from age 50 (it started before the window).
    # At t=10 one of the two at risk ends: S = 1/2. At t=100 the late one and the
    # survivor are at risk and one ends: S = 1/4. Without delayed entry, the late one
    # would have been at risk at t=10 too: S = 2/3.
    curve = kaplan_meier([10, 100, 200], [True, True, False], entries=[0, 0, 50])
    assert curve.survival == pytest.approx((0.5, 0.25))
    assert kaplan_meier([10, 100, 200], [True, True, False]).at(10) == pytest.approx(2 / 3)


def test_weights_count_as_that_many_sessions():
    weighted = kaplan_meier([10, 20], [True, True], weights=[3, 1])
    repeated = kaplan_meier([10, 10, 10, 20], [True] * 4)
    assert weighted.times == repeated.times
    assert weighted.survival == pytest.approx(repeated.survival)


def test_the_grid_bounds_the_curve_and_rounds_up():
    rng = random.Random(5)
    durations = [rng.lognormvariate(8, 2) for _ in range(20000)]
    curve = kaplan_meier(durations, [True] * len(durations), resolution=0.01)
    assert len(curve.times) < 1700
    assert all(grid_ceil(d, 0.01) >= d * (1 - 1e-9) for d in durations[:100])
    assert all(grid_ceil(d, 0.01) <= d * 1.0101 for d in durations[:100] if d > 1)
    assert median_of(curve) == pytest.approx(statistics.median(durations), rel=0.011)


@pytest.mark.parametrize(
    ("ends", "limit", "expected"),
    [
        ([1.0, 2.0], 5, (2, 1.0)),  # the whole stratum was read
        ([0.0, 1.0, 2.0, 4.0], 4, (3, 2.5)),  # [0, 4) of [0, 10) read: keep 3, weight 10/4
        ([0.0, 4.0, 4.0, 4.0], 4, (1, 2.5)),  # ties with the last read may go on
        ([3.0, 3.0], 2, (0, 1.0)),  # nothing but one tie: nothing known
    ],
)
def test_slice_weight(ends, limit, expected):
    assert slice_weight(ends, 0.0, 10.0, limit) == expected


def test_kaplan_meier_rejects_bad_entries_and_weights():
    with pytest.raises(ValueError, match="entries must be within"):
        kaplan_meier([10], [True], entries=[11])
    with pytest.raises(ValueError, match="weights must be"):
        kaplan_meier([10], [True], weights=[0])
    with pytest.raises(ValueError, match="one value per duration"):
        kaplan_meier([10], [True], entries=[0, 1])

"""The verdict of a rollout's gates and its sample-ratio check at one look.

``judge`` is pure: it reads per-stage summaries (from the rollups) and returns a
``Judgement`` that the engine acts on and stores (``to_dict`` is JSON-safe).

The error budget ``alpha`` is for the rollout as a whole, at every look: a share
``SRM_SHARE`` of it goes to the sample-ratio check and the rest is split evenly over the
critical gates, each of which spends its share on its worse-side bound. A rollout with
identical arms is therefore halted (a critical ``fail`` or a mismatch) with probability
at most ``alpha``, however often it is looked at. Each gate's better-side bound spends
the same share again, so its interval is a ``1 - 2 share`` confidence sequence; a wrong
``pass`` is the promotion risk, not a halt.

Verdicts, with the contrast oriented so that the tolerance reads in the metric's units:

- ``fail``: the interval lies wholly beyond the tolerance on the worse side;
- ``pass``: its worse-side bound is within the tolerance and both arms have at least
  ``min_samples`` sessions;
- ``inconclusive``: anything else, and always when data are missing or a metric source
  errored (never a pass);
- ``not_reported``: neither arm has any data for the metric; shown, not blocking.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from metrics import stats
from metrics.gates import FAIL, HIGHER, INCONCLUSIVE, METRICS, PASS
from metrics.summary import Summary

NOT_REPORTED = "not_reported"
OK, MISMATCH = "ok", "mismatch"

#: The share of ``alpha`` the sample-ratio check spends. A broken routing shows as a gross
#: mismatch within a few hundred assignments, so a small share costs it little and leaves
#: the gates almost all of the budget.
SRM_SHARE = 0.02
#: Sessions per arm (summed over stages) before any gate may pass.
MIN_SAMPLES = 50
SRM_REASON = "sample ratio mismatch"


@dataclass(frozen=True)
class Stratum:
    """One stage of the rollout, one metric: each arm's summary of sessions started in
    that stage."""

    candidate: Summary
    baseline: Summary


@dataclass(frozen=True)
class SrmStratum:
    """One stage: assignments per arm, and the weights (basis points) in force."""

    candidate_assigned: int
    baseline_assigned: int
    candidate_weight: int
    baseline_weight: int


@dataclass(frozen=True)
class GateResult:
    metric: str
    stat: str
    critical: bool
    verdict: str
    contrast: str  # what the interval is for, e.g. "candidate - baseline"
    tolerance: float
    n_candidate: int
    n_baseline: int
    alpha: float  # what the worse-side bound spends
    detail: str
    interval: stats.Interval | None = field(default=None, repr=False)

    # The interval's bounds are read on demand: a verdict needs only a comparison.
    @property
    def estimate(self) -> float | None:
        return _finite(self.interval.estimate) if self.interval else None

    @property
    def lower(self) -> float | None:
        """None when unbounded."""
        return _finite(self.interval.lower) if self.interval else None

    @property
    def upper(self) -> float | None:
        return _finite(self.interval.upper) if self.interval else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "stat": self.stat,
            "critical": self.critical,
            "verdict": self.verdict,
            "contrast": self.contrast,
            "estimate": self.estimate,
            "lower": self.lower,
            "upper": self.upper,
            "tolerance": self.tolerance,
            "n_candidate": self.n_candidate,
            "n_baseline": self.n_baseline,
            "alpha": self.alpha,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class SrmResult:
    verdict: str
    e_value: float
    p_value: float
    alpha: float
    counts: dict[str, int]
    expected: dict[str, float]
    stages: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Judgement:
    alpha: float
    gates: list[GateResult]
    srm: SrmResult
    any_critical_fail: bool
    all_pass: bool
    blocking: list[str]

    @property
    def halt_reason(self) -> str | None:
        """Why the engine must stop the rollout now, or None."""
        if self.srm.verdict == MISMATCH:
            return SRM_REASON
        if self.any_critical_fail:
            failed = [g.metric for g in self.gates if g.critical and g.verdict == FAIL]
            return f"critical gate failed: {', '.join(failed)}"
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "gates": [g.to_dict() for g in self.gates],
            "srm": asdict(self.srm),
            "summary": {
                "any_critical_fail": self.any_critical_fail,
                "all_pass": self.all_pass,
                "blocking": list(self.blocking),
                "halt_reason": self.halt_reason,
            },
        }


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _contrast(gate: dict[str, Any]) -> tuple[float, float, str]:
    """(multiplier a of the baseline, tolerance on candidate - a x baseline, label)."""
    metric = METRICS[gate["metric"]]
    if "max_relative_change" in gate:
        r = gate["max_relative_change"]
        a = 1 + r if metric.better != HIGHER else 1 - r
        return a, 0.0, f"candidate - {a:g} x baseline"
    if "max_increase" in gate:
        return 1.0, gate["max_increase"], "candidate - baseline"
    return 1.0, -gate["max_decrease"], "candidate - baseline"


def _interval(gate: dict[str, Any], strata: list[Stratum], alpha: float, a: float):
    metric = METRICS[gate["metric"]]
    if gate["stat"] == "p95":
        return stats.diff_quantiles(
            [(s.candidate.sketch, s.baseline.sketch) for s in strata], 0.95, alpha, a
        )
    if metric.kind == "rate":
        return stats.diff_proportions(
            [(s.candidate.total, s.candidate.n, s.baseline.total, s.baseline.n) for s in strata],
            alpha,
            a,
        )
    return stats.diff_means([(s.candidate, s.baseline) for s in strata], alpha, a)


def judge_gate(
    gate: dict[str, Any],
    strata: list[Stratum],
    *,
    alpha: float,
    min_samples: int = MIN_SAMPLES,
    source_error: str | None = None,
) -> GateResult:
    """One gate's verdict; ``alpha`` is what its worse-side bound may spend."""
    metric = METRICS[gate["metric"]]
    a, tolerance, contrast = _contrast(gate)
    n_c = sum(s.candidate.n for s in strata)
    n_b = sum(s.baseline.n for s in strata)

    def result(verdict: str, detail: str, interval: stats.Interval | None = None):
        return GateResult(
            metric=gate["metric"],
            stat=gate["stat"],
            critical=gate["critical"],
            verdict=verdict,
            contrast=contrast,
            tolerance=tolerance,
            n_candidate=int(n_c),
            n_baseline=int(n_b),
            alpha=alpha,
            detail=detail,
            interval=interval,
        )

    if source_error:
        return result(INCONCLUSIVE, f"metric source error: {source_error}")
    if n_c == 0 and n_b == 0:
        return result(NOT_REPORTED, "neither arm reports this metric")
    if n_c == 0:
        return result(INCONCLUSIVE, "the baseline reports this metric and the candidate does not")
    if n_b == 0:
        return result(INCONCLUSIVE, "the candidate reports this metric and the baseline does not")
    if gate["stat"] == "p95" and any(
        (s.candidate.n and s.candidate.sketch is None)
        or (s.baseline.n and s.baseline.sketch is None)
        for s in strata
    ):
        return result(INCONCLUSIVE, "no quantile sketch for this metric")
    interval = _interval(gate, strata, 2 * alpha, a)
    if metric.better == HIGHER:
        failed = interval.upper_below(tolerance)
        passed = interval.lower_at_least(tolerance)
    else:
        failed = interval.lower_above(tolerance)
        passed = interval.upper_at_most(tolerance)
    if failed:
        return result(
            FAIL, f"the whole interval is worse than the tolerance {tolerance:g}", interval
        )
    if passed and min(n_c, n_b) >= min_samples:
        return result(PASS, f"the interval is within the tolerance {tolerance:g}", interval)
    if passed:
        return result(
            INCONCLUSIVE,
            f"within the tolerance, but fewer than {min_samples} sessions per arm",
            interval,
        )
    return result(INCONCLUSIVE, "the interval straddles the tolerance", interval)


def judge_srm(srm: list[SrmStratum], alpha: float) -> SrmResult:
    """The sample-ratio check over all stages: per-stage mixture e-values, multiplied."""
    log_e = 0.0
    stages, seen = [], 0
    counts = {"candidate": 0, "baseline": 0}
    expected = {"candidate": 0.0, "baseline": 0.0}
    for s in srm:
        total_weight = s.candidate_weight + s.baseline_weight
        n = s.candidate_assigned + s.baseline_assigned
        counts["candidate"] += s.candidate_assigned
        counts["baseline"] += s.baseline_assigned
        if total_weight <= 0:
            stages.append({"candidate": s.candidate_assigned, "baseline": s.baseline_assigned})
            continue
        share = s.candidate_weight / total_weight
        stage_e = stats.srm_log_e(s.candidate_assigned, s.baseline_assigned, share)
        log_e += stage_e
        seen += n
        expected["candidate"] += n * share
        expected["baseline"] += n * (1 - share)
        stages.append(
            {
                "candidate": s.candidate_assigned,
                "baseline": s.baseline_assigned,
                "expected_candidate": n * share,
                "e_value": math.exp(min(stage_e, 700.0)),
            }
        )
    e_value = math.exp(min(log_e, 700.0))
    if log_e >= math.log(1 / alpha):
        verdict = MISMATCH
    elif seen == 0:
        verdict = INCONCLUSIVE
    else:
        verdict = OK
    return SrmResult(
        verdict=verdict,
        e_value=e_value,
        p_value=min(1.0, 1.0 / e_value),
        alpha=alpha,
        counts=counts,
        expected=expected,
        stages=stages,
    )


def judge(
    gates: list[dict[str, Any]],
    strata: dict[str, list[Stratum]],
    srm: list[SrmStratum],
    *,
    alpha: float = 0.05,
    min_samples: int = MIN_SAMPLES,
    source_errors: dict[str, str] | None = None,
) -> Judgement:
    """Judge every gate and the sample-ratio check at one look.

    1. Give the sample-ratio check ``SRM_SHARE`` of ``alpha``; split the rest evenly over
       the critical gates (non-critical gates never halt, and are shown at the same
       share).
    2. For each gate, compute the stratified confidence sequence of its contrast and
       compare it with the tolerance (``judge_gate``).
    3. Check the sample ratio over all stages (``judge_srm``).
    4. Summarise: a critical ``fail`` or a mismatch halts; every critical gate that is
       not a ``pass`` (``not_reported`` aside) blocks the advance.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), not {alpha!r}")
    source_errors = source_errors or {}
    srm_alpha = alpha * SRM_SHARE
    critical = sum(1 for g in gates if g["critical"])
    gate_alpha = (alpha - srm_alpha) / max(critical, 1)
    results = [
        judge_gate(
            gate,
            strata.get(gate["metric"], []),
            alpha=gate_alpha,
            min_samples=min_samples,
            source_error=source_errors.get(gate["metric"]),
        )
        for gate in gates
    ]
    srm_result = judge_srm(srm, srm_alpha)
    any_fail = any(r.critical and r.verdict == FAIL for r in results)
    blocking = [
        r.metric if r.stat == "mean" else f"{r.metric} ({r.stat})"
        for r in results
        if r.critical and r.verdict in (FAIL, INCONCLUSIVE)
    ]
    if srm_result.verdict == MISMATCH:
        blocking.append("sample ratio")
    return Judgement(
        alpha=alpha,
        gates=results,
        srm=srm_result,
        any_critical_fail=any_fail,
        all_pass=not blocking,
        blocking=blocking,
    )

"""The gate evaluation of a running rollout: what the beat and ``evaluate`` both call.

An evaluation reads only rollups (never sessions), so it costs what the rollout's epochs,
metrics and shards cost, whatever the traffic:

- the rollout's own routing changes (``RoutingChange``) say which epochs belong to which
  stage, and at which weights, so "started during this stage" and "started since the
  rollout began" are exact sets of epochs;
- per stage, each arm's ``Summary`` of every metric is the sum of its epochs' rollups,
  and the judge compares arms within each stage before combining stages;
- the sample-ratio check compares pins per arm with the weights of the epoch they were
  pinned at;
- a metric that a Prometheus source provides is read from that source's counters over
  each stage's time span instead, and a source in error makes its gates inconclusive.

``assess`` decides and writes nothing. ``record`` stores what it decided, so every look is
in the history, whether or not it led to a transition.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from metrics import rollups, sources
from metrics.judge import SrmStratum, Stratum, judge
from metrics.sources.prometheus import observed_summaries
from metrics.summary import Summary
from rollouts.models import Evaluation, Rollout, RoutingChange

ADVANCE, HOLD, HALT, ROLLBACK = "advance", "hold", "halt", "rollback"


@dataclass
class Span:
    """One stage's run: the epochs the rollout routed at during it, and when."""

    stage: int
    epochs: list[int] = field(default_factory=list)
    weights: dict[int, dict[int, int]] = field(default_factory=dict)  # epoch -> weights
    started_at: datetime | None = None
    ended_at: datetime | None = None


@dataclass
class Assessment:
    decision: str  # advance, hold, halt or rollback
    reason: str
    stage: int
    epoch: int
    report: dict[str, Any]


def spans(rollout: Rollout, now: datetime) -> list[Span]:
    """The rollout's stage runs, oldest first, from its routing changes.

    1. Each routing change the rollout made starts an epoch at the stage it moved to.
    2. Only epochs in which both arms had weight compare anything; a halt (candidate at
       0) ends the comparison until a resume starts the stage over.
    3. Consecutive epochs of the same stage form one span, so a stage that restarted
       after a halt is a fresh span: its samples start over, as its clock does.
    """
    changes = RoutingChange.objects.filter(rollout=rollout).order_by("epoch")
    result: list[Span] = []
    previous_stage: int | None = None
    for change in changes.only("epoch", "stage", "weights", "at", "action"):
        if result and result[-1].ended_at is None:
            result[-1].ended_at = change.at
        weights = {int(k): int(v) for k, v in (change.weights or {}).items()}
        both = weights.get(rollout.candidate_id, 0) > 0 and weights.get(rollout.baseline_id, 0) > 0
        if not both:
            previous_stage = None
            continue
        if previous_stage != change.stage or not result:
            result.append(Span(stage=change.stage, started_at=change.at))
        span = result[-1]
        span.ended_at = None
        span.epochs.append(change.epoch)
        span.weights[change.epoch] = weights
        previous_stage = change.stage
    return result


def _sum(
    stored: dict[tuple[int, int | None, str], Summary], arm: int, epochs: list[int], metric: str
) -> Summary:
    total = Summary()
    for epoch in epochs:
        part = stored.get((arm, epoch, metric))
        if part is not None:
            total.update(part)
    return total


def _stored(rollout: Rollout, runs: list[Span]) -> dict[tuple[int, int | None, str], Summary]:
    """The rollups a look reads, in one query: both arms over every compared epoch, for
    the gated metrics and the two counters (pins for the sample-ratio check, sessions
    with an outcome for ``min_sessions``)."""
    epochs = [epoch for span in runs for epoch in span.epochs]
    if not epochs:
        return {}
    metrics = {gate["metric"] for gate in rollout.gates} | set(rollups.COUNTERS)
    return rollups.summaries((rollout.candidate_id, rollout.baseline_id), epochs, metrics)


def _count(
    stored: dict[tuple[int, int | None, str], Summary], arm: int, epochs: list[int], metric: str
) -> int:
    return sum(part.n for e in epochs if (part := stored.get((arm, e, metric))) is not None)


def _strata(
    rollout: Rollout,
    runs: list[Span],
    now: datetime,
    by_source: set[str],
    stored: dict[tuple[int, int | None, str], Summary],
) -> dict[str, list[Stratum]]:
    arms = (rollout.candidate_id, rollout.baseline_id)
    strata: dict[str, list[Stratum]] = defaultdict(list)
    metrics = {gate["metric"] for gate in rollout.gates}
    for span in runs:
        observed = (
            observed_summaries(arms, span.started_at, span.ended_at or now) if by_source else {}
        )
        for metric in metrics:
            if metric in by_source:
                candidate = observed.get((rollout.candidate_id, metric), Summary())
                baseline = observed.get((rollout.baseline_id, metric), Summary())
            else:
                candidate = _sum(stored, rollout.candidate_id, span.epochs, metric)
                baseline = _sum(stored, rollout.baseline_id, span.epochs, metric)
            strata[metric].append(Stratum(candidate, baseline))
    return dict(strata)


def _srm(
    rollout: Rollout, runs: list[Span], stored: dict[tuple[int, int | None, str], Summary]
) -> list[SrmStratum]:
    result = []
    for span in runs:
        for epoch in span.epochs:
            weights = span.weights[epoch]
            result.append(
                SrmStratum(
                    candidate_assigned=_count(
                        stored, rollout.candidate_id, [epoch], rollups.ASSIGNED
                    ),
                    baseline_assigned=_count(
                        stored, rollout.baseline_id, [epoch], rollups.ASSIGNED
                    ),
                    candidate_weight=weights[rollout.candidate_id],
                    baseline_weight=weights[rollout.baseline_id],
                )
            )
    return result


def _gates_summary(gates: list[dict[str, Any]]) -> str:
    """What the gates said when none blocks: a pass with nothing to check is not a pass."""
    if not gates:
        return "no gates configured"
    critical = sum(1 for gate in gates if gate["critical"])
    if not critical:
        return f"no critical gates configured ({len(gates)} non-critical, not blocking)"
    return f"all {critical} critical gates pass"


def assess(rollout: Rollout, epoch: int, now: datetime | None = None) -> Assessment:
    """Decide what the rollout should do now (no writes).

    1. A source that failed ``PRISM_SOURCE_ERROR_LIMIT`` polls in a row halts: its
       gates cannot be judged, and waiting on them would hide the outage.
    2. A sample-ratio mismatch halts (routing is broken); a critical gate that fails
       halts, or rolls back with ``auto_rollback``.
    3. The stage advances when its running time has reached ``min_duration_s``, both
       arms have ``min_sessions`` sessions with an outcome started during this stage, and
       nothing blocks (every critical gate passes or is not reported).
    4. Past ``max_duration_s`` without passing, it halts as inconclusive.
    5. Otherwise it holds.
    """
    now = now or timezone.now()
    stage = rollout.stages[rollout.stage]
    runs = spans(rollout, now)
    standing = sources.standing(rollout.agent_id)
    failing = [
        source
        for source in standing.failing
        if source.consecutive_errors >= settings.PRISM_SOURCE_ERROR_LIMIT
    ]
    source_errors = standing.errors
    by_source = standing.from_prometheus
    stored = _stored(rollout, runs)
    judgement = judge(
        rollout.gates,
        _strata(rollout, runs, now, by_source, stored),
        _srm(rollout, runs, stored),
        alpha=settings.PRISM_GATE_ALPHA,
        min_samples=max(stage["min_sessions"], 1),
        source_errors=source_errors,
    )
    # min_sessions counts the current stage's run only (a resumed halt starts over).
    current = runs[-1].epochs if runs and runs[-1].stage == rollout.stage else []
    arms = {"candidate": rollout.candidate_id, "baseline": rollout.baseline_id}
    samples = {
        arm: _count(stored, version_id, current, rollups.WITH_OUTCOME)
        for arm, version_id in arms.items()
    }
    elapsed = rollout.stage_running_s(now)
    duration_ok = elapsed >= stage["min_duration_s"]
    samples_ok = min(samples.values()) >= stage["min_sessions"]
    if failing:
        worst = failing[0]
        decision = HALT
        reason = (
            f"metric source {worst.pk} ({worst.kind}) failed {worst.consecutive_errors} "
            f"polls in a row: {worst.last_error}"
        )
    elif judgement.halt_reason:
        decision = ROLLBACK if rollout.auto_rollback and judgement.any_critical_fail else HALT
        reason = judgement.halt_reason
    elif duration_ok and samples_ok and judgement.all_pass:
        decision = ADVANCE
        reason = f"stage conditions met; {_gates_summary(rollout.gates)}"
    elif stage["max_duration_s"] is not None and elapsed > stage["max_duration_s"]:
        decision = HALT
        reason = (
            f"inconclusive: stage {rollout.stage} ran past max_duration_s="
            f"{stage['max_duration_s']} without passing"
        )
    else:
        waiting = []
        if not duration_ok:
            waiting.append("minimum duration")
        if not samples_ok:
            waiting.append("minimum sessions")
        if judgement.blocking:
            waiting.append(f"gates ({', '.join(judgement.blocking)})")
        decision, reason = HOLD, "waiting for " + ", ".join(waiting)
    report = {
        "at": now.isoformat(),
        "stage": rollout.stage,
        "epoch": epoch,
        "percent": stage["percent"],
        "min_duration": {
            "ok": duration_ok,
            "elapsed_s": round(elapsed, 1),
            "required_s": stage["min_duration_s"],
        },
        "min_sessions": {"ok": samples_ok, "required": stage["min_sessions"], **samples},
        **judgement.to_dict(),
        "stages_compared": len(runs),
        "verdict": decision,
        "reason": reason,
    }
    return Assessment(decision, reason, rollout.stage, epoch, report)


def record(rollout: Rollout, assessment: Assessment, *, actor: str, now: datetime) -> Evaluation:
    """Keep the look in the rollout's evaluation history and, while the rollout is still
    at the stage it looked at, as its latest (on ``rollout`` too), in one transaction."""
    with transaction.atomic():
        evaluation = Evaluation.objects.create(
            rollout=rollout,
            at=now,
            actor=actor[:150],
            stage=assessment.stage,
            epoch=assessment.epoch,
            decision=assessment.decision,
            reason=assessment.reason,
            report=assessment.report,
        )
        latest = Rollout.objects.filter(pk=rollout.pk, stage=assessment.stage).update(
            last_evaluation=assessment.report, evaluated_at=now
        )
    if latest and rollout.stage == assessment.stage:
        rollout.last_evaluation, rollout.evaluated_at = assessment.report, now
    return evaluation

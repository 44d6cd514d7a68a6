"""The rollout state machine and every routing change.

Every transition is one transaction that locks the agent's routing row first, so the
beat, workers and humans acting on one agent are serialised by the database. Inside
the lock the rollout's state is re-read: once a rollback commits, a concurrent advance
finds the rollout closed and gives up, so rollback always wins.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

import events
from rollouts import evaluation
from rollouts.drain import apply_live_version_cap, force_version, live_counts
from rollouts.models import (
    FULL,
    OPEN_STATES,
    Evaluation,
    Lifecycle,
    Rollout,
    RolloutEvent,
    RolloutState,
    Routing,
    RoutingChange,
)
from rollouts.routing import validate_weights
from versions.audit import SYSTEM, record
from versions.diff import diff_versions
from versions.models import Agent, Version

DEFAULT_STAGES = (5, 25, 50, 100)
DEFAULT_MIN_DURATION_S = 600
DEFAULT_MIN_SESSIONS = 100
# Beyond this a stage's clock (datetime + timedelta) overflows; no stage waits that long.
MAX_STAGE_VALUE = 10 * 365 * 86400


class TransitionError(Exception):
    """The action is not allowed in the current state (answered with 409)."""


class StageError(ValueError):
    def __init__(self, errors: dict[str, Any]) -> None:
        super().__init__(str(errors))
        self.errors = errors


# --- specs ----------------------------------------------------------------------------


def validate_stages(stages: Any) -> list[dict[str, Any]]:
    """Normalise a stage list: percents rise strictly within (0, 100] and end at 100."""
    if stages is None:
        stages = [{"percent": p} for p in DEFAULT_STAGES]
    if not isinstance(stages, list) or not stages:
        raise StageError({"stages": "Expected a non-empty list of stages."})
    if len(stages) > 20:
        raise StageError({"stages": "At most 20 stages."})
    result, previous = [], 0.0
    for index, stage in enumerate(stages):
        where = f"stages[{index}]"
        if isinstance(stage, int | float) and not isinstance(stage, bool):
            stage = {"percent": stage}
        if not isinstance(stage, dict):
            raise StageError({where: "Expected an object {percent, ...}."})
        unknown = set(stage) - {"percent", "min_duration_s", "min_sessions", "max_duration_s"}
        if unknown:
            raise StageError({where: f"Unknown fields: {', '.join(sorted(unknown))}."})
        percent = stage.get("percent")
        if isinstance(percent, bool) or not isinstance(percent, int | float):
            raise StageError({where: "percent is required and must be a number."})
        if not 0 < percent <= 100:
            raise StageError({where: "percent must lie in (0, 100]."})
        if percent <= previous:
            raise StageError({where: "percents must rise strictly."})
        # In decimal, not binary floating point: 0.29 * 100 is 28.999999999999996.
        if Decimal(str(percent)) * 100 % 1 != 0:
            raise StageError({where: "percent has at most two decimals (basis points)."})
        normalised = {
            "percent": percent,
            "min_duration_s": _non_negative_int(
                stage, "min_duration_s", DEFAULT_MIN_DURATION_S, where
            ),
            "min_sessions": _non_negative_int(stage, "min_sessions", DEFAULT_MIN_SESSIONS, where),
            "max_duration_s": _non_negative_int(stage, "max_duration_s", None, where),
        }
        if (
            normalised["max_duration_s"] is not None
            and normalised["max_duration_s"] < normalised["min_duration_s"]
        ):
            raise StageError({where: "max_duration_s must not be below min_duration_s."})
        result.append(normalised)
        previous = percent
    if result[-1]["percent"] != 100:
        raise StageError({"stages": "The last stage must be 100 percent."})
    return result


def _non_negative_int(stage: dict, key: str, default: int | None, where: str) -> int | None:
    value = stage.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_STAGE_VALUE:
        raise StageError({where: f"{key} must be a whole number from 0 to {MAX_STAGE_VALUE}."})
    return value


# --- routing changes ------------------------------------------------------------------


def _lock_routing(agent: Agent) -> Routing:
    """Lock the agent's routing row, creating it on first use."""
    routing = Routing.objects.select_for_update().filter(agent=agent).first()
    if routing is None:
        try:
            with transaction.atomic():
                Routing.objects.create(agent=agent)
        except IntegrityError:
            pass  # created concurrently; the lock below waits for it
        routing = Routing.objects.select_for_update().get(agent=agent)
    return routing


def _set_weights(routing: Routing, weights: dict[int, int], now: datetime) -> dict[str, Any]:
    """Write new weights, bump the epoch and keep version lifecycles in step.

    1. Versions losing all weight start draining: record when, and how many sessions
       they had live at that moment (the denominator of drain progress).
    2. Versions gaining weight become active again: clear their drain marks.
    3. The epoch increments, so every cache keyed on it misses at the next read.
    4. The live-version cap applies now: a version that gets weight is live from this
       moment, so the first pin on it (on the hot path) needs no check of its own.
    """
    weights = {vid: w for vid, w in weights.items() if w > 0}
    validate_weights(weights)
    old = {int(k): int(v) for k, v in routing.weights.items() if int(v) > 0}
    losing = [vid for vid in old if vid not in weights]
    gaining = [vid for vid in weights if vid not in old]
    if losing:
        live = live_counts(routing.agent_id, losing)
        agent = Agent.objects.get(pk=routing.agent_id)
        for version in Version.objects.filter(pk__in=losing).order_by("pk"):
            data = events.version_ref(version, live_sessions=live.get(version.pk, 0))
            events.emit("version.draining", agent=agent, subject=version, data=data)
        for vid in losing:
            Lifecycle.objects.update_or_create(
                version_id=vid,
                defaults={
                    "agent_id": routing.agent_id,
                    "drain_started_at": now,
                    "live_at_drain_start": live.get(vid, 0),
                    "drained_at": None,
                    # A new drain: the ETA of any earlier one does not carry over.
                    "drain_eta_s": None,
                    "drain_eta_at": None,
                },
            )
    for vid in gaining:
        lifecycle, created = Lifecycle.objects.get_or_create(
            version_id=vid, defaults={"agent_id": routing.agent_id, "first_routed_at": now}
        )
        if not created:
            Lifecycle.objects.filter(pk=vid).update(
                drain_started_at=None,
                live_at_drain_start=None,
                drained_at=None,
                forced_drain_at=None,
                forced_drain_reason="",
                forced_terminate=False,
                drain_eta_s=None,
                drain_eta_at=None,
                first_routed_at=lifecycle.first_routed_at or now,
            )
    before = {"epoch": routing.epoch, "weights": routing.weights}
    routing.weights = {str(vid): w for vid, w in sorted(weights.items())}
    routing.epoch += 1
    routing.save(update_fields=["weights", "epoch", "updated_at"])
    apply_live_version_cap(routing, now)
    return {"before": before, "after": {"epoch": routing.epoch, "weights": routing.weights}}


def _set_stable(routing: Routing, version_id: int, *, drop: int | None = None) -> None:
    """Make ``version_id`` the stable, last in the history. ``drop`` leaves the history
    altogether: a stable that was rolled back is no target for the next rollback."""
    Agent.objects.filter(pk=routing.agent_id).update(stable_id=version_id)
    history = [vid for vid in routing.stable_history if vid not in (version_id, drop)]
    routing.stable_history = [*history, version_id][-50:]
    routing.save(update_fields=["stable_history", "updated_at"])


def _actor_name(actor: Any) -> str:
    return actor.get_username() if getattr(actor, "is_authenticated", False) else str(actor)


def _is_system(actor: Any) -> bool:
    return isinstance(actor, str) and actor == SYSTEM


def _log_change(
    routing: Routing,
    change: dict[str, Any] | None,
    *,
    actor: Any,
    action: str,
    now: datetime,
    rollout: Rollout | None = None,
) -> None:
    """Note who moved the routing to its new epoch, beside the audit entry."""
    if change is None:
        return
    RoutingChange.objects.create(
        agent_id=routing.agent_id,
        epoch=change["after"]["epoch"],
        at=now,
        actor=_actor_name(actor)[:150],
        system=_is_system(actor),
        rollout=rollout,
        stage=rollout.stage if rollout is not None else None,
        action=action,
        weights=change["after"]["weights"],
    )


def _only_the_beat_moved(agent_id: int, rollout: Rollout, *, since_epoch: int, epoch: int) -> bool:
    """Whether every routing change after ``since_epoch`` up to ``epoch`` was the beat
    moving ``rollout``: then what a person saw at ``since_epoch`` still describes the
    choice they made. Missing log rows (history from before the log) count against."""
    if since_epoch >= epoch:
        return False
    changes = list(
        RoutingChange.objects.filter(
            agent_id=agent_id, epoch__gt=since_epoch, epoch__lte=epoch
        ).values_list("system", "rollout_id")
    )
    return len(changes) == epoch - since_epoch and all(
        system and rollout_id == rollout.pk for system, rollout_id in changes
    )


def _evacuate(version_id: int, agent: Agent, now: datetime, actor: Any, reason: str) -> int:
    """Tell every live session of a version to drain (then terminate after the grace),
    including sessions pinned from a routing table read before this change."""
    told = force_version(
        version_id, agent, now, actor=actor, reason=reason, action="version.evacuated"
    )
    return told or 0


def set_stable(agent: Agent, version: Version, *, actor: Any, reason: str = "") -> Routing:
    """Route all new sessions to ``version``. Only when no rollout is open."""
    if version.agent_id != agent.pk:
        raise TransitionError("The version belongs to another agent.")
    with transaction.atomic():
        routing = _lock_routing(agent)
        open_rollout = Rollout.objects.filter(agent=agent, state__in=OPEN_STATES).first()
        if open_rollout is not None:
            raise TransitionError(
                f"Rollout {open_rollout.pk} is {open_rollout.state}; finish or roll it back "
                "before setting the stable directly."
            )
        now = timezone.now()
        change = _set_weights(routing, {version.pk: FULL}, now)
        _set_stable(routing, version.pk)
        _log_change(routing, change, actor=actor, action="agent.stable_set", now=now)
        record(
            "agent.stable_set",
            agent,
            actor=actor,
            reason=reason,
            before={**change["before"], "stable": agent.stable_id},
            after={**change["after"], "stable": version.pk},
        )
    agent.stable_id = version.pk
    return routing


# --- rollouts -------------------------------------------------------------------------


def _version_ref(version: Version) -> dict[str, Any]:
    return {"id": version.pk, "label": version.label, "fingerprint": version.fingerprint}


# What a rollout action (RolloutEvent.action) tells webhooks; advancing past the last
# stage is a promotion.
ANNOUNCED = {
    "start": "rollout.started",
    "supersede": "rollout.superseded",
    "pause": "rollout.paused",
    "resume": "rollout.resumed",
    "advance": "rollout.advanced",
    "auto_advance": "rollout.advanced",
    "halt": "rollout.halted",
    "rollback": "rollout.rolled_back",
    "auto_rollback": "rollout.rolled_back",
}


def _announce(
    rollout: Rollout,
    action: str,
    *,
    actor: Any,
    audit: Any,
    reason: str = "",
    evaluation: dict | None = None,
) -> None:
    """The event of a transition, in its transaction, beside its audit entry."""
    kind = ANNOUNCED[action]
    if kind == "rollout.advanced" and rollout.state == RolloutState.PROMOTED:
        kind = "rollout.promoted"
    data = {
        "rollout": rollout.pk,
        "state": rollout.state,
        "stage": rollout.stage,
        "percent": rollout.stages[rollout.stage]["percent"],
        "candidate": _version_ref(rollout.candidate),
        "baseline": _version_ref(rollout.baseline),
        "actor": _actor_name(actor),
        "reason": reason,
    }
    if evaluation is not None:
        data["evaluation"] = evaluation
    events.emit(kind, agent=rollout.agent, subject=rollout, data=data, audit=audit)
    if kind == "rollout.started" and rollout.state == RolloutState.PROMOTED:
        events.emit("rollout.promoted", agent=rollout.agent, subject=rollout, data=data)


def _event(
    rollout: Rollout,
    *,
    actor: Any,
    action: str,
    from_state: str,
    from_stage: int | None,
    reason: str = "",
    evaluation: dict | None = None,
) -> RolloutEvent:
    return RolloutEvent.objects.create(
        rollout=rollout,
        actor=_actor_name(actor),
        action=action,
        from_state=from_state,
        to_state=rollout.state,
        from_stage=from_stage,
        to_stage=rollout.stage,
        reason=reason,
        evaluation=evaluation,
    )


def _stage_weights(rollout: Rollout, stage: int) -> dict[int, int]:
    candidate_bp = round(rollout.stages[stage]["percent"] * 100)
    return {rollout.baseline_id: FULL - candidate_bp, rollout.candidate_id: candidate_bp}


def _close(rollout: Rollout, state: str, now: datetime) -> None:
    rollout.state = state
    rollout.ended_at = now
    rollout.save(update_fields=["state", "ended_at"])


def _promote(routing: Routing, rollout: Rollout, now: datetime) -> dict[str, Any]:
    change = _set_weights(routing, {rollout.candidate_id: FULL}, now)
    _set_stable(routing, rollout.candidate_id)
    _close(rollout, RolloutState.PROMOTED, now)
    return change


def start_rollout(
    agent: Agent,
    *,
    candidate: Version,
    baseline: Version | None = None,
    stages: list[dict[str, Any]],
    gates: list[dict[str, Any]],
    auto_rollback: bool = False,
    supersede: bool = False,
    actor: Any,
    reason: str = "",
) -> Rollout:
    """Start moving new sessions from the baseline to the candidate.

    1. Refuse if a rollout is open, unless ``supersede``: then the open one becomes
       ``superseded`` and its candidate loses its weight and drains.
    2. Route the first stage's percent to the candidate, the rest to the baseline.
       Every other version gets no new sessions.
    3. A first stage of 100 percent is a plain cutover: promote at once.
    """
    if candidate.agent_id != agent.pk:
        raise StageError({"candidate": "The candidate belongs to another agent."})
    now = timezone.now()
    with transaction.atomic():
        routing = _lock_routing(agent)
        agent = Agent.objects.get(pk=agent.pk)
        # Even with an explicit baseline: with nothing in production there is nothing to
        # compare against or roll back to. The first version is set with set_stable.
        if agent.stable_id is None:
            raise TransitionError(
                "The agent has no stable version to roll out from; set one first."
            )
        if baseline is None:
            baseline = Version.objects.get(pk=agent.stable_id)
        if baseline.agent_id != agent.pk:
            raise StageError({"baseline": "The baseline belongs to another agent."})
        if baseline.pk == candidate.pk:
            raise StageError({"candidate": "The candidate is the baseline itself."})
        open_rollout = (
            Rollout.objects.select_for_update().filter(agent=agent, state__in=OPEN_STATES).first()
        )
        if open_rollout is not None:
            if not supersede:
                raise TransitionError(
                    f"Rollout {open_rollout.pk} is {open_rollout.state}; send supersede: true "
                    "to replace it."
                )
            from_state = open_rollout.state
            _close(open_rollout, RolloutState.SUPERSEDED, now)
            _event(
                open_rollout,
                actor=actor,
                action="supersede",
                from_state=from_state,
                from_stage=open_rollout.stage,
                reason=reason or "superseded by a new rollout",
            )
            entry = record(
                "rollout.superseded",
                open_rollout,
                actor=actor,
                reason=reason,
                before={"state": from_state},
                after={"state": open_rollout.state},
            )
            _announce(open_rollout, "supersede", actor=actor, audit=entry, reason=reason)
        diff = diff_versions(baseline, candidate)
        warnings = []
        if len(stages) == 1 and diff["rainbow_required"]:
            warnings.append(
                "Single-stage cutover of a change that needs a rainbow: "
                + "; ".join(r["message"] for r in diff["reasons"] if r["rainbow"])
            )
        user = actor if getattr(actor, "is_authenticated", False) else None
        rollout = Rollout.objects.create(
            agent=agent,
            candidate=candidate,
            baseline=baseline,
            stages=stages,
            gates=gates,
            auto_rollback=auto_rollback,
            started_at=now,
            stage_started_at=now,
            created_by=user,
            warnings=warnings,
        )
        if stages[0]["percent"] == 100:
            change = _promote(routing, rollout, now)
        else:
            change = _set_weights(routing, _stage_weights(rollout, 0), now)
        _event(rollout, actor=actor, action="start", from_state="", from_stage=None, reason=reason)
        _log_change(
            routing, change, actor=actor, action="rollout.started", now=now, rollout=rollout
        )
        entry = record(
            "rollout.started",
            rollout,
            actor=actor,
            reason=reason,
            before=change["before"],
            after={
                **change["after"],
                "state": rollout.state,
                "candidate": candidate.pk,
                "baseline": baseline.pk,
                "stages": stages,
                "gates": gates,
                **(
                    {"note": "no gates configured: stages advance on time and sessions alone"}
                    if not gates
                    else {}
                ),
                "warnings": warnings,
            },
        )
        _announce(rollout, "start", actor=actor, audit=entry, reason=reason)
    return rollout


def _locked_rollout(rollout_id: int) -> tuple[Routing, Rollout]:
    rollout = Rollout.objects.select_related("agent").get(pk=rollout_id)
    routing = _lock_routing(rollout.agent)
    # Re-read under the agent lock: whatever committed before us is what we act on.
    return routing, Rollout.objects.select_related("agent").get(pk=rollout_id)


def _advance(routing: Routing, rollout: Rollout, now: datetime) -> dict[str, Any]:
    next_stage = rollout.stage + 1
    if next_stage >= len(rollout.stages) or rollout.stages[next_stage]["percent"] == 100:
        rollout.stage = min(next_stage, len(rollout.stages) - 1)
        _restart_stage_clock(rollout, now)
        rollout.save(update_fields=["stage", *STAGE_CLOCK])
        return _promote(routing, rollout, now)
    change = _set_weights(routing, _stage_weights(rollout, next_stage), now)
    rollout.stage = next_stage
    _restart_stage_clock(rollout, now)
    rollout.state = RolloutState.RUNNING
    rollout.save(update_fields=["stage", "state", *STAGE_CLOCK])
    return change


STAGE_CLOCK = ("stage_started_at", "paused_at", "stage_paused_s")


def _restart_stage_clock(rollout: Rollout, now: datetime) -> None:
    rollout.stage_started_at, rollout.paused_at, rollout.stage_paused_s = now, None, 0.0


def _rollback(routing: Routing, rollout: Rollout, now: datetime) -> dict[str, Any]:
    change = _set_weights(routing, {rollout.baseline_id: FULL}, now)
    if rollout.state == RolloutState.PROMOTED:
        # The candidate was the stable: the baseline is again, and the candidate is no
        # longer a stable to return to.
        _set_stable(routing, rollout.baseline_id, drop=rollout.candidate_id)
    elif rollout.agent.stable_id != rollout.baseline_id:
        _set_stable(routing, rollout.baseline_id)
    _close(rollout, RolloutState.ROLLED_BACK, now)
    return change


def _only_the_beat_moved_past(rollout: Rollout, stage: int) -> bool:
    """Whether the rollout left ``stage`` for later ones only through the beat: every
    stage change is a routing change, and the log says who made each."""
    if stage >= rollout.stage:
        return False
    movers = set(
        RoutingChange.objects.filter(rollout=rollout, stage__gt=stage).values_list(
            "system", flat=True
        )
    )
    return movers == {True}


def _why_not_rolled_back(rollout: Rollout) -> str | None:
    """Why a closed rollout can no longer be rolled back, or None if it can.

    A promoted rollout still can while its candidate is the stable and no newer rollout
    has started: rolling it back then is the same one routing write as before the
    promotion, so a rollback decided just before the beat promoted still goes ahead.
    """
    if rollout.state in OPEN_STATES:
        return None
    if rollout.state != RolloutState.PROMOTED:
        return f"Cannot rollback a rollout that is {rollout.state}."
    if Rollout.objects.filter(agent_id=rollout.agent_id, pk__gt=rollout.pk).exists():
        return (
            "A newer rollout has started since this one was promoted; roll back the agent "
            "or the newer rollout instead."
        )
    if Agent.objects.filter(pk=rollout.agent_id).values_list("stable_id", flat=True).get() != (
        rollout.candidate_id
    ):
        return "The stable has moved on since this rollout was promoted."
    return None


def _halt(routing: Routing, rollout: Rollout, now: datetime) -> dict[str, Any]:
    change = _set_weights(routing, {rollout.baseline_id: FULL}, now)
    rollout.state = RolloutState.HALTED
    rollout.save(update_fields=["state"])
    return change


ALLOWED = {
    "pause": {RolloutState.RUNNING},
    "resume": {RolloutState.PAUSED, RolloutState.HALTED},
    "advance": set(OPEN_STATES),
    # Rollback always wins: also a promoted rollout, within _why_not_rolled_back's rules.
    "rollback": {*OPEN_STATES, RolloutState.PROMOTED},
    "evaluate": {RolloutState.RUNNING},
}


def transition(
    rollout_id: int,
    action: str,
    *,
    actor: Any,
    reason: str = "",
    evacuate: bool = False,
    expect_stage: int | None = None,
    now: datetime | None = None,
) -> Rollout:
    """Apply a human (or beat) action to a rollout, atomically and audited.

    ``expect_stage`` makes the action conditional on the stage the caller saw (or the
    beat evaluated), so an action decided before a concurrent change is dropped. A
    rollback is the exception: it still applies if only the beat moved the rollout on
    since, because rollback always wins. ``now`` is the time the action (and an
    evaluation) applies at; the wall clock by default.
    """
    if action not in ALLOWED:
        raise ValueError(f"unknown action {action!r}")
    if action == "evaluate":
        return evaluate(rollout_id, actor=actor, expect_stage=expect_stage, now=now)
    now = now or timezone.now()
    with transaction.atomic():
        routing, rollout = _locked_rollout(rollout_id)
        if rollout.state not in ALLOWED[action]:
            raise TransitionError(f"Cannot {action} a rollout that is {rollout.state}.")
        if action == "rollback" and (refusal := _why_not_rolled_back(rollout)):
            raise TransitionError(refusal)
        if (
            expect_stage is not None
            and rollout.stage != expect_stage
            and not (action == "rollback" and _only_the_beat_moved_past(rollout, expect_stage))
        ):
            raise TransitionError(
                f"The rollout is at stage {rollout.stage} now, not stage {expect_stage}; "
                "look again."
            )
        from_state, from_stage = rollout.state, rollout.stage
        evaluation = None
        if action == "pause":
            rollout.state = RolloutState.PAUSED
            rollout.paused_at = now
            rollout.save(update_fields=["state", "paused_at"])
            change = None
        elif action == "resume":
            change = None
            if rollout.state == RolloutState.HALTED:
                # A halted stage starts over: its samples and its clock.
                change = _set_weights(routing, _stage_weights(rollout, rollout.stage), now)
                _restart_stage_clock(rollout, now)
            elif rollout.paused_at is not None:
                pause = max((now - rollout.paused_at).total_seconds(), 0.0)
                rollout.stage_paused_s += pause
                rollout.paused_at = None
            rollout.state = RolloutState.RUNNING
            rollout.save(update_fields=["state", *STAGE_CLOCK])
        elif action == "advance":
            change = _advance(routing, rollout, now)
            reason = reason or "manual override"
        elif action == "rollback":
            change = _rollback(routing, rollout, now)
        else:  # evaluate: decided outside the lock, by evaluate() below
            raise AssertionError("evaluate goes through engine.evaluate")
        if action in ("rollback", "auto_rollback") and evacuate:
            _evacuate(
                rollout.candidate_id,
                rollout.agent,
                now,
                actor,
                reason or f"evacuated by rollback of rollout {rollout.pk}",
            )
        _event(
            rollout,
            actor=actor,
            action=action,
            from_state=from_state,
            from_stage=from_stage,
            reason=reason,
            evaluation=evaluation,
        )
        _log_change(
            routing, change, actor=actor, action=f"rollout.{action}", now=now, rollout=rollout
        )
        entry = record(
            f"rollout.{action}",
            rollout,
            actor=actor,
            reason=reason,
            before={
                "state": from_state,
                "stage": from_stage,
                **(change["before"] if change else {}),
            },
            after={
                "state": rollout.state,
                "stage": rollout.stage,
                **(change["after"] if change else {}),
                **({"evaluation": evaluation} if evaluation else {}),
            },
        )
        _announce(rollout, action, actor=actor, audit=entry, reason=reason)
    return rollout


def _act_on(routing: Routing, rollout: Rollout, decision: str, now: datetime) -> dict[str, Any]:
    if decision == evaluation.ADVANCE:
        return _advance(routing, rollout, now)
    if decision == evaluation.HALT:
        return _halt(routing, rollout, now)
    if decision == evaluation.ROLLBACK:
        return _rollback(routing, rollout, now)
    raise ValueError(f"no transition for {decision!r}")


_AUTOMATIC = {
    evaluation.ADVANCE: "auto_advance",
    evaluation.HALT: "halt",
    evaluation.ROLLBACK: "auto_rollback",
}


def evaluate(
    rollout_id: int,
    *,
    actor: Any = SYSTEM,
    expect_stage: int | None = None,
    now: datetime | None = None,
) -> Rollout:
    """Look at a running rollout's gates and act on the decision: the beat's tick and
    ``POST /rollouts/{id}/evaluate/`` both come here.

    1. Read the rollout and its routing epoch, without a lock.
    2. Assess outside any lock (``evaluation.assess``: rollups only), and record the
       look in the evaluation history whatever it decides.
    3. For anything but ``hold``, lock the agent's routing and apply the decision only
       if the rollout is still running at the stage and routing epoch it was computed
       for. A person (or another worker) who acted in between wins, and the stale
       decision is dropped: rollback always wins over an automatic advance.
    """
    now = now or timezone.now()
    rollout = Rollout.objects.select_related("agent__routing").get(pk=rollout_id)
    if rollout.state not in ALLOWED["evaluate"]:
        raise TransitionError(f"Cannot evaluate a rollout that is {rollout.state}.")
    if expect_stage is not None and rollout.stage != expect_stage:
        raise TransitionError(
            f"The rollout is at stage {rollout.stage} now, not stage {expect_stage}; look again."
        )
    epoch = rollout.agent.routing.epoch
    assessment = evaluation.assess(rollout, epoch, now)
    looked = evaluation.record(rollout, assessment, actor=_actor_name(actor), now=now)
    if assessment.decision == evaluation.HOLD:
        if rollout.evaluated_at != now:
            # The look did not become the latest: the rollout moved on meanwhile.
            rollout.refresh_from_db()
        return rollout
    with transaction.atomic():
        routing, rollout = _locked_rollout(rollout_id)
        if (
            rollout.state != RolloutState.RUNNING
            or rollout.stage != assessment.stage
            or routing.epoch != epoch
        ):
            # Someone (a person, another worker) moved it first: their change stands.
            raise TransitionError(
                "The rollout moved on while it was being evaluated; the evaluation is "
                "kept, its decision dropped. Look again."
            )
        from_state, from_stage = rollout.state, rollout.stage
        change = _act_on(routing, rollout, assessment.decision, now)
        action = _AUTOMATIC[assessment.decision]
        report = assessment.report
        _event(
            rollout,
            actor=actor,
            action=action,
            from_state=from_state,
            from_stage=from_stage,
            reason=assessment.reason,
            evaluation=report,
        )
        _log_change(
            routing, change, actor=actor, action=f"rollout.{action}", now=now, rollout=rollout
        )
        entry = record(
            f"rollout.{action}",
            rollout,
            actor=actor,
            reason=assessment.reason,
            before={"state": from_state, "stage": from_stage, **change["before"]},
            after={
                "state": rollout.state,
                "stage": rollout.stage,
                **change["after"],
                "evaluation": report,
            },
        )
        _announce(
            rollout, action, actor=actor, audit=entry, reason=assessment.reason, evaluation=report
        )
        if report.get("srm", {}).get("verdict") == "mismatch":
            # Once per rollout and stage: a resumed stage that mismatches again is no news.
            srm = {"rollout": rollout.pk, "stage": from_stage, **report["srm"]}
            srm["percent"] = rollout.stages[from_stage]["percent"]
            events.emit(
                "rollout.sample_ratio_mismatch",
                agent=rollout.agent,
                subject=rollout,
                data=srm,
                once=f"srm:{rollout.pk}:{from_stage}",
            )
        Evaluation.objects.filter(pk=looked.pk).update(applied=True)
    return rollout


def rollback_agent(
    agent: Agent,
    *,
    actor: Any,
    reason: str = "",
    evacuate: bool = False,
    expect_epoch: int | None = None,
) -> Routing:
    """One-click rollback: roll back the agent's latest rollout while that is still
    possible (open, or promoted with its candidate still the stable), or else return to
    the previous stable. Either way it is one routing write, visible to the next
    assignment.

    ``expect_epoch`` is the routing epoch the caller looked at, so a double click or a
    retried request does not roll back a second step:
    1. at the current epoch, the rollback goes ahead;
    2. at an older one, it goes ahead only if every change since was the beat moving
       the rollout being rolled back (rollback wins over an automatic advance or
       promotion the person did not see);
    3. otherwise it is refused.
    """
    with transaction.atomic():
        routing = _lock_routing(agent)
        agent = Agent.objects.get(pk=agent.pk)
        latest = Rollout.objects.filter(agent=agent).order_by("-id").first()
        target = latest if latest is not None and not _why_not_rolled_back(latest) else None
        if (
            expect_epoch is not None
            and routing.epoch != expect_epoch
            and not (
                target is not None
                and _only_the_beat_moved(
                    agent.pk, target, since_epoch=expect_epoch, epoch=routing.epoch
                )
            )
        ):
            raise TransitionError(
                f"Routing changed since epoch {expect_epoch} (now {routing.epoch}); "
                "look again before rolling back."
            )
        if target is not None:
            transition(target.pk, "rollback", actor=actor, reason=reason, evacuate=evacuate)
            routing.refresh_from_db()
            return routing
        current = agent.stable_id
        previous = [vid for vid in routing.stable_history if vid != current]
        if current is None or not previous:
            raise TransitionError("There is no previous stable version to roll back to.")
        target_id = previous[-1]
        now = timezone.now()
        change = _set_weights(routing, {target_id: FULL}, now)
        Agent.objects.filter(pk=agent.pk).update(stable_id=target_id)
        # Pop the rolled-back stable so a second rollback goes one further back.
        routing.stable_history = [vid for vid in routing.stable_history if vid != current]
        routing.save(update_fields=["stable_history", "updated_at"])
        if evacuate:
            _evacuate(current, agent, now, actor, reason or "evacuated by agent rollback")
        _log_change(routing, change, actor=actor, action="agent.rollback", now=now)
        record(
            "agent.rollback",
            agent,
            actor=actor,
            reason=reason,
            before={**change["before"], "stable": current},
            after={**change["after"], "stable": target_id},
        )
    return routing


def evaluate_open_rollouts(now: datetime | None = None) -> dict[str, int]:
    """Evaluate every running rollout in turn (the beat fans out batches of rollouts
    instead; this is the same work in one process). Safe to run concurrently and to
    retry: each decision applies only at the stage and epoch it was computed for."""
    tally = {"evaluated": 0, "changed": 0}
    for rollout_id, stage in Rollout.objects.filter(state=RolloutState.RUNNING).values_list(
        "pk", "stage"
    ):
        tally["evaluated"] += 1
        try:
            after = evaluate(rollout_id, actor=SYSTEM, expect_stage=stage, now=now)
        except (TransitionError, Rollout.DoesNotExist):
            continue  # a human or another worker acted first; their change stands
        if (after.state, after.stage) != (RolloutState.RUNNING, stage):
            tally["changed"] += 1
    return tally


def stage_deadline(rollout: Rollout) -> datetime | None:
    """When the current stage runs out of ``max_duration_s``: none without a limit, and
    none while paused, since the stage clock stands still."""
    stage = rollout.stages[rollout.stage]
    if stage["max_duration_s"] is None or rollout.paused_at is not None:
        return None
    return rollout.stage_started_at + timedelta(
        seconds=stage["max_duration_s"] + rollout.stage_paused_s
    )

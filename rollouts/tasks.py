"""The beat's periodic work, and rollout transitions run as tasks. Tasks are thin, idempotent
and record ``system`` as actor."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from celery import Task, shared_task
from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, transaction

from controlplane import taskruns
from controlplane.models import TaskRun
from rollouts import drain, engine, fleet, retention, snapshots
from rollouts.models import Rollout, RolloutState
from versions.audit import SYSTEM
from versions.models import Agent

log = logging.getLogger(__name__)


def fan_out(task: Task, items: list, *, expires: float) -> int:
    """Send ``task`` once per batch of ``PRISM_BEAT_BATCH`` items, each message expiring
    with the tick: a backlog never replays stale passes, and the next tick covers what
    a dropped one would have done. Batches, not one task per item, because a task's
    round trip through the broker costs more than most agents' work; the worker's
    processes still share the batches, and one slow agent delays only its batch.
    Returns how many items it sent."""
    size = settings.PRISM_BEAT_BATCH
    for i in range(0, len(items), size):
        task.apply_async((items[i : i + size],), expires=expires)
    return len(items)


def each(items: list, one: Callable[[Any], Any]) -> dict:
    """{item: one(item)} for a batch. Every item runs even if one before it raised: the
    first error is raised after the rest, so the task is still marked failed."""
    results = {}
    first_error: Exception | None = None
    for item in items:
        try:
            results[item] = one(item)
        except Exception as exc:
            log.exception("%r failed in its batch; the rest of the batch runs", item)
            first_error = first_error or exc
    if first_error is not None:
        raise first_error
    return results


@shared_task(ignore_result=True)
def enforce_drain_policies() -> int:
    """Fan out: the policy pass in batches of agents (``enforce_agent_drain_policies``),
    so a tick costs what its busiest batch costs rather than the sum of all agents.
    Returns how many agents it covered."""
    agent_ids = list(Agent.objects.order_by("pk").values_list("pk", flat=True))
    return fan_out(
        enforce_agent_drain_policies, agent_ids, expires=float(settings.PRISM_BEAT_SECONDS)
    )


def _drain_pass(agent_id: int) -> dict:
    agent = Agent.objects.filter(pk=agent_id).first()
    if agent is None:
        return {}  # deleted since the tick
    outcome = drain.enforce_policies(agent)
    # A drain that started or was forced since the last survival estimate gets its ETA
    # now, so the fleet computes it per request for at most one tick.
    outcome["etas"] = fleet.refresh_drain_etas(agent, stale_only=True)
    if any(outcome.values()):
        log.info("drain policies for %s: %s", agent.slug, outcome)
    return outcome


@shared_task(ignore_result=True)
def enforce_agent_drain_policies(agent_ids: int | list[int]) -> dict:
    """Idle sessions to abandoned, overdue drains to expired, the live-version cap,
    drained versions noticed, and new drains' ETAs stored, for one agent (its outcome)
    or a batch ({agent id: outcome}). Idempotent: every step is a conditional write, so
    a duplicate or overlapping pass changes nothing twice."""
    if isinstance(agent_ids, int):
        return _drain_pass(agent_ids)
    return each(agent_ids, _drain_pass)


@shared_task(ignore_result=True)
def apply_retention() -> int:
    """Fan out: retention in batches of agents (``apply_agent_retention``), expiring
    with the run's interval. Returns how many agents it covered."""
    agent_ids = list(Agent.objects.order_by("pk").values_list("pk", flat=True))
    return fan_out(
        apply_agent_retention, agent_ids, expires=float(settings.PRISM_RETENTION_SECONDS)
    )


def _retention(agent_id: int) -> dict:
    agent = Agent.objects.filter(pk=agent_id).first()
    if agent is None:
        return {}
    deleted = retention.apply(agent)
    if any(deleted.values()):
        log.info("retention for %s deleted %s", agent.slug, deleted)
    return deleted


@shared_task(ignore_result=True)
def apply_agent_retention(agent_ids: int | list[int]) -> dict:
    """Delete one agent's (or a batch's) sessions, outcomes, evaluations and snapshots
    past their retention, a bounded amount per run (``rollouts.retention``). Logged, not
    audited."""
    if isinstance(agent_ids, int):
        return _retention(agent_ids)
    return each(agent_ids, _retention)


@shared_task(ignore_result=True)
def evaluate_rollouts() -> int:
    """Fan out: the running rollouts' evaluations in batches (``evaluate_rollout``), so
    a tick costs what its busiest batch costs, not the sum of all of them. Returns how
    many rollouts it covered."""
    running = [
        [pk, stage]
        for pk, stage in Rollout.objects.filter(state=RolloutState.RUNNING).values_list(
            "pk", "stage"
        )
    ]
    return fan_out(evaluate_rollout, running, expires=float(settings.PRISM_EVALUATE_SECONDS))


def _look(rollout_id: int, stage: int) -> str:
    try:
        after = engine.evaluate(rollout_id, actor=SYSTEM, expect_stage=stage)
    except (engine.TransitionError, Rollout.DoesNotExist):
        return "skipped"  # it moved on, or a person acted first
    return f"{after.state}@{after.stage}"


@shared_task(ignore_result=True)
def evaluate_rollout(rollout_id: int | list[list[int]], stage: int | None = None) -> str | dict:
    """Evaluate one rollout's gates at the stage the tick saw, and act on the decision
    (``engine.evaluate``); or a batch of ``[rollout id, stage]`` pairs ({rollout id:
    outcome}). Idempotent, since a decision applies only at the stage and routing epoch
    it was computed for."""
    if isinstance(rollout_id, int):
        if stage is None:
            raise TypeError("evaluate_rollout(rollout_id, stage) needs the stage the tick saw")
        return _look(rollout_id, stage)
    stages = {int(pk): int(at) for pk, at in rollout_id}
    return each(list(stages), lambda pk: _look(pk, stages[pk]))


@shared_task(ignore_result=True)
def record_fleet_snapshots() -> dict[str, int]:
    """This tick's live sessions per version of every agent, then a bounded step of
    thinning old snapshots."""
    return {"agents": snapshots.record(), "deleted": snapshots.downsample()}


@shared_task(
    bind=True,
    ignore_result=True,
    acks_late=True,
    reject_on_worker_lost=True,
    # A database outage fails the attempt before it changed anything; try again later.
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=True,
    max_retries=8,
)
def apply_transition(self: Task, rollout_id: int, action: str, expected_stage: int) -> str:
    """Apply ``action`` to a rollout as ``system``, only while it is at ``expected_stage``.

    At least once in, exactly once applied: the broker may run this twice for one message
    (a worker killed before it acknowledged), and the second run finds the rollout moved
    on and changes nothing. Each attempt is in the task-run ledger.

    1. Record the attempt (committed at once).
    2. In one transaction, apply the transition conditionally on the stage, and mark the
       attempt ``applied``; a rollout that moved on (or is gone) marks it ``skipped``.
    3. Return the outcome.
    """
    run = taskruns.begin(self.request, self.name, [rollout_id, action, expected_stage])
    try:
        with transaction.atomic():
            rollout = engine.transition(
                rollout_id,
                action,
                actor=SYSTEM,
                reason=f"{action} requested by task {self.request.id}",
                expect_stage=expected_stage,
            )
            taskruns.finish(
                run, TaskRun.Outcome.APPLIED, f"now {rollout.state} at stage {rollout.stage}"
            )
    except (engine.TransitionError, Rollout.DoesNotExist) as exc:
        taskruns.finish(run, TaskRun.Outcome.SKIPPED, str(exc) or "no such rollout")
    except Exception as exc:
        # With the database gone the ledger cannot be written either; the row stays
        # unfinished, which is the truth, and the original error propagates.
        with contextlib.suppress(DatabaseError):
            taskruns.finish(run, TaskRun.Outcome.FAILED, repr(exc))
        raise
    if run.outcome == TaskRun.Outcome.APPLIED and settings.PRISM_TEST_ONLY_PAUSE_AFTER_TRANSITION_S:
        # The window between the change committing and the message being acknowledged.
        time.sleep(settings.PRISM_TEST_ONLY_PAUSE_AFTER_TRANSITION_S)
    return run.outcome


def _estimate(agent_id: int) -> int:
    agent = Agent.objects.filter(pk=agent_id).first()
    if agent is not None:
        fleet.refresh_estimate(agent)
        fleet.refresh_drain_etas(agent)
    return int(agent is not None)


@shared_task(ignore_result=True)
def estimate_survival(agent_id: int | list[int] | None = None) -> int:
    """Recompute an agent's (or a batch's) stored survival curve
    (``fleet.refresh_estimate``) and its draining versions' ETAs from it
    (``fleet.refresh_drain_etas``); without an agent, fan out in batches, each expiring
    with the interval. Returns how many agents it covered."""
    if isinstance(agent_id, int):
        return _estimate(agent_id)
    if agent_id is not None:
        return sum(each(agent_id, _estimate).values())
    ids = list(Agent.objects.order_by("pk").values_list("pk", flat=True))
    return fan_out(estimate_survival, ids, expires=float(settings.PRISM_SURVIVAL_SECONDS))

"""The beat's periodic work, and rollout transitions run as tasks. Tasks are thin, idempotent
and record ``system`` as actor."""

from __future__ import annotations

import contextlib
import logging
import time

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


@shared_task(ignore_result=True)
def enforce_drain_policies() -> int:
    """Fan out: one policy pass per agent (``enforce_agent_drain_policies``), so a tick
    costs what the busiest agent costs rather than the sum of all of them, and one slow
    agent delays no other. Each task expires with the tick: a backlog never replays
    stale passes, and the next tick's pass covers what a dropped one would have done.
    Returns how many agents it fanned out to."""
    expires = float(settings.PRISM_BEAT_SECONDS)
    agent_ids = list(Agent.objects.order_by("pk").values_list("pk", flat=True))
    for agent_id in agent_ids:
        enforce_agent_drain_policies.apply_async((agent_id,), expires=expires)
    return len(agent_ids)


@shared_task(ignore_result=True)
def enforce_agent_drain_policies(agent_id: int) -> dict:
    """Idle sessions to abandoned, overdue drains to expired, the live-version cap, and
    drained versions noticed, for one agent. Idempotent: every step is a conditional
    write, so a duplicate or overlapping pass changes nothing twice."""
    agent = Agent.objects.filter(pk=agent_id).first()
    if agent is None:
        return {}  # deleted since the tick
    outcome = drain.enforce_policies(agent)
    if any(outcome.values()):
        log.info("drain policies for %s: %s", agent.slug, outcome)
    return outcome


@shared_task(ignore_result=True)
def apply_retention() -> int:
    """Fan out: one retention run per agent (``apply_agent_retention``), expiring with
    the run's interval. Returns how many agents it fanned out to."""
    expires = float(settings.PRISM_RETENTION_SECONDS)
    agent_ids = list(Agent.objects.order_by("pk").values_list("pk", flat=True))
    for agent_id in agent_ids:
        apply_agent_retention.apply_async((agent_id,), expires=expires)
    return len(agent_ids)


@shared_task(ignore_result=True)
def apply_agent_retention(agent_id: int) -> dict:
    """Delete one agent's sessions, outcomes, evaluations and snapshots past their
    retention, a bounded amount per run (``rollouts.retention``). Logged, not audited."""
    agent = Agent.objects.filter(pk=agent_id).first()
    if agent is None:
        return {}
    deleted = retention.apply(agent)
    if any(deleted.values()):
        log.info("retention for %s deleted %s", agent.slug, deleted)
    return deleted


@shared_task(ignore_result=True)
def evaluate_rollouts() -> int:
    """Fan out: one evaluation task per running rollout, so a tick costs what the busiest
    rollout costs, not the sum of all of them, and one slow agent delays no other. Each
    task expires with the tick, so a backlog never replays stale looks."""
    expires = float(settings.PRISM_EVALUATE_SECONDS)
    running = list(Rollout.objects.filter(state=RolloutState.RUNNING).values_list("pk", "stage"))
    for rollout_id, stage in running:
        evaluate_rollout.apply_async((rollout_id, stage), expires=expires)
    return len(running)


@shared_task(ignore_result=True)
def evaluate_rollout(rollout_id: int, stage: int) -> str:
    """Evaluate one rollout's gates at the stage the tick saw, and act on the decision
    (``engine.evaluate``): idempotent, since a decision applies only at the stage and
    routing epoch it was computed for."""
    try:
        after = engine.evaluate(rollout_id, actor=SYSTEM, expect_stage=stage)
    except (engine.TransitionError, Rollout.DoesNotExist):
        return "skipped"  # it moved on, or a person acted first
    return f"{after.state}@{after.stage}"


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


@shared_task(ignore_result=True)
def estimate_survival(agent_id: int | None = None) -> int:
    """Recompute an agent's stored survival curve (``fleet.refresh_estimate``); without
    an agent, fan out one task per agent, each expiring with the tick. Returns how many
    agents it covered."""
    if agent_id is not None:
        agent = Agent.objects.filter(pk=agent_id).first()
        if agent is not None:
            fleet.refresh_estimate(agent)
        return int(agent is not None)
    expires = float(settings.PRISM_SURVIVAL_SECONDS)
    ids = list(Agent.objects.values_list("pk", flat=True))
    for pk in ids:
        estimate_survival.apply_async((pk,), expires=expires)
    return len(ids)

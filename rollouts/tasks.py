"""The beat's periodic work. Tasks are thin, idempotent and record ``system`` as actor."""

from __future__ import annotations

import logging

from celery import shared_task

from rollouts import drain, engine, snapshots
from versions.models import Agent

log = logging.getLogger(__name__)


@shared_task(ignore_result=True)
def enforce_drain_policies() -> dict[str, dict]:
    """Idle sessions to abandoned, overdue drains to expired, the live-version cap, and
    drained versions noticed, for every agent."""
    report = {}
    for agent in Agent.objects.all():
        outcome = drain.enforce_policies(agent)
        if any(outcome.values()):
            log.info("drain policies for %s: %s", agent.slug, outcome)
        report[agent.slug] = outcome
    return report


@shared_task(ignore_result=True)
def evaluate_rollouts() -> dict[str, int]:
    """Advance, halt or roll back running rollouts whose stage verdict is in."""
    return engine.evaluate_open_rollouts()


@shared_task(ignore_result=True)
def record_fleet_snapshots() -> dict[str, int]:
    """This tick's live sessions per version of every agent, then a bounded step of
    thinning old snapshots."""
    return {"agents": snapshots.record(), "deleted": snapshots.downsample()}

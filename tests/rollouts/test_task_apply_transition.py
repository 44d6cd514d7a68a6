"""rollouts.tasks.apply_transition: a transition applied at most once per expected stage,
however often the broker delivers it, with every attempt in the task-run ledger.
tests/e2e/test_faults.py kills a real worker in the middle of one."""

from __future__ import annotations

import os

import pytest

from controlplane.models import TaskRun
from rollouts import tasks
from rollouts.models import Rollout
from tests.rollouts.conftest import start_rollout, weights
from versions.models import AuditEntry

pytestmark = pytest.mark.django_db

STAGES = [{"percent": 10, "min_duration_s": 3600}, {"percent": 50, "min_duration_s": 3600}, 100]


def run(task_id: str, *args) -> str:
    result = tasks.apply_transition.apply(args=args, task_id=task_id)
    assert result.successful(), result.traceback
    return result.get()


def test_it_applies_the_transition_as_system_and_records_the_attempt(agent, v1, v2):
    rollout = start_rollout(agent, v2, STAGES)

    assert run("t-1", rollout.pk, "advance", 0) == "applied"

    rollout.refresh_from_db()
    assert (rollout.state, rollout.stage) == ("running", 1)
    assert weights(agent) == {v1.pk: 5000, v2.pk: 5000}
    entry = AuditEntry.objects.get(action="rollout.advance")
    assert entry.actor == "system"
    assert "t-1" in entry.reason
    attempt = TaskRun.objects.get(task_id="t-1")
    assert attempt.name == "rollouts.tasks.apply_transition"
    assert attempt.args == [rollout.pk, "advance", 0]
    assert attempt.outcome == "applied"
    assert attempt.finished_at is not None
    assert attempt.worker.endswith(f":{os.getpid()}")


def test_a_second_delivery_of_the_same_message_changes_nothing(agent, v1, v2):
    rollout = start_rollout(agent, v2, STAGES)

    assert run("t-2", rollout.pk, "advance", 0) == "applied"
    assert run("t-2", rollout.pk, "advance", 0) == "skipped"

    assert Rollout.objects.get(pk=rollout.pk).stage == 1
    assert AuditEntry.objects.filter(action="rollout.advance").count() == 1
    first, second = TaskRun.objects.filter(task_id="t-2")
    assert (first.outcome, second.outcome) == ("applied", "skipped")
    assert "not stage 0" in second.detail


def test_it_skips_a_rollout_that_no_longer_exists(agent, v1, v2):
    assert run("t-3", 999_999, "advance", 0) == "skipped"
    assert TaskRun.objects.get(task_id="t-3").outcome == "skipped"


def test_it_skips_a_transition_the_state_no_longer_allows(agent, v1, v2):
    rollout = start_rollout(agent, v2, STAGES)
    assert run("t-4", rollout.pk, "rollback", 0) == "applied"
    assert run("t-5", rollout.pk, "pause", 0) == "skipped"
    assert Rollout.objects.get(pk=rollout.pk).state == "rolled_back"


def test_an_unknown_action_fails_and_is_recorded(agent, v1, v2):
    rollout = start_rollout(agent, v2, STAGES)
    result = tasks.apply_transition.apply(args=(rollout.pk, "explode", 0), task_id="t-6")
    assert result.failed()
    assert isinstance(result.result, ValueError)
    assert TaskRun.objects.get(task_id="t-6").outcome == "failed"
    assert Rollout.objects.get(pk=rollout.pk).stage == 0

"""bench.beat's split of the schedule: what a tick is timed on, and what is reported
beside it."""

from __future__ import annotations

from django.conf import settings

from bench.beat import split


def test_a_tick_holds_the_entries_due_every_tick_and_the_slower_ones_are_apart():
    often, slower = split(settings.CELERY_BEAT_SCHEDULE, float(settings.PRISM_EVALUATE_SECONDS))
    tasks = {entry["task"] for entry in often.values()}
    assert {
        "rollouts.tasks.enforce_drain_policies",
        "rollouts.tasks.evaluate_rollouts",
        "rollouts.tasks.record_fleet_snapshots",
        "controlplane.tasks.beat_tick",
    } <= tasks
    assert {entry["task"] for entry in slower.values()} >= {
        "rollouts.tasks.estimate_survival",
        "rollouts.tasks.apply_retention",
    }
    assert set(often) | set(slower) == set(settings.CELERY_BEAT_SCHEDULE)
    assert not set(often) & set(slower)

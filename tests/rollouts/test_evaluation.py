"""The evaluation service: what a look at a rollout's gates reads, decides and keeps."""

from __future__ import annotations

import pytest

from metrics import rollups
from metrics.gates import DEFAULT_GATES
from metrics.models import MetricSource
from rollouts import engine, evaluation
from rollouts.models import Evaluation, Routing
from tests.rollouts.conftest import ended_on, start_rollout, weights
from versions.models import AuditEntry

pytestmark = pytest.mark.django_db

HOLDING = [{"percent": 50, "min_duration_s": 3600}, 100]


def evaluate(rollout):
    return engine.transition(rollout.pk, "evaluate", actor="tester")


def test_every_look_is_kept_and_only_a_moving_one_is_applied(agent, v1, v2):
    stages = [{"percent": 50, "min_duration_s": 0, "min_sessions": 3}, {"percent": 75}, 100]
    rollout = start_rollout(agent, v2, stages)
    evaluate(rollout)  # holds: no samples yet
    ended_on(agent, v1, 3, "base", {"error": False})
    evaluate(rollout)  # holds: the candidate has none
    ended_on(agent, v2, 3, "cand", {"error": False})
    assert evaluate(rollout).stage == 1
    looks = list(Evaluation.objects.filter(rollout=rollout).order_by("at", "id"))
    assert [(look.decision, look.applied, look.actor) for look in looks] == [
        ("hold", False, "tester"),
        ("hold", False, "tester"),
        ("advance", True, "tester"),
    ]
    assert [look.report["min_sessions"]["baseline"] for look in looks] == [0, 3, 3]
    assert looks[-1].report["reason"] == "stage conditions met; no gates configured"


def test_the_evaluations_api_pages_the_history_newest_first(agent, v1, v2, viewer):
    rollout = start_rollout(agent, v2, HOLDING)
    for _ in range(3):
        evaluate(rollout)
    response = viewer.get(f"/api/rollouts/{rollout.pk}/evaluations/?page_size=2")
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 3
    assert len(body["results"]) == 2
    ats = [item["at"] for item in body["results"]]
    assert ats == sorted(ats, reverse=True)
    assert body["next"] is not None
    assert viewer.get("/api/rollouts/999999/evaluations/").status_code == 404


def test_a_source_that_keeps_failing_halts_the_rollout_with_its_error(agent, v1, v2):
    rollout = start_rollout(
        agent, v2, HOLDING, gates=[{"metric": "error_rate", "max_increase": 0.1}]
    )
    source = MetricSource.objects.create(
        agent=agent,
        kind="http_json",
        url="https://platform.example/export",
        consecutive_errors=3,
        last_error="HTTP 502 from the export",
    )
    assert evaluate(rollout).state == "running"  # three in a row: its gates only wait
    MetricSource.objects.filter(pk=source.pk).update(consecutive_errors=4)
    halted = evaluate(rollout)
    assert halted.state == "halted"
    assert weights(agent) == {v1.pk: 10000}
    entry = AuditEntry.objects.get(action="rollout.halt")
    assert "failed 4 polls in a row: HTTP 502 from the export" in entry.reason
    assert entry.actor == "tester"


def test_a_sample_ratio_mismatch_halts(agent, v1, v2):
    rollout = start_rollout(agent, v2, HOLDING)
    epoch = Routing.objects.get(agent=agent).epoch
    # At 50/50, 400 pins on the baseline and 100 on the candidate: routing is broken.
    rollups.add_assignments([(v1.pk, epoch, 400), (v2.pk, epoch, 100)])
    halted = evaluate(rollout)
    assert halted.state == "halted"
    assert halted.last_evaluation["srm"]["verdict"] == "mismatch"
    assert halted.events.last().reason == "sample ratio mismatch"


def test_pins_in_proportion_to_the_weights_pass_the_sample_ratio_check(agent, v1, v2):
    rollout = start_rollout(agent, v2, HOLDING)
    epoch = Routing.objects.get(agent=agent).epoch
    rollups.add_assignments([(v1.pk, epoch, 251), (v2.pk, epoch, 249)])
    report = evaluate(rollout).last_evaluation
    assert report["srm"]["verdict"] != "mismatch"
    assert report["verdict"] == "hold"


def test_each_stage_is_its_own_stratum_and_a_halted_epoch_is_none(agent, v1, v2):
    rollout = start_rollout(agent, v2, [{"percent": 25}, {"percent": 50}, 100])
    assert [s.stage for s in evaluation.spans(rollout, rollout.started_at)] == [0]
    engine.transition(rollout.pk, "advance", actor="tester")
    rollout.refresh_from_db()
    runs = evaluation.spans(rollout, rollout.started_at)
    assert [(s.stage, len(s.epochs)) for s in runs] == [(0, 1), (1, 1)]
    assert runs[1].weights[runs[1].epochs[0]] == {v1.pk: 5000, v2.pk: 5000}
    engine.transition(rollout.pk, "pause", actor="tester")
    engine.transition(rollout.pk, "advance", actor="tester")  # to 100%: promoted
    rollout.refresh_from_db()
    # The promotion's epoch routes to the candidate alone: nothing to compare in it.
    assert [s.stage for s in evaluation.spans(rollout, rollout.started_at)] == [0, 1]


def test_a_rollout_created_without_gates_gets_the_defaults(release_manager, agent, v1, v2):
    response = release_manager.post(
        f"/api/agents/{agent.slug}/rollouts/", {"candidate": v2.pk}, format="json"
    )
    assert response.status_code == 201, response.content
    assert [g["metric"] for g in response.json()["gates"]] == [g["metric"] for g in DEFAULT_GATES]
    assert "note" not in AuditEntry.objects.get(action="rollout.started").after


def test_a_rollout_created_with_no_gates_says_so(release_manager, agent, v1, v2):
    response = release_manager.post(
        f"/api/agents/{agent.slug}/rollouts/", {"candidate": v2.pk, "gates": []}, format="json"
    )
    assert response.status_code == 201, response.content
    assert response.json()["gates"] == []
    entry = AuditEntry.objects.get(action="rollout.started")
    assert entry.after["note"].startswith("no gates configured")

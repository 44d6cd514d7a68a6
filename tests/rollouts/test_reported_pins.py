"""Pins a harness made locally while Prism was unreachable ("fail static"), reported with
``POST /api/agents/{slug}/sessions/ {session_id, version, started_at, epoch?}``. The
session really began at ``started_at``: gate windows, stage counts
and the survival estimate all read it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from metrics.models import Outcome
from rollouts.models import Routing, Session
from tests.rollouts.conftest import set_weights

START = "/api/agents/{slug}/sessions/"
END = "/api/agents/{slug}/sessions/{sid}/end/"


def report(client, agent, session_id: str, **fields):
    return client.post(
        START.format(slug=agent.slug), {"session_id": session_id, **fields}, format="json"
    )


def ago(**delta: float) -> str:
    return (timezone.now() - timedelta(**delta)).isoformat()


def test_it_stores_the_started_at_the_harness_reports(agent, v1, harness):
    began = timezone.now() - timedelta(hours=2)

    response = report(harness, agent, "offline-1", version=v1.pk, started_at=began.isoformat())

    assert response.status_code == 201, response.content
    assert Session.objects.get(session_id="offline-1").started_at == began
    assert response.json()["started_at"].replace("Z", "+00:00") == began.isoformat()


def test_the_outcome_of_a_reported_session_starts_when_the_session_did(agent, v1, harness):
    began = timezone.now() - timedelta(minutes=45)
    report(harness, agent, "offline-1", version=v1.pk, started_at=began.isoformat())

    ended = harness.post(
        END.format(slug=agent.slug, sid="offline-1"), {"outcome": {"success": True}}, format="json"
    )

    assert ended.status_code == 200
    assert Outcome.objects.get(session_id="offline-1").started_at == began


@pytest.mark.parametrize(
    "started_at",
    [
        None,
        "yesterday",
        "2026-13-01T00:00:00Z",
        "2026-01-01T00:00:00",  # no offset: which clock?
        1764614400,
        "",
        ["2026-01-01T00:00:00Z"],
    ],
    ids=["null", "words", "bad-month", "naive", "number", "empty", "list"],
)
def test_it_refuses_a_started_at_that_is_not_an_iso_8601_instant(agent, v1, harness, started_at):
    response = report(harness, agent, "offline-1", version=v1.pk, started_at=started_at)

    assert response.status_code == 400, response.content
    assert "started_at" in response.json()
    assert not Session.objects.filter(session_id="offline-1").exists()


@pytest.mark.parametrize(
    "delta",
    [{"minutes": -10}, {"days": -400}, {"days": 31}, {"days": 4000}],
    ids=["10-min-ahead", "next-year", "31-days-old", "years-old"],
)
def test_it_refuses_a_started_at_outside_the_window(agent, v1, harness, delta):
    # Computed here, not at collection: a long suite would otherwise age "10 minutes
    # ahead" into the accepted clock skew before this test runs.
    response = report(harness, agent, "offline-1", version=v1.pk, started_at=ago(**delta))

    assert response.status_code == 400, response.content
    assert "started_at" in response.json()
    assert not Session.objects.filter(session_id="offline-1").exists()


def test_a_report_without_started_at_is_a_400(agent, v1, harness):
    response = report(harness, agent, "offline-1", version=v1.pk)

    assert response.status_code == 400
    assert "started_at" in response.json()
    assert not Session.objects.exists()


def test_it_stores_a_reported_epoch_the_agent_has_had(agent, v1, v2, harness):
    first = Routing.objects.get(agent=agent).epoch
    set_weights(agent, {v1: 5000, v2: 5000})

    response = report(harness, agent, "offline-1", version=v1.pk, started_at=ago(minutes=5),
                      epoch=first)  # fmt: skip

    assert response.status_code == 201
    assert Session.objects.get(session_id="offline-1").epoch == first


@pytest.mark.parametrize("epoch", ["3", -1, True, 1.5, {"epoch": 1}])
def test_it_refuses_an_epoch_that_is_not_a_non_negative_integer(agent, v1, harness, epoch):
    response = report(
        harness, agent, "offline-1", version=v1.pk, started_at=ago(minutes=5), epoch=epoch
    )

    assert response.status_code == 400, response.content
    assert "epoch" in response.json()
    assert not Session.objects.exists()

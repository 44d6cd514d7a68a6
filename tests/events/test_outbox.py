"""The outbox: an event per transition, in the transition's transaction."""

from __future__ import annotations

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

import events
from events.models import Delivery, Event, Webhook
from events.outbox import OutsideTransaction
from metrics import rollups
from rollouts import engine
from rollouts.models import Routing
from tests.rollouts.conftest import start_rollout
from versions.models import AuditEntry

STAGES = [{"percent": 25, "min_duration_s": 3600}, 100]


def test_a_transition_writes_its_event_with_its_audit_entry_and_a_delivery(agent, v1, v2, webhook):
    rollout = start_rollout(agent, v2, stages=STAGES)

    engine.transition(rollout.pk, "pause", actor="tester", reason="lunch")

    event = Event.objects.get(type="rollout.paused")
    assert event.audit_entry == AuditEntry.objects.get(action="rollout.pause")
    assert (event.subject_type, event.subject_id) == ("rollout", str(rollout.pk))
    assert event.data["percent"] == 25
    assert event.text == f"research: rollout {rollout.pk} paused at 25% — lunch"
    assert Delivery.objects.filter(event=event, webhook=webhook, status="pending").count() == 1


def test_a_transition_whose_transaction_rolls_back_produces_no_event(agent, v1, v2, webhook):
    rollout = start_rollout(agent, v2, stages=STAGES)
    before = (Event.objects.count(), Delivery.objects.count())

    def advance_then_fail() -> None:
        with transaction.atomic():
            engine.transition(rollout.pk, "advance", actor="tester")
            assert Event.objects.filter(type="rollout.promoted").exists()  # written...
            raise RuntimeError("the caller's transaction fails after the transition")

    with pytest.raises(RuntimeError):
        advance_then_fail()  # ...and undone with the transition

    assert (Event.objects.count(), Delivery.objects.count()) == before
    assert not Event.objects.filter(type="rollout.promoted").exists()


def test_every_rollout_transition_is_announced(agent, v1, v2, make_version):
    rollout = start_rollout(agent, v2, stages=[25, 50, 100])
    engine.transition(rollout.pk, "pause", actor="tester")
    engine.transition(rollout.pk, "resume", actor="tester")
    engine.transition(rollout.pk, "advance", actor="tester")
    engine.transition(rollout.pk, "advance", actor="tester")
    engine.transition(rollout.pk, "rollback", actor="tester")
    v3 = make_version(agent, "v3")
    start_rollout(agent, v3, stages=STAGES)
    start_rollout(agent, make_version(agent, "v4"), stages=STAGES, supersede=True)

    types = list(Event.objects.filter(subject_type="rollout").order_by("id").values_list("type"))
    assert [t for (t,) in types] == [
        "rollout.started",
        "rollout.paused",
        "rollout.resumed",
        "rollout.advanced",
        "rollout.promoted",
        "rollout.rolled_back",
        "rollout.started",
        "rollout.superseded",
        "rollout.started",
    ]
    draining = Event.objects.filter(type="version.draining").values_list("subject_id", flat=True)
    assert str(v1.pk) in draining
    assert str(v3.pk) in draining


def test_an_event_keyed_once_is_written_once(agent, v1):
    first = events.emit("rollout.sample_ratio_mismatch", agent=agent, subject=v1, once="srm:1:0")
    again = events.emit("rollout.sample_ratio_mismatch", agent=agent, subject=v1, once="srm:1:0")
    other = events.emit("rollout.sample_ratio_mismatch", agent=agent, subject=v1, once="srm:1:1")

    assert first is not None
    assert other is not None
    assert again is None
    assert Event.objects.filter(type="rollout.sample_ratio_mismatch").count() == 2


def test_a_webhook_gets_only_the_types_it_asked_for(agent, v1, v2, receiver, allow_private):
    halts = Webhook.objects.create(agent=agent, url=receiver.url, events=["rollout.halted"])
    everything = Webhook.objects.create(agent=agent, url=receiver.url)
    Webhook.objects.create(agent=agent, url=receiver.url, active=False)

    start_rollout(agent, v2, stages=STAGES)

    assert not Delivery.objects.filter(webhook=halts).exists()
    assert Delivery.objects.filter(webhook=everything, event__type="rollout.started").count() == 1
    assert Delivery.objects.count() == Delivery.objects.filter(webhook=everything).count()


def test_an_unknown_event_type_is_refused(agent, v1):
    with pytest.raises(ValueError, match="unknown event type"):
        events.emit("rollout.exploded", agent=agent, subject=v1)


@pytest.mark.django_db(transaction=True)
def test_an_event_outside_a_transaction_is_refused(agent, make_version):
    version = make_version(agent, "v1")
    with pytest.raises(OutsideTransaction):
        events.emit("version.drained", agent=agent, subject=version)
    assert not Event.objects.exists()


def test_an_events_cost_does_not_grow_with_its_webhooks(agent, v1, v2, receiver, allow_private):
    rollout = start_rollout(agent, v2, stages=STAGES)
    counts = []
    for hooks in (1, 5):
        Webhook.objects.all().delete()
        Webhook.objects.bulk_create(Webhook(agent=agent, url=receiver.url) for _ in range(hooks))
        with CaptureQueriesContext(connection) as paused:
            engine.transition(rollout.pk, "pause", actor="tester")
        engine.transition(rollout.pk, "resume", actor="tester")
        counts.append(len(paused))

    assert counts[0] == counts[1]
    assert Delivery.objects.filter(event__type="rollout.paused").count() == 5


def test_a_sample_ratio_mismatch_is_announced_once_per_stage(agent, v1, v2):
    stages = [{"percent": 50, "min_duration_s": 3600}, 100]
    rollout = start_rollout(agent, v2, stages=stages)
    for _ in range(2):  # halted, resumed (the stage starts over), mismatching again
        epoch = Routing.objects.get(agent=agent).epoch
        rollups.add_assignments([(v1.pk, epoch, 400), (v2.pk, epoch, 100)])
        assert engine.transition(rollout.pk, "evaluate", actor="tester").state == "halted"
        engine.transition(rollout.pk, "resume", actor="tester")

    assert Event.objects.filter(type="rollout.halted").count() == 2
    (mismatch,) = Event.objects.filter(type="rollout.sample_ratio_mismatch")
    assert mismatch.data["stage"] == 0
    assert mismatch.data["counts"] == {"candidate": 100, "baseline": 400}
    assert mismatch.text.startswith(f"research: rollout {rollout.pk} has a sample ratio mismatch")

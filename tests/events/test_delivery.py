"""Delivery to a real HTTP receiver: signed, retried with growing delays, claimed once."""

from __future__ import annotations

import json
import random
import time

import pytest

from events import delivery, stats
from events.models import Delivery, Webhook
from events.tasks import sweep_deliveries
from prism_client import verify
from rollouts import engine
from rollouts.tasks import evaluate_rollout
from tests.events.conftest import SECRET
from tests.rollouts.conftest import ended_on, start_rollout

STAGES = [{"percent": 50, "min_duration_s": 3600}, 100]
GATES = [{"metric": "error_rate", "max_increase": 0.01}]


def _sweep_until(done, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the deliveries did not finish"
        delivery.deliver_due()
        time.sleep(0.02)


@pytest.mark.django_db(transaction=True)
def test_a_rollout_halted_by_the_beat_produces_exactly_one_signed_delivery(
    agent, v1, v2, webhook, receiver
):
    rollout = start_rollout(agent, v2, stages=STAGES, gates=GATES)
    ended_on(agent, v2, 40, "cand", {"error": True})
    ended_on(agent, v1, 40, "base", {"error": False})

    assert evaluate_rollout(rollout.pk, 0) == "halted@0"  # the beat's task, run here
    sweep_deliveries()
    sweep_deliveries()  # a second sweep (or a duplicate message) sends nothing again

    halted = [r for r in receiver.got if r.headers["Prism-Event"] == "rollout.halted"]
    assert len(halted) == 1
    (got,) = halted
    assert verify(SECRET, got.headers, got.body)
    assert not verify("another-secret-entirely", got.headers, got.body)
    assert not verify(SECRET, got.headers, got.body + b" ")
    body = json.loads(got.body)
    assert set(body) == {"id", "type", "occurred_at", "agent", "subject", "data", "text"}
    assert body["subject"] == {"type": "rollout", "id": str(rollout.pk), "name": str(rollout)}
    assert body["data"]["evaluation"]["gates"][0]["verdict"] == "fail"
    assert body["text"].startswith(f"research: rollout {rollout.pk} halted at 50% — error_rate +")
    assert " pts (CI +" in body["text"]
    assert got.headers["Prism-Delivery"] == str(
        Delivery.objects.get(webhook=webhook, event__type="rollout.halted").pk
    )
    # Every event was delivered once, each attempt signed.
    assert len(receiver.got) == Delivery.objects.filter(webhook=webhook).count()
    assert all(verify(SECRET, r.headers, r.body) for r in receiver.got)
    assert set(Delivery.objects.values_list("status", "attempts")) == {("delivered", 1)}


def test_a_receiver_answering_500_twice_then_200_gets_three_attempts_with_growing_delays(
    agent, v1, v2, webhook, receiver, allow_private
):
    base = allow_private.PRISM_WEBHOOK_BACKOFF_BASE_S
    receiver.statuses = [500, 500, 200]
    start_rollout(agent, v2, stages=STAGES)
    sent = Delivery.objects.get(webhook=webhook, event__type="rollout.started")
    Delivery.objects.exclude(pk=sent.pk).delete()

    _sweep_until(lambda: Delivery.objects.get(pk=sent.pk).status != "pending")

    sent.refresh_from_db()
    assert (sent.status, sent.attempts, sent.last_status_code) == ("delivered", 3, 200)
    assert sent.response_excerpt == "answer 200"
    assert sent.latency_ms is not None
    assert sent.error == ""
    assert [r.headers["Prism-Attempt"] for r in receiver.got] == ["1", "2", "3"]
    assert len({r.headers["Prism-Delivery"] for r in receiver.got}) == 1
    first, second = (b.at - a.at for a, b in zip(receiver.got, receiver.got[1:], strict=False))
    # Each wait is drawn from the upper half of a ceiling that doubles: [b/2, b], [b, 2b].
    assert base / 2 <= first
    assert base <= second
    assert second > first - 0.05
    counts = stats.delivery_counts()
    assert counts[("research", "rollout.started", "delivered")] == 1
    assert ("research", "rollout.started", "pending") not in counts


def test_a_delivery_fails_after_its_last_attempt_and_can_be_sent_again(
    agent, v1, v2, webhook, receiver, allow_private, release_manager
):
    allow_private.PRISM_WEBHOOK_MAX_ATTEMPTS = 2
    allow_private.PRISM_WEBHOOK_BACKOFF_BASE_S = 0.05
    receiver.statuses = [503, 503, 503]
    start_rollout(agent, v2, stages=STAGES)
    sent = Delivery.objects.get(webhook=webhook, event__type="rollout.started")
    Delivery.objects.exclude(pk=sent.pk).delete()

    _sweep_until(lambda: Delivery.objects.get(pk=sent.pk).status != "pending")
    sent.refresh_from_db()
    assert (sent.status, sent.attempts, sent.last_status_code) == ("failed", 2, 503)
    assert sent.error == "HTTP 503"
    assert stats.delivery_counts()[("research", "rollout.started", "failed")] == 1

    receiver.statuses = []
    answer = release_manager.post(f"/api/deliveries/{sent.pk}/redeliver/", {}, format="json")
    assert answer.status_code == 200, answer.content
    assert answer.json()["status"] == "pending"
    _sweep_until(lambda: Delivery.objects.get(pk=sent.pk).status != "pending")
    sent.refresh_from_db()
    assert (sent.status, sent.attempts) == ("delivered", 1)
    again = release_manager.post(f"/api/deliveries/{sent.pk}/redeliver/", {}, format="json")
    assert again.status_code == 409
    assert len(receiver.got) == 3


def test_an_attempt_is_claimed_by_one_sender_only(agent, v1, v2, webhook):
    start_rollout(agent, v2, stages=STAGES)
    pending = Delivery.objects.filter(webhook=webhook).first()
    now = engine.timezone.now()

    first = delivery.claim(pending.pk, now)
    second = delivery.claim(pending.pk, now)

    assert first is not None
    assert first.attempt == 1
    assert second is None  # leased to the first until its attempt is over
    assert Delivery.objects.get(pk=pending.pk).attempts == 1


def test_the_guard_runs_again_at_send_time(agent, v1, v2, webhook, receiver, allow_private):
    start_rollout(agent, v2, stages=STAGES)
    allow_private.PRISM_WEBHOOKS_ALLOW_PRIVATE = False

    delivery.deliver_due()

    assert receiver.got == []
    refused = Delivery.objects.filter(webhook=webhook).first()
    assert refused.error.startswith("refused: The host '127.0.0.1' resolves to 127.0.0.1")
    assert refused.last_status_code is None


def test_a_redirect_is_not_followed(agent, v1, v2, receiver, allow_private):
    receiver.statuses = [302]
    hook = Webhook.objects.create(agent=agent, url=receiver.url, events=["rollout.started"])
    start_rollout(agent, v2, stages=STAGES)

    delivery.deliver_due()

    sent = Delivery.objects.get(webhook=hook)
    assert (sent.status, sent.last_status_code, sent.error) == ("pending", 302, "HTTP 302")
    assert len(receiver.got) == 1


def test_the_signature_check_refuses_a_replay():
    payload = b'{"id":1}'
    headers = {"Prism-Timestamp": "1000", "Prism-Signature": delivery.signature("s", 1000, payload)}

    assert verify("s", headers, payload, now=1000 + 299)
    assert not verify("s", headers, payload, now=1000 + 301)
    assert not verify("s", {**headers, "Prism-Timestamp": "1001"}, payload, now=1001)


@pytest.mark.parametrize("seed", range(20))
def test_each_retry_waits_at_least_as_long_as_the_one_before_until_the_cap(seed):
    rand = random.Random(seed)
    waits = [delivery.retry_delay(n, base=10, cap=3600, rand=rand) for n in range(1, 12)]
    ceilings = [min(3600, 10 * 2 ** (n - 1)) for n in range(1, 12)]

    assert all(c / 2 <= w <= c for w, c in zip(waits, ceilings, strict=True))
    below_cap = [w for w, c in zip(waits, ceilings, strict=True) if c < 3600]
    assert below_cap == sorted(below_cap)

"""The admin: events read-only, webhooks without their secret after creation, and
failed deliveries re-sent by an action."""

from __future__ import annotations

from django.urls import reverse

from events.models import Delivery, Event, Webhook
from tests.rollouts.conftest import start_rollout
from versions.models import AuditEntry

STAGES = [{"percent": 25, "min_duration_s": 3600}, 100]


def test_a_webhooks_secret_is_on_the_add_form_only(admin_client, agent, webhook):
    add = admin_client.get(reverse("admin:events_webhook_add"))
    change = admin_client.get(reverse("admin:events_webhook_change", args=[webhook.pk]))

    assert add.status_code == change.status_code == 200
    assert 'name="secret"' in add.content.decode()
    assert 'name="secret"' not in change.content.decode()
    assert webhook.secret not in change.content.decode()


def test_the_admin_refuses_a_private_url(admin_client, agent, settings):
    settings.PRISM_WEBHOOKS_ALLOW_PRIVATE = False
    answer = admin_client.post(
        reverse("admin:events_webhook_add"),
        {"agent": agent.pk, "url": "http://127.0.0.1:9/", "secret": "s" * 20, "active": "on"},
    )

    assert answer.status_code == 200  # the form again, with the error
    assert "a loopback address" in answer.content.decode()
    assert not Webhook.objects.exists()


def test_events_are_read_only(admin_client, agent, v1, v2):
    start_rollout(agent, v2, stages=STAGES)
    event = Event.objects.get(type="rollout.started")

    assert admin_client.get(reverse("admin:events_event_changelist")).status_code == 200
    page = admin_client.get(reverse("admin:events_event_change", args=[event.pk]))
    assert page.status_code == 200
    assert (
        admin_client.post(reverse("admin:events_event_change", args=[event.pk])).status_code == 403
    )


def test_the_resend_action_sends_failed_deliveries_again(admin_client, agent, v1, v2, webhook):
    start_rollout(agent, v2, stages=STAGES)
    failed = Delivery.objects.filter(webhook=webhook).first()
    Delivery.objects.filter(pk=failed.pk).update(status="failed", attempts=8)

    answer = admin_client.post(
        reverse("admin:events_delivery_changelist"),
        {"action": "resend", "_selected_action": [failed.pk]},
        follow=True,
    )

    assert answer.status_code == 200
    failed.refresh_from_db()
    assert (failed.status, failed.attempts) == ("pending", 0)
    assert AuditEntry.objects.filter(action="delivery.redelivered").count() == 1
    listed = admin_client.get(reverse("admin:events_delivery_changelist"), {"status": "pending"})
    assert listed.status_code == 200

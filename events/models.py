"""The outbox of events, the webhooks that subscribe to them, and each delivery."""

from __future__ import annotations

import secrets

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from versions.models import Agent, AuditEntry


class EventType(models.TextChoices):
    """What Prism tells the rest of the stack. Each is written where its transition
    commits, in the same transaction."""

    ROLLOUT_STARTED = "rollout.started", "a rollout started"
    ROLLOUT_ADVANCED = "rollout.advanced", "a rollout moved to its next stage"
    ROLLOUT_PAUSED = "rollout.paused", "a rollout was paused"
    ROLLOUT_RESUMED = "rollout.resumed", "a paused or halted rollout runs again"
    ROLLOUT_HALTED = "rollout.halted", "a gate (or the sample-ratio check) halted a rollout"
    ROLLOUT_ROLLED_BACK = "rollout.rolled_back", "a rollout was rolled back"
    ROLLOUT_PROMOTED = "rollout.promoted", "the candidate became the stable"
    ROLLOUT_SUPERSEDED = "rollout.superseded", "a new rollout replaced an open one"
    ROLLOUT_SAMPLE_RATIO_MISMATCH = (
        "rollout.sample_ratio_mismatch",
        "the arms got sessions out of proportion to their weights (once per stage)",
    )
    VERSION_DRAINING = "version.draining", "a version lost its weight and drains"
    VERSION_FORCE_DRAINED = "version.force_drained", "a version's sessions were told to drain"
    VERSION_DRAINED = "version.drained", "a weightless version has no live session left"
    METRIC_SOURCE_FAILING = "metric_source.failing", "a metric source's poll failed"
    METRIC_SOURCE_RECOVERED = "metric_source.recovered", "a failing metric source polls again"


class Event(models.Model):
    """One thing that happened, as webhooks receive it. Immutable once written."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="events")
    type = models.CharField(max_length=64, choices=EventType.choices)
    occurred_at = models.DateTimeField(default=timezone.now)
    subject_type = models.CharField(max_length=40)
    subject_id = models.CharField(max_length=64)
    subject_repr = models.CharField(max_length=200, blank=True)
    data = models.JSONField(default=dict)
    text = models.TextField(help_text="A one-line summary, e.g. for a chat channel.")
    audit_entry = models.ForeignKey(
        AuditEntry, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    request_id = models.CharField(max_length=64, blank=True)
    # Set for events that happen once per something (a stage's sample-ratio mismatch):
    # the unique constraint decides between racing writers.
    once = models.CharField(max_length=200, null=True, blank=True, unique=True)

    class Meta:
        indexes = [models.Index(fields=["agent", "-id"], name="event_agent_recent")]

    def __str__(self) -> str:
        return f"{self.type} #{self.pk}"


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


class Webhook(models.Model):
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="webhooks")
    url = models.CharField(max_length=2000)
    events = models.JSONField(default=list, blank=True, help_text="Event types; empty: all.")
    # Kept as given: it must sign, so it cannot be hashed.
    secret = models.CharField(max_length=200, default=new_secret)
    active = models.BooleanField(default=True)
    description = models.CharField(max_length=200, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"webhook {self.pk} of {self.agent_id} to {self.url[:80]}"

    def wants(self, event_type: str) -> bool:
        return not self.events or event_type in self.events


class DeliveryStatus(models.TextChoices):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class Delivery(models.Model):
    """One event to one webhook: sent until it is delivered or runs out of attempts."""

    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="deliveries")
    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    # The webhook's agent again, so scoped tokens and the counters find it in one step.
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="+")
    status = models.CharField(
        max_length=10, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True, default=timezone.now)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    response_excerpt = models.CharField(max_length=500, blank=True)
    error = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "deliveries"
        constraints = [
            models.UniqueConstraint(fields=["event", "webhook"], name="one_delivery_per_webhook")
        ]
        indexes = [
            # The sweep's and the pending gauge's read: pending rows only.
            models.Index(
                fields=["next_attempt_at"],
                name="delivery_due",
                condition=Q(status="pending"),
            ),
            models.Index(fields=["webhook", "-id"], name="delivery_webhook_recent"),
        ]

    def __str__(self) -> str:
        return f"delivery {self.pk} ({self.status})"


class DeliveryCount(models.Model):
    """Deliveries that ended, per agent, event type and outcome: what the Prometheus
    counters read, so a scrape never counts the delivery history."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="+")
    event_type = models.CharField(max_length=64)
    status = models.CharField(max_length=10, choices=DeliveryStatus.choices)
    count = models.PositiveBigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["agent", "event_type", "status"], name="one_count_per_outcome"
            )
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.status}: {self.count}"

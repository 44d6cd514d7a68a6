"""Per-session outcomes: the sample unit of every metric and gate (DESIGN §7)."""

from __future__ import annotations

from django.db import models

from versions.models import Agent, Version


class Outcome(models.Model):
    """What one ended session reported. Late feedback fills ``feedback`` afterwards.

    ``started_at`` is copied from the session so that gates can compare only sessions
    started in the same window, without reading the rollouts app.
    """

    # The unique (agent, session_id) and (version, started_at) indexes lead with the
    # foreign keys, so single-column indexes would only slow every insert.
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="+", db_index=False)
    version = models.ForeignKey(
        Version, on_delete=models.PROTECT, related_name="outcomes", db_index=False
    )
    session_id = models.CharField(max_length=200)
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, help_text="Null while only feedback has arrived")
    success = models.BooleanField(null=True)
    error = models.BooleanField(null=True)
    latency_ms = models.FloatField(null=True)
    cost_usd = models.FloatField(null=True)
    hallucination = models.BooleanField(null=True)
    feedback = models.FloatField(null=True)
    feedback_at = models.DateTimeField(null=True)
    source = models.CharField(max_length=32, default="api")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["agent", "session_id"], name="outcome_one_per_session"),
        ]
        indexes = [models.Index(fields=["version", "started_at"], name="outcome_version_started")]

    def __str__(self) -> str:
        return f"{self.session_id} on {self.version_id}"

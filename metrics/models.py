"""Per-session outcomes, the metric rollups kept from them, and metric sources."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from versions.models import Agent, Version


class Outcome(models.Model):
    """What one ended session reported. Late feedback fills ``feedback`` afterwards.

    ``started_at`` and ``epoch`` are copied from the session so that gates can compare only
    sessions started in the same window, without reading the rollouts app.
    """

    # The unique (agent, session_id) and (version, started_at) indexes lead with the
    # foreign keys, so single-column indexes would only slow every insert.
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="+", db_index=False)
    version = models.ForeignKey(
        Version, on_delete=models.PROTECT, related_name="outcomes", db_index=False
    )
    session_id = models.CharField(max_length=200)
    started_at = models.DateTimeField()
    # The routing epoch the session's pin was computed from (null for pins a harness
    # made locally): the key its samples are rolled up under.
    epoch = models.PositiveBigIntegerField(null=True, blank=True)
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


class Rollup(models.Model):
    """Sufficient statistics of one metric for the sessions one version was pinned to at
    one routing epoch, in one of a few shards.

    Every end, feedback, abandon and expiry adds to these rows in its own transaction.
    A session always writes to the shard its id hashes to, so concurrent ends rarely
    meet on a row; readers sum the shards. Besides the metrics proper, two counters live
    here as pseudo-metrics (``n`` only): sessions assigned and sessions ended with an
    outcome.
    """

    version = models.ForeignKey(Version, on_delete=models.CASCADE, related_name="+", db_index=False)
    # -1 stands for "no epoch" (a pin the harness made locally): a unique key needs a value.
    epoch = models.BigIntegerField()
    metric = models.CharField(max_length=32)
    shard = models.PositiveSmallIntegerField()
    n = models.BigIntegerField(default=0)
    total = models.FloatField(default=0.0)
    total_sq = models.FloatField(default=0.0)
    sketch = models.JSONField(null=True, blank=True, help_text="metrics.sketch.Sketch, as JSON")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["version", "epoch", "metric", "shard"], name="rollup_one_row_per_key"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.metric} of {self.version_id} @ {self.epoch} [{self.shard}]"


class RollupCursor(models.Model):
    """How far the beat has counted new session pins, by session id.

    ``mark`` is the highest pin id seen at ``mark_at``; pins up to it are counted once
    the mark has settled, so a pin whose insert was still committing is not skipped.
    """

    name = models.CharField(max_length=32, primary_key=True)
    position = models.BigIntegerField(default=0)
    mark = models.BigIntegerField(default=0)
    mark_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} at {self.position}"


class SourceKind(models.TextChoices):
    HTTP_JSON = "http_json", "HTTP JSON export of per-session outcomes"
    PROMETHEUS = "prometheus", "Prometheus counters per version (PromQL)"


class MetricSource(models.Model):
    """Somewhere the beat polls for an agent's metrics, with the state of that polling."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="metric_sources")
    kind = models.CharField(max_length=16, choices=SourceKind.choices)
    name = models.CharField(max_length=100, blank=True, default="")
    url = models.CharField(max_length=2000)
    config = models.JSONField(default=dict, blank=True)
    enabled = models.BooleanField(default=True)
    timeout_s = models.FloatField(default=5.0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    # Polling state, written by the beat only. A poll holds a lease until it is done (or
    # the lease runs out), so two beats or workers never poll one source at once.
    poll_lease_until = models.DateTimeField(null=True, blank=True)
    cursor = models.TextField(blank=True, default="", help_text="http_json: the next cursor")
    last_polled_at = models.DateTimeField(null=True, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    consecutive_errors = models.PositiveIntegerField(default=0)
    error_count = models.PositiveBigIntegerField(default=0)
    poll_count = models.PositiveBigIntegerField(default=0)
    recorded_count = models.PositiveBigIntegerField(default=0)
    duplicate_count = models.PositiveBigIntegerField(default=0)
    unknown_count = models.PositiveBigIntegerField(default=0)
    invalid_count = models.PositiveBigIntegerField(default=0)
    last_unknown = models.JSONField(
        default=list, blank=True, help_text="The most recent session ids nobody started here"
    )

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.name or f"{self.kind} source {self.pk}"


class Observation(models.Model):
    """One poll of one metric's counters for one version, from a Prometheus source.

    ``n``, ``total`` and ``total_sq`` are cumulative and never decrease: a counter reset
    seen in ``raw`` (the values as polled) is carried over, so the increase over a window
    is the difference of two observations.
    """

    source = models.ForeignKey(MetricSource, on_delete=models.CASCADE, related_name="observations")
    version = models.ForeignKey(Version, on_delete=models.CASCADE, related_name="+", db_index=False)
    metric = models.CharField(max_length=32)
    at = models.DateTimeField()
    n = models.FloatField()
    total = models.FloatField()
    total_sq = models.FloatField(null=True, blank=True)
    raw = models.JSONField(default=dict)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["version", "metric", "source", "at"], name="observation_one_per_poll"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.metric} of {self.version_id} at {self.at:%Y-%m-%d %H:%M:%S}"

"""Agents, their immutable version tuples, and the audit trail every app writes to."""

from __future__ import annotations

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q

from versions.fingerprint import LAYERS, fingerprints


class Agent(models.Model):
    """One agent service under management, with its drain policy."""

    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)
    stable = models.ForeignKey(
        "versions.Version",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="Gets 100% of new sessions when no rollout runs.",
    )

    # Drain policy. Defaults suit chat-like agents: sessions of minutes to hours.
    idle_timeout_s = models.PositiveIntegerField(
        default=1800,
        validators=[MinValueValidator(1)],
        help_text="A session with no heartbeat for this long is marked abandoned.",
    )
    max_session_age_s = models.PositiveIntegerField(
        default=86400,
        validators=[MinValueValidator(1)],
        help_text="A session on a non-active version older than this is told to drain.",
    )
    drain_grace_s = models.PositiveIntegerField(
        default=300,
        help_text="After a drain directive, this long before terminate.",
    )
    max_live_versions = models.PositiveIntegerField(
        default=4,
        validators=[MinValueValidator(1)],
        help_text="More versions with live sessions than this force-drains the oldest.",
    )
    retain_drained = models.PositiveIntegerField(
        default=3, help_text="Drained versions kept listed as instantly rollback-able."
    )

    DRAIN_POLICY_FIELDS = (
        "idle_timeout_s",
        "max_session_age_s",
        "drain_grace_s",
        "max_live_versions",
        "retain_drained",
    )

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug

    @property
    def drain_policy(self) -> dict[str, int]:
        return {field: getattr(self, field) for field in self.DRAIN_POLICY_FIELDS}


class ImmutableVersion(Exception):
    """Raised on any attempt to change or delete a saved version tuple."""


class VersionQuerySet(models.QuerySet):
    def update(self, **kwargs):
        frozen = set(kwargs) & Version.FROZEN_FIELDS
        if frozen:
            raise ImmutableVersion(f"version tuples are immutable: {sorted(frozen)}")
        return super().update(**kwargs)

    def delete(self):
        raise ImmutableVersion("versions are never deleted; they are the audit trail")

    def bulk_create(
        self,
        objs,
        batch_size=None,
        ignore_conflicts=False,
        update_conflicts=False,
        update_fields=None,
        unique_fields=None,
    ):
        # An upsert would overwrite an existing tuple; a plain bulk insert skips save(),
        # so the fingerprints are computed here.
        if update_conflicts:
            raise ImmutableVersion("version tuples are immutable: no upserts")
        objs = list(objs)
        for version in objs:
            version.compute_fingerprints()
        return super().bulk_create(
            objs,
            batch_size=batch_size,
            ignore_conflicts=ignore_conflicts,
            update_fields=update_fields,
            unique_fields=unique_fields,
        )


class Version(models.Model):
    """An immutable tuple of four layers, content-addressed by its fingerprint."""

    agent = models.ForeignKey(Agent, on_delete=models.PROTECT, related_name="versions")
    label = models.CharField(max_length=100, null=True, blank=True)
    code = models.JSONField()
    model = models.JSONField()
    prompts = models.JSONField()
    tools = models.JSONField()
    fingerprint = models.CharField(max_length=71)
    code_fingerprint = models.CharField(max_length=71)
    model_fingerprint = models.CharField(max_length=71)
    prompts_fingerprint = models.CharField(max_length=71)
    tools_fingerprint = models.CharField(max_length=71)
    notes = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )

    FROZEN_FIELDS = frozenset(
        {"id", "agent", "agent_id", "label", "notes", "fingerprint", "created_at", *LAYERS}
        | {f"{layer}_fingerprint" for layer in LAYERS}
    )

    objects = VersionQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["agent", "fingerprint"], name="version_unique_tuple"),
            models.UniqueConstraint(
                fields=["agent", "label"],
                condition=Q(label__isnull=False),
                name="version_unique_label",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.agent.slug}@{self.display_name}"

    def save(self, *args, **kwargs) -> None:
        if self.pk is not None and (
            not self._state.adding or type(self)._base_manager.filter(pk=self.pk).exists()
        ):
            raise ImmutableVersion("a saved version tuple cannot be changed")
        self.compute_fingerprints()
        # A new instance given an existing id would otherwise be saved with an UPDATE.
        kwargs["force_insert"] = True
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise ImmutableVersion("versions are never deleted; they are the audit trail")

    @property
    def display_name(self) -> str:
        return self.label or self.short_fingerprint

    @property
    def short_fingerprint(self) -> str:
        return self.fingerprint.removeprefix("sha256:")[:12]

    @property
    def layers(self) -> dict:
        return {layer: getattr(self, layer) for layer in LAYERS}

    @property
    def layer_fingerprints(self) -> dict[str, str]:
        return {layer: getattr(self, f"{layer}_fingerprint") for layer in LAYERS}

    def compute_fingerprints(self) -> None:
        self.fingerprint, per_layer = fingerprints(self.layers)
        for layer, value in per_layer.items():
            setattr(self, f"{layer}_fingerprint", value)


class AuditEntry(models.Model):
    """One change, written in the same transaction as the change itself."""

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.CharField(max_length=150, help_text="A username, or 'system' for the beat")
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    action = models.CharField(max_length=64, db_index=True)
    agent = models.ForeignKey(
        Agent, null=True, blank=True, on_delete=models.PROTECT, related_name="audit_entries"
    )
    object_type = models.CharField(max_length=64)
    object_id = models.CharField(max_length=64)
    object_repr = models.CharField(max_length=200)
    reason = models.TextField(blank=True, default="")
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    request_id = models.CharField(max_length=64, blank=True, default="")

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name_plural = "audit entries"
        indexes = [models.Index(fields=["agent", "-at"], name="audit_agent_at")]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor} {self.action} {self.object_repr}"

    @property
    def object(self) -> str:
        return f"{self.object_type}:{self.object_id}"

"""Who may do what: a role per user, and API tokens stored only as hashes."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from datetime import datetime

from django.conf import settings
from django.db import models


class Role(models.TextChoices):
    VIEWER = "viewer", "Viewer (read only)"
    HARNESS = "harness", "Harness (sessions and outcomes)"
    RELEASE_MANAGER = "release-manager", "Release manager (everything)"


class Profile(models.Model):
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="profile"
    )
    role = models.CharField(max_length=32, choices=Role.choices, default=Role.VIEWER)

    def __str__(self) -> str:
        return f"{self.user} ({self.role})"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


KEY_PREFIX = "prism_"


class ApiToken(models.Model):
    """A bearer token. Only its SHA-256 is stored, so a database leak leaks no keys.

    A token acts with its user's role, on every agent or only on those in ``agents``,
    until it expires or is revoked. Revoking keeps the row: the audit trail and the
    admin still tell which token it was.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    key_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=8, help_text="First characters, to tell tokens apart")
    created_at = models.DateTimeField(auto_now_add=True)
    # Slugs, not foreign keys: the scope is checked against the slug in the URL without
    # a query, and an agent's slug never changes.
    agents = models.JSONField(
        null=True,
        blank=True,
        default=None,
        help_text="Slugs of the only agents this token may act on; null for every agent.",
    )
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"

    @classmethod
    def issue(
        cls,
        user,
        *,
        agents: Iterable[str] | None = None,
        expires_at: datetime | None = None,
    ) -> str:
        """Create a token for ``user`` and return its key (the only time it is visible).

        ``agents`` scopes it to those agents' slugs; None leaves it unscoped.
        """
        key = KEY_PREFIX + secrets.token_hex(20)
        cls.objects.create(
            user=user,
            key_hash=hash_key(key),
            prefix=key[len(KEY_PREFIX) : len(KEY_PREFIX) + 8],
            agents=None if agents is None else sorted(set(agents)),
            expires_at=expires_at,
        )
        return key


def role_of(user) -> str | None:
    """The user's role, or None for anonymous users and users without one."""
    if not user or not user.is_authenticated:
        return None
    if user.is_superuser:
        return Role.RELEASE_MANAGER
    try:
        return user.profile.role
    except Profile.DoesNotExist:
        return None


class TaskRun(models.Model):
    """One attempt at a task that changes state: the ledger of what really ran.

    The row is written (and committed) when the attempt starts, so a worker killed in
    the middle leaves a row without ``finished_at``. The broker then redelivers the
    message, and the next attempt adds its own row: the rows of one ``task_id`` count
    the attempts, and ``outcome`` tells which of them changed something.
    """

    class Outcome(models.TextChoices):
        APPLIED = "applied"
        SKIPPED = "skipped", "skipped (already applied, or no longer applicable)"
        FAILED = "failed"

    task_id = models.CharField(max_length=64, db_index=True)
    name = models.CharField(max_length=200)
    args = models.JSONField(default=list)
    redelivered = models.BooleanField(
        default=False, help_text="The broker handed this message out before."
    )
    worker = models.CharField(max_length=255, help_text="host:pid of the process that ran it")
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=16, choices=Outcome.choices, blank=True, default="")
    detail = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.name}[{self.task_id}] at {self.started_at:%Y-%m-%d %H:%M:%S}"


class BeatTick(models.Model):
    """The last time the beat's tick task ran: one row, moved forward only."""

    name = models.CharField(max_length=32, primary_key=True, default="beat")
    at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.name} ticked at {self.at.isoformat()}"

"""Routing, sessions, version lifecycle and rollouts."""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.db import models
from django.db.models import Q

from versions.models import Agent, Version

FULL = 10000  # basis points


class Routing(models.Model):
    """An agent's routing table: weights in basis points over versions, and an epoch
    that increments on every change so caches can key on it."""

    agent = models.OneToOneField(
        Agent, primary_key=True, on_delete=models.CASCADE, related_name="routing"
    )
    epoch = models.PositiveBigIntegerField(default=0)
    weights = models.JSONField(default=dict, help_text='{"<version id>": basis points}')
    stable_history = models.JSONField(
        default=list, help_text="Ids of past and present stables, newest last."
    )
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"routing of {self.agent_id} @ epoch {self.epoch}"

    def weight_of(self, version_id: int) -> int:
        return int(self.weights.get(str(version_id), 0))


class Lifecycle(models.Model):
    """Operational state of a version. The tuple is immutable; this is not."""

    version = models.OneToOneField(
        Version, primary_key=True, on_delete=models.CASCADE, related_name="lifecycle"
    )
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="+")
    first_routed_at = models.DateTimeField(null=True)
    drain_started_at = models.DateTimeField(null=True)
    live_at_drain_start = models.PositiveIntegerField(null=True)
    drained_at = models.DateTimeField(null=True)
    # The version-level force-drain mark. Every live session of the version gets
    # ``drain`` (or ``terminate``) at its next heartbeat, however and whenever it was
    # pinned: the heartbeat reads this mark, so applying it costs no count per heartbeat.
    forced_drain_at = models.DateTimeField(null=True)
    forced_drain_reason = models.TextField(blank=True, default="")
    forced_terminate = models.BooleanField(
        default=False, help_text="Forced sessions are terminated, not asked to drain"
    )
    # The drain ETA as the beat last computed it (``fleet.refresh_drain_etas``): the
    # fleet reads it, less the time since, instead of conditioning the survival curve
    # on every live session's age per request. Null ``drain_eta_s`` with a time set
    # means there was no estimate.
    drain_eta_s = models.FloatField(null=True, blank=True)
    drain_eta_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"lifecycle of {self.version_id}"


class SessionState(models.TextChoices):
    LIVE = "live"
    ENDED = "ended"
    ABANDONED = "abandoned"
    EXPIRED = "expired"


class Session(models.Model):
    """One agent session, pinned to the version that started it."""

    # No single-column indexes on the foreign keys: the unique (agent, session_id) and
    # the live index lead with the agent, and every pin pays for each index. Versions are
    # never deleted (PROTECT), so nothing looks sessions up by version alone.
    #
    # No foreign-key constraints in the database either (db_constraint=False). A
    # constraint makes every pin check both parents with SELECT ... FOR KEY SHARE, and
    # concurrent pins of one agent share those row locks as multixacts: bench.assign
    # measured it as a quarter of PostgreSQL's CPU per pin. Integrity holds without it:
    # the one write path pins the routing table's versions (checked when it is written)
    # or a reported version checked to be the agent's; versions are never deleted, and
    # an agent with versions cannot be (PROTECT), so a session's parents outlive it.
    # tests/rollouts/test_session_integrity.py holds both to that.
    agent = models.ForeignKey(
        Agent, on_delete=models.CASCADE, related_name="+", db_index=False, db_constraint=False
    )
    session_id = models.CharField(max_length=200)
    version = models.ForeignKey(
        Version,
        on_delete=models.PROTECT,
        related_name="sessions",
        db_index=False,
        db_constraint=False,
    )
    state = models.CharField(max_length=16, choices=SessionState.choices, default="live")
    started_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True)
    drain_at = models.DateTimeField(
        null=True, help_text="When this session was first told to drain."
    )
    end_reason = models.CharField(max_length=200, blank=True, default="")
    # The routing epoch the pin was computed from. Every stage change moves the epoch,
    # so metric rollups keyed by it tell exactly which stage of a rollout a session
    # started in, with no time-bucket approximation. Null for pins reported by a
    # harness that routed locally from a cached table it did not name.
    epoch = models.PositiveBigIntegerField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["agent", "session_id"], name="session_pin_unique"),
        ]
        indexes = [
            # The live state, and only it: the fleet's counts per version, the drain ETA's
            # ages and the beat's sweeps all read it, so they cost what the live sessions
            # cost however long the history grows. An ended session leaves it. A pin
            # writes one entry here; a heartbeat writes none, because last_seen_at is left
            # out on purpose (an indexed column would make every heartbeat a non-HOT
            # update that rewrites all of the row's index entries).
            models.Index(
                fields=["agent", "version", "started_at"],
                condition=Q(state="live"),
                name="session_live",
            ),
            # Ended sessions by when they ended, for the survival estimate's window and
            # for retention. Written once, when a session ends; a pin pays nothing for it.
            models.Index(
                fields=["agent", "ended_at"],
                condition=~Q(state="live"),
                name="session_ended",
            ),
        ]

    def __str__(self) -> str:
        return self.session_id


class RolloutState(models.TextChoices):
    RUNNING = "running"
    PAUSED = "paused"
    HALTED = "halted"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    SUPERSEDED = "superseded"


OPEN_STATES = (RolloutState.RUNNING, RolloutState.PAUSED, RolloutState.HALTED)


class Rollout(models.Model):
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="rollouts")
    candidate = models.ForeignKey(Version, on_delete=models.PROTECT, related_name="+")
    baseline = models.ForeignKey(Version, on_delete=models.PROTECT, related_name="+")
    state = models.CharField(max_length=16, choices=RolloutState.choices, default="running")
    stages = models.JSONField()
    gates = models.JSONField(default=list)
    auto_rollback = models.BooleanField(default=False)
    stage = models.PositiveSmallIntegerField(default=0, help_text="Index into stages")
    started_at = models.DateTimeField()
    stage_started_at = models.DateTimeField()
    # The stage clock stops while the rollout is paused: min_duration_s and
    # max_duration_s count running time only.
    paused_at = models.DateTimeField(null=True, blank=True, help_text="Start of the pause")
    stage_paused_s = models.FloatField(
        default=0.0, help_text="Seconds the current stage spent paused, past pauses only"
    )
    ended_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    warnings = models.JSONField(default=list)
    last_evaluation = models.JSONField(null=True, blank=True)
    evaluated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            # At most one non-terminal rollout per agent: the database decides races.
            models.UniqueConstraint(
                fields=["agent"],
                condition=Q(state__in=["running", "paused", "halted"]),
                name="rollout_one_open_per_agent",
            ),
        ]

    def __str__(self) -> str:
        return f"rollout {self.pk} of {self.agent_id}"

    @property
    def percent(self) -> float:
        return self.stages[self.stage]["percent"]

    def stage_running_s(self, now: datetime) -> float:
        """Seconds the current stage has been running at ``now``, pauses left out."""
        paused = self.stage_paused_s
        if self.paused_at is not None:
            paused += max((now - self.paused_at).total_seconds(), 0.0)
        return (now - self.stage_started_at).total_seconds() - paused


class RoutingChange(models.Model):
    """Who moved an agent's routing to an epoch, and for which rollout.

    One row per epoch, written in the routing change's own transaction. A rollback that
    names the epoch a person looked at reads these under the routing lock: if every
    change since was the beat moving the same rollout, the person's decision still
    stands and the rollback goes ahead (rollback always wins); otherwise it is refused.
    """

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="+")
    epoch = models.PositiveBigIntegerField()
    at = models.DateTimeField()
    actor = models.CharField(max_length=150)
    system = models.BooleanField(help_text="Moved by the beat, not by a person or a tool")
    rollout = models.ForeignKey(
        "Rollout", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    stage = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="The rollout's stage after the change"
    )
    action = models.CharField(max_length=40)
    # The weights from this epoch on: the sample-ratio check compares each epoch's pins
    # with the weights they were drawn at.
    weights = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["agent", "epoch"], name="routing_change_one_per_epoch"),
        ]

    def __str__(self) -> str:
        return f"{self.action} of {self.agent_id} to epoch {self.epoch}"


class Evaluation(models.Model):
    """One look at a rollout's gates: what was judged, from which evidence, and what was
    decided. Every look is kept (the beat looks every few seconds), so charts can draw
    each metric's interval over time; retention thins them."""

    rollout = models.ForeignKey(Rollout, on_delete=models.CASCADE, related_name="evaluation_log")
    at = models.DateTimeField()
    actor = models.CharField(max_length=150)
    stage = models.PositiveSmallIntegerField()
    epoch = models.PositiveBigIntegerField(help_text="The routing epoch it was computed at")
    decision = models.CharField(max_length=16, help_text="advance, hold, halt or rollback")
    reason = models.TextField(blank=True, default="")
    applied = models.BooleanField(
        default=False, help_text="Whether its decision changed the rollout"
    )
    report = models.JSONField()

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["rollout", "-at"], name="evaluation_by_rollout")]

    def __str__(self) -> str:
        return f"{self.decision} of rollout {self.rollout_id} at {self.at:%Y-%m-%d %H:%M:%S}"


class RolloutEvent(models.Model):
    """A rollout's timeline: every transition with its actor, reason and evidence."""

    rollout = models.ForeignKey(Rollout, on_delete=models.CASCADE, related_name="events")
    at = models.DateTimeField(auto_now_add=True)
    actor = models.CharField(max_length=150)
    action = models.CharField(max_length=32)
    from_state = models.CharField(max_length=16, blank=True, default="")
    to_state = models.CharField(max_length=16)
    from_stage = models.PositiveSmallIntegerField(null=True)
    to_stage = models.PositiveSmallIntegerField(null=True)
    reason = models.TextField(blank=True, default="")
    evaluation = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"{self.action} of rollout {self.rollout_id}"


class FleetSnapshot(models.Model):
    """Live sessions per version of one agent at one beat tick: the rainbow chart's
    read model. ``step_s`` is the resolution the row stands for once downsampled: 0 for
    a raw tick, then the bucket width it was kept as the representative of."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="+", db_index=False)
    at = models.DateTimeField()
    live = models.JSONField(default=dict, help_text='{"<version id>": live sessions}')
    step_s = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["at"]
        constraints = [
            # One row per agent per tick: a retried or overlapping beat writes nothing new.
            models.UniqueConstraint(fields=["agent", "at"], name="fleet_snapshot_one_per_tick"),
        ]
        indexes = [
            # The downsampler's scan: rows of one resolution older than a cutoff.
            models.Index(fields=["step_s", "at"], name="fleet_snapshot_step_at"),
        ]

    def __str__(self) -> str:
        return f"fleet of {self.agent_id} at {self.at:%Y-%m-%d %H:%M:%S}"


class SurvivalEstimate(models.Model):
    """An agent's session survival curve over the recent window, as the beat last
    computed it: the drain ETAs of the fleet read it instead of the sessions.

    ``times`` and ``survival`` are the Kaplan-Meier step function (seconds, S after each
    step), on a grid that keeps them to at most a few thousand numbers.
    """

    agent = models.OneToOneField(
        Agent, primary_key=True, on_delete=models.CASCADE, related_name="+"
    )
    computed_at = models.DateTimeField()
    window_s = models.PositiveIntegerField(help_text="The window the sessions were live in")
    times = models.JSONField(default=list)
    survival = models.JSONField(default=list)
    sampled = models.PositiveIntegerField(default=0, help_text="Sessions read, live ones too")
    events = models.PositiveIntegerField(default=0, help_text="Of those, the ones that ended")
    sessions = models.FloatField(
        default=0.0, help_text="The sessions of the window that the sample stands for"
    )

    def __str__(self) -> str:
        return f"survival of {self.agent_id} at {self.computed_at:%Y-%m-%d %H:%M:%S}"

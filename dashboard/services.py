"""What the dashboard shows, read from the other apps. Nothing here writes.

Each function builds the data of one page or partial. The polled ones (the agents
overview, the fleet board, the charts) cost a number of queries that does not grow with
the number of versions, sessions or rollouts: they read the fleet read model
(``rollouts.fleet``), the live-sessions index and the fleet snapshots, never the
session history.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.utils import timezone

from controlplane.health import BEAT
from controlplane.models import BeatTick
from dashboard.diffs import compact
from metrics.gates import TOLERANCES
from rollouts import drain, engine, fleet, snapshots
from rollouts.models import (
    OPEN_STATES,
    Rollout,
    RolloutState,
    Routing,
    Session,
    SessionState,
)
from versions.models import Agent, AuditEntry, Version

# Dark enough for white text (contrast >= 4.5:1) and far apart in hue, so neighbouring
# versions are told apart; every band and series also carries its written label.
PALETTE = (
    "#1f5fa8",
    "#b5400f",
    "#2e7d32",
    "#7b1fa2",
    "#ad1457",
    "#00695c",
    "#6d4c41",
    "#3949ab",
    "#6b6b00",
    "#c62828",
)


def colour(ordinal: int) -> str:
    return PALETTE[ordinal % len(PALETTE)]


def versions_of(agent_ids: Iterable[int]) -> tuple[dict[int, Version], dict[int, int]]:
    """The agents' versions by id, and each one's position among its agent's versions.

    A version's colour comes from that position, so it is the same on every page and
    two consecutive versions of one agent never share a colour. One query.
    """
    versions: dict[int, Version] = {}
    ordinal: dict[int, int] = {}
    seen: dict[int, int] = {}
    for version in (
        Version.objects.filter(agent_id__in=list(agent_ids))
        .only("id", "agent_id", "label", "fingerprint")
        .order_by("id")
    ):
        versions[version.pk] = version
        ordinal[version.pk] = seen.get(version.agent_id, 0)
        seen[version.agent_id] = ordinal[version.pk] + 1
    return versions, ordinal


def percent_text(share: float) -> str:
    if share <= 0:
        return "0%"
    if share < 0.01:
        return "<1%"
    return f"{share:.0%}"


def bp_text(basis_points: int) -> str:
    """Basis points as a percent: 10000 is "100%", 250 is "2.5%"."""
    value = basis_points / 100
    return f"{value:.0f}%" if value == int(value) else f"{value:g}%"


# --- rainbow bars -----------------------------------------------------------------------


@dataclass(frozen=True)
class Band:
    """One live version's share of an agent's live sessions."""

    version_id: int
    label: str
    colour: str
    live: int
    share: float

    @property
    def percent(self) -> str:
        return percent_text(self.share)

    @property
    def width(self) -> str:
        return f"{self.share * 100:.2f}"

    @property
    def wide(self) -> bool:
        """Whether the label fits inside the band; the legend always has it."""
        return self.share >= 0.12


def bands(live: dict[int, int], versions: dict[int, Version], ordinal: dict[int, int]) -> list:
    total = sum(live.values())
    return [
        Band(
            version_id=vid,
            label=versions[vid].display_name if vid in versions else f"#{vid}",
            colour=colour(ordinal.get(vid, vid)),
            live=n,
            share=n / total,
        )
        for vid, n in sorted(live.items())
        if n > 0
    ]


def rainbow_label(row_bands: list[Band]) -> str:
    if not row_bands:
        return "No live sessions"
    return "Live sessions: " + ", ".join(
        f"{band.label} {band.percent} ({band.live})" for band in row_bands
    )


# --- the agents overview ---------------------------------------------------------------


@dataclass
class AgentSummary:
    agent: Agent
    stable: Version | None
    bands: list[Band]
    live_sessions: int
    rollout: Rollout | None
    rollout_percent: str = ""
    candidate_name: str = ""
    baseline_name: str = ""

    @property
    def rainbow_label(self) -> str:
        return rainbow_label(self.bands)


def agents_overview() -> tuple[list[AgentSummary], bool]:
    """Every agent with its rainbow bar, its stable and any open rollout; and whether
    anything is live (the page stops polling when not). Four queries in all."""
    agents = list(Agent.objects.order_by("slug"))
    live = snapshots.live_by_agent(agent.pk for agent in agents)
    open_rollouts = {
        rollout.agent_id: rollout for rollout in Rollout.objects.filter(state__in=OPEN_STATES)
    }
    versions, ordinal = versions_of(agent.pk for agent in agents)
    rows = []
    for agent in agents:
        counts = live.get(agent.pk, {})
        rollout = open_rollouts.get(agent.pk)
        rows.append(
            AgentSummary(
                agent=agent,
                stable=versions.get(agent.stable_id),
                bands=bands(counts, versions, ordinal),
                live_sessions=sum(counts.values()),
                rollout=rollout,
                rollout_percent=f"{rollout.percent:g}%" if rollout else "",
                candidate_name=version_name(versions, rollout.candidate_id) if rollout else "",
                baseline_name=version_name(versions, rollout.baseline_id) if rollout else "",
            )
        )
    return rows, bool(live) or bool(open_rollouts)


def version_name(versions: dict[int, Version], version_id: int | None) -> str:
    if version_id is None:
        return "—"
    version = versions.get(version_id)
    return version.display_name if version else f"#{version_id}"


# --- rollouts: stepper, gates, actions --------------------------------------------------


@dataclass(frozen=True)
class Step:
    number: int
    percent: str
    status: str  # done, current, stopped, next
    status_text: str
    stage: dict[str, Any]


@dataclass(frozen=True)
class GateRow:
    metric: str
    stat: str
    critical: bool
    tolerance: str
    verdict: str
    detail: str


@dataclass(frozen=True)
class Action:
    name: str
    label: str
    title: str
    explain: str
    danger: bool = False


ACTIONS = {
    "pause": Action(
        "pause",
        "Pause",
        "Pause rollout {pk}?",
        "The routing stays as it is; the beat stops evaluating and time paused does not "
        "count towards the stage.",
    ),
    "resume": Action(
        "resume",
        "Resume",
        "Resume rollout {pk}?",
        "The beat evaluates the stage again. A halted rollout gets its stage's weight back.",
    ),
    "advance": Action(
        "advance",
        "Advance now",
        "Advance rollout {pk} now?",
        "A manual override: the next stage starts now, whatever the stage conditions and "
        "gates say. Reaching 100% promotes the candidate.",
        danger=True,
    ),
    "rollback": Action(
        "rollback",
        "Roll back",
        "Roll back rollout {pk}?",
        "The candidate gets 0% of new sessions and the baseline 100%, from the next session on.",
        danger=True,
    ),
}

_STOPPED_TEXT = {
    RolloutState.HALTED: "halted here",
    RolloutState.PAUSED: "paused here",
    RolloutState.ROLLED_BACK: "rolled back here",
    RolloutState.SUPERSEDED: "superseded here",
}


@dataclass
class RolloutSummary:
    rollout: Rollout
    candidate: Version
    baseline: Version
    steps: list[Step]
    gates: list[GateRow]
    samples: dict[str, Any] | None
    evaluation: dict[str, Any] | None
    actions: list[Action]
    deadline: datetime | None
    is_open: bool
    percent: str

    @property
    def can_roll_back(self) -> bool:
        return any(action.name == "rollback" for action in self.actions)

    @property
    def other_actions(self) -> list[Action]:
        return [action for action in self.actions if action.name != "rollback"]


def steps(rollout: Rollout) -> list[Step]:
    result = []
    for index, stage in enumerate(rollout.stages):
        if rollout.state == RolloutState.PROMOTED or index < rollout.stage:
            status, text = "done", "done"
        elif index == rollout.stage and rollout.state == RolloutState.RUNNING:
            status, text = "current", "current"
        elif index == rollout.stage:
            status, text = "stopped", _STOPPED_TEXT.get(rollout.state, rollout.state)
        else:
            status, text = "next", "next"
        result.append(Step(index + 1, f"{stage['percent']:g}%", status, text, stage))
    return result


def tolerance_text(gate: dict[str, Any]) -> str:
    for key in TOLERANCES:
        if key in gate:
            return f"{key.replace('_', ' ')} {gate[key]:g}"
    return "—"


def gate_rows(rollout: Rollout) -> list[GateRow]:
    """Every gate of the rollout with its latest verdict, or "not evaluated"."""
    latest = {
        (result.get("metric"), result.get("stat", "mean")): result
        for result in (rollout.last_evaluation or {}).get("gates", [])
    }
    rows = []
    for gate in rollout.gates:
        result = latest.get((gate["metric"], gate.get("stat", "mean")), {})
        rows.append(
            GateRow(
                metric=gate["metric"],
                stat=gate.get("stat", "mean"),
                critical=gate.get("critical", True),
                tolerance=tolerance_text(gate),
                verdict=result.get("verdict", "not evaluated"),
                detail=str(result.get("detail", "")),
            )
        )
    return rows


def rollout_summary(rollout: Rollout) -> RolloutSummary:
    """The stepper, gate verdicts, sample counts and allowed actions of one rollout.
    ``rollout`` comes with its candidate and baseline (select_related)."""
    evaluation = rollout.last_evaluation or None
    actions = [
        ACTIONS[name]
        for name in ("pause", "resume", "advance", "rollback")
        if rollout.state in engine.ALLOWED.get(name, ())
    ]
    return RolloutSummary(
        rollout=rollout,
        candidate=rollout.candidate,
        baseline=rollout.baseline,
        steps=steps(rollout),
        gates=gate_rows(rollout),
        samples=(evaluation or {}).get("min_sessions"),
        evaluation=evaluation,
        actions=actions,
        deadline=engine.stage_deadline(rollout) if rollout.state == RolloutState.RUNNING else None,
        is_open=rollout.state in OPEN_STATES,
        percent=f"{rollout.percent:g}%",
    )


# --- the fleet board -------------------------------------------------------------------


@dataclass
class VersionRow:
    version: Version
    colour: str
    state: str
    weight: int
    live_sessions: int
    total_sessions: int
    drain: dict[str, Any]
    roles: list[str] = field(default_factory=list)

    @property
    def weight_text(self) -> str:
        return bp_text(self.weight)

    @property
    def drain_percent(self) -> int | None:
        progress = self.drain.get("progress")
        return None if progress is None else round(progress * 100)


@dataclass
class RollbackPlan:
    """What the one-click rollback would do now, in words."""

    possible: bool
    summary: str
    target: Version | None = None
    moving_off: Version | None = None
    live_on_moving_off: int = 0


@dataclass
class Board:
    agent: Agent
    epoch: int
    rows: list[VersionRow]
    bands: list[Band]
    rollout: RolloutSummary | None
    rollback: RollbackPlan
    recent: list[AuditEntry]
    live_versions: int
    oldest_live_age_s: float | None
    live: bool
    stable: Version | None = None

    @property
    def rainbow_label(self) -> str:
        return rainbow_label(self.bands)

    @property
    def live_sessions(self) -> int:
        return sum(row.live_sessions for row in self.rows)


def board(agent: Agent, now: datetime | None = None) -> Board:
    """The fleet board of one agent.

    Its queries do not depend on the number of versions or sessions:
    1. ``rollouts.fleet.fleet``: versions, states, counts and drain ETAs;
    2. the routing epoch, the open rollout (with its versions), the oldest live
       session (one entry of the live-sessions index per live version), the latest
       audit entries, and the agent's version ids for colours.
    """
    now = now or timezone.now()
    versions = fleet.fleet(agent, now)
    routing = Routing.objects.filter(agent=agent).only("epoch", "stable_history").first()
    open_rollout = (
        Rollout.objects.filter(agent=agent, state__in=OPEN_STATES)
        .select_related("candidate", "baseline", "created_by")
        .first()
    )
    _, ordinal = versions_of([agent.pk])
    oldest = drain.oldest_live_start(agent, [v.version.pk for v in versions if v.live_sessions])
    recent = list(AuditEntry.objects.filter(agent=agent).order_by("-at", "-id")[:6])

    summary = rollout_summary(open_rollout) if open_rollout else None
    rows = []
    for item in versions:
        roles = []
        if item.version.pk == agent.stable_id:
            roles.append("stable")
        if open_rollout and item.version.pk == open_rollout.candidate_id:
            roles.append("candidate")
        if open_rollout and item.version.pk == open_rollout.baseline_id:
            roles.append("baseline")
        rows.append(
            VersionRow(
                version=item.version,
                colour=colour(ordinal.get(item.version.pk, item.version.pk)),
                state=item.state,
                weight=item.weight,
                live_sessions=item.live_sessions,
                total_sessions=item.total_sessions,
                drain=item.drain or {},
                roles=roles,
            )
        )
    by_id = {row.version.pk: row for row in rows}
    live = {row.version.pk: row.live_sessions for row in rows if row.live_sessions}
    return Board(
        agent=agent,
        epoch=routing.epoch if routing else 0,
        rows=rows,
        bands=bands(live, {pk: row.version for pk, row in by_id.items()}, ordinal),
        rollout=summary,
        rollback=rollback_plan(agent, routing, open_rollout, by_id),
        recent=recent,
        live_versions=len(live),
        oldest_live_age_s=(now - oldest).total_seconds() if oldest else None,
        live=bool(live) or open_rollout is not None,
        stable=by_id[agent.stable_id].version if agent.stable_id in by_id else None,
    )


def rollback_plan(
    agent: Agent,
    routing: Routing | None,
    rollout: Rollout | None,
    rows: dict[int, VersionRow],
) -> RollbackPlan:
    """Mirror of ``engine.rollback_agent``'s choice, for the confirm step to say what
    will happen: the open rollout's baseline, or else the previous stable."""

    def version(pk: int) -> Version:
        row = rows.get(pk)
        return row.version if row else Version.objects.get(pk=pk)

    def live(pk: int) -> int:
        row = rows.get(pk)
        return row.live_sessions if row else 0

    if rollout is not None:
        return RollbackPlan(
            True,
            f"Rollout {rollout.pk} is rolled back: {rollout.candidate.display_name} gets 0% of "
            f"new sessions and {rollout.baseline.display_name} gets 100%, from the next "
            "session on.",
            target=rollout.baseline,
            moving_off=rollout.candidate,
            live_on_moving_off=live(rollout.candidate_id),
        )
    history = list(routing.stable_history) if routing else []
    previous = [pk for pk in history if pk != agent.stable_id]
    if agent.stable_id is None or not previous:
        return RollbackPlan(False, "There is no previous stable version to roll back to.")
    target, current = version(previous[-1]), version(agent.stable_id)
    return RollbackPlan(
        True,
        f"The stable goes back from {current.display_name} to {target.display_name}: new "
        f"sessions go to {target.display_name} from the next session on.",
        target=target,
        moving_off=current,
        live_on_moving_off=live(agent.stable_id),
    )


# --- the rollout page -----------------------------------------------------------------


@dataclass(frozen=True)
class TimelineRow:
    at: datetime
    actor: str
    action: str
    from_state: str
    to_state: str
    from_percent: str
    to_percent: str
    reason: str
    verdict: str


def timeline(rollout: Rollout) -> list[TimelineRow]:
    """Who or what moved each stage, when and why, from the rollout's events."""

    def percent(stage: int | None) -> str:
        if stage is None or not 0 <= stage < len(rollout.stages):
            return ""
        return f"{rollout.stages[stage]['percent']:g}%"

    return [
        TimelineRow(
            at=event.at,
            actor=event.actor,
            action=event.action,
            from_state=event.from_state,
            to_state=event.to_state,
            from_percent=percent(event.from_stage),
            to_percent=percent(event.to_stage),
            reason=event.reason,
            verdict=(event.evaluation or {}).get("verdict", ""),
        )
        for event in rollout.events.all()
    ]


# --- the audit page ---------------------------------------------------------------------


@dataclass(frozen=True)
class AuditRow:
    entry: AuditEntry
    changes: list[ChangeRow]


@dataclass(frozen=True)
class ChangeRow:
    key: str
    before: str
    after: str
    changed: bool


def change_rows(before: Any, after: Any) -> list[ChangeRow]:
    """Before and after of an audit entry, key by key when they are objects."""
    if isinstance(before, dict | None) and isinstance(after, dict | None):
        old, new = before or {}, after or {}
        return [
            ChangeRow(
                key,
                compact(old.get(key)) if key in old else "—",
                compact(new.get(key)) if key in new else "—",
                old.get(key) != new.get(key),
            )
            for key in sorted(old.keys() | new.keys())
        ]
    return [ChangeRow("value", compact(before), compact(after), before != after)]


def audit_entries(
    agent: Agent, *, action: str = "", actor: str = "", page: int = 1, per_page: int = 25
) -> tuple[list[AuditRow], bool]:
    """One page of the agent's audit trail, newest first, and whether an older page
    exists. One query: a row past the page says so, without counting the trail."""
    entries = AuditEntry.objects.filter(agent=agent)
    if action:
        entries = entries.filter(action=action)
    if actor:
        entries = entries.filter(actor=actor)
    start = (page - 1) * per_page
    rows = list(entries.order_by("-at", "-id")[start : start + per_page + 1])
    page_rows = [AuditRow(entry, change_rows(entry.before, entry.after)) for entry in rows]
    return page_rows[:per_page], len(rows) > per_page


def audit_choices(agent: Agent) -> tuple[list[str], list[str]]:
    """The actions and actors that occur in the agent's trail, for the filters."""
    entries = AuditEntry.objects.filter(agent=agent).order_by()
    actions = sorted(set(entries.values_list("action", flat=True).distinct()))
    actors = sorted(set(entries.values_list("actor", flat=True).distinct()))
    return actions, actors


def agent_is_live(agent: Agent) -> bool:
    """Whether the agent has live sessions or an open rollout: its pages keep polling."""
    return (
        Session.objects.filter(agent=agent, state=SessionState.LIVE).exists()
        or Rollout.objects.filter(agent=agent, state__in=OPEN_STATES).exists()
    )


def live_sessions_of(version: Version) -> int:
    return drain.live_counts(version.agent_id, [version.pk]).get(version.pk, 0)


@dataclass(frozen=True)
class BeatStatus:
    last_tick: datetime | None
    lag_s: float | None
    late_after_s: float
    late: bool


def beat_status(now: datetime | None = None) -> BeatStatus:
    """Is the beat on time? The beat part of ``controlplane.health.check``, without its
    broker round-trip, so every page can afford it: one primary-key read."""
    now = now or timezone.now()
    last_tick = BeatTick.objects.filter(name=BEAT).values_list("at", flat=True).first()
    late_after = float(settings.PRISM_BEAT_LATE_S)
    lag = None if last_tick is None else max(0.0, (now - last_tick).total_seconds())
    return BeatStatus(
        last_tick=last_tick,
        lag_s=lag,
        late_after_s=late_after,
        late=lag is None or lag > late_after,
    )

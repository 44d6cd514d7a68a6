"""The simulator's scenarios: how sessions last and behave on each version, and
whether the fleet deploys new versions itself."""

from __future__ import annotations

from dataclasses import dataclass, field

from simulator.traffic import Durations, Quality


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    durations: Durations = field(default_factory=Durations)
    quality: Quality = field(default_factory=Quality)
    # Quality of every version other than the stable the run started from; None: same.
    candidate_quality: Quality | None = None
    # Simulated seconds between the fleet's own deploys (a new version rolled out with
    # ``supersede``); None: the fleet never deploys.
    deploy_every_s: float | None = None
    heartbeat_s: float = 60.0
    # After ``drain``, how long a session takes to finish its step and end.
    checkpoint_s: float = 30.0


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "healthy",
            "The candidate is as good as the baseline: gates pass and the beat promotes it "
            "stage by stage.",
        ),
        Scenario(
            "regression",
            "The candidate errs three times as often and costs 60% more: the beat halts the "
            "rollout and rolls it back.",
            candidate_quality=Quality().worse(errors=3.0, cost=1.6, latency=1.2),
        ),
        Scenario(
            "rainbow",
            "A deploy every 20 minutes, each superseding the last, while a fifth of sessions "
            "run for hours: four and more versions stay live until the drain policies "
            "force-drain the oldest.",
            durations=Durations(long_share=0.2, long_median_s=2 * 3600.0),
            deploy_every_s=1200.0,
        ),
        Scenario(
            "soak",
            "Steady mixed traffic, for load tests: minutes-long and hours-long sessions, "
            "heartbeats, outcomes and late feedback.",
            durations=Durations(short_median_s=120.0, long_share=0.05, long_median_s=3600.0),
            heartbeat_s=30.0,
        ),
    )
}

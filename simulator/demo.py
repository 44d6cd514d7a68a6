"""The demo fleet: agents, their version tuples, drain policies and rollouts. ``manage.py
demo`` creates it through Prism's services; ``simulate --setup`` through the REST API.

Times here are the real-world ones. The simulator runs its clock ``accel`` times faster
than the wall clock, while Prism keeps real time, so everything Prism times (stage
minimum durations, drain policy seconds) is divided by the same factor to match.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

TIMED_POLICY_FIELDS = ("idle_timeout_s", "max_session_age_s", "drain_grace_s")


def _tuple(ref: str, model: str, system: str, tools: list[str], temperature=0.2) -> dict:
    return {
        "code": {"ref": ref, "image": f"registry.local/agents:{ref.removeprefix('git:')}"},
        "model": {
            "provider": "anthropic",
            "name": model,
            "params": {"temperature": temperature, "max_tokens": 4096},
        },
        "prompts": {"system": system},
        "tools": [
            {
                "name": name,
                "description": f"{name.replace('_', ' ')} tool",
                "input_schema": {
                    "type": "object",
                    "properties": {"query": {"type": "string"}},
                    "required": ["query"],
                },
            }
            for name in tools
        ],
    }


@dataclass(frozen=True)
class AgentSpec:
    slug: str
    name: str
    scenario: str
    rate_per_s: float  # new sessions per real second, whatever the acceleration
    policy: dict[str, int]
    versions: list[tuple[str, dict[str, Any]]]  # (label, layers); the first is the stable
    stages: list[dict[str, Any]] | None = None  # a rollout of the second version
    gates: list[dict[str, Any]] = field(default_factory=list)
    auto_rollback: bool = False
    advanced: int = 0  # stages the demo starts past: a rollout caught mid-way


GATES = [
    {"metric": "error_rate", "max_increase": 0.03},
    {"metric": "latency_ms", "stat": "p95", "max_relative_change": 0.25},
    {"metric": "cost_usd", "max_relative_change": 0.2},
]

DEMO: list[AgentSpec] = [
    AgentSpec(
        slug="research",
        name="Research assistant",
        scenario="healthy",
        rate_per_s=1.0,
        policy={
            "idle_timeout_s": 1800,
            "max_session_age_s": 86400,
            "drain_grace_s": 300,
            "max_live_versions": 4,
        },
        versions=[
            (
                "v1",
                _tuple(
                    "git:4f1c2a9",
                    "claude-sonnet",
                    "You are a careful research assistant. Cite sources.",
                    ["search", "fetch"],
                ),
            ),
            (
                "v2",
                _tuple(
                    "git:8b7d3e0",
                    "claude-sonnet",
                    "You are a careful research assistant. Cite every source with a link.",
                    ["search", "fetch"],
                ),
            ),
        ],
        stages=[{"percent": p, "min_duration_s": 600, "min_sessions": 50} for p in (5, 25, 50)]
        + [{"percent": 100}],
        gates=GATES,
        advanced=1,
    ),
    AgentSpec(
        slug="support",
        name="Support triage",
        scenario="regression",
        rate_per_s=0.7,
        policy={
            "idle_timeout_s": 900,
            "max_session_age_s": 14400,
            "drain_grace_s": 120,
            "max_live_versions": 3,
        },
        versions=[
            (
                "v1",
                _tuple(
                    "git:1a2b3c4",
                    "claude-haiku",
                    "Triage the ticket; answer or route it.",
                    ["lookup_order", "refund"],
                ),
            ),
            (
                "v2",
                _tuple(
                    "git:5d6e7f8",
                    "claude-haiku",
                    "Triage the ticket; answer or route it. Be brief.",
                    ["lookup_order", "refund"],
                    temperature=0.7,
                ),
            ),
        ],
        stages=[{"percent": p, "min_duration_s": 600, "min_sessions": 50} for p in (10, 50)]
        + [{"percent": 100}],
        gates=GATES,
        auto_rollback=True,
    ),
    AgentSpec(
        slug="coder",
        name="Code reviewer",
        scenario="rainbow",
        rate_per_s=0.5,
        policy={
            "idle_timeout_s": 1800,
            "max_session_age_s": 4 * 3600,
            "drain_grace_s": 300,
            "max_live_versions": 4,
        },
        versions=[
            (
                "r0",
                _tuple(
                    "git:c0de000",
                    "claude-sonnet",
                    "Review the diff; flag bugs first.",
                    ["read_file", "run_tests"],
                ),
            ),
        ],
    ),
]

# Single-agent runs (``simulate --scenario``): the demo agent that plays the scenario, or
# a plain agent for the load test.
BY_SCENARIO: dict[str, AgentSpec] = {spec.scenario: spec for spec in DEMO}
BY_SCENARIO["soak"] = AgentSpec(
    slug="soak",
    name="Soak test agent",
    scenario="soak",
    rate_per_s=20.0,
    policy={
        "idle_timeout_s": 1800,
        "max_session_age_s": 86400,
        "drain_grace_s": 300,
        "max_live_versions": 4,
    },
    versions=[("s1", _tuple("git:50a1c00", "claude-haiku", "Answer briefly.", ["search"]))],
)


def scaled_policy(policy: dict[str, int], accel: float) -> dict[str, int]:
    """The policy's seconds divided by ``accel`` (at least 1 s; a grace may be 0)."""
    scaled = dict(policy)
    for key in TIMED_POLICY_FIELDS:
        if key in scaled:
            low = 0 if key == "drain_grace_s" else 1
            scaled[key] = max(low, math.ceil(scaled[key] / accel))
    return scaled


def scaled_stages(stages: list[dict[str, Any]], accel: float) -> list[dict[str, Any]]:
    scaled = copy.deepcopy(stages)
    for stage in scaled:
        for key in ("min_duration_s", "max_duration_s"):
            if stage.get(key) is not None:
                stage[key] = math.ceil(stage[key] / accel)
    return scaled


def deploy_layers(spec: AgentSpec, number: int, tag: str) -> dict[str, Any]:
    """The tuple of the fleet's ``number``-th own deploy: the stable's, with a new code
    ref and a prompt revision, so every deploy is a distinct version."""
    layers = copy.deepcopy(spec.versions[0][1])
    layers["code"] = {**layers["code"], "ref": f"git:{tag}{number:04d}"}
    layers["prompts"] = {
        **layers["prompts"],
        "system": f"{layers['prompts']['system']} (revision {tag}-{number})",
    }
    return layers


def scaling_note(accel: float) -> str:
    return (
        f"The simulator's clock runs {accel:g}x faster than real time, so stage "
        f"min_duration_s and drain policy seconds are divided by {accel:g} to match."
    )

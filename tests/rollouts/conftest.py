"""Fixtures and helpers shared by the rollout tests."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone

from metrics.gates import validate_gates
from rollouts import engine, sessions
from rollouts.models import Rollout, Routing
from versions.models import Agent, Version


@pytest.fixture
def v1(agent, make_version):
    """The stable version."""
    version = make_version(agent, "v1")
    engine.set_stable(agent, version, actor="test")
    return version


@pytest.fixture
def v2(agent, make_version):
    return make_version(agent, "v2")


@pytest.fixture
def actor(release_manager):
    return release_manager.user


def start_rollout(
    agent, candidate, stages: Any = None, gates: Any = (), actor: Any = "tester", **kwargs: Any
) -> Rollout:
    """Validate ``stages`` and ``gates`` as the API does, then start a rollout."""
    return engine.start_rollout(
        agent,
        candidate=candidate,
        stages=engine.validate_stages(stages),
        gates=validate_gates(list(gates)),
        actor=actor,
        **kwargs,
    )


def weights(agent: Agent) -> dict[int, int]:
    """The agent's routing weights, by version id."""
    return {int(k): v for k, v in Routing.objects.get(agent=agent).weights.items()}


def set_weights(agent: Agent, weights: dict[Version, int] | dict[int, int]) -> None:
    """Write a routing table directly, the way every engine transition does. Keys are
    versions or their ids."""
    by_id = {getattr(version, "pk", version): weight for version, weight in weights.items()}
    with transaction.atomic():
        routing = engine._lock_routing(agent)
        now = timezone.now()
        change = engine._set_weights(routing, by_id, now)
        engine._log_change(routing, change, actor="test", action="test.set_weights", now=now)


def expected_version(slug: str, session_id: str, weights: dict[int, int]) -> int:
    """The documented assignment, computed independently of rollouts.routing."""
    bucket = int(hashlib.sha256(f"{slug}:{session_id}".encode()).hexdigest()[:16], 16) % 10000
    upper = 0
    for version_id in sorted(weights):
        upper += weights[version_id]
        if bucket < upper:
            return version_id
    raise AssertionError(f"bucket {bucket} is outside every range of {weights}")


def ended_on(agent: Agent, version: Version, n: int, prefix: str, outcome: dict) -> list[str]:
    """Start and end ``n`` sessions that the agent's routing sends to ``version``, each
    with ``outcome``: evidence for the gates, through the real services."""
    table = weights(agent)
    ids: list[str] = []
    index = 0
    while len(ids) < n:
        session_id = f"{prefix}-{index}"
        index += 1
        if expected_version(agent.slug, session_id, table) == version.pk:
            ids.append(session_id)
    for session_id in ids:
        sessions.assign(agent.slug, session_id)
        sessions.end(agent.slug, session_id, outcome)
    return ids

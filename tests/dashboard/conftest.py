"""Fixtures for the dashboard: logged-in browsers per role, and an agent mid-rollout."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from controlplane.models import Profile, Role
from metrics.gates import validate_gates
from rollouts import engine, sessions, snapshots
from rollouts.models import Rollout
from versions.models import Agent, Version

PASSWORD = "correct-horse-battery"
_serial = itertools.count(1)

HTMX = {"HTTP_HX_REQUEST": "true"}


def htmx(target: str | None = None, **extra: str) -> dict[str, str]:
    """Headers of an htmx request aimed at the element ``target``."""
    headers = dict(HTMX, **extra)
    if target:
        headers["HTTP_HX_TARGET"] = target
    return headers


def make_user(role: str | None, password: str = PASSWORD):
    user = get_user_model().objects.create_user(
        username=f"{role or 'outsider'}-{next(_serial)}", password=password
    )
    if role is not None:
        Profile.objects.create(user=user, role=role)
    return user


def browser(role: str | None) -> Client:
    client = Client()
    client.user = make_user(role)
    client.force_login(client.user)
    return client


@pytest.fixture
def manager(db) -> Client:
    return browser(Role.RELEASE_MANAGER)


@pytest.fixture
def viewer_browser(db) -> Client:
    return browser(Role.VIEWER)


@pytest.fixture
def harness_browser(db) -> Client:
    return browser(Role.HARNESS)


@pytest.fixture
def outsider_browser(db) -> Client:
    return browser(None)


@pytest.fixture
def anonymous_browser() -> Client:
    return Client()


GATES = [
    {"metric": "error_rate", "max_increase": 0.02},
    {"metric": "latency_ms", "stat": "p95", "max_relative_change": 0.1, "critical": False},
]


def start(agent: Agent, candidate: Version, stages=None, gates=GATES, **kwargs) -> Rollout:
    return engine.start_rollout(
        agent,
        candidate=candidate,
        stages=engine.validate_stages(stages),
        gates=validate_gates(list(gates)),
        actor=kwargs.pop("actor", "ci-pipeline"),
        **kwargs,
    )


def open_sessions(agent: Agent, count: int, prefix: str = "s") -> None:
    for i in range(count):
        sessions.assign(agent.slug, f"{prefix}-{i}")


@pytest.fixture
def rollout_fleet(agent, make_version):
    """research: v1 stable, v2 in a rollout at its first stage, sessions on both, one
    evaluation by the beat and a few fleet snapshots."""
    v1 = make_version(agent, "v1")
    engine.set_stable(agent, v1, actor="ci-pipeline")
    v2 = make_version(
        agent,
        "v2",
        prompts={"system": "You are a careful research assistant.\nCite every source."},
    )
    rollout = start(
        agent,
        v2,
        stages=[{"percent": 50, "min_duration_s": 3600}, {"percent": 100}],
    )
    open_sessions(agent, 12)
    engine.evaluate_open_rollouts()
    now = timezone.now()
    for minutes in (3, 2, 1, 0):
        snapshots.record(now - timedelta(minutes=minutes))
    rollout.refresh_from_db()
    return {"agent": agent, "v1": v1, "v2": v2, "rollout": rollout}

"""Fixtures for the harness client tests: a token, and an agent mid-rollout."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from controlplane.models import ApiToken, Profile, Role
from rollouts import engine
from tests.rollouts.conftest import start_rollout


def issue_token(username: str, role: str) -> str:
    user = get_user_model().objects.create_user(username=username)
    Profile.objects.create(user=user, role=role)
    return ApiToken.issue(user)


@pytest.fixture
def harness_token(db) -> str:
    return issue_token("client-harness", Role.HARNESS)


@pytest.fixture
def split(agent, make_version):
    """v1 stable, v2 at 50%: both arms get new sessions."""
    v1, v2 = make_version(agent, "v1"), make_version(agent, "v2")
    engine.set_stable(agent, v1, actor="test")
    stages = [{"percent": 50, "min_duration_s": 3600, "min_sessions": 1000}, {"percent": 100}]
    rollout = start_rollout(agent, v2, stages=stages)
    return v1, v2, rollout

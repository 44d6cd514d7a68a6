"""Shared fixtures: API clients for each role, and small factories."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from controlplane.models import ApiToken, Profile, Role
from versions.models import Agent, Version

_serial = itertools.count(1)


def _client_for(role: str | None) -> APIClient:
    user = get_user_model().objects.create_user(username=f"{role or 'outsider'}-{next(_serial)}")
    if role is not None:
        Profile.objects.create(user=user, role=role)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {ApiToken.issue(user)}")
    client.user = user
    return client


@pytest.fixture
def viewer(db) -> APIClient:
    return _client_for(Role.VIEWER)


@pytest.fixture
def harness(db) -> APIClient:
    return _client_for(Role.HARNESS)


@pytest.fixture
def release_manager(db) -> APIClient:
    return _client_for(Role.RELEASE_MANAGER)


@pytest.fixture
def outsider(db) -> APIClient:
    """Authenticated, but with no Prism role."""
    return _client_for(None)


@pytest.fixture
def anonymous() -> APIClient:
    return APIClient()


BASE_TUPLE: dict[str, Any] = {
    "code": {"ref": "git:0a1b2c3d"},
    "model": {"provider": "anthropic", "name": "claude-sonnet", "params": {"temperature": 0.2}},
    "prompts": {"system": "You are a careful research assistant.\nCite sources."},
    "tools": [
        {
            "name": "search",
            "description": "Search the web",
            "input_schema": {
                "type": "object",
                "properties": {"query": {"type": "string"}},
                "required": ["query"],
            },
        }
    ],
}


def tuple_with(**changes: Any) -> dict[str, Any]:
    """A deep copy of BASE_TUPLE with whole layers replaced."""
    layers = copy.deepcopy(BASE_TUPLE)
    layers.update(copy.deepcopy(changes))
    return layers


@pytest.fixture
def agent(db) -> Agent:
    return Agent.objects.create(slug="research", name="Research agent")


@pytest.fixture
def make_version(db):
    def make(agent: Agent, label: str | None = None, **changes: Any) -> Version:
        layers = tuple_with(**changes)
        if "code" not in changes:
            # Distinct by default: each call is a new tuple unless told otherwise.
            layers["code"] = {"ref": f"git:{next(_serial):08x}"}
        version = Version(agent=agent, label=label, **layers)
        version.save()
        return version

    return make

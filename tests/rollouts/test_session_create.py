"""``POST /api/agents/{slug}/sessions/``: the fast path in front of the full view answers
exactly what the full view would (DESIGN §5, §9)."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from rollouts import engine
from rollouts.models import Session

START = "/api/agents/{slug}/sessions/"


@pytest.fixture
def stable(agent, make_version, release_manager):
    version = make_version(agent, label="v1")
    engine.set_stable(agent, version, actor=release_manager.user)
    return version


def with_header(value: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=value)
    return client


# About 200,000 levels: far beyond Python's recursion limit in the JSON decoder.
DEEP = b"[" * 200_000


def test_a_deeply_nested_body_with_a_valid_token_is_a_400(agent, stable, harness):
    response = harness.post(START.format(slug=agent.slug), DEEP, content_type="application/json")
    assert response.status_code == 400
    assert "nested deeper" in response.json()["detail"]
    assert not Session.objects.exists()


@pytest.mark.parametrize("header", ["Token prism_not-a-real-token", "Token   spaced"])
def test_a_deeply_nested_body_with_a_bad_token_is_a_401(agent, stable, header):
    # Authentication comes before parsing, in the full view as on the fast path.
    response = with_header(header).post(
        START.format(slug=agent.slug), DEEP, content_type="application/json"
    )
    assert response.status_code == 401
    assert not Session.objects.exists()


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
def test_a_body_that_is_not_declared_json_is_a_415(agent, stable, harness, content_type):
    response = harness.post(
        START.format(slug=agent.slug), b'{"session_id": "s-1"}', content_type=content_type
    )
    assert response.status_code == 415
    assert not Session.objects.exists()

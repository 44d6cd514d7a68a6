"""A world for the sweeps over every endpoint: objects each URL can point at, and clients.

It is built once per module, in a transaction that each test's own transaction nests in
and that is rolled back at the end, as the role matrix does: the sweeps make hundreds of
requests. A module using it must not use ``transactional_db``.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import transaction
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

from controlplane.models import ApiToken, Profile, Role
from metrics.models import Outcome
from rollouts import engine, sessions
from rollouts.models import Lifecycle, Rollout, RolloutEvent, Routing, Session
from tests.conftest import tuple_with
from versions.audit import SYSTEM
from versions.models import Agent, AuditEntry, Version

WORLD_SLUG = "edges"
WORLD_SESSION = "edges-session-1"
# Stage 0 holds for an hour, so nothing the beat could do moves the world under a test.
WORLD_STAGES = [{"percent": 10, "min_duration_s": 3600}, {"percent": 100}]


@pytest.fixture(scope="module")
def api_world(django_db_setup, django_db_blocker):
    """An agent with a stable ``v1`` rolling out to ``v2``, one live session, and a
    client per role (``clients``: harness, release-manager, and ``admin``, a superuser
    logged in by session for the admin pages)."""
    with django_db_blocker.unblock(), transaction.atomic():
        agent = Agent.objects.create(slug=WORLD_SLUG, name="Edges agent")
        v1 = Version(agent=agent, label="v1", **tuple_with(code={"ref": "git:edges001"}))
        v1.save()
        v2 = Version(agent=agent, label="v2", **tuple_with(code={"ref": "git:edges002"}))
        v2.save()
        engine.set_stable(agent, v1, actor=SYSTEM)
        rollout = engine.start_rollout(
            agent,
            candidate=v2,
            stages=engine.validate_stages(WORLD_STAGES),
            gates=[],
            actor=SYSTEM,
        )
        sessions.assign(WORLD_SLUG, WORLD_SESSION)
        keys = {}
        for role in (Role.HARNESS, Role.RELEASE_MANAGER):
            user = get_user_model().objects.create_user(username=f"edges-{role}")
            Profile.objects.create(user=user, role=role)
            keys[role] = ApiToken.issue(user)
        admin = get_user_model().objects.create_superuser("edges-admin", password="x" * 16)
        yield {
            "agent": agent,
            "v1": v1,
            "v2": v2,
            "rollout": rollout,
            "session_id": WORLD_SESSION,
            "keys": keys,
            "admin": admin,
        }
        transaction.set_rollback(True)


def client_for(world: dict[str, Any], role: str) -> APIClient:
    """A token client for ``role``, or the superuser's browser session for ``admin``.
    Server errors come back as responses, so a test sees the 500 a client would."""
    client = APIClient()
    client.raise_request_exception = False
    if role == "admin":
        client.force_login(world["admin"])
    else:
        client.credentials(HTTP_AUTHORIZATION=f"Token {world['keys'][role]}")
    return client


def routes(patterns=None, prefix: str = ""):
    """Every URL pattern in the resolver: ``(route, pattern)`` with the full route text."""
    for pattern in get_resolver().url_patterns if patterns is None else patterns:
        if isinstance(pattern, URLResolver):
            yield from routes(pattern.url_patterns, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern):
            yield prefix + str(pattern.pattern), pattern


def view_class(pattern: URLPattern):
    """The class behind a route's callback (through ``functools.wraps``), or None."""
    callback = pattern.callback
    while callback is not None:
        if hasattr(callback, "view_class"):
            return callback.view_class
        callback = getattr(callback, "__wrapped__", None)
    return None


def snapshot() -> tuple:
    """Everything the API can write, to show a refused request changed nothing."""
    return (
        list(Agent.objects.values().order_by("pk")),
        list(Version.objects.values_list("pk", "fingerprint", "label").order_by("pk")),
        AuditEntry.objects.count(),
        list(Routing.objects.values().order_by("pk")),
        list(Lifecycle.objects.values().order_by("pk")),
        list(Rollout.objects.values().order_by("pk")),
        RolloutEvent.objects.count(),
        list(Session.objects.values().order_by("pk")),
        list(Outcome.objects.values().order_by("pk")),
    )

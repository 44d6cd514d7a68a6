"""``POST /api/agents/{slug}/sessions/``: the fast path in front of the full view answers
exactly what the full view would."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import transaction
from django.test import Client
from django.utils import timezone
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from controlplane.models import ApiToken, Profile, Role
from rollouts import engine, sessions
from rollouts import routing as routing_mod
from rollouts.models import Lifecycle, Routing, Session
from tests.rollouts.conftest import set_weights
from tests.rollouts.urls_full_view import FULL_VIEW
from versions.models import Agent, AuditEntry

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


@pytest.mark.parametrize("header", ["token {key}", "TOKEN {key}", "Token   {key}  "])
def test_the_scheme_and_spacing_of_the_header_are_read_as_drf_reads_them(
    agent, stable, harness, header
):
    key = harness._credentials["HTTP_AUTHORIZATION"].split()[1]
    response = with_header(header.format(key=key)).post(
        START.format(slug=agent.slug), {"session_id": "s-1"}, format="json"
    )
    assert response.status_code == 201


# --- the fast path answers what the full view answers ---------------------------------

NOW = timezone.now()
SLUGS = ("alpha", "bare", "other", "ghost")  # routed, no stable, another team's, none
KINDS = (
    "harness", "manager", "viewer", "outsider", "superuser", "harness-alpha", "harness-other",
    "manager-alpha", "revoked", "expired", "inactive",
)  # fmt: skip
CONTENT_TYPES = [
    "application/json; charset=utf-8", "application/json; charset=UTF-8",
    "application/json; charset=latin-1", "Application/JSON", "text/plain", "application/*",
    "*/*", "", "application/json-patch+json", "multipart/form-data; boundary=x",
    "application/x-www-form-urlencoded",
]  # fmt: skip
ACCEPTS = [
    "*/*", "application/json", "text/html", "", "application/*", "application/json; indent=4",
    "text/html, application/json", "image/png",
]  # fmt: skip
RAW_BODIES = [
    b"", b"not json", b"[" * 200_000, b"[]", b'"s"', b"{}", b"null",
    b'{"session_id": "\\ud800"}', b'{"session_id": NaN}', b"\xff\xfe",
    b'{"session_id": "a", "session_id": "b"}', b'{"session_id": "a"} trailing',
    b'\xef\xbb\xbf{"session_id": "bom"}', '{"session_id": "utf16"}'.encode("utf-16"),
]  # fmt: skip
EXISTING = ("live-new", "young-on-draining", "old-on-draining", "grace-over", "ended", "gone")


def _user(kind: str, role: str | None, **fields: Any):
    user = get_user_model().objects.create_user(username=f"prop-{kind}", **fields)
    if role is not None:
        Profile.objects.create(user=user, role=role)
    return user


@pytest.fixture
def both_paths(db, settings, monkeypatch, make_version):
    """A world with something of everything, the full view on a path of its own, and a
    clock that stands still, so two answers to one request can be compared byte for byte.

    ``alpha`` routes 60/40 over v1 and v2 and drains v3 (with young, old and expired
    sessions on it); ``bare`` has no stable; ``other`` is another team's agent.
    """
    settings.ROOT_URLCONF = "tests.rollouts.urls_full_view"
    monkeypatch.setattr(timezone, "now", lambda: NOW)
    alpha = Agent.objects.create(slug="alpha", name="A", max_session_age_s=3600, drain_grace_s=600)
    v1, v2, v3 = (make_version(alpha, label=f"v{i}") for i in (1, 2, 3))
    engine.set_stable(alpha, v3, actor="test")
    for session_id in EXISTING:
        sessions.assign("alpha", session_id)
    engine.set_stable(alpha, v1, actor="test")
    set_weights(alpha, {v1: 6000, v2: 4000})
    sessions.assign("alpha", "live-new")
    Session.objects.filter(session_id="live-new").update(version=v2)
    Session.objects.filter(session_id="old-on-draining").update(started_at=NOW - timedelta(hours=2))
    Session.objects.filter(session_id="grace-over").update(
        started_at=NOW - timedelta(hours=3), drain_at=NOW - timedelta(hours=1)
    )
    Session.objects.filter(session_id="ended").update(state="ended", ended_at=NOW)
    Session.objects.filter(session_id="gone").update(state="abandoned", ended_at=NOW)
    Agent.objects.create(slug="bare", name="B")
    other = Agent.objects.create(slug="other", name="O")
    engine.set_stable(other, make_version(other, label="o1"), actor="test")

    keys = {
        "harness": ApiToken.issue(_user("harness", Role.HARNESS)),
        "manager": ApiToken.issue(_user("manager", Role.RELEASE_MANAGER)),
        "viewer": ApiToken.issue(_user("viewer", Role.VIEWER)),
        "outsider": ApiToken.issue(_user("outsider", None)),
        "superuser": ApiToken.issue(_user("superuser", None, is_superuser=True)),
        "harness-alpha": ApiToken.issue(_user("h-alpha", Role.HARNESS), agents=["alpha"]),
        "harness-other": ApiToken.issue(_user("h-other", Role.HARNESS), agents=["other"]),
        "manager-alpha": ApiToken.issue(
            _user("m-alpha", Role.RELEASE_MANAGER), agents=["alpha", "bare", "ghost"]
        ),
        "revoked": ApiToken.issue(_user("revoked", Role.HARNESS)),
        "expired": ApiToken.issue(
            _user("expired", Role.HARNESS), expires_at=NOW - timedelta(seconds=1)
        ),
        "inactive": ApiToken.issue(_user("inactive", Role.HARNESS, is_active=False)),
    }
    ApiToken.objects.filter(user__username="prop-revoked").update(revoked_at=NOW)
    versions = [v1.pk, v2.pk, v3.pk, other.stable_id, 987654321]
    return {"keys": keys, "versions": versions, "epoch": Routing.objects.get(agent=alpha).epoch}


def session_ids():
    return st.one_of(
        st.sampled_from([*EXISTING, "new-1", "new-2", "x" * 200, "ünï ✓", "a/b?c"]),
        st.text(max_size=210),
        st.sampled_from(["", "x" * 201, "a\nb", "\x00", "\ud800"]),
        st.integers(),
        st.none(),
        st.lists(st.text(max_size=3), max_size=2),
    )


@st.composite
def bodies(draw, world: dict, plain: bool) -> bytes:
    """A plain start, or (``plain`` False) a report, extra fields or raw oddities."""
    if plain:
        shape = "plain"
        session_id = draw(st.sampled_from([*EXISTING, "new-1", "new-2", "x" * 200, "ünï ✓"]))
    else:
        shape = draw(st.sampled_from(["plain", "report", "report", "extra", "raw", "encoded"]))
        session_id = draw(session_ids())
    document: Any = {"session_id": session_id}
    if shape == "report":
        document["version"] = draw(st.sampled_from([*world["versions"], "1", True, None]))
        ages = [timedelta(minutes=5), timedelta(days=40), timedelta(minutes=-30), timedelta(0)]
        document["started_at"] = draw(
            st.one_of(
                st.sampled_from(ages).map(lambda age: (NOW - age).isoformat()),
                st.sampled_from(["2026-01-01T00:00:00", "soon", None, 17]),
            )
        )
        if draw(st.booleans()):
            epoch = world["epoch"]
            document["epoch"] = draw(st.sampled_from([0, epoch, epoch + 5, -1, "1", None]))
    elif shape == "extra":
        document[draw(st.sampled_from(["junk", "version", "epoch", "started_at"]))] = draw(
            st.one_of(st.none(), st.integers(), st.text(max_size=5))
        )
    elif shape == "raw":
        return draw(st.sampled_from(RAW_BODIES))
    text = json.dumps(document, ensure_ascii=draw(st.booleans()))
    if shape == "encoded":
        return draw(st.sampled_from([b"\xef\xbb\xbf", b""])) + text.encode(
            draw(st.sampled_from(["utf-8", "utf-16", "latin-1"])), errors="replace"
        )
    return text.encode(errors="surrogatepass")  # a lone surrogate makes invalid UTF-8


# What a request may vary in. Each example starts from a plain start that succeeds (a
# harness or manager token, alpha, JSON) and varies at most two of these, so that most
# examples reach the fast path and the rest probe its edges in pairs (each edge alone is
# in the sweep below; other verbs never reach the fast path).
AXES = ("token", "slug", "query", "content_type", "accept", "body")


@st.composite
def requests(draw, world: dict) -> dict:
    varied = draw(st.sets(st.sampled_from(AXES), max_size=2))
    if "token" in varied:
        kind = draw(st.sampled_from([*KINDS, "none", "bad-key", "malformed"]))
    else:
        kind = draw(st.sampled_from(["harness", "manager", "superuser", "harness-alpha"]))
    if kind == "none":
        authorization = None
    elif kind == "bad-key":
        authorization = "Token prism_" + "0" * 40
    elif kind == "malformed":
        authorization = draw(st.sampled_from(["Token", "Token a b", "Bearer x", "Tokenx y", ""]))
    else:
        key = world["keys"][kind]
        authorization = draw(st.sampled_from(["Token {}", "token {}", " Token  {} "])).format(key)

    def axis(name: str, usual: Any, strategy: st.SearchStrategy) -> Any:
        return draw(strategy) if name in varied else usual

    return {
        "method": "POST",
        "slug": axis("slug", "alpha", st.sampled_from(SLUGS)),
        "query": axis("query", "", st.sampled_from(["format=json", "format=api", "x=1"])),
        "body": draw(bodies(world, plain="body" not in varied)),
        "content_type": axis("content_type", "application/json", st.sampled_from(CONTENT_TYPES)),
        "accept": axis("accept", None, st.sampled_from(ACCEPTS)),
        "authorization": authorization,
        "fast_first": draw(st.booleans()),
        "forget_caches": draw(st.booleans()),
    }


def written() -> tuple:
    """What a session start may write, without ids and request ids that differ anyway."""
    return (
        sorted(
            Session.objects.values_list(
                "agent_id", "session_id", "version_id", "state", "started_at", "last_seen_at",
                "ended_at", "drain_at", "end_reason", "epoch",
            )
        ),
        sorted(
            (e.action, e.object_type, e.object_id, e.actor, e.reason, repr(e.before),
             repr(e.after))
            for e in AuditEntry.objects.all()
        ),
        sorted(Lifecycle.objects.values_list("version_id", "drained_at", "drain_started_at")),
    )  # fmt: skip


def send(request: dict, template: str) -> tuple:
    """The request through one path, in a savepoint that is undone afterwards: (status,
    body, headers, what it wrote)."""
    headers = {}
    if request["authorization"] is not None:
        headers["Authorization"] = request["authorization"]
    if request["accept"] is not None:
        headers["Accept"] = request["accept"]
    path = template.format(slug=request["slug"])
    if request["query"]:
        path += "?" + request["query"]
    with transaction.atomic():
        response = Client().generic(
            request["method"], path, data=request["body"],
            content_type=request["content_type"], headers=headers,
        )  # fmt: skip
        state = written()
        transaction.set_rollback(True)
    shown = {k: v for k, v in response.headers.items() if k.lower() != "x-request-id"}
    return response.status_code, response.content, shown, state


def assert_same_answers(request: dict) -> int:
    """Send ``request`` through both paths (in the order it asks, after forgetting the
    caches if it asks) and compare everything; the status."""
    if request["forget_caches"]:
        sessions._agent_ids.clear()
        routing_mod._tables.clear()
        sessions._payloads.clear()
    paths = [START, FULL_VIEW] if request["fast_first"] else [FULL_VIEW, START]
    answers = {template: send(request, template) for template in paths}
    fast, full = answers[START], answers[FULL_VIEW]
    assert fast[0] != 500, fast[1][:300]
    assert fast[:2] == full[:2]
    assert fast[2] == full[2]
    assert fast[3] == full[3]
    return fast[0]


def plain_request(world: dict, **changes: Any) -> dict:
    """A plain start that succeeds, with ``changes``."""
    request = {
        "method": "POST", "slug": "alpha", "query": "", "content_type": "application/json",
        "accept": None, "authorization": f"Token {world['keys']['harness']}",
        "body": b'{"session_id": "new-1"}', "fast_first": True, "forget_caches": False,
    }  # fmt: skip
    request.update(changes)
    return request


def edges(world: dict) -> list[dict]:
    """Every value of every axis, each alone on an otherwise plain start."""
    found = [plain_request(world), plain_request(world, fast_first=False, forget_caches=True)]
    found += [plain_request(world, content_type=value) for value in CONTENT_TYPES]
    found += [plain_request(world, accept=value) for value in ACCEPTS]
    found += [plain_request(world, slug=slug) for slug in SLUGS]
    found += [plain_request(world, method=method) for method in ("GET", "PUT", "PATCH")]
    found += [plain_request(world, query=q) for q in ("format=json", "format=api", "x=1")]
    found += [plain_request(world, authorization=f"Token {key}") for key in world["keys"].values()]
    found += [
        plain_request(world, authorization=value)
        for value in (None, "Token", "Token a b", "Bearer x", "Tokenx y", "")
    ]
    found += [
        plain_request(world, body=json.dumps({"session_id": sid}).encode())
        for sid in (*EXISTING, "", "x" * 201, "a\nb", 5, None)
    ]
    found += [plain_request(world, body=raw) for raw in RAW_BODIES]
    return found


def test_each_edge_alone_gets_the_full_views_answer(both_paths):
    statuses = set()
    for request in edges(both_paths):
        try:
            statuses.add(assert_same_answers(request))
        except AssertionError as exc:
            raise AssertionError(f"{request!r:.400}: {exc}") from exc
    assert statuses >= {200, 201, 400, 401, 403, 404, 405, 406, 409, 415}


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_the_fast_path_answers_exactly_what_the_full_view_answers(both_paths, data):
    """Status, body bytes, headers and what was written, for every input: bodies, ids,
    content types, Accept headers, query strings, tokens of every role, scope and state,
    agents with and without routing, existing pins (on active and draining versions,
    ended, old enough to be told to drain, past their grace) and reported pins."""
    request = data.draw(requests(both_paths))
    event(f"status {assert_same_answers(request)}")

"""The API's edges, decided before any view runs: text PostgreSQL cannot store in a path,
a query string or a cookie; JSON errors under /api/; trailing-slash redirects that keep
the method (controlplane/middleware.py)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import pytest
from django.urls import URLPattern
from django.urls.resolvers import RegexPattern

from controlplane.models import Role
from metrics.models import Outcome
from tests.controlplane.conftest import client_for, routes, snapshot

# Values for the URL conf's parameter names, so each route reaches its view.
PARAMETER_EXAMPLES = {
    "slug": lambda world: world["agent"].slug,
    "session_id": lambda world: world["session_id"],
    "object_id": lambda world: "1",
    "content_type_id": lambda world: "1",
    "id": lambda world: "1",
    "app_label": lambda world: "versions",
    "url": lambda world: "nowhere/",
    "action": lambda world: "pause",
    "other": lambda world: str(world["v2"].pk),
}
# Converters that match any text, so a NUL can travel in them to the view.
TEXT_CONVERTERS = ("PathConverter", "StringConverter")
NUL = "a\x00b"


def _example(name: str, world: dict[str, Any], route: str) -> str:
    if name == "pk":
        rollouts = route.startswith(("api/rollouts/", "rollouts/"))
        subject = world["rollout"] if rollouts else world["v1"]
        return str(subject.pk)
    assert name in PARAMETER_EXAMPLES, f"add an example value for <{name}> in {route!r}"
    return PARAMETER_EXAMPLES[name](world)


def build(route: str, pattern: URLPattern, world: dict[str, Any], text: str | None = None) -> str:
    """A concrete, percent-encoded path for ``route``; ``text`` replaces every parameter
    that matches any text (path and str converters)."""

    def value(name: str, converter: str) -> str:
        if text is not None and converter in TEXT_CONVERTERS:
            return quote(text, safe="")
        return quote(_example(name, world, route), safe="/")

    if isinstance(pattern.pattern, RegexPattern):
        built = re.sub(
            r"\(\?P<(\w+)>[^)]*\)", lambda m: value(m.group(1), "RegexGroup"), route
        ).replace("^", "")
        return "/" + built.replace("$", "")
    converters = {name: type(c).__name__ for name, c in pattern.pattern.converters.items()}
    return "/" + re.sub(
        r"<(?:\w+:)?(\w+)>", lambda m: value(m.group(1), converters[m.group(1)]), route
    )


def text_parameters(pattern: URLPattern) -> list[str]:
    converters = getattr(pattern.pattern, "converters", {})
    return [name for name, c in converters.items() if type(c).__name__ in TEXT_CONVERTERS]


ALL_ROUTES = sorted(routes(), key=lambda item: item[0])
API_ROUTES = [(route, pattern) for route, pattern in ALL_ROUTES if route.startswith("api/")]


def who(route: str) -> str:
    return Role.RELEASE_MANAGER if route.startswith("api/") else "admin"


def request(client, method: str, path: str, **extra):
    return getattr(client, method.lower())(path, **extra)


def assert_refused(response, status: int, route: str, *words: str) -> None:
    assert response.status_code == status, (route, response.status_code, response.content[:300])
    if route.startswith("api/"):
        assert response["Content-Type"] == "application/json", response["Content-Type"]
        detail = response.json()["detail"]
    else:
        detail = response.content.decode()
    for word in words:
        assert word in detail, detail


# --- NUL in a query string, a path or a cookie ----------------------------------------


def query_cases():
    for route, pattern in ALL_ROUTES:
        names = (
            ("agent", "action", "against", "limit", "format") if route.startswith("api/") else ()
        )
        for method in ("GET", "POST"):
            for query in [*(f"{n}=a%00b" for n in names), "q=a%00b", "x%00y=1"]:
                yield pytest.param(route, pattern, method, query, id=f"{method} /{route}?{query}")


@pytest.mark.parametrize(("route", "pattern", "method", "query"), list(query_cases()))
def test_a_nul_in_the_query_string_is_400_on_every_route(
    api_world, db, route, pattern, method, query
):
    client = client_for(api_world, who(route))
    before = snapshot()

    response = request(client, method, f"{build(route, pattern, api_world)}?{query}")

    assert_refused(response, 400, route, "NUL", "query")
    assert snapshot() == before


def path_cases():
    for route, pattern in ALL_ROUTES:
        if not text_parameters(pattern):
            continue  # its parameters cannot hold a NUL: the resolver refuses them
        for method in ("GET", "POST"):
            yield pytest.param(route, pattern, method, id=f"{method} /{route}")


@pytest.mark.parametrize(("route", "pattern", "method"), list(path_cases()))
def test_a_nul_in_a_path_parameter_is_404_on_every_route(api_world, db, route, pattern, method):
    client = client_for(api_world, who(route))
    before = snapshot()

    response = request(client, method, build(route, pattern, api_world, text=NUL))

    assert_refused(response, 404, route, "NUL")
    assert snapshot() == before


@pytest.mark.parametrize(("route", "pattern"), ALL_ROUTES, ids=[r for r, _ in ALL_ROUTES])
def test_a_nul_in_a_cookie_is_400_on_every_route(api_world, db, route, pattern):
    client = client_for(api_world, who(route))
    # The cookie is sent quoted, with the NUL as an octal escape Django decodes.
    client.cookies["sessionid"] = "abcdefgh\x00"

    response = client.get(build(route, pattern, api_world))

    assert_refused(response, 400, route, "NUL", "sessionid")


@pytest.mark.parametrize(
    "path",
    [
        "/api/audit/?agent=%00",
        "/api/audit/?action=a%00b",
        "/api/audit/?agent=edges&action=%00",
    ],
)
def test_the_reported_audit_queries_are_400(api_world, db, path):
    client = client_for(api_world, Role.RELEASE_MANAGER)

    response = client.get(path)

    assert response.status_code == 400
    assert "NUL" in response.json()["detail"]


@pytest.mark.parametrize("action", ["heartbeat", "end", "feedback"])
def test_the_reported_session_paths_are_404(api_world, db, action):
    client = client_for(api_world, Role.HARNESS)
    body = {"feedback": 0.5} if action == "feedback" else {}

    response = client.post(f"/api/agents/edges/sessions/a%00b/{action}/", body, format="json")

    assert response.status_code == 404
    assert "NUL" in response.json()["detail"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/audit/?agent=%ED%A0%80"),
        ("GET", "/api/audit/?action=%ED%A0%80&agent=edges"),
        ("GET", "/api/audit/?agent=%FF%FE"),
        ("POST", "/api/agents/edges/sessions/a%ED%A0%80b/heartbeat/"),
        ("POST", "/api/agents/edges/sessions/%FF/end/"),
    ],
)
def test_a_surrogate_or_broken_utf8_in_a_path_or_query_is_a_plain_miss(api_world, db, method, path):
    """Django re-quotes undecodable path bytes and replaces them in a query string, so
    no lone surrogate reaches PostgreSQL from either: the answer is an ordinary miss."""
    client = client_for(api_world, Role.RELEASE_MANAGER)
    before = snapshot()

    response = request(client, method, path)

    assert response.status_code in (200, 404), response.content
    assert response["Content-Type"] == "application/json"
    assert snapshot() == before


# --- JSON errors under /api/ -----------------------------------------------------------

UNKNOWN_API_PATHS = [
    "/api/",
    "/api/nothing/",
    "/api/agents/edges/nothing/",
    "/api/versions/not-a-number/",
    "/api/agents/not a slug/",
    "/api/rollouts/1/explode/",
]


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
@pytest.mark.parametrize("path", UNKNOWN_API_PATHS)
def test_an_unknown_api_path_answers_a_json_404(api_world, db, path, method):
    client = client_for(api_world, Role.RELEASE_MANAGER)

    response = request(client, method, path)

    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"detail": "Not found."}


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_a_method_the_docs_lack_answers_a_json_405(api_world, db, method):
    client = client_for(api_world, Role.RELEASE_MANAGER)

    response = request(client, method, "/api/docs/")

    assert response.status_code == 405
    assert response["Content-Type"] == "application/json"
    assert method in response.json()["detail"]
    assert "GET" in response["Allow"]


def test_a_server_error_under_api_answers_json_with_the_request_id(api_world, db, monkeypatch):
    from versions import api

    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(api.AgentList, "get", explode)
    client = client_for(api_world, Role.RELEASE_MANAGER)

    response = client.get("/api/agents/", HTTP_X_REQUEST_ID="req-500-test")

    assert response.status_code == 500
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert "req-500-test" in body["detail"]
    assert body["request_id"] == "req-500-test"
    assert "boom" not in response.content.decode()


# --- trailing slashes -------------------------------------------------------------------


def slash_cases():
    for route, pattern in API_ROUTES:
        if not route.endswith("/"):
            continue
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            yield pytest.param(route, pattern, method, id=f"{method} /{route}")


@pytest.mark.parametrize(("route", "pattern", "method"), list(slash_cases()))
def test_a_path_missing_its_slash_is_a_308_to_it_with_a_json_body(
    api_world, db, route, pattern, method
):
    client = client_for(api_world, Role.RELEASE_MANAGER)
    path = build(route, pattern, api_world)
    before = snapshot()

    response = request(client, method, f"{path.rstrip('/')}?limit=5", data={}, format="json")

    assert response.status_code == 308, response.content
    assert response["Location"] == f"{path}?limit=5"
    assert response["Content-Type"] == "application/json"
    assert path in response.json()["detail"]
    assert snapshot() == before


def test_a_client_following_the_redirect_posts_its_body_to_the_right_place(api_world, db):
    client = client_for(api_world, Role.HARNESS)
    session = api_world["session_id"]

    response = client.post(
        f"/api/agents/edges/sessions/{session}/end",
        {"outcome": {"success": True}},
        format="json",
        follow=True,
    )

    assert response.status_code == 200, response.content
    assert response.redirect_chain == [(f"/api/agents/edges/sessions/{session}/end/", 308)]
    assert Outcome.objects.get(session_id=session).success is True


def test_with_debug_on_the_api_still_answers_json_and_308(api_world, db, settings):
    """Django's DEBUG pages are HTML, and its slash redirect raises for a POST."""
    settings.DEBUG = True
    client = client_for(api_world, Role.HARNESS)

    missing = client.get("/api/nothing/")
    unslashed = client.post(f"/api/agents/edges/sessions/{api_world['session_id']}/heartbeat")

    assert (missing.status_code, missing.json()) == (404, {"detail": "Not found."})
    assert unslashed.status_code == 308
    assert unslashed["Location"].endswith("/heartbeat/")

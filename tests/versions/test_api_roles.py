"""The role matrix: every endpoint, every verb, every role (DESIGN §9).

To cover a new endpoint, append rows to ``MATRIX``: one ``(method, url template, body,
{role: status})`` per verb. URL templates use the URL conf's own parameter names
(``{slug}``, ``{pk}``) plus ``{other}``; ``url_values`` fills them from the ``world``
fixture, so an endpoint needing a new object adds it there. Then add the view's module to
``COVERED_MODULES`` so the coverage check holds the new routes to the table.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

from controlplane.models import ApiToken
from tests.conftest import tuple_with
from versions.models import Agent, AuditEntry, Version

VIEWER, HARNESS, MANAGER = "viewer", "harness", "release-manager"
OUTSIDER, ANONYMOUS = "outsider", "anonymous"
ROLES = (VIEWER, HARNESS, MANAGER, OUTSIDER, ANONYMOUS)
FIXTURE_OF_ROLE = {
    VIEWER: "viewer",
    HARNESS: "harness",
    MANAGER: "release_manager",
    OUTSIDER: "outsider",
    ANONYMOUS: "anonymous",
}
VERBS = ("GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE")


def roles(viewer: int, harness: int, manager: int) -> dict[str, int]:
    """Expected statuses; an outsider always gets 403 and anonymous 401."""
    return {VIEWER: viewer, HARNESS: harness, MANAGER: manager, OUTSIDER: 403, ANONYMOUS: 401}


def everyone(status: int) -> dict[str, int]:
    return dict.fromkeys(ROLES, status)


EVERYONE_READS = roles(200, 200, 200)
NO_HARNESS_READS = roles(200, 403, 200)
MANAGER_ONLY = roles(403, 403, 405)  # the role check comes before the method check


def read_only(url: str, readers: dict[str, int]) -> list[tuple]:
    """Rows for an endpoint that only reads: GET, HEAD, OPTIONS and four refused verbs."""
    refused = MANAGER_ONLY
    return [
        ("GET", url, None, readers),
        ("HEAD", url, None, readers),
        ("OPTIONS", url, None, readers),
        ("POST", url, {}, refused),
        ("PUT", url, {}, refused),
        ("PATCH", url, {}, refused),
        ("DELETE", url, None, refused),
    ]


NEW_TUPLE = tuple_with(code={"ref": "git:feedface"})

MATRIX: list[tuple[str, str, Any, dict[str, int]]] = [
    # agents
    ("GET", "/api/agents/", None, EVERYONE_READS),
    ("HEAD", "/api/agents/", None, EVERYONE_READS),
    ("OPTIONS", "/api/agents/", None, EVERYONE_READS),
    ("POST", "/api/agents/", {"slug": "fresh", "name": "Fresh"}, roles(403, 403, 201)),
    ("PUT", "/api/agents/", {"slug": "fresh", "name": "Fresh"}, MANAGER_ONLY),
    ("PATCH", "/api/agents/", {"name": "Renamed"}, MANAGER_ONLY),
    ("DELETE", "/api/agents/", None, MANAGER_ONLY),
    # one agent
    ("GET", "/api/agents/{slug}/", None, EVERYONE_READS),
    ("HEAD", "/api/agents/{slug}/", None, EVERYONE_READS),
    ("OPTIONS", "/api/agents/{slug}/", None, EVERYONE_READS),
    ("POST", "/api/agents/{slug}/", {"name": "Renamed"}, MANAGER_ONLY),
    ("PUT", "/api/agents/{slug}/", {"slug": "research", "name": "Renamed"}, MANAGER_ONLY),
    ("PATCH", "/api/agents/{slug}/", {"name": "Renamed"}, roles(403, 403, 200)),
    ("DELETE", "/api/agents/{slug}/", None, MANAGER_ONLY),
    # an agent's versions
    ("GET", "/api/agents/{slug}/versions/", None, EVERYONE_READS),
    ("HEAD", "/api/agents/{slug}/versions/", None, EVERYONE_READS),
    ("OPTIONS", "/api/agents/{slug}/versions/", None, EVERYONE_READS),
    ("POST", "/api/agents/{slug}/versions/", NEW_TUPLE, roles(403, 403, 201)),
    ("PUT", "/api/agents/{slug}/versions/", NEW_TUPLE, MANAGER_ONLY),
    ("PATCH", "/api/agents/{slug}/versions/", NEW_TUPLE, MANAGER_ONLY),
    ("DELETE", "/api/agents/{slug}/versions/", None, MANAGER_ONLY),
    # versions are immutable: no role may change one
    *read_only("/api/versions/{pk}/", EVERYONE_READS),
    # diffs and the audit trail are for people, not harnesses
    *read_only("/api/versions/{pk}/diff/?against={other}", NO_HARNESS_READS),
    *read_only("/api/audit/?agent={slug}", NO_HARNESS_READS),
    # the schema and its docs are public, and read-only for everybody
    ("GET", "/api/schema/", None, everyone(200)),
    ("HEAD", "/api/schema/", None, everyone(200)),
    ("OPTIONS", "/api/schema/", None, everyone(200)),
    ("POST", "/api/schema/", {}, everyone(405)),
    ("PUT", "/api/schema/", {}, everyone(405)),
    ("PATCH", "/api/schema/", {}, everyone(405)),
    ("DELETE", "/api/schema/", None, everyone(405)),
    ("GET", "/api/docs/", None, everyone(200)),
    ("HEAD", "/api/docs/", None, everyone(200)),
    ("OPTIONS", "/api/docs/", None, everyone(200)),
    ("POST", "/api/docs/", {}, everyone(405)),
    ("PUT", "/api/docs/", {}, everyone(405)),
    ("PATCH", "/api/docs/", {}, everyone(405)),
    ("DELETE", "/api/docs/", None, everyone(405)),
]

# Modules whose routes must all appear in MATRIX (see test_every_route_is_in_the_matrix).
COVERED_MODULES = ("versions.api", "controlplane.schema", "drf_spectacular.views")


def cases():
    for method, url, body, expected in MATRIX:
        for role in ROLES:
            yield pytest.param(
                method, url, body, role, expected[role], id=f"{method} {url} as {role}"
            )


@pytest.fixture
def world(agent, make_version) -> dict[str, Any]:
    """The objects the URL templates point at."""
    before = make_version(agent, label="v1")
    after = make_version(agent, label="v2")
    return {"agent": agent, "version": after, "other": before}


@pytest.fixture
def url_values(world) -> dict[str, Any]:
    return {"slug": world["agent"].slug, "pk": world["version"].pk, "other": world["other"].pk}


def state() -> tuple:
    """Everything the foundation endpoints can write."""
    return (
        list(Agent.objects.values().order_by("pk")),
        list(Version.objects.values_list("pk", "fingerprint", "label").order_by("pk")),
        AuditEntry.objects.count(),
    )


@pytest.mark.parametrize(("method", "url", "body", "role", "status"), list(cases()))
def test_role_matrix(request, url_values, method, url, body, role, status):
    client = request.getfixturevalue(FIXTURE_OF_ROLE[role])
    kwargs = {} if body is None else {"data": body, "format": "json"}
    before = state()

    response = getattr(client, method.lower())(url.format(**url_values), **kwargs)

    assert response.status_code == status, getattr(response, "data", response.content)
    if status >= 400:
        assert state() == before, "a refused request changed something"
    if status == 401:
        assert response["WWW-Authenticate"] == "Token"
    if status == 403 and role == OUTSIDER and method != "HEAD":
        assert "no Prism role" in response.json()["detail"]


def test_the_matrix_lists_every_verb_for_every_endpoint():
    """A half-filled row set would leave verbs untested."""
    verbs_by_url: dict[str, set[str]] = {}
    for method, url, _body, expected in MATRIX:
        verbs_by_url.setdefault(url, set()).add(method)
        assert set(expected) == set(ROLES), f"{method} {url} misses a role"
    for url, verbs in verbs_by_url.items():
        missing = set(VERBS) - verbs
        assert not missing, f"{url} has no rows for {sorted(missing)}"


def _routes(patterns, prefix: str = ""):
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            yield from _routes(pattern.url_patterns, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern):
            view = getattr(pattern.callback, "view_class", pattern.callback)
            yield "/" + prefix + str(pattern.pattern), view.__module__


def test_every_route_is_in_the_matrix():
    """A new endpoint in a covered module fails here until its rows are added."""
    in_matrix = {re.sub(r"\?.*$", "", url) for _method, url, _body, _expected in MATRIX}
    missing = []
    for route, module in _routes(get_resolver().url_patterns):
        if not route.startswith("/api/") or module not in COVERED_MODULES:
            continue
        template = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)
        if template not in in_matrix:
            missing.append(template)
    assert not missing, f"routes with no role rows: {missing}"


def test_a_bad_token_is_401_not_anonymous_access(db, agent):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token prism_not-a-real-token")
    response = client.get("/api/agents/")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"


def test_an_inactive_users_token_is_refused(viewer):
    viewer.user.is_active = False
    viewer.user.save(update_fields=["is_active"])
    assert viewer.get("/api/agents/").status_code == 401


def test_a_superuser_without_a_profile_is_a_release_manager(db):
    admin = get_user_model().objects.create_superuser("root", password="x" * 12)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {ApiToken.issue(admin)}")
    response = client.post("/api/agents/", {"slug": "root-made", "name": "R"}, format="json")
    assert response.status_code == 201

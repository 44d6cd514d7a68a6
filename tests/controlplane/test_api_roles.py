"""The role matrix: every endpoint, every verb, every role (the README's API section).

To cover a new endpoint, append rows to ``MATRIX``: one ``(method, url template, body,
{role: status})`` per verb. URL templates use the URL conf's own parameter names
(``{slug}``, ``{pk}``, ``{session_id}``) plus ``{other}``; ``fill`` takes the values from
the ``world`` fixture (``{pk}`` is the rollout under ``/api/rollouts/``, the webhook and
the delivery under theirs, else a version),
so an endpoint needing a new object adds it there. A body may be a function of the world,
for ids. Then add the view's module to ``COVERED_MODULES`` so the coverage check holds
the new routes to the table.

Every row is chosen so the permitted role succeeds: the world has a stable version, a
running rollout and a live session, and ``GIVEN`` moves it, inside the test, to the state
an endpoint needs (a paused rollout to resume, no open rollout to set the stable). A
refused request (401, 403, 405, 409, ...) must leave the database as it was, and a
permitted write must change it.

Tokens may be scoped to agents, revoked or expired. Every row is also run with
``<role>-in`` (a harness or release-manager token scoped to the matrix agent),
``<role>-out`` (scoped to another agent only), ``revoked`` and ``expired``
(release-manager tokens). Their statuses follow from the row's by the rules in
``scoped_status``:

- scoped in: as unscoped, except that a scoped token may not write to an endpoint that is
  about no single agent (creating agents): 403;
- scoped out: 403 on everything about an agent, whatever the verb; lists (the agents)
  are readable and filtered to the scope; public pages are public;
- revoked or expired: 401 everywhere, public pages too (bad credentials are never
  anonymous access).

The world is built once for the module, in a transaction that each test's own
transaction nests in and that is rolled back at the end: the matrix has hundreds of rows.
So no test in this module may use ``transactional_db``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import transaction
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone
from rest_framework.test import APIClient

import events
from controlplane.models import ApiToken, Profile, Role
from events.models import Delivery, Webhook
from metrics.models import Outcome
from rollouts import engine, sessions
from rollouts.models import Lifecycle, Rollout, RolloutEvent, Routing, Session
from tests.conftest import tuple_with
from versions.audit import SYSTEM
from versions.models import Agent, AuditEntry, Version

VIEWER, HARNESS, MANAGER = "viewer", "harness", "release-manager"
OUTSIDER, ANONYMOUS = "outsider", "anonymous"
ROLES = (VIEWER, HARNESS, MANAGER, OUTSIDER, ANONYMOUS)
ROLE_OF = {VIEWER: Role.VIEWER, HARNESS: Role.HARNESS, MANAGER: Role.RELEASE_MANAGER}
# Tokens with a scope, revoked or expired: (base role, scope, state).
IN, OUT = "in", "out"
REVOKED, EXPIRED = "revoked", "expired"
TOKEN_KINDS: dict[str, tuple[str, str | None, str | None]] = {
    **{f"{role}-{side}": (role, side, None) for role in ROLE_OF for side in (IN, OUT)},
    REVOKED: (MANAGER, None, REVOKED),
    EXPIRED: (MANAGER, None, EXPIRED),
}
# A scoped viewer's reads go through the same rule as a scoped release manager's: the
# matrix leaves them out (they are in the list tests below).
MATRIX_KINDS = [kind for kind in TOKEN_KINDS if not kind.startswith(f"{VIEWER}-")]
VERBS = ("GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE")
WRITES = frozenset(VERBS) - {"GET", "HEAD", "OPTIONS"}


def roles(viewer: int, harness: int, manager: int) -> dict[str, int]:
    """Expected statuses; an outsider always gets 403 and anonymous 401."""
    return {VIEWER: viewer, HARNESS: harness, MANAGER: manager, OUTSIDER: 403, ANONYMOUS: 401}


def everyone(status: int) -> dict[str, int]:
    return dict.fromkeys(ROLES, status)


EVERYONE_READS = roles(200, 200, 200)
NO_HARNESS_READS = roles(200, 403, 200)
MANAGER_ONLY = roles(403, 403, 405)  # the role check comes before the method check
HARNESS_AND_MANAGER_ONLY = roles(403, 405, 405)


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


def manager_posts(url: str, body: Any, status: int = 200) -> list[tuple]:
    """Rows for a POST-only endpoint under the default roles: only the release manager
    posts; viewers pass the read check, so the verbs the view lacks are 405 for them."""
    return [
        ("GET", url, None, roles(405, 403, 405)),
        ("HEAD", url, None, roles(405, 403, 405)),
        ("OPTIONS", url, None, roles(200, 403, 200)),
        ("POST", url, body, roles(403, 403, status)),
        ("PUT", url, body, MANAGER_ONLY),
        ("PATCH", url, body, MANAGER_ONLY),
        ("DELETE", url, None, MANAGER_ONLY),
    ]


def harness_posts(url: str, body: Any, status: int = 200) -> list[tuple]:
    """Rows for a session endpoint: harness and release manager post, nobody else may even
    ask OPTIONS (viewers read, and there is nothing here to read)."""
    return [
        ("GET", url, None, HARNESS_AND_MANAGER_ONLY),
        ("HEAD", url, None, HARNESS_AND_MANAGER_ONLY),
        ("OPTIONS", url, None, roles(403, 200, 200)),
        ("POST", url, body, roles(403, status, status)),
        ("PUT", url, body, HARNESS_AND_MANAGER_ONLY),
        ("PATCH", url, body, HARNESS_AND_MANAGER_ONLY),
        ("DELETE", url, None, HARNESS_AND_MANAGER_ONLY),
    ]


NEW_TUPLE = tuple_with(code={"ref": "git:feedface"})
SLUG = "matrix"
ELSEWHERE = "elsewhere"  # the other agent, which the "-out" tokens are scoped to
SESSION = "matrix-session-1"
PUBLIC_HOOK = "https://93.184.215.14/prism"  # an address literal: no DNS in the tests
# Stage 0 holds for an hour: evaluating it changes nothing but the evaluation itself.
STAGES = [{"percent": 10, "min_duration_s": 3600}, {"percent": 50}, {"percent": 100}]


def set_stable(world: dict[str, Any]) -> dict[str, Any]:
    return {"version": world["version"].pk}


def start_again(world: dict[str, Any]) -> dict[str, Any]:
    """Supersede the world's running rollout; without ``supersede`` this is a 409."""
    return {"candidate": world["version"].pk, "supersede": True}


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
    ("PUT", "/api/agents/{slug}/", {"slug": SLUG, "name": "Renamed"}, MANAGER_ONLY),
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
    # routing: harnesses read it (and may cache it to assign while Prism is down)
    *read_only("/api/agents/{slug}/routing/", EVERYONE_READS),
    # moving traffic is the release manager's alone
    *manager_posts("/api/agents/{slug}/stable/", set_stable),  # GIVEN: no open rollout
    *manager_posts("/api/agents/{slug}/rollback/", {"reason": "matrix"}),
    ("GET", "/api/agents/{slug}/rollouts/", None, NO_HARNESS_READS),
    ("HEAD", "/api/agents/{slug}/rollouts/", None, NO_HARNESS_READS),
    ("OPTIONS", "/api/agents/{slug}/rollouts/", None, NO_HARNESS_READS),
    ("POST", "/api/agents/{slug}/rollouts/", start_again, roles(403, 403, 201)),
    ("PUT", "/api/agents/{slug}/rollouts/", start_again, MANAGER_ONLY),
    ("PATCH", "/api/agents/{slug}/rollouts/", start_again, MANAGER_ONLY),
    ("DELETE", "/api/agents/{slug}/rollouts/", None, MANAGER_ONLY),
    *read_only("/api/rollouts/{pk}/", NO_HARNESS_READS),
    *read_only("/api/rollouts/{pk}/evaluations/", NO_HARNESS_READS),
    *manager_posts("/api/rollouts/{pk}/pause/", {}),
    *manager_posts("/api/rollouts/{pk}/resume/", {}),  # GIVEN: paused
    *manager_posts("/api/rollouts/{pk}/advance/", {"reason": "matrix"}),
    *manager_posts("/api/rollouts/{pk}/rollback/", {"reason": "matrix"}),
    *manager_posts("/api/rollouts/{pk}/evaluate/", {}),
    *read_only("/api/agents/{slug}/fleet/", NO_HARNESS_READS),
    *manager_posts("/api/versions/{pk}/drain/", {"reason": "matrix"}),  # GIVEN: draining
    # sessions and outcomes: the harness's side
    *harness_posts("/api/agents/{slug}/sessions/", {"session_id": "matrix-new"}, 201),
    *harness_posts("/api/agents/{slug}/sessions/{session_id}/heartbeat/", {}),
    *harness_posts("/api/agents/{slug}/sessions/{session_id}/end/", {"outcome": {"success": True}}),
    *harness_posts("/api/agents/{slug}/sessions/{session_id}/feedback/", {"feedback": 0.5}),
    # webhooks: release managers configure and re-send, viewers read (never a secret)
    ("GET", "/api/agents/{slug}/webhooks/", None, NO_HARNESS_READS),
    ("HEAD", "/api/agents/{slug}/webhooks/", None, NO_HARNESS_READS),
    ("OPTIONS", "/api/agents/{slug}/webhooks/", None, NO_HARNESS_READS),
    ("POST", "/api/agents/{slug}/webhooks/", {"url": PUBLIC_HOOK}, roles(403, 403, 201)),
    ("PUT", "/api/agents/{slug}/webhooks/", {"url": PUBLIC_HOOK}, MANAGER_ONLY),
    ("PATCH", "/api/agents/{slug}/webhooks/", {"url": PUBLIC_HOOK}, MANAGER_ONLY),
    ("DELETE", "/api/agents/{slug}/webhooks/", None, MANAGER_ONLY),
    ("GET", "/api/webhooks/{pk}/", None, NO_HARNESS_READS),
    ("HEAD", "/api/webhooks/{pk}/", None, NO_HARNESS_READS),
    ("OPTIONS", "/api/webhooks/{pk}/", None, NO_HARNESS_READS),
    ("POST", "/api/webhooks/{pk}/", {"active": False}, MANAGER_ONLY),
    ("PUT", "/api/webhooks/{pk}/", {"url": PUBLIC_HOOK}, MANAGER_ONLY),
    ("PATCH", "/api/webhooks/{pk}/", {"active": False}, roles(403, 403, 200)),
    ("DELETE", "/api/webhooks/{pk}/", None, roles(403, 403, 204)),
    *read_only("/api/webhooks/{pk}/deliveries/", NO_HARNESS_READS),
    *manager_posts("/api/deliveries/{pk}/redeliver/", {}),  # the world's delivery failed
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
COVERED_MODULES = (
    "versions.api",
    "rollouts.api",
    "events.api",
    "controlplane.schema",
    "drf_spectacular.views",
)


def _pause(world: dict[str, Any]) -> None:
    engine.transition(world["rollout"].pk, "pause", actor=SYSTEM)


def _close_the_rollout(world: dict[str, Any]) -> None:
    engine.transition(world["rollout"].pk, "rollback", actor=SYSTEM)


def _draining_with_a_session(world: dict[str, Any]) -> None:
    """Only a version without weight and with live sessions can be force-drained."""
    _close_the_rollout(world)
    now = timezone.now()
    Session.objects.create(
        agent=world["agent"],
        session_id="matrix-v2",
        version=world["version"],
        started_at=now,
        last_seen_at=now,
    )


# What the world must look like, per URL template, for the permitted request to succeed.
GIVEN: dict[str, Callable[[dict[str, Any]], None]] = {
    "/api/rollouts/{pk}/resume/": _pause,
    # the stable is set directly only when no rollout is open
    "/api/agents/{slug}/stable/": _close_the_rollout,
    "/api/versions/{pk}/drain/": _draining_with_a_session,
}


PUBLIC = ("/api/schema/", "/api/docs/")
LISTS = ("/api/agents/",)  # about no single agent: readable by scoped tokens, filtered


def scoped_status(kind: str, method: str, url: str, expected: dict[str, int]) -> int:
    """The status a scoped, revoked or expired token gets, from the unscoped role's."""
    role, side, state = TOKEN_KINDS[kind]
    unscoped = expected[role]
    if url in PUBLIC:
        return 401 if state else unscoped
    if state:
        return 401
    if url in LISTS:
        return unscoped if method not in WRITES else 403
    return unscoped if side == IN else 403


def cases():
    for method, url, body, expected in MATRIX:
        for role in ROLES:
            yield pytest.param(
                method, url, body, role, expected[role], id=f"{method} {url} as {role}"
            )
        for kind in MATRIX_KINDS:
            yield pytest.param(
                method, url, body, kind, scoped_status(kind, method, url, expected),
                id=f"{method} {url} as {kind}",
            )  # fmt: skip


@pytest.fixture(scope="module")
def world(django_db_setup, django_db_blocker):
    """The objects the URL templates point at, and a token for each role.

    An agent whose stable ``other`` (v1) is being rolled out to ``version`` (v2), stage 0
    of ``STAGES``, with one live session. Each test runs in a savepoint inside this
    fixture's transaction, so it sees the world and its writes are undone.
    """
    with django_db_blocker.unblock(), transaction.atomic():
        agent = Agent.objects.create(slug=SLUG, name="Matrix agent")
        v1 = Version(agent=agent, label="v1", **tuple_with(code={"ref": "git:matrix01"}))
        v1.save()
        v2 = Version(agent=agent, label="v2", **tuple_with(code={"ref": "git:matrix02"}))
        v2.save()
        engine.set_stable(agent, v1, actor=SYSTEM)
        rollout = engine.start_rollout(
            agent,
            candidate=v2,
            stages=engine.validate_stages(STAGES),
            gates=[],
            actor=SYSTEM,
        )
        sessions.assign(SLUG, SESSION)
        elsewhere = Agent.objects.create(slug=ELSEWHERE, name="Another team's agent")
        webhook = Webhook.objects.create(agent=agent, url=PUBLIC_HOOK)
        event = events.emit("version.drained", agent=agent, subject=v1)
        delivery = Delivery.objects.get(event=event, webhook=webhook)
        Delivery.objects.filter(pk=delivery.pk).update(status="failed", attempts=8)
        keys = {}
        for role in (VIEWER, HARNESS, MANAGER, OUTSIDER):
            user = get_user_model().objects.create_user(username=f"matrix-{role}")
            if role in ROLE_OF:
                Profile.objects.create(user=user, role=ROLE_OF[role])
            keys[role] = ApiToken.issue(user)
        yield {
            "agent": agent,
            "version": v2,
            "other": v1,
            "rollout": rollout,
            "keys": keys,
            "elsewhere": elsewhere,
            "webhook": webhook,
            "delivery": delivery,
        }
        transaction.set_rollback(True)


def token_of(kind: str) -> str:
    """A new token of a scoped, revoked or expired kind (the test's savepoint undoes it)."""
    role, side, state = TOKEN_KINDS[kind]
    user = get_user_model().objects.create_user(username=f"matrix-{kind}")
    Profile.objects.create(user=user, role=ROLE_OF[role])
    scope = {IN: [SLUG], OUT: [ELSEWHERE], None: None}[side]
    expires = timezone.now() - timedelta(seconds=1) if state == EXPIRED else None
    key = ApiToken.issue(user, agents=scope, expires_at=expires)
    if state == REVOKED:
        ApiToken.objects.filter(user=user).update(revoked_at=timezone.now())
    return key


def client_as(world: dict[str, Any], role: str) -> APIClient:
    client = APIClient()
    if role in TOKEN_KINDS:
        client.credentials(HTTP_AUTHORIZATION=f"Token {token_of(role)}")
    elif role != ANONYMOUS:
        client.credentials(HTTP_AUTHORIZATION=f"Token {world['keys'][role]}")
    return client


def fill(url: str, world: dict[str, Any]) -> str:
    subject = world["version"]
    for prefix, name in (
        ("rollouts", "rollout"),
        ("webhooks", "webhook"),
        ("deliveries", "delivery"),
    ):
        if url.startswith(f"/api/{prefix}/"):
            subject = world[name]
    return url.format(
        slug=world["agent"].slug, pk=subject.pk, other=world["other"].pk, session_id=SESSION
    )


def state() -> tuple:
    """Everything the API can write."""
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
        list(Webhook.objects.values().order_by("pk")),
        list(Delivery.objects.values().order_by("pk")),
    )


@pytest.mark.parametrize(("method", "url", "body", "role", "status"), list(cases()))
def test_role_matrix(world, db, method, url, body, role, status):
    if url in GIVEN:
        GIVEN[url](world)
    client = client_as(world, role)
    if callable(body):
        body = body(world)
    kwargs = {} if body is None else {"data": body, "format": "json"}
    before = state()

    response = getattr(client, method.lower())(fill(url, world), **kwargs)

    assert response.status_code == status, getattr(response, "data", response.content)
    if status >= 400:
        assert state() == before, "a refused request changed something"
    elif method in WRITES:
        assert state() != before, "a permitted write changed nothing: check the world"
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
    assert set(GIVEN) <= set(verbs_by_url), "GIVEN names a URL that has no rows"


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


# --- scoped tokens: what they may not learn ------------------------------------------

# Every template that names an agent or an object of one, with the verb (and body) that
# the release manager succeeds with.
AGENT_SPECIFIC = [
    pytest.param(method, url, body, id=f"{method} {url}")
    for method, url, body, expected in MATRIX
    if url not in PUBLIC and url not in LISTS and 200 <= expected[MANAGER] < 300
    and method not in ("HEAD", "OPTIONS")
]  # fmt: skip


def ghost(world: dict[str, Any], method: str, url: str, body: Any, kind: str):
    """Send the request with a slug and ids that name nothing."""
    if callable(body):
        body = body(world)
    kwargs = {} if body is None else {"data": body, "format": "json"}
    path = url.format(slug="no-such-agent", pk=987654321, other=987654322, session_id="ghost")
    return getattr(client_as(world, kind), method.lower())(path, **kwargs)


@pytest.mark.parametrize(("method", "url", "body"), AGENT_SPECIFIC)
def test_a_scoped_token_gets_403_for_what_does_not_exist(world, db, method, url, body):
    """A 404 would tell a scoped token which agents (and ids) exist outside its scope."""
    before = state()
    response = ghost(world, method, url, body, f"{MANAGER}-{OUT}")
    assert response.status_code == 403, response.content
    assert state() == before


@pytest.mark.parametrize(("method", "url", "body"), AGENT_SPECIFIC)
def test_an_unscoped_token_gets_404_for_what_does_not_exist(world, db, method, url, body):
    response = ghost(world, method, url, body, MANAGER)
    assert response.status_code == 404, response.content


def test_the_agent_list_is_filtered_to_the_scope(world, db):
    inside = client_as(world, f"{VIEWER}-{IN}").get("/api/agents/")
    outside = client_as(world, f"{VIEWER}-{OUT}").get("/api/agents/")
    unscoped = client_as(world, VIEWER).get("/api/agents/")

    assert [a["slug"] for a in inside.json()] == [SLUG]
    assert [a["slug"] for a in outside.json()] == [ELSEWHERE]
    assert {a["slug"] for a in unscoped.json()} >= {SLUG, ELSEWHERE}


def test_the_audit_trail_is_filtered_to_the_scope(world, db):
    from versions.audit import record

    record("agent.touched", world["elsewhere"], actor=SYSTEM, reason="not yours")
    client = client_as(world, f"{VIEWER}-{IN}")

    entries = client.get("/api/audit/").json()

    assert entries
    assert {entry["agent"] for entry in entries} == {SLUG}
    assert client.get(f"/api/audit/?agent={ELSEWHERE}").status_code == 403
    assert client.get("/api/audit/?agent=no-such-agent").status_code == 403
    everything = client_as(world, VIEWER).get("/api/audit/").json()
    assert ELSEWHERE in {entry["agent"] for entry in everything}


def test_a_token_scoped_to_two_agents_reaches_both(world, db):
    user = get_user_model().objects.create_user(username="two-teams")
    Profile.objects.create(user=user, role=Role.VIEWER)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {ApiToken.issue(user, agents=[SLUG, ELSEWHERE])}")

    assert client.get(f"/api/agents/{SLUG}/").status_code == 200
    assert client.get(f"/api/agents/{ELSEWHERE}/").status_code == 200
    assert [a["slug"] for a in client.get("/api/agents/").json()] == sorted([SLUG, ELSEWHERE])

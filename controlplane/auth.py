"""Who may do what: API tokens (``Authorization: Token <key>``) and the one rule that
decides every request, for the full DRF views and the session hot path alike.

``authorise`` takes the caller (user, role, token scope, expiry, revocation) and the
agent a request is about, and says yes or no, and why. ``RolePermission`` asks it for
every DRF view; the hot path asks it directly, after reading the caller with
``caller_for_key``.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from django.contrib.auth import get_user_model
from django.db import connection
from django.utils import timezone
from rest_framework import authentication, exceptions, permissions

from controlplane import db
from controlplane.models import ApiToken, Profile, Role, hash_key, role_of

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# The agent of a request that names an agent, or an object of one, that does not exist.
# No scope holds it, so a scoped token is refused (403) without learning whether the
# agent exists; an unscoped caller goes on to the view's 404.
NOWHERE = ""


@dataclass(frozen=True)
class Caller:
    """Who is asking, as far as authorisation cares."""

    user_id: int
    is_active: bool
    role: str | None
    agents: frozenset[str] | None = None  # None: every agent
    expires_at: datetime | None = None
    revoked_at: datetime | None = None

    @classmethod
    def of_user(cls, user: Any) -> Caller:
        """A browser session: the user's role, on every agent, for as long as it lasts."""
        return cls(user.pk, user.is_active, role_of(user))

    @classmethod
    def of_token(cls, token: ApiToken) -> Caller:
        return cls(
            token.user_id,
            token.user.is_active,
            role_of(token.user),
            _scope(token.agents),
            token.expires_at,
            token.revoked_at,
        )


@dataclass(frozen=True)
class Decision:
    allowed: bool
    status: int  # 200 when allowed, else 401 (who are you?) or 403 (not you)
    reason: str = ""


ALLOWED = Decision(True, 200)


def credentials_problem(caller: Caller, now: datetime | None = None) -> str | None:
    """Why the caller's credentials no longer count, or None while they do."""
    if caller.revoked_at is not None:
        return "Token revoked."
    if caller.expires_at is not None and (now or timezone.now()) >= caller.expires_at:
        return "Token expired."
    if not caller.is_active:
        return "User inactive or deleted."
    return None


def authorise(
    caller: Caller | None,
    *,
    roles: Collection[str],
    agent: str | None,
    now: datetime | None = None,
) -> Decision:
    """The one authorisation rule.

    ``agent`` is the slug the request is about, ``NOWHERE`` for an agent or object that
    does not exist, or None for a request about no single agent (a list the view
    filters to the caller's scope).

    1. No caller, or credentials revoked, expired or of an inactive user: 401.
    2. A user without a Prism role, or a role not in ``roles``: 403.
    3. A token scoped to agents, asked about an agent outside its scope (or about one
       that does not exist): 403. The role is checked first, so a refusal never says
       whether an agent exists.
    4. Everything else is allowed.
    """
    if caller is None:
        return Decision(False, 401, "Authentication credentials were not provided.")
    problem = credentials_problem(caller, now)
    if problem is not None:
        return Decision(False, 401, problem)
    if caller.role is None:
        return Decision(False, 403, "Your account has no Prism role.")
    if caller.role not in roles:
        return Decision(False, 403, f"The {caller.role} role may not do this.")
    if caller.agents is not None and agent is not None and agent not in caller.agents:
        return Decision(False, 403, "This token is not scoped to that agent.")
    return ALLOWED


def _scope(agents: Any) -> frozenset[str] | None:
    if agents is None:
        return None
    if isinstance(agents, str | bytes):  # raw SQL hands JSON over as text
        agents = json.loads(agents)
    return frozenset(agents)


# --- reading the caller ------------------------------------------------------------------


@cache
def _caller_sql() -> str:
    """The token, its user and the user's role in one statement. Table names come from
    the models, so a custom user model works too."""
    quote = connection.ops.quote_name
    token, profile = ApiToken._meta.db_table, Profile._meta.db_table
    user = get_user_model()._meta.db_table
    # The superuser rule is role_of's, in SQL.
    return (
        f"SELECT t.user_id, u.is_active, u.is_superuser, p.role, t.agents, t.expires_at, "
        f"t.revoked_at FROM {quote(token)} t JOIN {quote(user)} u ON u.id = t.user_id "
        f"LEFT JOIN {quote(profile)} p ON p.user_id = u.id WHERE t.key_hash = %s"
    )


def caller_for_key(key: str) -> Caller | None:
    """The caller a token key stands for, or None for a key that matches no token: one
    prepared statement, for the session hot path (no model instances)."""
    return caller_from_row(db.fetchone(*caller_statement(key), read_only=True))


def caller_statement(key: str) -> db.Statement:
    """The read of ``caller_for_key``, for a caller that sends it along with its own
    (``db.fetchone_each``); ``caller_from_row`` reads its row."""
    return _caller_sql(), [hash_key(key)]


def caller_from_row(row: tuple | None) -> Caller | None:
    if row is None:
        return None
    user_id, is_active, is_superuser, role, agents, expires_at, revoked_at = row
    return Caller(
        user_id,
        bool(is_active),
        Role.RELEASE_MANAGER if is_superuser else role,
        _scope(agents),
        expires_at,
        revoked_at,
    )


def token_key(header: str) -> str | None:
    """The key in an ``Authorization: Token <key>`` header, read as DRF reads it, or None
    when the header is anything else (which DRF answers itself)."""
    parts = header.split()
    if len(parts) != 2 or parts[0].lower() != "token":
        return None
    return parts[1]


class TokenAuthentication(authentication.TokenAuthentication):
    """One query: the token, its user and the user's role, joined. ``request.auth`` is
    the ``Caller``."""

    keyword = "Token"

    def authenticate_credentials(self, key: str):
        try:
            token = ApiToken.objects.select_related("user", "user__profile").get(
                key_hash=hash_key(key)
            )
        except ApiToken.DoesNotExist:
            raise exceptions.AuthenticationFailed("Invalid token.") from None
        caller = Caller.of_token(token)
        problem = credentials_problem(caller)
        if problem is not None:
            raise exceptions.AuthenticationFailed(problem)
        return (token.user, caller)


def caller_of(request: Any) -> Caller | None:
    """The caller of a DRF request: its token's, or its browser session's."""
    if isinstance(request.auth, Caller):
        return request.auth
    user = request.user
    if user is None or not user.is_authenticated:
        return None
    return Caller.of_user(user)


def agent_scope(request: Any) -> frozenset[str] | None:
    """The agents a request's caller is limited to, or None for every agent: for views
    that list objects of many agents and filter them."""
    caller = caller_of(request)
    return None if caller is None else caller.agents


def agent_of(request: Any, view: Any) -> str | None:
    """The agent a request to ``view`` is about, for the scope check.

    1. A ``slug`` in the URL names it.
    2. A view with ``scope_model`` names an object of that model by ``pk``: its agent
       (``NOWHERE`` if there is no such object).
    3. A view with ``scope_param`` may name it in the query string (``?agent=``).
    4. A view with ``scope_filtered`` lists objects of many agents and filters them to
       the caller's scope itself: None, for reads only.
    5. Anything else (including a write to a list) is refused to scoped tokens.
    """
    kwargs = getattr(view, "kwargs", None) or {}
    if "slug" in kwargs:
        return kwargs["slug"]
    model = getattr(view, "scope_model", None)
    if model is not None and "pk" in kwargs:
        slug = model.objects.filter(pk=kwargs["pk"]).values_list("agent__slug", flat=True)
        return slug.first() or NOWHERE
    param = getattr(view, "scope_param", None)
    if param is not None and request.query_params.get(param):
        return request.query_params[param]
    if getattr(view, "scope_filtered", False) and request.method in READ_METHODS:
        return None
    return NOWHERE


class RolePermission(permissions.BasePermission):
    """Decide by the one rule, with the roles a view declares.

    A view lists ``read_roles`` (for safe methods) and ``write_roles`` (for the rest).
    By default every role reads except the harness, and only release managers write.
    Harness-facing views (sessions, routing) widen these lists explicitly. How a view
    names its agent, for scoped tokens, is ``agent_of``'s business.
    """

    default_read = frozenset({Role.VIEWER, Role.RELEASE_MANAGER})
    default_write = frozenset({Role.RELEASE_MANAGER})

    def has_permission(self, request, view) -> bool:
        if request.method in READ_METHODS:
            roles = getattr(view, "read_roles", self.default_read)
        else:
            roles = getattr(view, "write_roles", self.default_write)
        caller = caller_of(request)
        # Only a scoped caller's answer depends on the agent, and finding it may cost a
        # query: unscoped callers skip it.
        scoped = caller is not None and caller.agents is not None
        agent = agent_of(request, view) if scoped else None
        decision = authorise(caller, roles=roles, agent=agent)
        if decision.status == 401 and caller is not None:
            raise exceptions.AuthenticationFailed(decision.reason)
        self.message = decision.reason
        return decision.allowed

"""``manage.py revoke_token PREFIX_OR_KEY``: a revoked token gets 401 from then on."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from controlplane.models import ApiToken, Profile, Role
from versions.models import AuditEntry


def issue(username: str = "ci-bot", role: str = Role.HARNESS) -> str:
    out = io.StringIO()
    call_command("issue_token", username, "--role", role, stdout=out)
    return out.getvalue().strip()


def revoke(value: str) -> str:
    out = io.StringIO()
    call_command("revoke_token", value, stdout=out)
    return out.getvalue()


def status(key: str) -> int:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client.get("/api/agents/").status_code


@pytest.mark.parametrize("form", ["key", "prefix", "prism_prefix"])
def test_it_revokes_by_key_or_prefix(db, form):
    key = issue(role=Role.VIEWER)
    other = issue("other-bot", Role.VIEWER)
    value = {"key": key, "prefix": key[6:14], "prism_prefix": key[:14]}[form]

    output = revoke(value)

    assert key[6:14] in output
    assert key not in output
    assert status(key) == 401
    assert status(other) == 200
    assert ApiToken.objects.get(prefix=key[6:14]).revoked_at is not None


def test_a_revoked_token_is_told_so(db):
    key = issue(role=Role.VIEWER)
    revoke(key)

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    response = client.get("/api/agents/")
    assert response.status_code == 401
    assert "revoked" in response.json()["detail"]
    assert response["WWW-Authenticate"] == "Token"


def test_it_audits_the_revocation_once(db):
    key = issue()
    revoke(key)
    again = revoke(key)

    assert "already revoked" in again
    entries = AuditEntry.objects.filter(action="token.revoked")
    assert entries.count() == 1
    assert entries.get().actor == "cli"
    assert entries.get().before == {"prefix": key[6:14], "revoked_at": None}


def test_an_unknown_token_is_an_error(db):
    issue()
    with pytest.raises(CommandError, match="No token"):
        revoke("ffffffff")
    assert not ApiToken.objects.filter(revoked_at__isnull=False).exists()


def test_an_ambiguous_prefix_revokes_nothing(db):
    user = get_user_model().objects.create_user("twins")
    Profile.objects.create(user=user, role=Role.VIEWER)
    keys = [ApiToken.issue(user) for _ in range(2)]
    ApiToken.objects.update(prefix="abcd1234")

    with pytest.raises(CommandError, match="2 tokens"):
        revoke("abcd1234")

    assert not ApiToken.objects.filter(revoked_at__isnull=False).exists()
    assert [status(key) for key in keys] == [200, 200]


@pytest.mark.parametrize("value", ["", "   ", "prism_", "abc"])
def test_it_refuses_a_value_too_short_to_name_a_token(db, value):
    issue()
    with pytest.raises(CommandError):
        revoke(value)
    assert not ApiToken.objects.filter(revoked_at__isnull=False).exists()

"""``manage.py issue_token USERNAME --role ROLE`` (the README's API section)."""

from __future__ import annotations

import io
import re

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from controlplane.models import ApiToken, Profile, hash_key
from versions.models import AuditEntry

TOKEN = re.compile(r"prism_[0-9a-f]{40}")


def issue(username: str, role: str) -> str:
    out = io.StringIO()
    call_command("issue_token", username, "--role", role, stdout=out)
    return out.getvalue()


def client_with(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def test_it_prints_only_the_token_on_one_line(db):
    output = issue("ci-bot", "harness")

    assert output.endswith("\n")
    assert output.count("\n") == 1
    assert TOKEN.fullmatch(output.strip())


def test_it_creates_the_user_with_the_role(db):
    issue("ci-bot", "harness")

    user = get_user_model().objects.get(username="ci-bot")
    assert user.profile.role == "harness"
    assert not user.has_usable_password()
    assert user.api_tokens.count() == 1


def test_the_printed_token_authenticates_with_the_role(db, agent):
    key = issue("ci-bot", "harness").strip()
    client = client_with(key)

    assert client.get("/api/agents/").status_code == 200
    assert client.get("/api/audit/").status_code == 403
    assert client.post("/api/agents/", {"slug": "x", "name": "X"}, format="json").status_code == 403


def test_it_works_again_for_an_existing_user_and_changes_the_role(db):
    first = issue("ci-bot", "harness").strip()
    second = issue("ci-bot", "release-manager").strip()

    assert first != second
    user = get_user_model().objects.get(username="ci-bot")
    assert get_user_model().objects.filter(username="ci-bot").count() == 1
    assert Profile.objects.filter(user=user).count() == 1
    assert user.profile.role == "release-manager"
    assert user.api_tokens.count() == 2
    # The role belongs to the user, so both keys now act as a release manager.
    for key in (first, second):
        response = client_with(key).post(
            "/api/agents/", {"slug": f"a{key[-6:]}", "name": "A"}, format="json"
        )
        assert response.status_code == 201


def test_it_gives_a_role_to_an_existing_user_without_one(db):
    get_user_model().objects.create_user(username="alice", password="correct horse")

    key = issue("alice", "viewer").strip()

    user = get_user_model().objects.get(username="alice")
    assert user.profile.role == "viewer"
    assert user.check_password("correct horse")  # an existing password is left alone
    assert client_with(key).get("/api/audit/").status_code == 200


def test_it_rejects_an_unknown_role(db):
    with pytest.raises(CommandError):
        issue("ci-bot", "admin")

    assert not get_user_model().objects.filter(username="ci-bot").exists()
    assert not ApiToken.objects.exists()


def test_it_requires_a_role(db):
    with pytest.raises(CommandError):
        call_command("issue_token", "ci-bot", stdout=io.StringIO())


@pytest.mark.parametrize("username", ["", "   ", "u" * 151])
def test_it_rejects_a_bad_username(db, username):
    with pytest.raises(CommandError):
        issue(username, "viewer")

    assert not ApiToken.objects.exists()


def test_only_a_hash_of_the_token_is_stored(db):
    key = issue("ci-bot", "viewer").strip()

    token = ApiToken.objects.get()
    assert token.key_hash == hash_key(key)
    assert token.key_hash != key
    stored = [str(value) for value in ApiToken.objects.values().get().values()]
    assert not any(key in value for value in stored)
    assert not any(key[6:] in value for value in stored)
    assert len(token.prefix) <= 8


def test_it_audits_the_issue_without_the_token(db):
    key = issue("ci-bot", "harness").strip()

    entry = AuditEntry.objects.get(action="token.issued")
    assert entry.actor == "cli"
    assert entry.after == {"role": "harness"}
    assert key not in repr(
        (entry.reason, entry.before, entry.after, entry.object_repr, entry.object_id)
    )


def test_the_audit_entry_shows_the_role_before_and_after(db):
    get_user_model().objects.create_user(username="alice")
    issue("alice", "viewer")
    issue("alice", "release-manager")
    issue("bob", "harness")

    entries = AuditEntry.objects.filter(action="token.issued").order_by("id")
    assert [(e.object_repr, e.before, e.after) for e in entries] == [
        ("alice", {"role": None}, {"role": "viewer"}),  # had no role until now
        ("alice", {"role": "viewer"}, {"role": "release-manager"}),
        ("bob", {"role": None}, {"role": "harness"}),
    ]


# --- scope and expiry ----------------------------------------------------------------


@pytest.fixture
def two_agents(db):
    from versions.models import Agent

    return [Agent.objects.create(slug=slug, name=slug) for slug in ("research", "support")]


def test_agent_scopes_the_token_to_those_agents(two_agents):
    out = io.StringIO()
    call_command(
        "issue_token", "ci-bot", "--role", "viewer", "--agent", "research", "--agent", "support",
        stdout=out,
    )  # fmt: skip
    key = out.getvalue().strip()

    assert TOKEN.fullmatch(key)
    assert sorted(ApiToken.objects.get().agents) == ["research", "support"]
    client = client_with(key)
    assert client.get("/api/agents/research/").status_code == 200
    assert client.get("/api/agents/support/").status_code == 200
    entry = AuditEntry.objects.get(action="token.issued")
    assert entry.after == {"role": "viewer", "agents": ["research", "support"]}


def test_a_scoped_token_gets_403_for_another_agent(two_agents):
    out = io.StringIO()
    call_command("issue_token", "ci-bot", "--role", "viewer", "--agent", "research", stdout=out)
    client = client_with(out.getvalue().strip())

    assert client.get("/api/agents/research/").status_code == 200
    assert client.get("/api/agents/support/").status_code == 403
    assert client.get("/api/agents/no-such-agent/").status_code == 403
    assert [a["slug"] for a in client.get("/api/agents/").json()] == ["research"]


def test_it_refuses_to_scope_a_token_to_an_unknown_agent(two_agents):
    with pytest.raises(CommandError, match="No agent 'no-such-agent'"):
        call_command(
            "issue_token", "ci-bot", "--role", "harness", "--agent", "no-such-agent",
            stdout=io.StringIO(),
        )  # fmt: skip

    assert not ApiToken.objects.exists()
    assert not get_user_model().objects.filter(username="ci-bot").exists()


def test_expires_in_days_gives_the_token_an_expiry(db):
    from datetime import timedelta

    from django.utils import timezone

    out = io.StringIO()
    call_command("issue_token", "ci-bot", "--role", "viewer", "--expires-in-days", "7", stdout=out)
    token = ApiToken.objects.get()
    expected = timezone.now() + timedelta(days=7)

    assert abs((token.expires_at - expected).total_seconds()) < 60
    assert client_with(out.getvalue().strip()).get("/api/agents/").status_code == 200
    ApiToken.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    response = client_with(out.getvalue().strip()).get("/api/agents/")
    assert response.status_code == 401
    assert "expired" in response.json()["detail"]


@pytest.mark.parametrize("days", ["0", "-1", "x", "100000"])
def test_it_refuses_a_bad_expiry(db, days):
    with pytest.raises(CommandError, match="whole number of days"):
        call_command(
            "issue_token", "ci-bot", "--role", "viewer", "--expires-in-days", days,
            stdout=io.StringIO(),
        )  # fmt: skip

    assert not ApiToken.objects.exists()

"""Revoking tokens in the admin: the "Revoke" action, audited, and the token gets 401."""

from __future__ import annotations

from datetime import timedelta

from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from controlplane.models import ApiToken, Profile, Role
from versions.models import AuditEntry

CHANGELIST = "admin:controlplane_apitoken_changelist"


def status_with(key: str) -> int:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client.get("/api/agents/").status_code


def viewer_key(username: str, **kwargs) -> str:
    user = get_user_model().objects.create_user(username=username)
    Profile.objects.create(user=user, role=Role.VIEWER)
    return ApiToken.issue(user, **kwargs)


def test_the_revoke_action_revokes_the_selected_tokens_once(admin_client, admin_user):
    keys = [viewer_key(f"bot-{i}") for i in range(3)]
    chosen = list(ApiToken.objects.order_by("id").values_list("pk", flat=True)[:2])

    response = admin_client.post(
        reverse(CHANGELIST), {"action": "revoke", "_selected_action": chosen}, follow=True
    )
    again = admin_client.post(
        reverse(CHANGELIST), {"action": "revoke", "_selected_action": chosen}, follow=True
    )

    assert response.status_code == 200
    assert "Revoked 2 of 2" in response.text
    assert "Revoked 0 of 2" in again.text
    assert [status_with(key) for key in keys] == [401, 401, 200]
    entries = AuditEntry.objects.filter(action="token.revoked")
    assert entries.count() == 2
    assert {e.actor for e in entries} == {admin_user.username}
    assert ApiToken.objects.count() == 3  # revoked, not deleted: the admin still lists them


def test_the_changelist_shows_scope_expiry_and_revocation(admin_client):
    viewer_key("scoped", agents=["research"], expires_at=timezone.now() + timedelta(days=3))
    viewer_key("everywhere")

    page = admin_client.get(reverse(CHANGELIST)).text

    assert "research" in page
    assert "every agent" in page
    assert "Revoke selected tokens" in page

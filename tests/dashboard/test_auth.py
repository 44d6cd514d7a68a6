"""Logging in and out on Prism's own pages, and every page behind a login."""

from __future__ import annotations

import pytest
from django.test import Client

from tests.dashboard.conftest import PASSWORD, htmx, make_user

pytestmark = pytest.mark.django_db


def pages(fleet: dict) -> list[str]:
    rollout, v1, v2 = fleet["rollout"], fleet["v1"], fleet["v2"]
    return [
        "/",
        "/agents/research/",
        "/agents/research/audit/",
        f"/versions/{v2.pk}/",
        f"/versions/{v2.pk}/diff/{v1.pk}/",
        f"/agents/research/compare/?before={v1.pk}&after={v2.pk}",
        f"/rollouts/{rollout.pk}/",
        "/agents/research/rollback/?epoch=1",
        f"/rollouts/{rollout.pk}/pause/?stage=0",
    ]


def test_the_login_page_is_prisms_own(client):
    response = client.get("/login/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "Log in to Prism" in html
    assert "/admin/" not in html
    assert 'name="csrfmiddlewaretoken"' in html


def test_it_logs_in_and_goes_where_it_was_going(client, rollout_fleet):
    user = make_user("viewer")
    response = client.get("/agents/research/")
    assert response.status_code == 302
    assert response["Location"] == "/login/?next=/agents/research/"

    response = client.post(
        "/login/?next=/agents/research/",
        {"username": user.username, "password": PASSWORD, "next": "/agents/research/"},
    )
    assert response.status_code == 302
    assert response["Location"] == "/agents/research/"
    assert client.get("/agents/research/").status_code == 200


def test_a_wrong_password_is_refused_with_a_message(client):
    user = make_user("viewer")
    response = client.post("/login/", {"username": user.username, "password": "nope"})
    assert response.status_code == 200
    assert "did not match" in response.content.decode()
    assert client.get("/").status_code == 302


def test_logging_out_takes_a_post_and_ends_the_session(viewer_browser):
    assert viewer_browser.get("/").status_code == 200
    assert viewer_browser.get("/logout/").status_code == 405
    response = viewer_browser.post("/logout/")
    assert response.status_code == 302
    assert response["Location"] == "/login/"
    assert viewer_browser.get("/").status_code == 302


def test_every_page_needs_a_login(rollout_fleet):
    anonymous = Client()
    for url in pages(rollout_fleet):
        response = anonymous.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/login/?next="), url


def test_an_htmx_request_without_a_login_sends_the_whole_page_to_the_login(rollout_fleet):
    response = Client().get(
        "/agents/research/",
        **htmx("fleet", HTTP_HX_CURRENT_URL="http://testserver/agents/research/"),
    )
    assert response.status_code == 200
    assert response["HX-Redirect"] == "/login/?next=%2Fagents%2Fresearch%2F"
    assert response.content == b""


@pytest.mark.parametrize("role", ["harness", None])
def test_accounts_without_a_reading_role_are_refused(role, rollout_fleet):
    client = Client()
    client.force_login(make_user(role))
    for url in pages(rollout_fleet):
        response = client.get(url)
        assert response.status_code == 403, url
        assert (
            "may not" in response.content.decode() or "no Prism role" in response.content.decode()
        )


def test_the_header_names_the_user_and_their_role(viewer_browser):
    html = viewer_browser.get("/").content.decode()
    assert f'{viewer_browser.user.username} <span class="role">(viewer)</span>' in html

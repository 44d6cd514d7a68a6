"""The webhook API: the secret shown once, the URL guard as a 400, audited changes."""

from __future__ import annotations

from events.models import Webhook
from versions.models import AuditEntry

PUBLIC = "https://93.184.215.14/prism"


def test_it_returns_a_generated_secret_once(agent, release_manager, viewer):
    created = release_manager.post("/api/agents/research/webhooks/", {"url": PUBLIC}, format="json")

    assert created.status_code == 201, created.content
    secret = created.json()["secret"]
    assert secret.startswith("whsec_")
    assert Webhook.objects.get().secret == secret
    for client in (release_manager, viewer):
        shown = client.get(f"/api/webhooks/{created.json()['id']}/").json()
        assert "secret" not in shown
        assert "secret" not in client.get("/api/agents/research/webhooks/").json()[0]
    entry = AuditEntry.objects.get(action="webhook.created")
    assert secret not in str(entry.after)


def test_it_keeps_a_given_secret_and_refuses_a_short_one(agent, release_manager):
    given = {"url": PUBLIC, "secret": "s" * 32, "events": ["version.drained"]}
    assert (
        release_manager.post("/api/agents/research/webhooks/", given, format="json").json()[
            "secret"
        ]
        == "s" * 32
    )
    short = release_manager.post(
        "/api/agents/research/webhooks/", {"url": PUBLIC, "secret": "short"}, format="json"
    )
    assert short.status_code == 400
    assert "secret" in short.json()


def test_it_refuses_a_private_url_on_create_and_on_update(agent, release_manager, settings):
    refused = release_manager.post(
        "/api/agents/research/webhooks/", {"url": "http://10.0.0.5/hook"}, format="json"
    )
    assert refused.status_code == 400
    assert "a private address" in refused.json()["url"][0]
    hook = release_manager.post(
        "/api/agents/research/webhooks/", {"url": PUBLIC}, format="json"
    ).json()
    metadata = release_manager.patch(
        f"/api/webhooks/{hook['id']}/", {"url": "http://169.254.169.254/"}, format="json"
    )
    assert metadata.status_code == 400
    assert Webhook.objects.get(pk=hook["id"]).url == PUBLIC

    settings.PRISM_WEBHOOKS_ALLOW_PRIVATE = True
    allowed = release_manager.patch(
        f"/api/webhooks/{hook['id']}/", {"url": "http://10.0.0.5/hook"}, format="json"
    )
    assert allowed.status_code == 200


def test_it_refuses_unknown_event_types_and_fields(agent, release_manager):
    answer = release_manager.post(
        "/api/agents/research/webhooks/",
        {"url": PUBLIC, "events": ["rollout.exploded"], "colour": "red"},
        format="json",
    )
    assert answer.status_code == 400
    assert set(answer.json()) == {"events", "colour"}

"""POST/GET /api/agents/ and GET/PATCH /api/agents/{slug}/ (the README's API section)."""

from __future__ import annotations

import pytest

from controlplane.models import ApiToken
from tests.concurrency import race, token_client
from versions import services
from versions.models import Agent, AuditEntry

DEFAULT_POLICY = {
    "idle_timeout_s": 1800,
    "max_session_age_s": 86400,
    "drain_grace_s": 300,
    "max_live_versions": 4,
    "retain_drained": 3,
}


def create(client, **body):
    body = {"slug": "support", "name": "Support", **body}
    return client.post("/api/agents/", body, format="json")


def test_it_creates_an_agent_with_the_default_drain_policy(release_manager):
    response = create(release_manager)

    assert response.status_code == 201
    body = response.json()
    assert body["slug"] == "support"
    assert body["name"] == "Support"
    assert body["drain_policy"] == DEFAULT_POLICY
    assert body["stable"] is None
    assert body["created_at"]
    assert Agent.objects.get(slug="support").drain_policy == DEFAULT_POLICY


def test_it_merges_a_partial_drain_policy_with_the_defaults(release_manager):
    response = create(release_manager, drain_policy={"idle_timeout_s": 60, "drain_grace_s": 0})

    assert response.status_code == 201
    expected = {**DEFAULT_POLICY, "idle_timeout_s": 60, "drain_grace_s": 0}
    assert response.json()["drain_policy"] == expected
    assert Agent.objects.get(slug="support").drain_policy == expected


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        ({"bogus_s": 5}, "bogus_s"),
        ({"idle_timeout_s": -5}, "idle_timeout_s"),
        ({"idle_timeout_s": 0}, "idle_timeout_s"),
        ({"max_session_age_s": 0}, "max_session_age_s"),
        ({"max_live_versions": 0}, "max_live_versions"),
        ({"drain_grace_s": -1}, "drain_grace_s"),
        ({"retain_drained": -1}, "retain_drained"),
        ({"idle_timeout_s": "soon"}, "idle_timeout_s"),
        ({"idle_timeout_s": 1.5}, "idle_timeout_s"),
        ({"max_live_versions": 10**9}, "max_live_versions"),
    ],
)
def test_it_refuses_a_bad_drain_policy_naming_the_field(release_manager, policy, field):
    response = create(release_manager, drain_policy=policy)

    assert response.status_code == 400
    assert field in response.json()["drain_policy"]
    assert not Agent.objects.filter(slug="support").exists()
    assert not AuditEntry.objects.exists()


def test_it_refuses_a_drain_policy_that_is_not_an_object(release_manager):
    response = create(release_manager, drain_policy=[1800])

    assert response.status_code == 400
    assert "drain_policy" in response.json()


def test_it_refuses_a_duplicate_slug(release_manager, agent):
    response = create(release_manager, slug=agent.slug)

    assert response.status_code == 400
    assert "slug" in response.json()
    assert Agent.objects.filter(slug=agent.slug).count() == 1


@pytest.mark.parametrize("slug", ["has space", "semi;colon", "ümlaut", "", "x" * 65, "a/b"])
def test_it_refuses_a_bad_slug(release_manager, slug):
    response = create(release_manager, slug=slug)

    assert response.status_code == 400
    assert "slug" in response.json()
    assert not Agent.objects.exists()


@pytest.mark.parametrize("name", ["", "n" * 201, None])
def test_it_refuses_a_bad_name(release_manager, name):
    response = create(release_manager, name=name)

    assert response.status_code == 400
    assert "name" in response.json()


def test_creating_writes_an_agent_created_audit_entry(release_manager):
    create(release_manager, drain_policy={"max_live_versions": 2})

    entry = AuditEntry.objects.get(action="agent.created")
    agent = Agent.objects.get(slug="support")
    assert entry.agent == agent
    assert entry.actor == release_manager.user.username
    assert entry.actor_user == release_manager.user
    assert entry.object == f"agent:{agent.pk}"
    assert entry.before is None
    assert entry.after == {"name": "Support", **DEFAULT_POLICY, "max_live_versions": 2}


def test_the_agent_and_its_audit_entry_commit_together(release_manager, monkeypatch):
    def broken_record(*args, **kwargs):
        raise RuntimeError("audit store down")

    monkeypatch.setattr(services, "record", broken_record)
    release_manager.raise_request_exception = False

    response = create(release_manager)

    assert response.status_code == 500
    assert not Agent.objects.filter(slug="support").exists()


def test_it_lists_agents_by_slug(viewer, db):
    Agent.objects.create(slug="zeta", name="Z")
    Agent.objects.create(slug="alpha", name="A")

    response = viewer.get("/api/agents/")

    assert response.status_code == 200
    assert [a["slug"] for a in response.json()] == ["alpha", "zeta"]
    assert response.json()[0]["drain_policy"] == DEFAULT_POLICY


def test_it_shows_one_agent_with_its_stable_version(viewer, agent, make_version):
    response = viewer.get(f"/api/agents/{agent.slug}/")
    assert response.status_code == 200
    assert response.json()["stable"] is None

    version = make_version(agent)
    agent.stable = version
    agent.save(update_fields=["stable"])

    body = viewer.get(f"/api/agents/{agent.slug}/").json()
    assert body["stable"] == version.pk
    assert body["slug"] == agent.slug
    assert body["name"] == agent.name
    assert body["drain_policy"] == DEFAULT_POLICY


def test_an_unknown_agent_is_404(viewer, release_manager, db):
    assert viewer.get("/api/agents/nobody/").status_code == 404
    response = release_manager.patch("/api/agents/nobody/", {"name": "X"}, format="json")
    assert response.status_code == 404


def test_it_updates_the_name_and_drain_policy(release_manager, agent):
    response = release_manager.patch(
        f"/api/agents/{agent.slug}/",
        {"name": "Renamed", "drain_policy": {"idle_timeout_s": 90}, "reason": "shorter chats"},
        format="json",
    )

    assert response.status_code == 200
    body = response.json()
    assert body["name"] == "Renamed"
    assert body["drain_policy"] == {**DEFAULT_POLICY, "idle_timeout_s": 90}
    agent.refresh_from_db()
    assert agent.name == "Renamed"
    assert agent.idle_timeout_s == 90
    assert agent.max_session_age_s == DEFAULT_POLICY["max_session_age_s"]


def test_updating_writes_before_and_after_of_the_changed_fields_only(release_manager, agent):
    release_manager.patch(
        f"/api/agents/{agent.slug}/",
        {"name": "Renamed", "drain_policy": {"idle_timeout_s": 90, "max_live_versions": 4}},
        format="json",
        HTTP_X_REQUEST_ID="req-update-1",
    )

    entry = AuditEntry.objects.get(action="agent.updated")
    assert entry.agent == agent
    assert entry.actor == release_manager.user.username
    # max_live_versions was already 4: not a change, so not in the entry.
    assert entry.before == {"name": "Research agent", "idle_timeout_s": 1800}
    assert entry.after == {"name": "Renamed", "idle_timeout_s": 90}
    assert entry.request_id == "req-update-1"


def test_the_update_reason_is_audited(release_manager, agent):
    release_manager.patch(
        f"/api/agents/{agent.slug}/",
        {"drain_policy": {"max_live_versions": 2}, "reason": "too many live versions"},
        format="json",
    )

    assert AuditEntry.objects.get(action="agent.updated").reason == "too many live versions"


def test_an_update_that_changes_nothing_writes_no_audit_entry(release_manager, agent):
    response = release_manager.patch(
        f"/api/agents/{agent.slug}/",
        {"name": agent.name, "drain_policy": {"idle_timeout_s": agent.idle_timeout_s}},
        format="json",
    )

    assert response.status_code == 200
    assert not AuditEntry.objects.filter(action="agent.updated").exists()


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"drain_policy": {"max_live_versions": 0}}, ("drain_policy", "max_live_versions")),
        ({"drain_policy": {"idle_timeout_s": -1}}, ("drain_policy", "idle_timeout_s")),
        ({"drain_policy": {"nope": 1}}, ("drain_policy", "nope")),
        ({"name": ""}, ("name",)),
    ],
)
def test_a_bad_update_is_400_and_changes_nothing(release_manager, agent, body, path):
    response = release_manager.patch(f"/api/agents/{agent.slug}/", body, format="json")

    assert response.status_code == 400
    errors = response.json()
    for key in path:
        assert key in errors, errors
        errors = errors[key]
    agent.refresh_from_db()
    assert agent.name == "Research agent"
    assert agent.drain_policy == DEFAULT_POLICY
    assert not AuditEntry.objects.exists()


def test_the_update_and_its_audit_entry_commit_together(release_manager, agent, monkeypatch):
    def broken_record(*args, **kwargs):
        raise RuntimeError("audit store down")

    monkeypatch.setattr(services, "record", broken_record)
    release_manager.raise_request_exception = False

    response = release_manager.patch(
        f"/api/agents/{agent.slug}/", {"name": "Renamed"}, format="json"
    )

    assert response.status_code == 500
    agent.refresh_from_db()
    assert agent.name == "Research agent"


def test_a_drain_policy_field_sent_at_the_top_level_is_400_not_ignored(release_manager):
    response = create(release_manager, idle_timeout_s=60)

    assert response.status_code == 400
    assert "idle_timeout_s" in response.json()
    assert not Agent.objects.exists()


@pytest.mark.parametrize("body", [{"slug": "renamed"}, {"idle_timeout_s": 60}, {"stable": 1}])
def test_a_patch_of_a_field_it_cannot_change_is_400_not_ignored(release_manager, agent, body):
    response = release_manager.patch(f"/api/agents/{agent.slug}/", body, format="json")

    assert response.status_code == 400
    assert set(response.json()) == set(body)
    agent.refresh_from_db()
    assert agent.slug == "research"
    assert agent.drain_policy == DEFAULT_POLICY


def test_a_created_agent_can_be_sent_back_as_is(release_manager, viewer, agent):
    """Read-only fields (stable, created_at) in a body are not unknown fields."""
    shown = viewer.get(f"/api/agents/{agent.slug}/").json()

    response = create(release_manager, **{**shown, "slug": "copy"})

    assert response.status_code == 201
    assert response.json()["name"] == agent.name


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_creates_of_one_slug_make_one_agent_and_no_500(release_manager):
    token = ApiToken.issue(release_manager.user)

    statuses = race(6, lambda _: create(token_client(token)).status_code)

    # The loser either sees the row (400, slug taken) or loses the insert race (409).
    assert sorted(statuses)[0] == 201
    assert statuses.count(201) == 1
    assert set(statuses) <= {201, 400, 409}
    assert Agent.objects.filter(slug="support").count() == 1
    assert AuditEntry.objects.filter(action="agent.created").count() == 1

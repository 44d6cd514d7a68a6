"""GET /api/audit/?agent={slug} (the README's API section)."""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.conftest import BASE_TUPLE, tuple_with
from versions.audit import record
from versions.models import Agent, AuditEntry

CONTRACT_FIELDS = {"at", "actor", "action", "object", "reason", "before", "after"}


@pytest.fixture
def two_agents(release_manager):
    """Two agents with a few audited changes each, made through the API."""
    for slug in ("research", "support"):
        release_manager.post("/api/agents/", {"slug": slug, "name": slug}, format="json")
    release_manager.post("/api/agents/research/versions/", BASE_TUPLE, format="json")
    release_manager.patch("/api/agents/support/", {"name": "Support desk"}, format="json")
    release_manager.patch(
        "/api/agents/research/",
        {"drain_policy": {"max_live_versions": 2}, "reason": "fewer live versions"},
        format="json",
    )
    return Agent.objects.get(slug="research"), Agent.objects.get(slug="support")


def audit(client, **params):
    return client.get("/api/audit/", params)


def test_it_lists_one_agents_entries_newest_first(viewer, two_agents):
    research, _support = two_agents

    response = audit(viewer, agent="research")

    assert response.status_code == 200
    entries = response.json()
    assert [e["action"] for e in entries] == [
        "agent.updated",
        "version.registered",
        "agent.created",
    ]
    newest_first = AuditEntry.objects.filter(agent=research).order_by("-at", "-id")
    expected_ids = list(newest_first.values_list("id", flat=True))
    assert [e["id"] for e in entries] == expected_ids
    assert [e["at"] for e in entries] == sorted((e["at"] for e in entries), reverse=True)


def test_each_entry_has_the_contract_fields(viewer, release_manager, two_agents):
    research, _support = two_agents

    entry = audit(viewer, agent="research").json()[0]

    assert set(entry) >= CONTRACT_FIELDS
    assert entry["action"] == "agent.updated"
    assert entry["actor"] == release_manager.user.username
    assert entry["object"] == f"agent:{research.pk}"
    assert entry["reason"] == "fewer live versions"
    assert entry["before"] == {"max_live_versions": 4}
    assert entry["after"] == {"max_live_versions": 2}
    assert entry["at"]


def test_other_agents_entries_are_not_listed(viewer, two_agents):
    _research, support = two_agents

    entries = audit(viewer, agent="support").json()

    assert [e["action"] for e in entries] == ["agent.updated", "agent.created"]
    assert {e["object"] for e in entries} == {f"agent:{support.pk}"}


def test_an_unknown_agent_is_404(viewer, db):
    assert audit(viewer, agent="nobody").status_code == 404


def test_it_filters_by_action(viewer, two_agents):
    entries = audit(viewer, agent="research", action="version.registered").json()

    assert [e["action"] for e in entries] == ["version.registered"]


@pytest.mark.parametrize(("limit", "count"), [("1", 1), ("2", 2), ("1000", 3)])
def test_it_limits_the_list(viewer, two_agents, limit, count):
    entries = audit(viewer, agent="research", limit=limit).json()

    assert len(entries) == count
    assert entries[0]["action"] == "agent.updated"


@pytest.mark.parametrize("limit", ["0", "1001", "-1", "ten", "²", ""])
def test_a_bad_limit_is_400(viewer, two_agents, limit):
    response = audit(viewer, agent="research", limit=limit)

    assert response.status_code == 400
    assert "limit" in response.json()


def test_system_entries_name_the_system_as_actor(viewer, agent):
    record("agent.drained", agent, actor="system", reason="max_live_versions exceeded")

    (entry,) = audit(viewer, agent=agent.slug).json()
    assert entry["actor"] == "system"
    assert entry["reason"] == "max_live_versions exceeded"


def test_the_clients_request_id_is_recorded(release_manager, agent):
    response = release_manager.post(
        f"/api/agents/{agent.slug}/versions/",
        BASE_TUPLE,
        format="json",
        HTTP_X_REQUEST_ID="deploy-4711.a:b_c",
    )

    assert response.status_code == 201
    assert response["X-Request-ID"] == "deploy-4711.a:b_c"
    entry = AuditEntry.objects.get(action="version.registered")
    assert entry.request_id == "deploy-4711.a:b_c"


def test_the_request_id_is_shown_in_the_audit_list(viewer, release_manager, agent):
    release_manager.patch(
        f"/api/agents/{agent.slug}/", {"name": "X"}, format="json", HTTP_X_REQUEST_ID="req-1"
    )

    (entry,) = audit(viewer, agent=agent.slug).json()
    assert entry["request_id"] == "req-1"


def test_without_a_request_id_one_is_made_and_recorded(release_manager, agent):
    response = release_manager.post(
        f"/api/agents/{agent.slug}/versions/", BASE_TUPLE, format="json"
    )

    generated = response["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert AuditEntry.objects.get(action="version.registered").request_id == generated


@pytest.mark.parametrize("bad", ["has space", "x" * 65, "semi;colon", "<script>"])
def test_an_unsafe_request_id_is_replaced(release_manager, agent, bad):
    body = tuple_with(code={"ref": "git:1"})

    response = release_manager.post(
        f"/api/agents/{agent.slug}/versions/", body, format="json", HTTP_X_REQUEST_ID=bad
    )

    recorded = AuditEntry.objects.get(action="version.registered").request_id
    assert recorded != bad
    assert re.fullmatch(r"[0-9a-f]{32}", recorded)
    assert response["X-Request-ID"] == recorded


def test_each_request_gets_its_own_id(release_manager, agent):
    first = release_manager.patch(f"/api/agents/{agent.slug}/", {"name": "A"}, format="json")
    second = release_manager.patch(f"/api/agents/{agent.slug}/", {"name": "B"}, format="json")

    assert first["X-Request-ID"] != second["X-Request-ID"]
    recorded = set(AuditEntry.objects.values_list("request_id", flat=True))
    assert recorded == {first["X-Request-ID"], second["X-Request-ID"]}


def test_entries_outside_a_request_have_no_request_id(agent):
    entry = record("agent.checked", agent, actor="system")

    assert entry.request_id == ""


def test_listing_the_audit_costs_the_same_queries_for_few_or_many(viewer, two_agents):
    with CaptureQueriesContext(connection) as few:
        audit(viewer)
    for index in range(10):
        record("agent.checked", two_agents[index % 2], actor="system")
    with CaptureQueriesContext(connection) as many:
        assert len(audit(viewer).json()) > 10

    assert len(many.captured_queries) == len(few.captured_queries)

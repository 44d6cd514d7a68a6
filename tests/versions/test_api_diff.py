"""GET /api/versions/{id}/diff/?against={other_id} (the README's API section)."""

from __future__ import annotations

import pytest

from versions.models import Agent

CONTRACT_FIELDS = {"changed_layers", "rainbow_required", "reasons", "layers"}


def diff(client, version, against):
    return client.get(f"/api/versions/{version.pk}/diff/", {"against": against})


@pytest.mark.parametrize("against", ["", "abc", "-1", "1.5", "²", "\u0661"])
def test_against_must_be_a_version_id(viewer, agent, make_version, against):
    version = make_version(agent)

    response = diff(viewer, version, against)

    assert response.status_code == 400
    assert "against" in response.json()


def test_against_is_required(viewer, agent, make_version):
    version = make_version(agent)

    response = viewer.get(f"/api/versions/{version.pk}/diff/")

    assert response.status_code == 400
    assert "against" in response.json()


@pytest.mark.parametrize("missing", [987654, 2**63 + 7])
def test_an_unknown_against_is_404(viewer, agent, make_version, missing):
    version = make_version(agent)

    assert diff(viewer, version, str(missing)).status_code == 404


def test_an_unknown_version_is_404(viewer, agent, make_version):
    other = make_version(agent)

    response = viewer.get("/api/versions/987654/diff/", {"against": other.pk})

    assert response.status_code == 404


def test_versions_of_different_agents_are_not_compared(viewer, agent, make_version):
    elsewhere = make_version(Agent.objects.create(slug="other", name="Other"))
    version = make_version(agent)

    response = diff(viewer, version, elsewhere.pk)

    assert response.status_code == 400
    assert "same agent" in str(response.json()["against"])


def test_a_prompt_change_needs_a_rainbow(viewer, agent, make_version):
    before = make_version(agent, code={"ref": "git:1"})
    after = make_version(agent, code={"ref": "git:1"}, prompts={"system": "Be terse."})

    response = diff(viewer, after, before.pk)

    assert response.status_code == 200
    body = response.json()
    assert set(body) >= CONTRACT_FIELDS
    assert body["changed_layers"] == ["prompts"]
    assert body["rainbow_required"] is True
    assert body["reasons"]
    assert "prompts" in body["layers"]


def test_a_code_only_change_needs_no_rainbow(viewer, agent, make_version):
    before = make_version(agent, code={"ref": "git:1"})
    after = make_version(agent, code={"ref": "git:2"})

    body = diff(viewer, after, before.pk).json()

    assert body["changed_layers"] == ["code"]
    assert body["rainbow_required"] is False


def test_against_is_the_before_side(viewer, agent, make_version):
    """Adding a tool is the reverse of removing it: the direction must be right."""
    before = make_version(agent, code={"ref": "git:1"}, tools=[])
    after = make_version(agent, code={"ref": "git:1"})

    body = diff(viewer, after, before.pk).json()

    assert body["changed_layers"] == ["tools"]
    assert body["layers"]["tools"]["added"] == ["search"]
    assert body["layers"]["tools"]["removed"] == []
    assert body["before"] == before.pk
    assert body["after"] == after.pk


def test_removing_a_tool_is_a_breaking_change(viewer, agent, make_version):
    before = make_version(agent, code={"ref": "git:1"})
    after = make_version(agent, code={"ref": "git:1"}, tools=[])

    body = diff(viewer, after, before.pk).json()

    assert body["layers"]["tools"]["removed"] == ["search"]
    assert body["rainbow_required"] is True
    assert any("search" in str(reason) for reason in body["reasons"])


def test_a_version_against_itself_has_no_changes(viewer, agent, make_version):
    version = make_version(agent)

    body = diff(viewer, version, version.pk).json()

    assert body["changed_layers"] == []
    assert body["rainbow_required"] is False

"""Sessions keep to their agent and version without foreign-key constraints in the
database (rollouts.models.Session says why): the write path pins only the agent's own
versions, and neither parent can be deleted while a session refers to it."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.models.deletion import ProtectedError
from django.utils import timezone

from rollouts.models import Session
from tests.rollouts.conftest import set_weights
from versions.models import Agent, ImmutableVersion, Version

START = "/api/agents/{slug}/sessions/"


def start(client, agent, session_id: str, **fields):
    return client.post(
        START.format(slug=agent.slug), {"session_id": session_id, **fields}, format="json"
    )


@pytest.mark.postgres
def test_the_sessions_table_has_no_foreign_key_constraints(db):
    """The decision the pins' throughput rests on: if a migration brought a constraint
    back, every pin would lock its agent and version rows again."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_constraint "
            "WHERE contype = 'f' AND conrelid = 'rollouts_session'::regclass"
        )
        assert cursor.fetchone() == (0,)


def test_a_reported_version_of_another_agent_is_refused_and_nothing_is_pinned(
    agent, v1, harness, make_version
):
    other = Agent.objects.create(slug="other", name="Other")
    theirs = make_version(other)

    response = start(
        harness, agent, "s-1", version=theirs.pk, started_at=timezone.now().isoformat()
    )

    assert response.status_code == 400
    assert "version" in response.json()
    assert not Session.objects.exists()


def test_every_pin_is_to_a_version_of_its_own_agent(agent, v1, v2, harness):
    set_weights(agent, {v1.pk: 5000, v2.pk: 5000})
    for i in range(40):
        assert start(harness, agent, f"s-{i}").status_code == 201
    pinned = set(Session.objects.values_list("version__agent_id", flat=True))
    assert pinned == {agent.pk}
    assert set(Session.objects.values_list("version_id", flat=True)) == {v1.pk, v2.pk}


def test_neither_a_pinned_version_nor_its_agent_can_be_deleted(agent, v1, harness):
    """Versions are the audit trail (never deleted, one by one or in bulk), and an
    agent with versions is protected by them: a session's parents outlive it."""
    assert start(harness, agent, "s-1").status_code == 201

    with pytest.raises(ImmutableVersion):
        v1.delete()
    with pytest.raises(ImmutableVersion):
        Version.objects.filter(pk=v1.pk).delete()
    with pytest.raises(ProtectedError):
        Agent.objects.filter(pk=agent.pk).delete()

    assert Session.objects.filter(agent=agent, version=v1).count() == 1
    assert Version.objects.filter(pk=v1.pk).exists()

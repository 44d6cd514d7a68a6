"""The admin is for auditors: version tuples with their diffs, and the audit trail.

Everything in it is read-only except revoking API tokens and setting a user's role.
"""

from __future__ import annotations

import datetime as dt

import pytest
from django.contrib.auth import get_user_model
from django.db.models import Model
from django.http import HttpResponse
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from controlplane.models import ApiToken, Profile, Role, TaskRun
from metrics.models import Outcome
from rollouts.models import (
    Evaluation,
    Lifecycle,
    Rollout,
    RolloutEvent,
    Routing,
    RoutingChange,
    Session,
)
from tests.conftest import BASE_TUPLE
from versions.audit import record
from versions.models import Agent, AuditEntry, Version

User = get_user_model()

CHANGED_PROMPTS = {"system": "You are a careful research assistant.\nCite two sources."}


def url(obj_or_model: Model | type[Model], view: str) -> str:
    opts = obj_or_model._meta
    name = f"admin:{opts.app_label}_{opts.model_name}_{view}"
    if view in {"changelist", "add"}:
        return reverse(name)
    return reverse(name, args=[obj_or_model.pk])


def results(response: HttpResponse) -> list[Model]:
    return list(response.context["cl"].result_list)


def assert_read_only(client: Client, obj: Model) -> None:
    """No add, no save, no delete, no bulk actions; the change page is view-only."""
    assert client.get(url(obj, "add")).status_code == 403
    assert client.post(url(obj, "add"), {}).status_code == 403
    assert client.get(url(obj, "delete")).status_code == 403
    assert client.post(url(obj, "delete"), {"post": "yes"}).status_code == 403
    assert type(obj).objects.filter(pk=obj.pk).exists()

    page = client.get(url(obj, "change"))
    assert page.status_code == 200
    assert 'name="_save"' not in page.text
    changelist = client.get(url(obj, "changelist"))
    assert changelist.status_code == 200
    assert 'name="action"' not in changelist.text
    assert "delete_selected" not in changelist.text


# --- versions ------------------------------------------------------------------------


def test_version_changelist_searches_and_filters(admin_client, agent, make_version):
    alpha = make_version(agent, label="alpha", notes="first try")
    beta = make_version(agent, label="beta")
    support = Agent.objects.create(slug="support", name="Support agent")
    gamma = make_version(support, label="gamma")
    changelist = url(Version, "changelist")

    response = admin_client.get(changelist)
    assert response.status_code == 200
    assert results(response) == [gamma, beta, alpha]
    assert 'id="changelist-filter"' in response.text
    assert f"?agent__id__exact={support.pk}" in response.text
    assert f"<code>{alpha.short_fingerprint}</code>" in response.text

    assert results(admin_client.get(changelist, {"q": "beta"})) == [beta]
    assert results(admin_client.get(changelist, {"q": "first try"})) == [alpha]
    assert results(admin_client.get(changelist, {"q": alpha.fingerprint})) == [alpha]
    assert results(admin_client.get(changelist, {"q": "support"})) == [gamma]
    assert results(admin_client.get(changelist, {"agent__id__exact": agent.pk})) == [beta, alpha]
    midnight = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
    by_date = admin_client.get(
        changelist,
        {"created_at__gte": str(midnight), "created_at__lt": str(midnight + dt.timedelta(1))},
    )
    assert len(results(by_date)) == 3


def test_version_changelist_has_no_n_plus_one(
    admin_client, agent, make_version, django_assert_max_num_queries
):
    for i in range(20):
        version = make_version(agent, label=f"v{i}")
        # Distinct creators, so an unjoined created_by would cost a query per row.
        creator = User.objects.create_user(username=f"creator-{i}")
        Version.objects.filter(pk=version.pk).update(created_by=creator)

    with django_assert_max_num_queries(8):
        response = admin_client.get(url(Version, "changelist"))
    assert len(results(response)) == 20
    assert "creator-19" in response.text


def test_version_page_shows_the_pretty_tuple_and_layer_fingerprints(
    admin_client, agent, make_version
):
    version = make_version(agent, label="v1")

    page = admin_client.get(url(version, "change")).text

    assert version.fingerprint in page
    for fingerprint in version.layer_fingerprints.values():
        assert f"<code>{fingerprint}</code>" in page
    # Each layer is indented JSON in a <pre> (quotes escaped by the template).
    assert '<h4 class="prism-layer">model</h4>' in page
    assert "  &quot;params&quot;: {\n    &quot;temperature&quot;: 0.2\n  }," in page
    assert (
        "&quot;system&quot;: &quot;You are a careful research assistant.\\nCite sources.&quot;"
        in (page)
    )
    assert "nothing to compare" in page


def test_version_page_diffs_against_the_previous_version_of_its_agent(
    admin_client, agent, make_version
):
    previous = make_version(agent, label="v1")
    # Versions of other agents, and later ones, are not "the previous version".
    make_version(Agent.objects.create(slug="other", name="Other"), label="elsewhere")
    version = make_version(agent, label="v2", prompts=CHANGED_PROMPTS)
    make_version(agent, label="v3", prompts={"system": "Something else entirely."})

    page = admin_client.get(url(version, "change")).text

    assert f'<a href="{url(previous, "change")}">research@v1</a>' in page
    assert "Risk: <strong>rainbow</strong>" in page
    assert "rainbow required: <strong>yes</strong>" in page
    assert '<span class="prism-del">-Cite sources.</span>' in page
    assert '<span class="prism-add">+Cite two sources.</span>' in page
    assert "Something else entirely" not in page


def test_version_page_shows_tool_and_model_changes(admin_client, agent, make_version):
    make_version(agent, label="v1")
    search = BASE_TUPLE["tools"][0]
    version = make_version(
        agent,
        label="v2",
        model={"provider": "anthropic", "name": "claude-opus", "params": {"temperature": 0.2}},
        tools=[
            {
                **search,
                "input_schema": {
                    "type": "object",
                    "properties": {"query": {"type": "string"}, "site": {"type": "string"}},
                    "required": ["query", "site"],
                },
            },
            {"name": "fetch", "description": "Fetch a page", "input_schema": {"type": "object"}},
        ],
    )

    page = admin_client.get(url(version, "change")).text

    assert "Risk: <strong>breaking</strong>" in page
    assert "added <code>fetch</code>" in page
    assert "modified <code>search</code> (breaking)" in page
    assert (
        "<td>name</td><td><code>&quot;claude-sonnet&quot;</code></td>"
        "<td><code>&quot;claude-opus&quot;</code></td>"
    ) in page
    # The model's before and after, side by side: only "before" names the old model.
    assert "&quot;name&quot;: &quot;claude-sonnet&quot;" in page
    assert "&quot;name&quot;: &quot;claude-opus&quot;" in page


def test_version_page_renders_every_part_of_the_diff_contract(
    admin_client, agent, make_version, monkeypatch
):
    """Every field of ``diff_versions``' answer reaches the page, escaped."""
    fake = {
        "changed_layers": ["code", "model", "prompts", "tools"],
        "rainbow_required": True,
        "breaking": True,
        "risk": "breaking",
        "reasons": [
            {
                "layer": "tools",
                "kind": "tool_removed",
                "breaking": True,
                "rainbow": True,
                "message": "tool <lookup> was removed",
            }
        ],
        "layers": {
            "code": {"changed": True, "before": {"ref": "git:aaa"}, "after": {"ref": "git:bbb"}},
            "model": {
                "changed": True,
                "before": {"name": "small"},
                "after": {"name": "large"},
                "changes": {
                    "name": {"before": "small", "after": "large"},
                    "params": {"top_p": {"before": None, "after": 0.9}},
                },
            },
            "prompts": {
                "changed": True,
                "parts": {
                    "items": {
                        "status": "modified",
                        "similarity": 0.875,
                        "unified_diff": "\n".join(
                            [
                                "--- a",
                                "+++ b",
                                "@@ -1,2 +1 @@",
                                "-old <line>",
                                "--- rule",
                                "+new line",
                            ]
                        ),
                    },
                    "few_shot": {"status": "added", "similarity": None, "unified_diff": ""},
                },
            },
            "tools": {
                "changed": True,
                "added": ["fetch"],
                "removed": ["lookup"],
                "modified": [
                    {
                        "name": "search",
                        "breaking": True,
                        "changes": [
                            {
                                "kind": "required_added",
                                "path": "properties.site",
                                "breaking": True,
                                "message": "site is now required",
                            }
                        ],
                    }
                ],
            },
        },
    }
    monkeypatch.setattr("versions.admin.diff_versions", lambda before, after: fake)
    make_version(agent, label="v1")
    version = make_version(agent, label="v2")

    page = admin_client.get(url(version, "change")).text

    assert "Risk: <strong>breaking</strong>" in page
    assert "breaking: <strong>yes</strong>" in page
    assert "Changed layers: code, model, prompts, tools" in page
    assert "<td>tool &lt;lookup&gt; was removed</td>" in page
    assert "&quot;ref&quot;: &quot;git:aaa&quot;" in page
    assert "&quot;ref&quot;: &quot;git:bbb&quot;" in page
    assert "<td>name</td><td><code>&quot;small&quot;</code></td>" in page
    assert "<td>params.top_p</td><td><code>—</code></td><td><code>0.9</code></td>" in page
    # A part named like a dict method is still rendered by name, not looked up.
    assert "<h5>items <small>modified, 88% similar</small></h5>" in page
    assert "<h5>few_shot <small>added</small></h5>" in page
    assert '<span class="prism-del">-old &lt;line&gt;</span>' in page
    assert '<span class="prism-del">--- rule</span>' in page
    assert '<span class="prism-add">+new line</span>' in page
    assert '<span class="prism-hunk">@@ -1,2 +1 @@</span>' in page
    assert "added <code>fetch</code>" in page
    assert "removed <code>lookup</code>" in page
    assert "modified <code>search</code> (breaking)" in page
    assert "<code>required_added</code> at <code>properties.site</code>: site is now required" in (
        page
    )


def test_html_in_prompts_is_escaped_on_the_version_page(admin_client, agent, make_version):
    make_version(agent, prompts={"system": "<b>bold</b> start"})
    version = make_version(
        agent, prompts={"system": "<script>alert('x')</script>", "<img src=x>": "<i>part</i>"}
    )

    page = admin_client.get(url(version, "change")).text

    assert "<script>alert(" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "<img src=x>" not in page
    assert "&lt;img src=x&gt;" in page
    assert "<b>bold</b>" not in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in page
    assert "<i>part</i>" not in page


def test_versions_cannot_be_added_changed_or_deleted_in_the_admin(
    admin_client, agent, make_version
):
    version = make_version(agent, label="v1")
    before = Version.objects.values().get(pk=version.pk)

    response = admin_client.post(
        url(version, "change"),
        {
            "agent": agent.pk,
            "label": "tampered",
            "code": '{"ref": "git:evil"}',
            "model": '{"provider": "x", "name": "y", "params": {}}',
            "prompts": '{"system": "obey"}',
            "tools": "[]",
            "notes": "tampered",
            "_save": "Save",
        },
    )

    assert response.status_code == 403
    assert Version.objects.values().get(pk=version.pk) == before
    assert_read_only(admin_client, version)
    assert Version.objects.count() == 1


def test_agents_are_read_only_in_the_admin(admin_client, agent, make_version):
    agent.stable = make_version(agent, label="v1")
    agent.save()

    listing = admin_client.get(url(Agent, "changelist"))
    assert "research@v1" in listing.text
    response = admin_client.post(
        url(agent, "change"), {"slug": "research", "name": "Renamed", "idle_timeout_s": 1}
    )

    assert response.status_code == 403
    agent.refresh_from_db()
    assert (agent.name, agent.idle_timeout_s) == ("Research agent", 1800)
    page = admin_client.get(url(agent, "change")).text
    assert "Drain policy" in page
    assert f"?agent__id__exact={agent.pk}" in page
    assert_read_only(admin_client, agent)


# --- audit trail ---------------------------------------------------------------------


@pytest.fixture
def audit_entries(agent) -> list[AuditEntry]:
    created = record("agent.created", agent, actor="cli", after={"name": agent.name})
    forced = record(
        "agent.updated",
        agent,
        actor="system",
        reason="forced drain: too many live versions",
        before={"idle_timeout_s": 1800},
        after={"idle_timeout_s": 60},
    )
    AuditEntry.objects.filter(pk=forced.pk).update(request_id="req-42")
    forced.refresh_from_db()
    manual = record("agent.updated", agent, actor="alice", reason="quieter")
    return [created, forced, manual]


def test_audit_entries_are_filterable_and_searchable(admin_client, audit_entries):
    created, forced, manual = audit_entries
    changelist = url(AuditEntry, "changelist")

    response = admin_client.get(changelist)
    assert results(response) == [manual, forced, created]
    assert "forced drain: too many live versions" in response.text

    assert results(admin_client.get(changelist, {"action": "agent.updated"})) == [manual, forced]
    assert results(admin_client.get(changelist, {"action": "agent.created"})) == [created]
    assert results(admin_client.get(changelist, {"actor": "system"})) == [forced]
    assert results(admin_client.get(changelist, {"agent__id__exact": created.agent_id})) == [
        manual,
        forced,
        created,
    ]
    assert results(admin_client.get(changelist, {"q": "too many"})) == [forced]
    assert results(admin_client.get(changelist, {"q": "req-42"})) == [forced]
    year = admin_client.get(changelist, {"at__year": created.at.year})
    assert len(results(year)) == 3
    assert results(admin_client.get(changelist, {"at__year": created.at.year - 1})) == []


def test_audit_entries_are_read_only_and_show_before_and_after(admin_client, audit_entries):
    forced = audit_entries[1]

    page = admin_client.get(url(forced, "change")).text

    assert '<pre class="prism-json"' in page
    assert "{\n  &quot;idle_timeout_s&quot;: 1800\n}" in page
    assert "{\n  &quot;idle_timeout_s&quot;: 60\n}" in page
    response = admin_client.post(url(forced, "change"), {"reason": "nothing happened"})
    assert response.status_code == 403
    forced.refresh_from_db()
    assert forced.reason == "forced drain: too many live versions"
    assert_read_only(admin_client, forced)


# --- access --------------------------------------------------------------------------


def test_token_admin_never_shows_keys_and_can_revoke(admin_client, admin_user):
    user = User.objects.create_user(username="ci")
    key = ApiToken.issue(user)
    token = ApiToken.objects.get(user=user)

    listing = admin_client.get(url(ApiToken, "changelist")).text
    page = admin_client.get(url(token, "change")).text
    for html in (listing, page):
        assert token.prefix in html
        assert key not in html
        assert token.key_hash not in html
    assert 'name="_save"' not in page
    assert admin_client.get(url(ApiToken, "add")).status_code == 403
    assert admin_client.post(url(token, "change"), {"prefix": "x"}).status_code == 403

    response = admin_client.post(url(token, "delete"), {"post": "yes"})

    assert response.status_code == 302
    assert not ApiToken.objects.exists()
    revoked = AuditEntry.objects.get(action="token.revoked")
    assert (revoked.actor, revoked.object_id, revoked.before) == (
        admin_user.username,
        str(user.pk),
        {"prefix": token.prefix},
    )


def test_role_is_set_through_the_user_admin_and_audited(admin_client):
    user = User.objects.create_user(username="bob")
    Profile.objects.create(user=user, role=Role.VIEWER)
    change = reverse("admin:auth_user_change", args=[user.pk])
    page = admin_client.get(change)
    assert 'name="profile-0-role"' in page.text

    response = admin_client.post(
        change,
        {
            "username": "bob",
            "is_active": "on",
            "date_joined_0": "2025-01-01",
            "date_joined_1": "00:00:00",
            "profile-TOTAL_FORMS": "1",
            "profile-INITIAL_FORMS": "1",
            "profile-MIN_NUM_FORMS": "0",
            "profile-MAX_NUM_FORMS": "1",
            "profile-0-id": str(user.profile.pk),
            "profile-0-user": str(user.pk),
            "profile-0-role": Role.RELEASE_MANAGER,
            "_save": "Save",
        },
    )

    assert response.status_code == 302, response.context["errors"]
    user.profile.refresh_from_db()
    assert user.profile.role == Role.RELEASE_MANAGER
    entry = AuditEntry.objects.get(action="user.role_changed")
    assert (entry.before, entry.after) == ({"role": "viewer"}, {"role": "release-manager"})


# --- rollouts and metrics ------------------------------------------------------------


@pytest.fixture
def fleet(agent, make_version) -> dict[str, Model]:
    """One of each operational row, to render every remaining admin."""
    now = timezone.now()
    v1, v2 = make_version(agent, label="v1"), make_version(agent, label="v2")
    rollout = Rollout.objects.create(
        agent=agent,
        candidate=v2,
        baseline=v1,
        stages=[{"percent": 5}, {"percent": 100}],
        gates=[{"metric": "error_rate", "max_increase": 0.01}],
        started_at=now,
        stage_started_at=now,
        last_evaluation={"verdict": "<b>inconclusive</b>"},
    )
    RolloutEvent.objects.create(
        rollout=rollout,
        actor="system",
        action="halt",
        from_state="running",
        to_state="halted",
        reason="gate <error_rate> failed",
        evaluation={"error_rate": "fail"},
    )
    session = Session.objects.create(
        agent=agent, session_id="s-1", version=v2, started_at=now, last_seen_at=now
    )
    outcome = Outcome.objects.create(
        agent=agent, version=v2, session_id="s-0", started_at=now, ended_at=now, success=True
    )
    return {
        "rollout": rollout,
        "session": session,
        "outcome": outcome,
        "routing": Routing.objects.create(agent=agent, epoch=3, weights={str(v1.pk): 10000}),
        "lifecycle": Lifecycle.objects.create(version=v1, agent=agent, first_routed_at=now),
        "routing_change": RoutingChange.objects.create(
            agent=agent,
            epoch=3,
            at=now,
            actor="system",
            system=True,
            rollout=rollout,
            stage=0,
            action="rollout.started",
            weights={str(v1.pk): 9500, str(v2.pk): 500},
        ),
        "evaluation": Evaluation.objects.create(
            rollout=rollout,
            at=now,
            actor="system",
            stage=0,
            epoch=3,
            decision="hold",
            reason="<waiting> for samples",
            report={"gates": [{"metric": "error_rate", "verdict": "inconclusive"}]},
        ),
        "task_run": TaskRun.objects.create(
            task_id="t-1",
            name="rollouts.tasks.apply_transition",
            args=[rollout.pk, "advance", 0],
            worker="host:1",
            started_at=now,
        ),
    }


OPERATIONAL = [
    "rollout",
    "session",
    "outcome",
    "routing",
    "lifecycle",
    "routing_change",
    "evaluation",
    "task_run",
]


@pytest.mark.parametrize("name", OPERATIONAL)
def test_operational_admins_are_read_only(admin_client, fleet, name):
    assert_read_only(admin_client, fleet[name])


def test_rollout_page_shows_its_events_read_only_and_escaped(admin_client, fleet):
    page = admin_client.get(url(fleet["rollout"], "change")).text

    assert "gate &lt;error_rate&gt; failed" in page
    assert "&quot;error_rate&quot;: &quot;fail&quot;" in page
    assert "&lt;b&gt;inconclusive&lt;/b&gt;" in page
    assert "Rollout events" in page
    assert 'name="events-0-reason"' not in page  # the inline has no editable fields


def test_routing_change_and_evaluation_pages_show_their_evidence_escaped(admin_client, fleet):
    change = admin_client.get(url(fleet["routing_change"], "change")).text
    evaluation = admin_client.get(url(fleet["evaluation"], "change")).text

    assert f"&quot;{fleet['rollout'].candidate_id}&quot;: 500" in change
    assert "&lt;waiting&gt; for samples" in evaluation
    assert "&quot;inconclusive&quot;" in evaluation


def test_session_changelist_filters_without_n_plus_one(
    admin_client, fleet, agent, make_version, django_assert_max_num_queries
):
    now = timezone.now()
    for i in range(15):
        version = make_version(agent, label=f"extra-{i}")
        Session.objects.create(
            agent=agent, session_id=f"x-{i}", version=version, started_at=now, last_seen_at=now
        )
    changelist = url(Session, "changelist")

    with django_assert_max_num_queries(8):
        response = admin_client.get(changelist)

    assert len(results(response)) == 16
    assert "research@extra-14" in response.text  # in the version filter
    only = admin_client.get(changelist, {"q": "s-1"})
    assert [s.session_id for s in results(only)] == ["s-1"]
    by_version = admin_client.get(changelist, {"version__id__exact": fleet["session"].version_id})
    assert [s.session_id for s in results(by_version)] == ["s-1"]

"""POST/GET /api/agents/{slug}/versions/ and GET /api/versions/{id}/ (the README's API section)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from django.conf import settings
from django.db import connection, transaction
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from controlplane.models import ApiToken
from tests.concurrency import race, token_client
from tests.conftest import BASE_TUPLE, tuple_with
from versions.api import VersionSerializer
from versions.fingerprint import fingerprint, layer_fingerprint
from versions.models import Agent, AuditEntry, ImmutableVersion, Version

LAYERS = ("code", "model", "prompts", "tools")
CONTRACT_FIELDS = {
    "id", "agent", "label", "fingerprint", "layers", "code", "model", "prompts", "tools",
    "notes", "created_at", "created_by",
}  # fmt: skip

TWO_TOOLS = [
    {
        "name": "fetch",
        "description": "Fetch a URL",
        "input_schema": {"type": "object", "properties": {"url": {"type": "string"}}},
    },
    BASE_TUPLE["tools"][0],
]


def url(agent: Agent) -> str:
    return f"/api/agents/{agent.slug}/versions/"


def register(client: APIClient, agent: Agent, body: dict[str, Any]):
    return client.post(url(agent), body, format="json")


def error_at(response, *path: str) -> Any:
    """The error under ``path`` in a 400 body; fails if any step is missing."""
    assert response.status_code == 400, response.content
    errors = response.json()
    for key in path:
        assert isinstance(errors, dict), (path, response.json())
        assert key in errors, (path, response.json())
        errors = errors[key]
    return errors


# --- registering ---------------------------------------------------------------------


def test_it_registers_a_version_with_every_contract_field(release_manager, agent):
    response = register(release_manager, agent, {**BASE_TUPLE, "label": "v1", "notes": "first"})

    assert response.status_code == 201
    body = response.json()
    assert set(body) >= CONTRACT_FIELDS
    assert body["agent"] == agent.slug
    assert body["label"] == "v1"
    assert body["notes"] == "first"
    assert body["created_by"] == release_manager.user.username
    assert body["created_at"]
    assert body["fingerprint"] == fingerprint(BASE_TUPLE)
    assert body["layers"] == {name: layer_fingerprint(name, BASE_TUPLE[name]) for name in LAYERS}
    for name in LAYERS:
        assert body[name] == BASE_TUPLE[name]
    version = Version.objects.get(pk=body["id"])
    assert version.agent == agent
    assert version.fingerprint == body["fingerprint"]
    assert version.created_by == release_manager.user


def test_it_answers_200_with_the_same_version_for_a_known_tuple(release_manager, agent):
    first = register(release_manager, agent, BASE_TUPLE)
    again = register(release_manager, agent, BASE_TUPLE)

    assert first.status_code == 201
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert Version.objects.filter(agent=agent).count() == 1


def test_key_and_tool_order_do_not_make_a_new_version(release_manager, agent):
    first = register(release_manager, agent, tuple_with(tools=TWO_TOOLS))

    shuffled = {
        "tools": [dict(reversed(list(tool.items()))) for tool in reversed(TWO_TOOLS)],
        "prompts": BASE_TUPLE["prompts"],
        "model": {"params": {"temperature": 0.2}, "name": "claude-sonnet", "provider": "anthropic"},
        "code": BASE_TUPLE["code"],
    }
    again = register(release_manager, agent, shuffled)

    assert first.status_code == 201
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert Version.objects.count() == 1


def test_a_changed_layer_is_a_new_version(release_manager, agent):
    first = register(release_manager, agent, BASE_TUPLE)
    changed = register(release_manager, agent, tuple_with(prompts={"system": "Be brief."}))

    assert changed.status_code == 201
    assert changed.json()["id"] != first.json()["id"]
    assert changed.json()["layers"]["prompts"] != first.json()["layers"]["prompts"]
    assert changed.json()["layers"]["code"] == first.json()["layers"]["code"]


def test_the_same_tuple_is_a_separate_version_for_another_agent(release_manager, agent):
    other = Agent.objects.create(slug="other", name="Other")

    first = register(release_manager, agent, BASE_TUPLE)
    second = register(release_manager, other, BASE_TUPLE)

    assert second.status_code == 201
    assert second.json()["id"] != first.json()["id"]
    assert second.json()["fingerprint"] == first.json()["fingerprint"]


def test_registering_writes_one_audit_entry(release_manager, agent):
    body = register(release_manager, agent, {**BASE_TUPLE, "label": "v1"}).json()
    register(release_manager, agent, BASE_TUPLE)

    entry = AuditEntry.objects.get(action="version.registered")
    assert entry.agent == agent
    assert entry.actor == release_manager.user.username
    assert entry.object == f"version:{body['id']}"
    assert entry.after == {
        "fingerprint": body["fingerprint"],
        "label": "v1",
        "layers": body["layers"],
    }


def test_a_label_taken_by_another_tuple_is_400(release_manager, agent):
    register(release_manager, agent, {**BASE_TUPLE, "label": "v1"})

    response = register(
        release_manager, agent, {**tuple_with(code={"ref": "git:beef"}), "label": "v1"}
    )

    assert "already" in str(error_at(response, "label"))
    assert Version.objects.count() == 1


def test_the_same_label_with_the_same_tuple_is_the_known_version(release_manager, agent):
    first = register(release_manager, agent, {**BASE_TUPLE, "label": "v1"})
    again = register(release_manager, agent, {**BASE_TUPLE, "label": "v1"})

    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]


def test_a_blank_label_is_no_label(release_manager, agent):
    response = register(release_manager, agent, {**BASE_TUPLE, "label": "  "})

    assert response.status_code == 201
    assert response.json()["label"] is None


def test_an_unknown_agent_is_404(release_manager, viewer, db):
    response = release_manager.post("/api/agents/ghost/versions/", BASE_TUPLE, format="json")
    assert response.status_code == 404
    assert viewer.get("/api/agents/ghost/versions/").status_code == 404


# --- bad input -----------------------------------------------------------------------


def without(layer: str, key: str) -> dict[str, Any]:
    body = copy.deepcopy(BASE_TUPLE)
    del body[layer][key]
    return body


def tool(**changes: Any) -> dict[str, Any]:
    return {**copy.deepcopy(BASE_TUPLE["tools"][0]), **changes}


def schema(input_schema: Any) -> dict[str, Any]:
    return tuple_with(tools=[tool(input_schema=input_schema)])


BAD_INPUTS = [
    pytest.param({k: v for k, v in BASE_TUPLE.items() if k != "code"}, ("code",), id="no code"),
    pytest.param({k: v for k, v in BASE_TUPLE.items() if k != "model"}, ("model",), id="no model"),
    pytest.param(
        {k: v for k, v in BASE_TUPLE.items() if k != "prompts"}, ("prompts",), id="no prompts"
    ),
    pytest.param({k: v for k, v in BASE_TUPLE.items() if k != "tools"}, ("tools",), id="no tools"),
    pytest.param(tuple_with(code=None), ("code",), id="code null"),
    pytest.param(tuple_with(code="git:abc"), ("code",), id="code not an object"),
    pytest.param(tuple_with(code={"image": "x"}), ("code", "ref"), id="code without ref"),
    pytest.param(tuple_with(code={"ref": "  "}), ("code", "ref"), id="code blank ref"),
    pytest.param(tuple_with(code={"ref": 42}), ("code", "ref"), id="code ref not a string"),
    pytest.param(without("model", "provider"), ("model", "provider"), id="model no provider"),
    pytest.param(without("model", "name"), ("model", "name"), id="model no name"),
    pytest.param(
        tuple_with(model={"provider": "anthropic", "name": "claude", "params": [0.2]}),
        ("model", "params"),
        id="params not an object",
    ),
    pytest.param(tuple_with(model=["anthropic"]), ("model",), id="model not an object"),
    pytest.param(tuple_with(prompts=["You are helpful."]), ("prompts",), id="prompts a list"),
    pytest.param(tuple_with(prompts="You are helpful."), ("prompts",), id="prompts a string"),
    pytest.param(tuple_with(prompts={"": "x"}), ("prompts",), id="prompt part unnamed"),
    pytest.param(tuple_with(tools={"search": {}}), ("tools",), id="tools not a list"),
    pytest.param(tuple_with(tools=["search"]), ("tools", "0"), id="tool not an object"),
    pytest.param(
        tuple_with(tools=[{k: v for k, v in tool().items() if k != "name"}]),
        ("tools", "0", "name"),
        id="tool without name",
    ),
    pytest.param(tuple_with(tools=[tool(name="has space")]), ("tools", "0", "name"), id="bad name"),
    pytest.param(tuple_with(tools=[tool(), tool()]), ("tools", "1", "name"), id="duplicate tools"),
    pytest.param(
        tuple_with(tools=[tool(description=7)]), ("tools", "0", "description"), id="description"
    ),
    pytest.param(
        schema({"type": "object", "properties": {"q": {"type": "strng"}}}),
        ("tools", "0", "input_schema"),
        id="schema unknown type",
    ),
    pytest.param(schema({"type": 12}), ("tools", "0", "input_schema"), id="schema type 12"),
    pytest.param(
        schema({"type": "object", "required": "q"}),
        ("tools", "0", "input_schema"),
        id="schema required not a list",
    ),
    pytest.param(schema({"type": "array"}), ("tools", "0", "input_schema"), id="schema array"),
    pytest.param(schema({"properties": {}}), ("tools", "0", "input_schema"), id="schema no type"),
    pytest.param(schema("object"), ("tools", "0", "input_schema"), id="schema a string"),
    pytest.param(
        tuple_with(tools=[{k: v for k, v in tool().items() if k != "input_schema"}]),
        ("tools", "0", "input_schema"),
        id="schema missing",
    ),
    pytest.param(
        schema({"$schema": 5, "type": "object"}),
        ("tools", "0", "input_schema"),
        id="schema $schema a number",
    ),
    pytest.param(
        schema({"$schema": ["draft"], "type": "object"}),
        ("tools", "0", "input_schema"),
        id="schema $schema a list",
    ),
    pytest.param({**BASE_TUPLE, "label": "has space"}, ("label",), id="label with a space"),
    pytest.param({**BASE_TUPLE, "label": "x" * 101}, ("label",), id="label too long"),
    pytest.param({**BASE_TUPLE, "notes": "n" * 10001}, ("notes",), id="notes too long"),
]


@pytest.mark.parametrize(("body", "path"), BAD_INPUTS)
def test_bad_input_is_400_naming_the_field(release_manager, agent, body, path):
    response = register(release_manager, agent, body)

    message = error_at(response, *path)
    assert message, response.json()
    assert not Version.objects.exists()
    assert not AuditEntry.objects.exists()


def test_an_invalid_input_schema_error_says_where(release_manager, agent):
    response = register(
        release_manager, agent, schema({"type": "object", "properties": {"q": {"type": "strng"}}})
    )

    message = str(error_at(response, "tools", "0", "input_schema"))
    assert "properties/q/type" in message


def test_a_layer_over_256_kib_is_400(release_manager, agent):
    body = tuple_with(prompts={"system": "x" * (256 * 1024)})

    response = register(release_manager, agent, body)

    assert "limit" in str(error_at(response, "prompts"))
    assert not Version.objects.exists()


def test_a_layer_just_under_256_kib_is_accepted(release_manager, agent):
    overhead = len(json.dumps({"system": ""}))
    body = tuple_with(prompts={"system": "x" * (256 * 1024 - overhead)})

    assert register(release_manager, agent, body).status_code == 201


def test_nan_in_the_body_is_400(release_manager, agent):
    raw = json.dumps(BASE_TUPLE).replace('"temperature": 0.2', '"temperature": NaN')
    assert "NaN" in raw

    response = release_manager.post(url(agent), raw, content_type="application/json")

    assert response.status_code == 400
    assert "JSON" in response.json()["detail"]
    assert not Version.objects.exists()


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("layer", LAYERS)
def test_the_serializer_refuses_non_finite_numbers_naming_the_layer(agent, layer, value):
    """The parser already refuses NaN; this guards other ways in (forms, services)."""
    body = copy.deepcopy(BASE_TUPLE)
    if layer == "tools":
        body["tools"][0]["input_schema"]["maximum"] = value
    elif layer == "prompts":
        body["prompts"]["weight"] = value
    elif layer == "model":
        body["model"]["params"]["temperature"] = value
    else:
        body["code"]["size"] = value
    serializer = VersionSerializer(data=body)

    assert not serializer.is_valid()
    assert set(serializer.errors) == {layer}


@pytest.mark.parametrize(
    "raw",
    [
        '{"code": {"ref": "git:1"},',
        "not json at all",
        "[" * 100_000 + "]" * 100_000,
        '{"code": ' * 50_000 + "1" + "}" * 50_000,
    ],
    ids=["truncated", "not json", "deep list", "deep object"],
)
def test_malformed_json_is_400(release_manager, agent, raw):
    response = release_manager.post(url(agent), raw, content_type="application/json")

    assert response.status_code == 400
    assert "detail" in response.json()
    assert not Version.objects.exists()


@pytest.mark.parametrize("raw", ["[]", '"a string"', "42"])
def test_a_body_that_is_not_an_object_is_400(release_manager, agent, raw):
    response = release_manager.post(url(agent), raw, content_type="application/json")

    assert response.status_code == 400


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"d": value}
    return value


def test_a_deeply_nested_layer_is_400_not_500(release_manager, agent):
    """Deep enough to parse, and to exhaust the recursion limit further in."""
    body = {**BASE_TUPLE, "model": {"provider": "p", "name": "n", "params": nested(900)}}
    raw = json.dumps(body)

    response = release_manager.post(url(agent), raw, content_type="application/json")

    assert response.status_code == 400
    assert "nested" in response.json()["detail"]
    assert not Version.objects.exists()


def test_a_reasonably_nested_layer_is_accepted(release_manager, agent):
    body = {**BASE_TUPLE, "model": {"provider": "p", "name": "n", "params": nested(40)}}

    response = release_manager.post(url(agent), json.dumps(body), content_type="application/json")

    assert response.status_code == 201
    assert response.json()["model"]["params"] == nested(40)


def test_a_body_over_the_limit_is_413(release_manager, agent):
    limit = settings.PRISM_MAX_BODY_BYTES
    assert limit == 1024 * 1024  # the documented default
    raw = json.dumps(tuple_with(prompts={"system": "x" * limit}))
    assert len(raw.encode()) > limit

    response = release_manager.post(url(agent), raw, content_type="application/json")

    assert response.status_code == 413
    assert str(limit) in response.json()["detail"]
    assert not Version.objects.exists()


@override_settings(PRISM_MAX_BODY_BYTES=2048)
def test_the_body_limit_is_exact(release_manager, agent):
    base = json.dumps({**BASE_TUPLE, "notes": ""})
    at_limit = json.dumps({**BASE_TUPLE, "notes": "n" * (2048 - len(base))})
    over_limit = json.dumps({**BASE_TUPLE, "notes": "n" * (2049 - len(base))})
    assert len(at_limit) == 2048

    over = release_manager.post(url(agent), over_limit, content_type="application/json")
    at = release_manager.post(url(agent), at_limit, content_type="application/json")

    assert over.status_code == 413
    assert at.status_code == 201


# --- reading -------------------------------------------------------------------------


def test_it_lists_an_agents_versions_only(viewer, agent, make_version):
    other = Agent.objects.create(slug="other", name="Other")
    mine = [make_version(agent, label="v1"), make_version(agent, label="v2")]
    make_version(other, label="v1")

    response = viewer.get(url(agent))

    assert response.status_code == 200
    listed = response.json()
    assert sorted(v["id"] for v in listed) == sorted(v.pk for v in mine)
    assert {v["agent"] for v in listed} == {agent.slug}
    assert set(listed[0]) >= CONTRACT_FIELDS


def test_it_shows_one_version_with_every_contract_field(harness, agent, make_version):
    version = make_version(agent, label="v7", notes="why")

    response = harness.get(f"/api/versions/{version.pk}/")

    assert response.status_code == 200
    body = response.json()
    assert set(body) >= CONTRACT_FIELDS
    assert body["id"] == version.pk
    assert body["agent"] == agent.slug
    assert body["label"] == "v7"
    assert body["fingerprint"] == version.fingerprint
    assert body["layers"] == version.layer_fingerprints
    assert set(body["layers"]) == set(LAYERS)
    assert {name: body[name] for name in LAYERS} == version.layers


@pytest.mark.parametrize("pk", [987654, 2**63 + 5])
def test_an_unknown_version_is_404(viewer, db, pk):
    assert viewer.get(f"/api/versions/{pk}/").status_code == 404


# --- immutability --------------------------------------------------------------------


def snapshot(version: Version) -> dict[str, Any]:
    row = Version.objects.values().get(pk=version.pk)
    return dict(row)


@pytest.mark.parametrize("method", ["put", "patch", "delete"])
def test_the_api_cannot_change_or_delete_a_version(release_manager, agent, make_version, method):
    version = make_version(agent, label="v1")
    before = snapshot(version)
    body = {**tuple_with(code={"ref": "git:evil"}), "label": "hacked", "notes": "changed"}

    response = getattr(release_manager, method)(f"/api/versions/{version.pk}/", body, format="json")

    assert response.status_code == 405
    assert snapshot(version) == before


def test_saving_an_existing_version_raises(agent, make_version):
    version = make_version(agent)
    version.code = {"ref": "git:evil"}

    with pytest.raises(ImmutableVersion):
        version.save()

    assert Version.objects.get(pk=version.pk).code != {"ref": "git:evil"}


def test_a_new_instance_with_an_existing_id_cannot_overwrite_it(agent, make_version):
    version = make_version(agent, label="v1")
    before = snapshot(version)
    impostor = Version(
        pk=version.pk,
        agent=agent,
        label="v1",
        created_at=version.created_at,
        **tuple_with(code={"ref": "git:evil"}),
    )

    with pytest.raises(ImmutableVersion):
        impostor.save()

    assert snapshot(version) == before


@pytest.mark.parametrize(
    "changes",
    [
        {"code": {"ref": "git:evil"}},
        {"prompts": {}},
        {"fingerprint": "sha256:0"},
        {"label": "renamed"},
        {"notes": "rewritten"},
        {"created_at": "2000-01-01T00:00:00Z"},
    ],
)
def test_queryset_update_of_a_version_raises(agent, make_version, changes):
    version = make_version(agent)
    before = snapshot(version)

    with pytest.raises(ImmutableVersion):
        Version.objects.filter(pk=version.pk).update(**changes)

    assert snapshot(version) == before


def test_bulk_update_of_a_version_raises(agent, make_version):
    version = make_version(agent)
    version.code = {"ref": "git:evil"}

    # bulk_update() runs in atomic(savepoint=False): give it a savepoint to abort.
    with pytest.raises(ImmutableVersion), transaction.atomic():
        Version.objects.bulk_update([version], ["code"])

    assert Version.objects.get(pk=version.pk).code != {"ref": "git:evil"}


def test_bulk_create_fingerprints_the_tuples(agent):
    Version.objects.bulk_create([Version(agent=agent, **BASE_TUPLE)])

    stored = Version.objects.get(agent=agent)
    assert stored.fingerprint == fingerprint(BASE_TUPLE)
    assert stored.layer_fingerprints == {n: layer_fingerprint(n, BASE_TUPLE[n]) for n in LAYERS}


def test_an_upsert_cannot_overwrite_a_version(agent, make_version):
    version = make_version(agent)
    before = snapshot(version)
    impostor = Version(pk=version.pk, agent=agent, **tuple_with(code={"ref": "git:evil"}))

    with pytest.raises(ImmutableVersion):
        Version.objects.bulk_create(
            [impostor], update_conflicts=True, unique_fields=["id"], update_fields=["code"]
        )

    assert snapshot(version) == before


def test_deleting_a_version_raises(agent, make_version):
    version = make_version(agent)

    with pytest.raises(ImmutableVersion):
        version.delete()
    with pytest.raises(ImmutableVersion):
        Version.objects.filter(pk=version.pk).delete()
    with pytest.raises(ImmutableVersion):
        agent.versions.all().delete()

    assert Version.objects.filter(pk=version.pk).exists()


# --- concurrency ---------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_registrations_of_one_tuple_make_one_version(agent, release_manager):
    token = ApiToken.issue(release_manager.user)
    threads = 8

    def post(_: int) -> tuple[int, Any]:
        response = token_client(token).post(url(agent), BASE_TUPLE, format="json")
        return response.status_code, response.json().get("id")

    results = race(threads, post)

    statuses = sorted(status for status, _id in results)
    assert statuses == [200] * (threads - 1) + [201]
    assert len({version_id for _status, version_id in results}) == 1
    assert Version.objects.filter(agent=agent).count() == 1
    assert AuditEntry.objects.filter(action="version.registered").count() == 1


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_registrations_racing_for_one_label_give_one_winner(agent, release_manager):
    token = ApiToken.issue(release_manager.user)
    threads = 6
    bodies = [
        {**tuple_with(code={"ref": f"git:{index:04x}"}), "label": "release-1"}
        for index in range(threads)
    ]

    def post(index: int) -> int:
        return token_client(token).post(url(agent), bodies[index], format="json").status_code

    statuses = race(threads, post)

    assert sorted(statuses) == [201] + [400] * (threads - 1)
    assert Version.objects.filter(agent=agent, label="release-1").count() == 1


def raw_with(layer: str, value: Any) -> str:
    return json.dumps({**BASE_TUPLE, layer: value})


@pytest.mark.parametrize(
    ("layer", "raw"),
    [
        ("prompts", raw_with("prompts", {"system": "a\u0000b"})),
        ("prompts", raw_with("prompts", {"sys\u0000tem": "ab"})),
        ("code", raw_with("code", {"ref": "git:1", "note": "\u0000"})),
        (
            "model",
            raw_with("model", {"provider": "p", "name": "n", "params": {"stop": ["\u0000"]}}),
        ),
        ("prompts", raw_with("prompts", {"system": "LONE"}).replace("LONE", "\\ud800")),
        ("tools", raw_with("tools", [tool(description="LONE")]).replace("LONE", "\\udfff")),
    ],
    ids=["nul in a value", "nul in a key", "nul in code", "nul in a list", "surrogate", "tool"],
)
def test_text_the_database_cannot_store_is_400_naming_the_layer(release_manager, agent, layer, raw):
    response = release_manager.post(url(agent), raw, content_type="application/json")

    assert error_at(response, layer)
    assert not Version.objects.exists()


def test_more_than_128_tools_is_400(release_manager, agent):
    tools = [tool(name=f"tool_{i}") for i in range(129)]

    response = register(release_manager, agent, tuple_with(tools=tools))

    assert "128" in str(error_at(response, "tools"))


def test_128_tools_are_accepted(release_manager, agent):
    tools = [tool(name=f"tool_{i}") for i in range(128)]

    assert register(release_manager, agent, tuple_with(tools=tools)).status_code == 201


def test_more_than_64_prompt_parts_is_400(release_manager, agent):
    prompts = {f"part_{i}": "text" for i in range(65)}

    response = register(release_manager, agent, tuple_with(prompts=prompts))

    assert "64" in str(error_at(response, "prompts"))


def test_listing_versions_costs_the_same_queries_for_one_or_many(viewer, agent, make_version):
    make_version(agent)
    with CaptureQueriesContext(connection) as one:
        assert viewer.get(url(agent)).status_code == 200
    for _ in range(5):
        make_version(agent)
    with CaptureQueriesContext(connection) as six:
        assert len(viewer.get(url(agent)).json()) == 6

    assert len(six.captured_queries) == len(one.captured_queries)

"""The OpenAPI schema is a true contract: every answer the API really sends validates
against the response the schema documents for it, and every field it carries is
described (controlplane/schema.py and the views' ``extend_schema``)."""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

import jsonschema
import pytest
from django.utils import timezone

from controlplane import health
from events.models import Delivery
from rollouts.models import Session
from tests.conftest import tuple_with

SLUG = "research"
VERBS = ("get", "post", "put", "patch", "delete")


@pytest.fixture
def schema(anonymous, db) -> dict[str, Any]:
    response = anonymous.get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    return response.json()


def as_json_schema(node: Any) -> Any:
    """OpenAPI 3.0 schema objects as JSON Schema: ``nullable`` becomes a null branch, and
    an object that lists its properties allows no others, so an undocumented field in
    an answer fails validation instead of passing unseen."""
    if isinstance(node, list):
        return [as_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: as_json_schema(value) for key, value in node.items()}
    if "properties" in node and "additionalProperties" not in node:
        node["additionalProperties"] = False
    if node.pop("nullable", False):
        return {"anyOf": [node, {"type": "null"}]}
    return node


def resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while True:
        if "$ref" in node:
            node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[-1]]
        elif len(node.get("allOf", ())) == 1:
            node = node["allOf"][0]
        else:
            return node


def documented(schema: dict[str, Any], path: str, method: str, status: int) -> dict[str, Any]:
    answer = schema["paths"][path][method]["responses"][str(status)]
    return answer["content"]["application/json"]["schema"]


def mismatch(schema: dict[str, Any], path: str, method: str, status: int, body: Any) -> str:
    """Why ``body`` does not fit the documented answer, or "" if it does."""
    if str(status) not in schema["paths"][path][method]["responses"]:
        return f"{method.upper()} {path} answers {status}, which the schema does not document"
    node = documented(schema, path, method, status)
    top = resolve(schema, node)
    if top.get("type") == "array":
        top = resolve(schema, top["items"])
    if "properties" not in top:
        return f"{method.upper()} {path} {status}: the schema does not describe the body"
    document = {**as_json_schema(node), "components": as_json_schema(schema["components"])}
    errors = sorted(
        jsonschema.Draft7Validator(document).iter_errors(body), key=lambda e: list(e.path)
    )
    return "; ".join(
        f"{method.upper()} {path} {status} at /{'/'.join(map(str, e.path))}: {e.message}"
        for e in errors[:5]
    )


@pytest.fixture
def exchanges(agent, make_version, release_manager, harness, viewer):
    """Real requests to every JSON endpoint: ``(path template, method, response)``.

    The world has a draining version (so the fleet shows a drain), a session told to
    drain, an ended one, a rollout, and a diff that touches every layer.
    """
    seen: list[tuple[str, str, Any]] = []

    def call(client, method: str, template: str, url: str, body: Any = None):
        kwargs = {} if body is None else {"data": body, "format": "json"}
        response = getattr(client, method)(url, **kwargs)
        assert response.status_code < 300, (method, url, response.content)
        seen.append((template, method, response))
        return response.json()

    agents = "/api/agents/"
    one = f"/api/agents/{SLUG}/"
    call(release_manager, "post", "/api/agents/", agents, {"slug": "other", "name": "Other"})
    call(viewer, "get", "/api/agents/", agents)
    call(viewer, "get", "/api/agents/{slug}/", one)
    call(release_manager, "patch", "/api/agents/{slug}/", one, {"name": "Research"})
    hooks = f"{one}webhooks/"
    hook = {"url": "https://93.184.215.14/prism", "events": [], "description": "chat"}
    webhook = call(release_manager, "post", "/api/agents/{slug}/webhooks/", hooks, hook)
    call(viewer, "get", "/api/agents/{slug}/webhooks/", hooks)
    hook_url = f"/api/webhooks/{webhook['id']}/"
    call(viewer, "get", "/api/webhooks/{id}/", hook_url)

    versions = f"{one}versions/"
    v1 = call(release_manager, "post", "/api/agents/{slug}/versions/", versions, tuple_with())
    call(release_manager, "post", "/api/agents/{slug}/versions/", versions, tuple_with())
    changed = tuple_with(
        code={"ref": "git:feedface", "image": "prism:2"},
        model={"provider": "openai", "name": "gpt", "params": {"temperature": 0.7}},
        prompts={"system": "Be brief.", "few_shot": "Q: 1\nA: 2"},
        tools=[
            {
                "name": "search",
                "description": "Search the web, carefully",
                "input_schema": {
                    "type": "object",
                    "properties": {"query": {"type": "integer"}, "n": {"type": "integer"}},
                    "required": ["query", "n"],
                },
            },
            {"name": "fetch", "description": "Fetch", "input_schema": {"type": "object"}},
        ],
    )
    v2 = call(release_manager, "post", "/api/agents/{slug}/versions/", versions, changed)
    call(viewer, "get", "/api/agents/{slug}/versions/", versions)
    call(viewer, "get", "/api/versions/{id}/", f"/api/versions/{v2['id']}/")
    call(
        viewer,
        "get",
        "/api/versions/{id}/diff/",
        f"/api/versions/{v2['id']}/diff/?against={v1['id']}",
    )

    stable = f"{one}stable/"
    call(release_manager, "post", "/api/agents/{slug}/stable/", stable, {"version": v1["id"]})
    sessions = f"{one}sessions/"
    for session_id in ("old-1", "old-2", "ended"):
        call(harness, "post", "/api/agents/{slug}/sessions/", sessions, {"session_id": session_id})
    call(harness, "post", "/api/agents/{slug}/sessions/", sessions, {"session_id": "old-1"})
    # v1 loses its weight with live sessions: it drains, and old-1 is past its age.
    call(release_manager, "post", "/api/agents/{slug}/stable/", stable, {"version": v2["id"]})
    Session.objects.filter(session_id="old-1").update(
        started_at=timezone.now() - timedelta(days=30)
    )
    beat = "/api/agents/{slug}/sessions/{session_id}/heartbeat/"
    call(harness, "post", beat, f"{sessions}old-1/heartbeat/", {})
    call(harness, "post", beat, f"{sessions}old-2/heartbeat/", {})
    end = "/api/agents/{slug}/sessions/{session_id}/end/"
    outcome = {"success": True, "error": False, "latency_ms": 900, "cost_usd": 0.01}
    call(harness, "post", end, f"{sessions}ended/end/", {"outcome": outcome})
    call(harness, "post", end, f"{sessions}ended/end/", {"outcome": outcome})
    feedback = "/api/agents/{slug}/sessions/{session_id}/feedback/"
    call(harness, "post", feedback, f"{sessions}ended/feedback/", {"feedback": -0.5})

    # v1 is draining with old-2 live: a release manager force-drains it by hand.
    call(
        release_manager,
        "post",
        "/api/versions/{id}/drain/",
        f"/api/versions/{v1['id']}/drain/",
        {"reason": "schema check"},
    )

    sources = f"{one}sources/"
    export = {"kind": "http_json", "url": "https://platform.example/export", "name": "export"}
    source = call(release_manager, "post", "/api/agents/{slug}/sources/", sources, export)
    call(viewer, "get", "/api/agents/{slug}/sources/", sources)
    source_url = f"/api/sources/{source['id']}/"
    call(viewer, "get", "/api/sources/{id}/", source_url)
    call(release_manager, "patch", "/api/sources/{id}/", source_url, {"name": "the export"})
    health.record_tick()
    call(viewer, "get", "/api/health/", "/api/health/")

    call(harness, "get", "/api/agents/{slug}/routing/", f"{one}routing/")
    call(viewer, "get", "/api/agents/{slug}/fleet/", f"{one}fleet/")
    call(
        viewer,
        "get",
        "/api/agents/{slug}/forecast/",
        f"{one}forecast/?deploy_every_h=6&max_session_age_s=7200&max_live_versions=3",
    )

    v3 = make_version(agent, "v3")
    rollouts = f"{one}rollouts/"
    rollout = call(
        release_manager,
        "post",
        "/api/agents/{slug}/rollouts/",
        rollouts,
        {
            "candidate": v3.pk,
            "stages": [{"percent": 10}, {"percent": 50}, {"percent": 100}],
            "gates": [{"metric": "error_rate", "max_increase": 0.05}],
        },
    )
    call(viewer, "get", "/api/agents/{slug}/rollouts/", rollouts)
    detail = f"/api/rollouts/{rollout['id']}/"
    call(viewer, "get", "/api/rollouts/{id}/", detail)
    call(viewer, "get", "/api/rollouts/{id}/evaluations/", f"{detail}evaluations/")
    for action in ("evaluate", "pause", "resume", "advance", "rollback"):
        call(release_manager, "post", f"/api/rollouts/{{id}}/{action}/", f"{detail}{action}/", {})
    call(release_manager, "post", "/api/agents/{slug}/rollback/", f"{one}rollback/", {})
    call(release_manager, "patch", "/api/webhooks/{id}/", hook_url, {"events": ["version.drained"]})
    deliveries = call(viewer, "get", "/api/webhooks/{id}/deliveries/", f"{hook_url}deliveries/")
    failed = deliveries["results"][0]["id"]
    Delivery.objects.filter(pk=failed).update(status="failed", attempts=8, last_status_code=500)
    redeliver = "/api/deliveries/{id}/redeliver/"
    call(release_manager, "post", redeliver, f"/api/deliveries/{failed}/redeliver/", {})
    call(viewer, "get", "/api/audit/", f"/api/audit/?agent={SLUG}")
    response = release_manager.delete(hook_url)
    assert response.status_code == 204
    seen.append(("/api/webhooks/{id}/", "delete", response))
    response = release_manager.delete(source_url)
    assert response.status_code == 204
    seen.append(("/api/sources/{id}/", "delete", response))
    return seen


def test_every_answer_matches_the_schema_and_is_described_by_it(schema, exchanges):
    problems = [
        mismatch(schema, template, method, response.status_code, response.json())
        for template, method, response in exchanges
        if response.status_code != 204  # no content, nothing to validate
    ]

    assert [p for p in problems if p] == [], "\n".join(p for p in problems if p)


def test_the_exchanges_reach_every_json_endpoint_the_schema_lists(schema, exchanges):
    """A documented operation with no real request above would escape the check."""
    listed = {
        (path, method)
        for path, operations in schema["paths"].items()
        for method in operations
        if method in VERBS and path not in ("/api/schema/",)
    }
    reached = {(template, method) for template, method, _response in exchanges}

    assert listed - reached == set()


def test_no_json_answer_is_documented_as_a_bare_object(schema):
    bare = []
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if method not in VERBS:
                continue
            for status, answer in operation.get("responses", {}).items():
                body = answer.get("content", {}).get("application/json", {}).get("schema")
                if body is None or not status.startswith("2"):
                    continue
                top = resolve(schema, body)
                if top.get("type") == "array":
                    top = resolve(schema, top["items"])
                if "properties" not in top:
                    bare.append(f"{method.upper()} {path} {status}")

    assert bare == []


def test_the_validation_refuses_an_undocumented_field(schema, exchanges):
    """The check above is not vacuous: an extra field in a real answer fails it."""
    template, method, response = next(e for e in exchanges if e[0] == "/api/agents/{slug}/")
    body = copy.deepcopy(response.json())
    body["surprise"] = 1

    assert "surprise" in mismatch(schema, template, method, response.status_code, body)


def test_the_schema_names_the_three_directives(schema):
    body = documented(schema, "/api/agents/{slug}/sessions/{session_id}/heartbeat/", "post", 200)
    directive = resolve(schema, resolve(schema, body)["properties"]["directive"])

    assert directive["enum"] == ["continue", "drain", "terminate"]

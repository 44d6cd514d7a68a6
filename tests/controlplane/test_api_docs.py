"""The OpenAPI schema at /api/schema/ and the docs UI at /api/docs/ (the README's API section)."""

from __future__ import annotations

import re

import pytest
from django.contrib.staticfiles import finders
from drf_spectacular.drainage import GENERATOR_STATS
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.validation import validate_schema

# path: the verbs it must have, and those it must not (versions are immutable).
CONTRACT_PATHS = {
    "/api/agents/": ({"get", "post"}, set()),
    "/api/agents/{slug}/": ({"get", "patch"}, {"delete"}),
    "/api/agents/{slug}/versions/": ({"get", "post"}, {"put", "patch", "delete"}),
    "/api/versions/{id}/": ({"get"}, {"put", "patch", "delete", "post"}),
    "/api/versions/{id}/diff/": ({"get"}, {"post"}),
    "/api/audit/": ({"get"}, {"post"}),
}
# Modules whose endpoints must describe themselves without warnings.
FOUNDATION = ("versions/", "controlplane/", "rollouts/")
VERBS = {"get", "post", "put", "patch", "delete"}


@pytest.fixture
def schema(anonymous, db) -> dict:
    response = anonymous.get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    return response.json()


def test_the_schema_renders_as_yaml_by_default(anonymous, db):
    response = anonymous.get("/api/schema/")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/vnd.oai.openapi")
    assert b"openapi: 3" in response.content
    assert b"/api/agents/{slug}/versions/:" in response.content


def test_the_schema_names_the_contract_paths_and_verbs(schema):
    for path, (present, absent) in CONTRACT_PATHS.items():
        assert path in schema["paths"], path
        verbs = set(schema["paths"][path]) & VERBS
        assert present <= verbs, (path, verbs)
        assert not absent & verbs, (path, verbs)


def test_the_schema_documents_the_query_parameters(schema):
    diff = {p["name"]: p for p in schema["paths"]["/api/versions/{id}/diff/"]["get"]["parameters"]}
    audit = {p["name"] for p in schema["paths"]["/api/audit/"]["get"]["parameters"]}

    assert diff["against"]["required"] is True
    assert diff["against"]["in"] == "query"
    assert "agent" in audit


def test_the_schema_documents_the_version_body(schema):
    post = schema["paths"]["/api/agents/{slug}/versions/"]["post"]
    ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    body = schema["components"]["schemas"][ref.rsplit("/", 1)[-1]]

    assert {"code", "model", "prompts", "tools"} <= set(body["required"])
    assert {"label", "notes"} <= set(body["properties"])
    assert not {"id", "fingerprint", "created_at"} & set(body["properties"])


def test_the_schema_documents_token_authentication(schema):
    schemes = schema["components"]["securitySchemes"]

    assert {"type": "apiKey", "in": "header", "name": "Authorization"}.items() <= schemes[
        "tokenAuth"
    ].items()
    assert {"tokenAuth": []} in schema["paths"]["/api/agents/"]["get"]["security"]


def test_the_schema_is_valid_openapi(schema):
    validate_schema(schema)


def test_the_foundation_endpoints_describe_themselves_without_warnings(db):
    GENERATOR_STATS.reset()
    with GENERATOR_STATS.silence():
        SchemaGenerator().get_schema(request=None, public=True)
    messages = [*GENERATOR_STATS._warn_cache, *GENERATOR_STATS._error_cache]
    GENERATOR_STATS.reset()

    ours = [m for m in messages if any(module in m for module in FOUNDATION)]
    assert ours == []


def test_the_docs_render_without_any_external_url(anonymous, db):
    response = anonymous.get("/api/docs/")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    html = response.content.decode()
    assert 'id="swagger-ui"' in html
    assert re.findall(r"(?:https?:)?//[\w.-]+\.\w+", html) == []
    assert '"/api/schema/"' in html


def test_the_docs_assets_are_served_from_static(anonymous, db):
    html = anonymous.get("/api/docs/").content.decode()

    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert len(assets) >= 3  # css, bundle, preset
    for asset in assets:
        assert asset.startswith("/static/"), asset
        assert finders.find(asset.removeprefix("/static/")), f"{asset} is not shipped"


def test_the_docs_do_not_call_the_online_validator(anonymous, db):
    """Swagger UI's default validator badge would send the schema URL to swagger.io."""
    html = anonymous.get("/api/docs/").content.decode()

    assert '"validatorUrl": null' in html

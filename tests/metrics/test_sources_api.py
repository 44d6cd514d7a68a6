"""``GET, POST /api/agents/{slug}/sources/`` and ``GET, PATCH, DELETE /api/sources/{id}/``:
who may do what, what is refused (400), and the audit trail."""

from __future__ import annotations

import pytest
from django.utils import timezone

from metrics.models import MetricSource
from versions.models import AuditEntry

pytestmark = pytest.mark.django_db

PROM = {
    "kind": "prometheus",
    "url": "http://prometheus.internal:9090",
    "config": {
        "metrics": {
            "error_rate": {
                "n": 'sum(sessions_total{version="{version}"})',
                "total": 'sum(session_errors_total{version="{version}"})',
            }
        }
    },
}
EXPORT = {"kind": "http_json", "url": "https://platform.example/export?team=a", "name": "export"}


def create(client, agent, body=EXPORT):
    return client.post(f"/api/agents/{agent.slug}/sources/", body, format="json")


@pytest.fixture
def source(agent):
    return MetricSource.objects.create(agent=agent, kind="http_json", url="http://x.example/e")


def test_a_release_manager_adds_a_source_and_it_is_audited(release_manager, agent):
    response = create(release_manager, agent, PROM)
    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["agent"], body["kind"], body["url"]) == (agent.slug, "prometheus", PROM["url"])
    assert body["config"] == PROM["config"]
    assert body["enabled"] is True
    assert body["status"]["consecutive_errors"] == 0
    assert body["status"]["unknown_sessions"] == {"count": 0, "recent": []}
    entry = AuditEntry.objects.get(action="source.created")
    assert (entry.actor, entry.agent_id, entry.object_id) == (
        release_manager.user.username,
        agent.pk,
        str(body["id"]),
    )
    assert entry.after["url"] == PROM["url"]


def test_viewers_read_sources(viewer, agent, source):
    listed = viewer.get(f"/api/agents/{agent.slug}/sources/")
    assert listed.status_code == 200
    assert [s["id"] for s in listed.json()] == [source.pk]
    assert viewer.get(f"/api/sources/{source.pk}/").json()["url"] == "http://x.example/e"


@pytest.mark.parametrize("role", ["viewer", "harness", "outsider"])
def test_only_release_managers_write(request, role, agent, source):
    client = request.getfixturevalue(role)
    assert create(client, agent).status_code == 403
    assert (
        client.patch(f"/api/sources/{source.pk}/", {"name": "x"}, format="json").status_code == 403
    )
    assert client.delete(f"/api/sources/{source.pk}/").status_code == 403
    assert MetricSource.objects.count() == 1
    assert not AuditEntry.objects.filter(action__startswith="source.").exists()


@pytest.mark.parametrize("role", ["harness", "outsider"])
def test_harnesses_and_outsiders_cannot_read(request, role, agent, source):
    client = request.getfixturevalue(role)
    assert client.get(f"/api/agents/{agent.slug}/sources/").status_code == 403
    assert client.get(f"/api/sources/{source.pk}/").status_code == 403


def test_anonymous_gets_401(anonymous, agent, source):
    assert anonymous.get(f"/api/agents/{agent.slug}/sources/").status_code == 401
    assert anonymous.get(f"/api/sources/{source.pk}/").status_code == 401


@pytest.mark.parametrize(
    "url",
    [
        "ftp://platform.example/export",
        "file:///etc/passwd",
        "gopher://platform.example/",
        "javascript:alert(1)",
        "//platform.example/export",
        "http://",
        "http://user:secret@platform.example/export",
        "http://platform.example/ex port",
        "http://platform.example:99999/",
        "http://platform.example/\x00",
        "",
        123,
    ],
)
def test_urls_other_than_http_and_https_are_refused(release_manager, agent, url):
    response = create(release_manager, agent, {**EXPORT, "url": url})
    assert response.status_code == 400
    assert "url" in response.json()
    assert not MetricSource.objects.exists()


Q = "sum(s{v='{version}'})"  # a query that names the version


def only(metric: str, **queries: str) -> dict:
    return {"metrics": {metric: queries}}


@pytest.mark.parametrize(
    ("config", "field", "words"),
    [
        ({}, "config", "metrics"),
        ({"metrics": {}}, "config.metrics", "1 to"),
        (only("error_rate", total=Q), "config.metrics.error_rate", "No n"),
        (only("error_rate", ratio=Q), "config.metrics.error_rate", "ratio"),
        (only("error_rate", n=Q), "config.metrics.error_rate", "No total"),
        (only("latency_ms", n=Q, total=Q), "config.metrics.latency_ms", "total_sq"),
        (only("error_rate", n="sum(s)", total=Q), "config.metrics.error_rate.n", "the version"),
        (only("vibes", n=Q, total=Q), "config.metrics.vibes", "Unknown metric"),
        (only("error_rate", n="", total=Q), "config.metrics.error_rate.n", "PromQL"),
        ({"metrics": [], "extra": 1}, "config", "Expected"),
    ],
)
def test_a_prometheus_config_that_cannot_give_counts_is_refused(
    release_manager, agent, config, field, words
):
    response = create(release_manager, agent, {**PROM, "config": config})
    assert response.status_code == 400
    assert words in response.json()[field][0]


def test_http_json_takes_no_options(release_manager, agent):
    response = create(release_manager, agent, {**EXPORT, "config": {"headers": {"x": "y"}}})
    assert response.status_code == 400
    assert "headers" in response.json()["config"][0]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**EXPORT, "kind": "statsd"}, "kind"),
        ({**EXPORT, "status": {}}, "status"),
        ({**EXPORT, "consecutive_errors": 0}, "consecutive_errors"),
        ({**EXPORT, "timeout_s": 0}, "timeout_s"),
        ({**EXPORT, "timeout_s": 31}, "timeout_s"),
        ({**EXPORT, "name": "x" * 101}, "name"),
        ({"url": EXPORT["url"]}, "kind"),
    ],
)
def test_bad_fields_are_refused(release_manager, agent, body, field):
    response = create(release_manager, agent, body)
    assert response.status_code == 400
    assert field in response.json()


def test_a_body_that_is_not_an_object_is_refused(release_manager, agent):
    response = release_manager.post(f"/api/agents/{agent.slug}/sources/", [1], format="json")
    assert response.status_code == 400


def test_an_unknown_agent_or_source_is_404(release_manager, viewer, agent):
    assert create(release_manager, agent).status_code == 201
    assert viewer.get("/api/agents/nobody/sources/").status_code == 404
    assert viewer.get("/api/sources/999999/").status_code == 404
    assert release_manager.delete("/api/sources/999999/").status_code == 404


def test_a_patch_changes_what_it_names_and_keeps_the_polling_state(release_manager, source):
    now = timezone.now()
    MetricSource.objects.filter(pk=source.pk).update(
        cursor="c42", recorded_count=7, consecutive_errors=2, last_polled_at=now
    )
    response = release_manager.patch(
        f"/api/sources/{source.pk}/",
        {"name": "renamed", "enabled": False, "url": "https://y.example/e"},
        format="json",
    )
    assert response.status_code == 200, response.json()
    source.refresh_from_db()
    assert (source.name, source.enabled, source.url) == ("renamed", False, "https://y.example/e")
    assert (source.cursor, source.recorded_count, source.consecutive_errors) == ("c42", 7, 2)
    entry = AuditEntry.objects.get(action="source.updated")
    assert (entry.before["name"], entry.after["name"]) == ("", "renamed")
    assert (entry.before["enabled"], entry.after["enabled"]) == (True, False)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "ftp://y.example/"}, "url"),
        ({"kind": "prometheus"}, "kind"),
        ({"config": {"x": 1}}, "config"),
        ({"cursor": ""}, "cursor"),
    ],
)
def test_a_patch_is_checked_like_a_create(release_manager, source, body, field):
    response = release_manager.patch(f"/api/sources/{source.pk}/", body, format="json")
    assert response.status_code == 400
    assert field in response.json()
    source.refresh_from_db()
    assert (source.url, source.kind, source.config) == ("http://x.example/e", "http_json", {})
    assert not AuditEntry.objects.filter(action="source.updated").exists()


def test_a_prometheus_patch_revalidates_the_stored_config(release_manager, agent):
    created = create(release_manager, agent, PROM).json()
    url = f"/api/sources/{created['id']}/"
    assert release_manager.patch(url, {"url": "http://p2:9090"}, format="json").status_code == 200
    bad = {"config": {"metrics": {"error_rate": {"n": "sum(s)", "total": "sum(e)"}}}}
    assert release_manager.patch(url, bad, format="json").status_code == 400
    assert MetricSource.objects.get(pk=created["id"]).config == PROM["config"]


def test_delete_removes_the_source_and_is_audited(release_manager, source):
    response = release_manager.delete(f"/api/sources/{source.pk}/")
    assert response.status_code == 204
    assert not MetricSource.objects.exists()
    entry = AuditEntry.objects.get(action="source.deleted")
    assert entry.before["url"] == "http://x.example/e"
    assert entry.object_id == str(source.pk)


def test_the_schema_describes_the_source_endpoints(anonymous):
    schema = anonymous.get("/api/schema/?format=json").json()
    assert {"get", "post"} <= set(schema["paths"]["/api/agents/{slug}/sources/"])
    assert {"get", "patch", "delete"} <= set(schema["paths"]["/api/sources/{id}/"])

"""GET /metrics in one process: who may read it, what it says about the fleet (the same
figures as GET /api/agents/{slug}/fleet/), and what a scrape costs the database."""

from __future__ import annotations

import hmac
import math
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

import events
from controlplane.health import record_tick
from events.models import Delivery, DeliveryCount, Webhook
from rollouts import engine, exposition, sessions
from rollouts.models import Rollout
from tests.rollouts.conftest import set_weights, start_rollout
from versions.models import Agent, Version

TOKEN = "metrics-token-for-the-tests-0123"
OUTSIDE = "203.0.113.7"  # TEST-NET-3: in no allowed network
START = "/api/agents/{slug}/sessions/"
END = "/api/agents/{slug}/sessions/{sid}/end/"


def samples(response) -> dict[tuple, float]:
    """{(name, sorted labels): value} of an exposition."""
    assert response.status_code == 200, response.content
    found = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def scrape(client) -> dict[tuple, float]:
    return samples(client.get("/metrics"))


def value(found: dict[tuple, float], name: str, **labels: str) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


def one_hot(found: dict[tuple, float], name: str, key: str, **labels: str) -> dict[str, float]:
    """{value of label ``key``: sample} of the samples of ``name`` matching ``labels``."""
    return {dict(k[1])[key]: v for k, v in of(found, name, **labels).items()}


def of(found: dict[tuple, float], name: str, **labels: str) -> dict[tuple, float]:
    """The samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return {key: v for key, v in found.items() if key[0] == name and wanted <= set(key[1])}


@pytest.fixture
def token(settings):
    settings.PRISM_METRICS_TOKEN = TOKEN
    return TOKEN


# --- who may read it -------------------------------------------------------------------


def test_it_answers_a_scrape_with_the_token_from_anywhere(client, db, token):
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {token}", REMOTE_ADDR=OUTSIDE)

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    assert response["Cache-Control"] == "no-store"
    assert value(samples(response), "prism_up") == 1


def test_without_the_token_it_is_401_from_outside_the_allowed_networks(client, db, token):
    response = client.get("/metrics", REMOTE_ADDR=OUTSIDE)

    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert "token" in response.json()["detail"]


@pytest.mark.parametrize(
    "header",
    [
        f"Bearer {TOKEN[:-1]}x",  # one character off
        f"Bearer {TOKEN}{TOKEN}",  # longer
        "Bearer x",
        f"Token {TOKEN}",  # the API's scheme, not this one
        "Bearer ",
        "Bearer \u00e9\u00e8\u4e2d",  # not ASCII: refused, not a 500
    ],
)
def test_a_wrong_token_is_401_even_from_an_allowed_network(client, db, token, header):
    response = client.get("/metrics", HTTP_AUTHORIZATION=header)  # from 127.0.0.1

    assert response.status_code == 401
    assert response["Content-Type"] == "application/json"
    assert b"prism_" not in response.content


def test_a_token_is_refused_when_none_is_configured(client, db, settings):
    settings.PRISM_METRICS_TOKEN = ""

    response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer ")

    assert response.status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer anything-at-all").status_code == 401


def test_loopback_may_read_without_a_token_by_default(client, db, token):
    assert client.get("/metrics").status_code == 200  # the test client is 127.0.0.1
    assert client.get("/metrics", REMOTE_ADDR="::1").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="::ffff:127.0.0.1").status_code == 200


def test_an_allowed_network_may_read_without_a_token(client, db, settings):
    settings.PRISM_METRICS_TOKEN = ""
    settings.PRISM_METRICS_ALLOW_NETWORKS = ["10.20.0.0/16", "2001:db8::/32"]

    assert client.get("/metrics", REMOTE_ADDR="10.20.3.4").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="2001:db8::5").status_code == 200
    refused = client.get("/metrics", REMOTE_ADDR="10.21.0.1")
    assert refused.status_code == 403
    assert "PRISM_METRICS_ALLOW_NETWORKS" in refused.json()["detail"]
    assert client.get("/metrics").status_code == 403  # loopback is no longer listed


def test_an_empty_allow_list_needs_the_token_even_on_loopback(client, db, settings, token):
    settings.PRISM_METRICS_ALLOW_NETWORKS = []

    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 200


@pytest.mark.parametrize(
    "header",
    ["HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP"],
)
def test_a_request_through_a_proxy_does_not_count_as_from_the_proxys_network(
    client, db, token, header
):
    """A proxy on the same machine makes every client look like 127.0.0.1."""
    response = client.get("/metrics", **{header: "198.51.100.23"})

    assert response.status_code == 401
    assert (
        client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {token}", **{header: "x"}).status_code
        == 200
    )


def test_the_token_is_compared_in_constant_time_over_fixed_length_digests(
    client, db, token, monkeypatch
):
    """Equality by ``==`` stops at the first differing character, and a length check
    first tells the length: every comparison goes through ``hmac.compare_digest``, on
    two SHA-256 digests, whatever was presented."""
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a, b):
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(exposition.hmac, "compare_digest", spy)
    for presented in ("x", TOKEN[:-1] + "x", TOKEN * 3, TOKEN):
        client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {presented}", REMOTE_ADDR=OUTSIDE)

    assert len(compared) == 4
    assert all(len(a) == len(b) == 32 for a, b in compared)
    assert [real(a, b) for a, b in compared] == [False, False, False, True]


def test_only_get_is_served(client, db):
    response = client.post("/metrics", {}, content_type="application/json")

    assert response.status_code == 405
    assert response["Allow"] == "GET"
    assert response.json()["detail"] == 'Method "POST" not allowed.'


def test_a_scrape_needs_no_api_token_and_is_not_in_the_api_schema(anonymous, db):
    assert anonymous.get("/metrics").status_code == 200
    schema = anonymous.get("/api/schema/", {"format": "json"}).json()
    assert not [path for path in schema["paths"] if "metrics" in path.split("/")]


# --- what it says ----------------------------------------------------------------------


def start(client, slug: str, sid: str) -> None:
    response = client.post(START.format(slug=slug), {"session_id": sid}, format="json")
    assert response.status_code in (200, 201), response.content


def end(client, slug: str, sid: str) -> None:
    response = client.post(END.format(slug=slug, sid=sid), {}, format="json")
    assert response.status_code == 200


def fleet(client, slug: str) -> list[dict]:
    response = client.get(f"/api/agents/{slug}/fleet/")
    assert response.status_code == 200
    return response.json()["versions"]


def busy_fleet(agent: Agent, make_version, harness, actor) -> None:
    """Two drained versions (one past ``retain_drained``), one draining part-way, one
    active with sessions, one never routed."""
    agent.retain_drained = 1
    agent.save(update_fields=["retain_drained"])
    old = [make_version(agent, f"old-{i}") for i in range(2)]
    for i, version in enumerate(old):
        engine.set_stable(agent, version, actor=actor)
        start(harness, agent.slug, f"old-{i}")
        end(harness, agent.slug, f"old-{i}")
    draining = make_version(agent, "draining")
    engine.set_stable(agent, draining, actor=actor)
    for i in range(3):
        start(harness, agent.slug, f"d-{i}")
    active = make_version(agent, "active")
    engine.set_stable(agent, active, actor=actor)
    end(harness, agent.slug, "d-0")
    for i in range(2):
        start(harness, agent.slug, f"a-{i}")
    make_version(agent, "never-routed")


def test_its_fleet_figures_are_the_fleet_endpoints(
    client, db, agent, make_version, harness, viewer, actor
):
    busy_fleet(agent, make_version, harness, actor)
    other = Agent.objects.create(slug="support", name="Support")
    v = make_version(other, "s1")
    engine.set_stable(other, v, actor=actor)
    start(harness, "support", "s-0")

    found = scrape(client)

    for slug in ("research", "support"):
        rows = fleet(viewer, slug)
        listed = {labels for name, labels in of(found, "prism_live_sessions", agent=slug)}
        assert listed == {(("agent", slug), ("version", str(row["id"]))) for row in rows}
        for row in rows:
            labels = {"agent": slug, "version": str(row["id"])}
            assert value(found, "prism_live_sessions", **labels) == row["live_sessions"]
            assert value(found, "prism_version_weight_ratio", **labels) == row["weight"] / 10000
            states = one_hot(found, "prism_version_state", "state", **labels)
            assert states == {s: int(s == row["state"]) for s in exposition.VERSION_STATES}
            assert value(found, "prism_drain_progress", **labels) == row["drain"]["progress"]
    research = {row["label"]: row for row in fleet(viewer, "research")}
    # The case the fleet and this must agree on beyond the plain ones.
    assert set(research) == {"old-1", "draining", "active", "never-routed"}
    assert research["draining"]["drain"]["progress"] == pytest.approx(1 / 3, abs=1e-4)
    assert Version.objects.filter(agent=agent).count() == 5


def test_the_live_figures_follow_the_sessions(client, db, agent, make_version, harness, actor):
    v1 = make_version(agent, "v1")
    engine.set_stable(agent, v1, actor=actor)
    labels = {"agent": agent.slug, "version": str(v1.pk)}
    assert value(scrape(client), "prism_live_sessions", **labels) == 0

    for i in range(4):
        start(harness, agent.slug, f"s{i}")
    assert value(scrape(client), "prism_live_sessions", **labels) == 4
    end(harness, agent.slug, "s0")
    assert value(scrape(client), "prism_live_sessions", **labels) == 3


def test_it_reports_the_latest_rollout_its_gates_and_sample_ratio(
    client, db, agent, v1, v2, release_manager
):
    rollout = start_rollout(
        agent,
        v2,
        stages=[{"percent": 25, "min_duration_s": 3600}, {"percent": 100}],
        gates=[
            {"metric": "error_rate", "max_increase": 0.05},
            {"metric": "latency_ms", "stat": "p95", "max_relative_change": 0.2},
        ],
    )
    engine.evaluate(rollout.pk)
    labels = {"agent": agent.slug, "rollout": str(rollout.pk)}

    found = scrape(client)

    assert value(found, "prism_rollout_stage_percent", **labels) == 25
    assert one_hot(found, "prism_rollout_state", "state", **labels) == {
        "running": 1, "paused": 0, "halted": 0, "promoted": 0, "rolled_back": 0, "superseded": 0
    }  # fmt: skip
    verdicts = release_manager.get(f"/api/rollouts/{rollout.pk}/").json()["gate_verdicts"]
    assert len(verdicts) == 2
    for gate in verdicts:
        verdict = one_hot(
            found, "prism_gate_verdict", "verdict", gate=gate["metric"], stat=gate["stat"], **labels
        )
        assert verdict == {v: int(v == gate["verdict"]) for v in exposition.GATE_VERDICTS}
    assert value(found, "prism_sample_ratio_ok", **labels) == 1

    response = release_manager.post(
        f"/api/rollouts/{rollout.pk}/rollback/", {"reason": "test"}, format="json"
    )
    assert response.status_code == 200
    found = scrape(client)
    assert value(found, "prism_rollout_state", state="rolled_back", **labels) == 1
    assert value(found, "prism_rollout_state", state="running", **labels) == 0


def test_a_sample_ratio_mismatch_reads_as_not_ok(client, db, agent, v1, v2):
    rollout = start_rollout(agent, v2, stages=[{"percent": 50}, {"percent": 100}])
    engine.evaluate(rollout.pk)
    report = Rollout.objects.get(pk=rollout.pk).last_evaluation
    report["srm"]["verdict"] = "mismatch"
    Rollout.objects.filter(pk=rollout.pk).update(last_evaluation=report)

    found = scrape(client)

    assert value(found, "prism_sample_ratio_ok", agent=agent.slug, rollout=str(rollout.pk)) == 0


def test_it_reports_the_beats_lag(client, db):
    assert value(scrape(client), "prism_beat_lag_seconds") == math.inf  # never ticked

    record_tick(timezone.now() - timedelta(seconds=42))
    lag = value(scrape(client), "prism_beat_lag_seconds")

    assert 42 <= lag < 42 + 30


def test_a_database_that_cannot_be_read_gives_up_0_and_still_answers(client, db, agent):
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE controlplane_beattick RENAME TO beattick_away")

    response = client.get("/metrics")

    found = samples(response)
    assert value(found, "prism_up") == 0
    assert not of(found, "prism_live_sessions")
    # The process-local series still go out.
    assert b"# TYPE prism_assignment_seconds histogram" in response.content


def test_it_counts_assignments_by_version_and_outcome(
    client, db, agent, make_version, harness, actor
):
    v1 = make_version(agent, "v1")
    engine.set_stable(agent, v1, actor=actor)
    labels = {"agent": agent.slug, "version": str(v1.pk)}

    def counted(outcome: str) -> float:
        return (
            REGISTRY.get_sample_value("prism_assignments_total", {**labels, "outcome": outcome})
            or 0
        )

    def timed() -> float:
        return (
            REGISTRY.get_sample_value("prism_assignment_seconds_count", {"agent": agent.slug}) or 0
        )

    before = {o: counted(o) for o in ("new", "existing", "reported")}
    timed_before = timed()
    for sid in ("a", "b", "c"):
        start(harness, agent.slug, sid)
    start(harness, agent.slug, "a")  # the same session again: its existing pin
    sessions.assign(
        agent.slug, "local", sessions.Report(v1.pk, timezone.now() - timedelta(minutes=1))
    )
    missing = harness.post(START.format(slug="nobody"), {"session_id": "x"}, format="json")
    assert missing.status_code == 404

    assert {o: counted(o) - before[o] for o in before} == {"new": 3, "existing": 1, "reported": 1}
    assert timed() - timed_before == 5
    found = scrape(client)
    assert value(found, "prism_assignments_total", outcome="new", **labels) == counted("new")
    assert not [key for key in found if ("agent", "nobody") in key[1]]


# --- what a scrape costs ---------------------------------------------------------------


def fleet_of(slug: str, versions: int, make_version, actor) -> Agent:
    """An agent with ``versions`` versions, each with a live session, and a rollout
    with a recorded evaluation."""
    agent = Agent.objects.create(slug=slug, name=slug)
    made = [make_version(agent, f"v{i}") for i in range(versions)]
    engine.set_stable(agent, made[0], actor=actor)
    for i, version in enumerate(made):
        set_weights(agent, {version: 10000})
        sessions.assign(slug, f"{slug}-{i}")
    set_weights(agent, {made[0]: 10000})
    rollout = start_rollout(agent, made[1], stages=[{"percent": 50}, {"percent": 100}])
    engine.evaluate(rollout.pk)
    return agent


def scrape_queries(client) -> list[str]:
    with CaptureQueriesContext(connection) as queries:
        assert client.get("/metrics").status_code == 200
    return [q["sql"] for q in queries.captured_queries]


def test_a_scrape_costs_the_same_queries_with_2_or_20_versions(client, db, make_version, actor):
    fleet_of("small", 2, make_version, actor)
    small = scrape_queries(client)
    fleet_of("large", 20, make_version, actor)
    for i in range(5):
        fleet_of(f"more-{i}", 3, make_version, actor)
    found = scrape(client)
    large = scrape_queries(client)

    assert len(small) == len(large) == 7  # five for the fleet, two for the webhooks
    assert len(of(found, "prism_live_sessions", agent="large")) == 20
    assert value(found, "prism_live_sessions", agent="large", version=str(
        Version.objects.filter(agent__slug="large").order_by("pk").last().pk
    )) == 1  # fmt: skip
    on_sessions = [sql for sql in large if '"rollouts_session"' in sql]
    assert len(on_sessions) == 1
    # Leads with the agent and reads live rows only: the live partial index.
    assert '"rollouts_session"."agent_id" IN' in on_sessions[0]
    assert """"rollouts_session"."state" = 'live'""" in on_sessions[0]


def test_it_reports_webhook_deliveries_ended_and_in_flight(client, db, agent, v1):
    Webhook.objects.create(agent=agent, url="https://hooks.example.com/prism")
    with transaction.atomic():
        events.emit("version.drained", agent=agent, subject=v1, data={})
    DeliveryCount.objects.create(
        agent=agent, event_type="rollout.halted", status="delivered", count=3
    )
    DeliveryCount.objects.create(agent=agent, event_type="rollout.halted", status="failed", count=1)

    found = scrape(client)

    assert Delivery.objects.filter(status="pending").count() == 1
    halted = {"agent": agent.slug, "event": "rollout.halted"}
    assert value(found, "prism_webhook_deliveries_total", outcome="delivered", **halted) == 3
    assert value(found, "prism_webhook_deliveries_total", outcome="failed", **halted) == 1
    drained = {"agent": agent.slug, "event": "version.drained"}
    assert value(found, "prism_webhook_deliveries_pending", **drained) == 1

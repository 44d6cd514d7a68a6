"""Polling a ``prometheus`` source against a real Prometheus server, which scrapes a tiny
exporter of counters the test sets; and reading the observations as window summaries."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
from django.utils import timezone

from metrics import sources
from metrics.models import MetricSource, Observation
from metrics.sources.prometheus import observed_summaries
from metrics.summary import Summary
from rollouts import engine
from tests.endpoints import free_port
from tests.metrics.servers import Exporter, Prometheus, wait_for
from tests.rollouts.conftest import set_weights
from versions.models import Agent

pytestmark = pytest.mark.django_db

_serial = itertools.count(1)


@pytest.fixture(scope="module")
def exporter():
    server = Exporter()
    server.set("prism_test_up", 1, agent="none", version="none")
    yield server
    server.close()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory, exporter):
    server = Prometheus(tmp_path_factory.mktemp("prometheus"), f"127.0.0.1:{exporter.port}")
    try:
        wait_for("the first scrape", lambda: server.value('up{job="prism-test"}') == 1.0)
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def poll_whenever(settings):
    settings.PRISM_SOURCE_POLL_SECONDS = 0


def counters(exporter, agent: str, label: str, sessions: float, errors: float, lat: tuple):
    exporter.set("agent_sessions_total", sessions, agent=agent, version=label)
    exporter.set("agent_session_errors_total", errors, agent=agent, version=label)
    exporter.set("agent_latency_ms_sum", lat[0], agent=agent, version=label)
    exporter.set("agent_latency_ms_sq_sum", lat[1], agent=agent, version=label)


def scraped(prometheus, agent: str, label: str, sessions: float) -> None:
    query = f'agent_sessions_total{{agent="{agent}",version="{label}"}}'
    wait_for(f"{query} == {sessions}", lambda: prometheus.value(query) == sessions)


def selector(name: str) -> str:
    return f'sum({name}{{agent="{{agent}}",version="{{label}}"}})'


CONFIG = {
    "metrics": {
        "error_rate": {
            "n": selector("agent_sessions_total"),
            "total": selector("agent_session_errors_total"),
        },
        "latency_ms": {
            "n": selector("agent_sessions_total"),
            "total": selector("agent_latency_ms_sum"),
            "total_sq": selector("agent_latency_ms_sq_sum"),
        },
    }
}


@pytest.fixture
def fleet(make_version):
    """An agent of its own (Prometheus keeps its series across tests) with two versions
    sharing the traffic."""
    agent = Agent.objects.create(slug=f"prom-{next(_serial)}", name="Prometheus agent")
    v1, v2 = make_version(agent, "v1"), make_version(agent, "v2")
    engine.set_stable(agent, v1, actor="test")
    set_weights(agent, {v1: 5000, v2: 5000})
    return agent, v1, v2


def test_it_polls_counters_per_version_and_reads_the_increase(fleet, exporter, prometheus):
    agent, v1, v2 = fleet
    counters(exporter, agent.slug, "v1", 100, 5, (10_000, 1.2e6))
    counters(exporter, agent.slug, "v2", 40, 4, (6_000, 1e6))
    scraped(prometheus, agent.slug, "v1", 100)
    scraped(prometheus, agent.slug, "v2", 40)
    source = MetricSource.objects.create(
        agent=agent, kind="prometheus", url=prometheus.url, config=CONFIG
    )
    t0 = timezone.now()
    assert sources.poll(source.pk, t0) == "ok"
    assert Observation.objects.filter(source=source).count() == 4

    counters(exporter, agent.slug, "v1", 160, 8, (16_000, 2e6))
    counters(exporter, agent.slug, "v2", 80, 12, (14_000, 3e6))
    scraped(prometheus, agent.slug, "v1", 160)
    scraped(prometheus, agent.slug, "v2", 80)
    t1 = timezone.now()
    assert sources.poll(source.pk, t1) == "ok"

    got = observed_summaries([v1.pk, v2.pk], since=t0 - timedelta(seconds=5), until=t1)
    assert got[(v1.pk, "error_rate")] == Summary(60, 3.0, 3.0)
    assert got[(v2.pk, "error_rate")] == Summary(40, 8.0, 8.0)
    assert got[(v1.pk, "latency_ms")] == Summary(60, 6_000.0, 8e5)
    assert got[(v2.pk, "latency_ms")] == Summary(40, 8_000.0, 2e6)
    # A window that starts after the last poll has seen no increase yet.
    assert observed_summaries([v1.pk], since=t1, until=t1)[(v1.pk, "error_rate")].n == 0
    source.refresh_from_db()
    assert (source.consecutive_errors, source.last_success_at) == (0, t1)


def test_a_counter_reset_is_carried_over(fleet, exporter, prometheus):
    agent, v1, _ = fleet
    source = MetricSource.objects.create(
        agent=agent, kind="prometheus", url=prometheus.url, config=CONFIG
    )
    times = []
    for sessions_total in (50, 80, 10, 25):  # the agent restarted after 80
        counters(exporter, agent.slug, "v1", sessions_total, 0, (0, 0))
        scraped(prometheus, agent.slug, "v1", sessions_total)
        times.append(timezone.now())
        assert sources.poll(source.pk, times[-1]) == "ok"

    got = observed_summaries([v1.pk], since=times[0], until=times[-1])
    assert got[(v1.pk, "error_rate")].n == 30 + 10 + 15
    between = observed_summaries([v1.pk], since=times[1], until=times[2])
    assert between[(v1.pk, "error_rate")].n == 10


def test_a_version_with_nothing_reported_gets_no_observation(fleet, exporter, prometheus):
    agent, v1, _ = fleet  # v2 is in play, but reports nothing
    counters(exporter, agent.slug, "v1", 7, 1, (70, 900))
    scraped(prometheus, agent.slug, "v1", 7)
    source = MetricSource.objects.create(
        agent=agent, kind="prometheus", url=prometheus.url, config=CONFIG
    )
    assert sources.poll(source.pk) == "ok"
    observed = set(Observation.objects.filter(source=source).values_list("version_id", "metric"))
    assert observed == {(v1.pk, "error_rate"), (v1.pk, "latency_ms")}


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ('sum(agent_sessions_total{version="{label}"}', "HTTP 400 from the source: "),
        ('agent_sessions_total{version="{label}"}[5m]', "gave a matrix"),
    ],
)
def test_a_query_prometheus_cannot_answer_is_an_error(fleet, exporter, prometheus, query, message):
    agent, _, _ = fleet
    source = MetricSource.objects.create(
        agent=agent,
        kind="prometheus",
        url=prometheus.url,
        config={"metrics": {"error_rate": {"n": query, "total": query}}},
    )
    assert sources.poll(source.pk) == "error"
    source.refresh_from_db()
    assert message in source.last_error
    assert source.consecutive_errors == 1
    assert not Observation.objects.filter(source=source).exists()


def test_an_unreachable_prometheus_is_an_error(fleet):
    agent, _, _ = fleet
    source = MetricSource.objects.create(
        agent=agent, kind="prometheus", url=f"http://127.0.0.1:{free_port()}", config=CONFIG
    )
    for _ in range(4):
        assert sources.poll(source.pk) == "error"
    source.refresh_from_db()
    assert source.consecutive_errors == sources.CONSECUTIVE_ERROR_LIMIT
    assert source.last_error.startswith("unreachable")
    assert set(sources.standing(agent.pk).errors) == {"error_rate", "latency_ms"}

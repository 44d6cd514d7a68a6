"""GET /metrics in the production topology: gunicorn with two workers (the command
docker-compose.yml names, with its gunicorn config) in prometheus_client's multiprocess
mode, on the test database; and a real Prometheus server scraping it with the token."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from controlplane.models import Role
from metrics.gates import DEFAULT_GATES, validate_gates
from rollouts import engine
from tests.client.conftest import issue_token
from tests.conftest import tuple_with
from tests.e2e.servers import ROOT, Processes, compose_command, prism_env, wait_for
from tests.endpoints import database_url, free_port
from tests.metrics.servers import Prometheus
from tests.rollouts.conftest import set_weights
from versions.models import Agent, Version

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

TOKEN = "e2e-metrics-token-0123456789abcdef"
SLUG = "research"


@dataclass
class Web:
    url: str
    master: subprocess.Popen
    multiproc: Path

    def workers(self) -> set[int]:
        children = Path(f"/proc/{self.master.pid}/task/{self.master.pid}/children")
        return {int(pid) for pid in children.read_text().split()}

    def call(self, method: str, path: str, token: str | None = None, body: dict | None = None):
        """(status, body bytes), on a connection of its own: gunicorn's workers take
        turns accepting, so separate connections reach both."""
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = token
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data, headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def scrape(self) -> dict[tuple, float]:
        status, body = self.call("GET", "/metrics", f"Bearer {TOKEN}")
        assert status == 200, body
        found = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return found


def total(found: dict[tuple, float], name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, key), v in found.items() if n == name and wanted <= set(key))


def _stale_counts(folder: Path, version_id: int) -> None:
    """Counts a previous server left in the folder: written by prometheus_client itself,
    in a process of its own, as a worker would."""
    code = (
        "from rollouts import instruments\n"
        f"instruments.assignment({SLUG!r}, {version_id}, 'new', 0.001)\n"
    )
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=60)


def multiproc_folder(tmp_path: Path) -> Path:
    return tmp_path / "prometheus"


@pytest.fixture
def web(tmp_path) -> Iterator[Callable[..., Web]]:
    """Starts the compose web command with two workers; all killed at the end."""
    processes = Processes(tmp_path)

    def start(**extra: str) -> Web:
        folder = multiproc_folder(tmp_path)
        env = prism_env(
            database_url(),
            os.environ.get("CELERY_BROKER_URL", "memory://"),
            tmp_path / "var",
            PROMETHEUS_MULTIPROC_DIR=str(folder),
            PRISM_METRICS_TOKEN=TOKEN,
            PRISM_METRICS_ALLOW_NETWORKS="",  # the token only, even from 127.0.0.1
            **extra,
        )
        port = free_port()
        command = compose_command("web")
        command[command.index("--bind") + 1] = f"127.0.0.1:{port}"
        command[command.index("--workers") + 1] = "2"
        master = processes.start("web", command, env)
        server = Web(f"http://127.0.0.1:{port}", master, folder)
        wait_for(
            "gunicorn to answer /metrics",
            lambda: server.call("GET", "/metrics", f"Bearer {TOKEN}")[0] == 200,
            45,
            master.log,
        )
        wait_for("two workers", lambda: len(server.workers()) == 2, 30, master.log)
        return server

    try:
        yield start
    except BaseException:
        print(processes.logs_text())
        raise
    finally:
        processes.stop_all()


def _two_versions(*, split: bool = True) -> tuple[Agent, Version, Version]:
    """An agent with a stable v1 and a v2, sharing new sessions evenly with ``split``."""
    agent = Agent.objects.create(slug=SLUG, name="Research")
    versions = []
    for label in ("v1", "v2"):
        version = Version(agent=agent, label=label, **tuple_with(code={"ref": f"git:{label}"}))
        version.save()
        versions.append(version)
    engine.set_stable(agent, versions[0], actor="test")
    if split:
        set_weights(agent, {versions[0]: 5000, versions[1]: 5000})
    return agent, *versions


def _start_sessions(web: Web, token: str, ids: list[str]) -> Counter:
    """Start the sessions from 8 threads at once; {version id: answers}."""
    pinned: Counter = Counter()
    lock = threading.Lock()
    failures: list = []

    def run(chunk: list[str]) -> None:
        for sid in chunk:
            status, body = web.call(
                "POST", f"/api/agents/{SLUG}/sessions/", token, {"session_id": sid}
            )
            with lock:
                if status not in (200, 201):
                    failures.append((status, body[:200]))
                else:
                    pinned[json.loads(body)["version"]["id"]] += 1

    threads = [threading.Thread(target=run, args=(ids[i::8],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures, failures[:3]
    return pinned


def _counted_by(folder: Path) -> set[int]:
    """Pids that wrote assignment counts in the multiprocess folder."""
    return {int(path.stem.rsplit("_", 1)[1]) for path in folder.glob("counter_*.db")}


def test_the_assignment_count_sums_over_both_workers_and_the_live_figures_are_the_fleets(
    web, tmp_path
):
    _, v1, v2 = _two_versions()
    harness = f"Token {issue_token('e2e-harness', Role.HARNESS)}"
    viewer = f"Token {issue_token('e2e-viewer', Role.VIEWER)}"
    folder = multiproc_folder(tmp_path)
    _stale_counts(folder, v1.pk)  # a previous run's: the start must empty the folder
    assert len(_counted_by(folder)) == 1

    server = web()
    workers = server.workers()
    assert _counted_by(folder) == set()
    pinned: Counter = Counter()
    ids: list[str] = []
    # Separate connections from 8 threads spread over the workers; keep going until
    # both have answered some (each writes its own counter file).
    while not workers <= _counted_by(folder):
        assert len(ids) < 2000, f"one worker answered everything: {_counted_by(folder)}"
        batch = [f"s-{len(ids) + i}" for i in range(40)]
        pinned += _start_sessions(server, harness, batch)
        ids += batch
    again = _start_sessions(server, harness, ids[:10])  # existing pins
    for sid in ids[10:25]:
        status, _ = server.call("POST", f"/api/agents/{SLUG}/sessions/{sid}/end/", harness, {})
        assert status == 200

    scrapes = [server.scrape() for _ in range(4)]  # answered by either worker

    for found in scrapes:
        assert total(found, "prism_assignments_total", agent=SLUG) == len(ids) + 10
        for version in (v1, v2):
            counted = total(found, "prism_assignments_total", agent=SLUG, version=str(version.pk))
            assert counted == pinned[version.pk] + again[version.pk]
        assert total(found, "prism_assignments_total", agent=SLUG, outcome="existing") == 10
        assert total(found, "prism_assignment_seconds_count", agent=SLUG) == len(ids) + 10
        assert total(found, "prism_up") == 1
    status, body = server.call("GET", f"/api/agents/{SLUG}/fleet/", viewer)
    assert status == 200
    rows = json.loads(body)["versions"]
    assert {row["id"] for row in rows} == {v1.pk, v2.pk}
    for row in rows:
        labels = {"agent": SLUG, "version": str(row["id"])}
        assert total(scrapes[-1], "prism_live_sessions", **labels) == row["live_sessions"]
        assert total(scrapes[-1], "prism_version_state", state=row["state"], **labels) == 1
    assert sum(row["live_sessions"] for row in rows) == len(ids) - 15

    # A worker that dies takes none of the counts with it; its replacement adds on.
    victim = next(iter(workers))
    os.kill(victim, signal.SIGKILL)
    wait_for(
        "gunicorn to replace the worker",
        lambda: victim not in server.workers() and len(server.workers()) == 2,
        30,
        server.master.log,
    )
    assert total(server.scrape(), "prism_assignments_total", agent=SLUG) == len(ids) + 10
    _start_sessions(server, harness, [f"after-{i}" for i in range(16)])
    assert total(server.scrape(), "prism_assignments_total", agent=SLUG) == len(ids) + 26


def test_a_real_prometheus_scrapes_metrics_with_the_token_and_promql_counts_live_sessions(
    web, tmp_path
):
    agent, v1, v2 = _two_versions(split=False)
    # Half the traffic, and a stage that may last no time at all: the first look halts.
    rollout = engine.start_rollout(
        agent,
        candidate=v2,
        stages=engine.validate_stages(
            [{"percent": 50, "min_duration_s": 0, "max_duration_s": 0}, {"percent": 100}]
        ),
        gates=validate_gates(copy.deepcopy(DEFAULT_GATES)),
        actor="test",
    )
    harness = f"Token {issue_token('e2e-harness', Role.HARNESS)}"
    server = web()
    pinned = _start_sessions(server, harness, [f"p-{i}" for i in range(12)])
    for sid in ("p-0", "p-1", "p-2"):
        status, _ = server.call("POST", f"/api/agents/{SLUG}/sessions/{sid}/end/", harness, {})
        assert status == 200
    assert server.call("GET", "/metrics")[0] == 401  # the token is needed, even locally
    token_file = tmp_path / "metrics-token"
    token_file.write_text(TOKEN + "\n")
    prometheus = Prometheus(tmp_path, server.url.removeprefix("http://"), token_file)
    try:
        wait_for("a scrape", lambda: prometheus.value('up{job="prism-test"}') == 1.0, 60)
        live = prometheus.query(f'sum by (version) (prism_live_sessions{{agent="{SLUG}"}})')
        by_version = {int(r["metric"]["version"]): float(r["value"][1]) for r in live}
        assert sum(by_version.values()) == 9
        assert set(by_version) == {v1.pk, v2.pk}
        assert prometheus.value(f'sum(prism_assignments_total{{agent="{SLUG}"}})') == sum(
            pinned.values()
        )
        assert prometheus.value("prism_up") == 1.0
        (target,) = prometheus.targets()
        assert (target["health"], target["lastError"]) == ("up", "")

        # The README's alert rule fires once the rollout is halted.
        halted = 'max without (instance) (prism_rollout_state{state="halted"}) == 1'
        assert prometheus.query(halted) == []
        assert engine.evaluate(rollout.pk).state == "halted"
        wait_for("the halted alert expression", lambda: prometheus.query(halted), 30)
        (alert,) = prometheus.query(halted)
        assert (alert["metric"]["agent"], alert["metric"]["rollout"]) == (SLUG, str(rollout.pk))
    finally:
        prometheus.stop()

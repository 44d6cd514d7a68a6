"""The production processes, started with the exact commands docker-compose.yml names,
against the test PostgreSQL and a real Redis broker."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from django.db import connection
from django.utils import timezone

from controlplane.models import ApiToken, Profile, Role
from rollouts import engine
from rollouts.models import Session, SessionState
from tests.endpoints import free_port
from versions.audit import SYSTEM
from versions.models import Agent, AuditEntry

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def compose_command(service: str) -> list[str]:
    spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return shlex.split(spec["services"][service]["command"])


def _env() -> dict[str, str]:
    db = connection.settings_dict
    host = db["HOST"]
    # The test database, as a URL the child processes' settings will parse.
    if host.startswith("/"):
        url = f"postgresql://{db['USER']}@/{db['NAME']}?host={host}"
    else:
        url = (
            f"postgresql://{db['USER']}:{db['PASSWORD']}@{host or '127.0.0.1'}:"
            f"{db['PORT'] or 5432}/{db['NAME']}"
        )
    env = dict(os.environ)
    env.update(
        DATABASE_URL=url,
        DEBUG="false",
        PRISM_BEAT_SECONDS="1",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        proc.terminate()
    for proc in started:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _start(cmd: list[str], processes: list, tmp_path: Path, name: str) -> Path:
    log = tmp_path / f"{name}.log"
    processes.append(
        subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=log.open("w"), stderr=subprocess.STDOUT)
    )
    return log


@pytest.mark.django_db(transaction=True)
def test_it_migrates_with_the_compose_command():
    result = subprocess.run(
        compose_command("migrate"),
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "No migrations to apply" in result.stdout or "Applying" in result.stdout


@pytest.mark.django_db(transaction=True)
def test_it_serves_the_api_with_the_compose_gunicorn_command(
    processes, tmp_path, django_user_model
):
    user = django_user_model.objects.create_user("e2e-viewer")
    Profile.objects.create(user=user, role=Role.VIEWER)
    token = ApiToken.issue(user)
    port = free_port()
    cmd = compose_command("web")
    cmd[cmd.index("--bind") + 1] = f"127.0.0.1:{port}"
    log = _start(cmd, processes, tmp_path, "web")
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/agents/", headers={"Authorization": f"Token {token}"}
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                assert response.status == 200
                assert response.read() == b"[]"
                break
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail("gunicorn did not answer:\n" + log.read_text())
            time.sleep(0.3)


@pytest.mark.django_db(transaction=True)
def test_it_runs_drain_policies_through_beat_broker_and_worker(
    processes, tmp_path, agent, make_version
):
    """Beat publishes to Redis; the tick fans out one policy task per agent, and the
    worker runs each, marking every agent's idle session abandoned."""
    assert os.environ.get("CELERY_BROKER_URL", "").startswith("redis"), "needs a Redis broker"
    version = make_version(agent)
    engine.set_stable(agent, version, actor=SYSTEM)
    agent.idle_timeout_s = 60
    agent.save(update_fields=["idle_timeout_s"])
    long_ago = timezone.now() - timedelta(minutes=10)
    idle = Session.objects.create(
        agent=agent,
        session_id="idle-1",
        version=version,
        started_at=long_ago,
        last_seen_at=long_ago,
    )
    other = Agent.objects.create(slug="other", name="Other agent", idle_timeout_s=60)
    other_version = make_version(other)
    engine.set_stable(other, other_version, actor=SYSTEM)
    other_idle = Session.objects.create(
        agent=other,
        session_id="idle-2",
        version=other_version,
        started_at=long_ago,
        last_seen_at=long_ago,
    )
    fresh = Session.objects.create(
        agent=agent,
        session_id="fresh-1",
        version=version,
        started_at=timezone.now(),
        last_seen_at=timezone.now(),
    )

    worker_cmd = [*compose_command("worker"), "--pool=solo"]
    worker_cmd = [c for c in worker_cmd if not c.startswith("--concurrency")]
    beat_cmd = compose_command("beat")
    beat_cmd = [
        c if not c.startswith("--schedule=") else f"--schedule={tmp_path}/beat" for c in beat_cmd
    ]
    worker_log = _start(worker_cmd, processes, tmp_path, "worker")
    beat_log = _start(beat_cmd, processes, tmp_path, "beat")

    deadline = time.monotonic() + 60
    pending = [idle.pk, other_idle.pk]
    while Session.objects.filter(pk__in=pending, state=SessionState.ABANDONED).count() < 2:
        if time.monotonic() > deadline:
            pytest.fail(
                "the idle session was never abandoned\n--- worker\n"
                f"{worker_log.read_text()}\n--- beat\n{beat_log.read_text()}"
            )
        time.sleep(0.5)
    assert Session.objects.get(pk=fresh.pk).state == SessionState.LIVE
    entry = AuditEntry.objects.get(action="sessions.abandoned", agent=agent)
    assert entry.actor == SYSTEM
    assert "idle_timeout_s=60" in entry.reason
    assert entry.after["sessions"] == ["idle-1"]
    other_entry = AuditEntry.objects.get(action="sessions.abandoned", agent=other)
    assert other_entry.after["sessions"] == ["idle-2"]
    # One batch of both agents, run by the worker: its pass abandoned one session of each.
    passes = [
        line
        for line in worker_log.read_text().splitlines()
        if "enforce_agent_drain_policies[" in line and line.count("'abandoned': 1") == 2
    ]
    assert len(passes) == 1, worker_log.read_text()[-3000:]

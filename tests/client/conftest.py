"""Fixtures for the harness client tests: a token, and an agent mid-rollout."""

from __future__ import annotations

import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model

from controlplane.models import ApiToken, Profile, Role
from rollouts import engine
from tests.e2e.test_processes import ROOT, VENV_BIN, _env
from tests.endpoints import free_port
from tests.rollouts.conftest import start_rollout


def issue_token(username: str, role: str) -> str:
    user = get_user_model().objects.create_user(username=username)
    Profile.objects.create(user=user, role=role)
    return ApiToken.issue(user)


@pytest.fixture
def harness_token(db) -> str:
    return issue_token("client-harness", Role.HARNESS)


@pytest.fixture
def split(agent, make_version):
    """v1 stable, v2 at 50%: both arms get new sessions."""
    v1, v2 = make_version(agent, "v1"), make_version(agent, "v2")
    engine.set_stable(agent, v1, actor="test")
    stages = [{"percent": 50, "min_duration_s": 3600, "min_sessions": 1000}, {"percent": 100}]
    rollout = start_rollout(agent, v2, stages=stages)
    return v1, v2, rollout


class Web:
    """gunicorn serving Prism on a fixed port, stopped and started at will."""

    def __init__(self, port: int, log: Path, *options: str) -> None:
        self.port = port
        self.log = log
        self.options = list(options)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        command = [
            str(VENV_BIN / "gunicorn"), "controlplane.wsgi:application",
            "--bind", f"127.0.0.1:{self.port}", "--workers", "1", "--threads", "4",
            "--no-control-socket", *self.options,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=_env(), stdout=self.log.open("a"), stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/api/schema/", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail("gunicorn did not start:\n" + self.log.read_text())
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def web(tmp_path) -> Iterator[Web]:
    server = Web(free_port(), tmp_path / "gunicorn.log")
    yield server
    server.stop()

"""``GET /api/health/``: database, broker (the suite's real Redis) and the beat's lag, with
503 when any is wrong; and the beat's tick, from a real worker running the beat."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from controlplane import health, tasks
from controlplane.models import BeatTick
from tests.endpoints import database_url, free_port

ROOT = Path(__file__).resolve().parents[2]
URL = "/api/health/"

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def beat_late_after(settings):
    settings.PRISM_BEAT_LATE_S = 15


def test_it_is_200_when_the_database_the_broker_and_the_beat_are_well(anonymous):
    health.record_tick(timezone.now() - timedelta(seconds=2))
    response = anonymous.get(URL)
    assert response.status_code == 200, response.json()
    body = response.json()
    assert (body["status"], body["database"], body["broker"]) == ("ok", "ok", "ok")
    assert 2 <= body["beat"]["lag_s"] < 15
    assert (body["beat"]["late"], body["beat"]["late_after_s"]) == (False, 15)
    assert "errors" not in body
    assert response["Cache-Control"] == "no-store"


def test_it_needs_no_token_and_ignores_a_bad_one(anonymous, viewer):
    health.record_tick()
    anonymous.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    assert anonymous.get(URL).status_code == 200
    assert viewer.get(URL).status_code == 200


def test_it_is_503_before_the_beat_ever_ticked(anonymous):
    response = anonymous.get(URL)
    assert response.status_code == 503
    body = response.json()
    assert body["beat"] == {"last_tick": None, "lag_s": None, "late_after_s": 15, "late": True}
    assert (body["database"], body["broker"]) == ("ok", "ok")


def test_it_is_503_when_the_beat_is_late_by_more_than_the_limit(anonymous, settings):
    health.record_tick(timezone.now() - timedelta(seconds=20))
    response = anonymous.get(URL)
    assert response.status_code == 503
    assert response.json()["beat"]["lag_s"] >= 20
    assert response.json()["status"] == "error"

    settings.PRISM_BEAT_LATE_S = 60  # the limit is configurable
    assert anonymous.get(URL).status_code == 200


def test_the_schema_describes_health(anonymous):
    schema = anonymous.get("/api/schema/?format=json").json()
    answers = schema["paths"]["/api/health/"]["get"]["responses"]
    assert {"200", "503"} <= set(answers)
    assert schema["paths"]["/api/health/"]["get"]["security"] == [{}]


def test_the_tick_only_moves_forward():
    now = timezone.now()
    health.record_tick(now)
    health.record_tick(now - timedelta(minutes=5))  # a late, out-of-order run
    assert BeatTick.objects.get().at == now
    health.record_tick(now + timedelta(seconds=5))
    assert BeatTick.objects.get().at == now + timedelta(seconds=5)
    assert BeatTick.objects.count() == 1


def test_the_tick_task_records_the_time_it_ran():
    before = timezone.now()
    result = tasks.beat_tick.apply()
    assert result.successful(), result.traceback
    assert before <= BeatTick.objects.get().at <= timezone.now()


def test_it_is_503_when_the_broker_is_unreachable(anonymous, settings):
    health.record_tick()
    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{free_port()}/0"
    response = anonymous.get(URL)
    assert response.status_code == 503
    body = response.json()
    assert (body["database"], body["broker"]) == ("ok", "error")
    assert body["errors"] == {"broker": "OperationalError"}


def test_a_broker_that_never_answers_gives_a_prompt_503(anonymous, settings, monkeypatch):
    health.record_tick()
    monkeypatch.setattr(health, "CHECK_TIMEOUT_S", 0.5)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        response = anonymous.get(URL)
    assert response.status_code == 503
    assert response.json()["broker"] == "error"


def test_it_is_503_when_the_database_is_unreachable():
    """In a process of its own, configured for a database where nothing listens."""
    env = dict(os.environ, DATABASE_URL=f"postgresql://prism@127.0.0.1:{free_port()}/prism")
    code = (
        "import django, json; django.setup();"
        "from django.test import Client;"
        f"r = Client().get({URL!r});"
        "print(json.dumps({'status': r.status_code, 'body': r.json()}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["status"] == 503
    assert (found["body"]["database"], found["body"]["broker"]) == ("error", "ok")
    assert found["body"]["errors"]["database"] == "OperationalError"
    assert found["body"]["beat"]["last_tick"] is None


def _wait(what: str, probe, timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            tail = f"\n--- worker log\n{log.read_text()[-4000:]}" if log and log.exists() else ""
            raise AssertionError(f"gave up waiting for {what} after {timeout}s{tail}")
        time.sleep(0.2)


@pytest.mark.django_db(transaction=True)
def test_a_running_beat_keeps_it_healthy_and_a_stopped_one_makes_it_503(
    anonymous, settings, tmp_path
):
    settings.PRISM_BEAT_LATE_S = 3
    env = dict(os.environ, DATABASE_URL=database_url(), PRISM_BEAT_SECONDS="1")
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 (closed below)
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "controlplane", "worker", "--beat",
         "--pool=solo", "--loglevel=WARNING", f"--schedule={tmp_path / 'beat-schedule'}"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        _wait(
            "the beat's first tick",
            lambda: BeatTick.objects.exists(),
            timeout=180,  # a worker's first start imports everything; slow on a busy machine
            log=tmp_path / "worker.log",
        )
        first = BeatTick.objects.get().at
        _wait("a second tick", lambda: BeatTick.objects.get().at > first, timeout=30)
        assert anonymous.get(URL).status_code == 200
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(timeout=30)
        log.close()
    _wait("the beat to be late", lambda: anonymous.get(URL).status_code == 503, timeout=30)
    assert anonymous.get(URL).json()["beat"]["lag_s"] > 3

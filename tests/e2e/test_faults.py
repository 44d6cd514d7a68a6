"""Faults survived: PostgreSQL restarted under assignment load, Redis restarted under the
worker and the beat, and a worker killed in the middle of a transition.

Each test owns a throwaway PostgreSQL (a copy of one migrated and seeded template
cluster) and a throwaway Redis, and runs Prism's processes with the commands
docker-compose.yml names. Nothing here touches the suite's shared servers.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from celery import Celery

from tests.e2e.servers import (
    ROOT,
    Postgres,
    Processes,
    Redis,
    celery_worker,
    compose_command,
    prism_env,
    wait_for,
)
from tests.endpoints import free_port


@pytest.fixture(scope="module")
def template() -> Iterator[tuple[Postgres, dict]]:
    """A migrated, seeded and stopped cluster: what every test here starts a copy of."""
    pg = Postgres.create()
    var = Path(tempfile.mkdtemp(prefix="prism-fault-var."))
    try:
        pg.start()
        pg.createdb()
        # No broker is needed to migrate and seed; the URL only has to parse.
        env = prism_env(pg.url, "redis://127.0.0.1:9/0", var)
        for command in (compose_command("migrate"), [sys.executable, "-m", "tests.e2e.fault_seed"]):
            done = subprocess.run(
                command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
            )
            assert done.returncode == 0, done.stderr
        seeded = json.loads(done.stdout)
        pg.stop()
        yield pg, seeded
    finally:
        pg.remove()
        shutil.rmtree(var, ignore_errors=True)


@dataclass
class Faults:
    pg: Postgres
    redis: Redis
    processes: Processes
    seeded: dict
    var: Path

    def env(self, **extra: str) -> dict[str, str]:
        return prism_env(self.pg.url, self.redis.url, self.var, **extra)


@pytest.fixture
def faults(template, tmp_path) -> Iterator[Faults]:
    """This test's own PostgreSQL and Redis, and the processes it starts."""
    source, seeded = template
    pg, redis = source.copy(), Redis()
    processes = Processes(tmp_path)
    try:
        pg.start()
        redis.start()
        yield Faults(pg, redis, processes, seeded, tmp_path)
    finally:
        processes.stop_all()
        pg.remove()
        redis.remove()


# --- PostgreSQL restarted under assignment load ---------------------------------------


@dataclass
class Answer:
    session_id: str
    status: int | None  # None: no answer at all (a timeout or a dropped connection)
    body: bytes
    content_type: str
    at: float


@dataclass
class Load:
    """Harness threads starting sessions through gunicorn. A 503 is retried with the same
    session id, as a harness does; every answer is kept."""

    port: int
    slug: str
    token: str
    threads: int = 4
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for n in range(self.threads):
            thread = threading.Thread(target=self._run, args=(n,), daemon=True)
            thread.start()
            self._workers.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._workers:
            thread.join(timeout=15)
        assert not any(thread.is_alive() for thread in self._workers), "a client hung"

    def since(self, moment: float) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if a.at >= moment]

    def _run(self, n: int) -> None:
        conn: http.client.HTTPConnection | None = None
        serial = 0
        # Every request has a deadline: a request that takes longer counts as hung.
        while not self._stop.is_set():
            session_id = f"load-{n}-{serial}"
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            try:
                conn.request(
                    "POST",
                    f"/api/agents/{self.slug}/sessions/",
                    body=json.dumps({"session_id": session_id}),
                    headers={
                        "Authorization": f"Token {self.token}",
                        "Content-Type": "application/json",
                    },
                )
                response = conn.getresponse()
                answer = Answer(
                    session_id,
                    response.status,
                    response.read(),
                    response.getheader("Content-Type", ""),
                    time.monotonic(),
                )
            except (OSError, http.client.HTTPException) as exc:
                answer = Answer(session_id, None, repr(exc).encode(), "", time.monotonic())
                conn.close()
                conn = None
            with self._lock:
                self.answers.append(answer)
            if answer.status in (200, 201):
                serial += 1
            else:
                time.sleep(0.05)


def _answers(port: int, token: str) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/api/agents/", headers={"Authorization": f"Token {token}"})
        return conn.getresponse().status == 200
    finally:
        conn.close()


def _expected_version(slug: str, session_id: str, v1: int, v2: int) -> int:
    """The documented assignment at 50/50: the lower id holds buckets [0, 5000)."""
    bucket = int(hashlib.sha256(f"{slug}:{session_id}".encode()).hexdigest()[:16], 16) % 10000
    return min(v1, v2) if bucket < 5000 else max(v1, v2)


def test_a_postgres_restart_under_load_answers_503_json_and_loses_no_acknowledged_pin(faults):
    """Four harness threads start sessions through the compose gunicorn while PostgreSQL
    stops and starts again. Every request gets an answer, the outage's a 503 JSON; the
    same gunicorn serves again once PostgreSQL is back; every pin it acknowledged is
    stored once, on the version the bucket formula gives."""
    seeded = faults.seeded
    port = free_port()
    command = compose_command("web")
    command[command.index("--bind") + 1] = f"127.0.0.1:{port}"
    web = faults.processes.start("web", command, faults.env())
    # Served before the load starts: a request queued while no worker has loaded the
    # app yet would look like a request the outage hung.
    wait_for("gunicorn to answer", lambda: _answers(port, seeded["manager_token"]), 60, web.log)
    load = Load(port, seeded["slug"], seeded["harness_token"])
    load.start()
    try:
        wait_for(
            "assignments to succeed",
            lambda: sum(a.status == 201 for a in load.since(0)) >= 20,
            30,
            web.log,
        )
        went_down = time.monotonic()
        faults.pg.stop("fast")
        # Down for a second at least, and for ten refusals at least.
        wait_for(
            "503s during the outage",
            lambda: (
                time.monotonic() - went_down >= 1
                and sum(a.status == 503 for a in load.since(went_down)) >= 10
            ),
            10,
            web.log,
        )
        faults.pg.start()
        came_back = time.monotonic()
        wait_for(
            "assignments to succeed again, with no restart of gunicorn",
            lambda: sum(a.status == 201 for a in load.since(came_back)) >= 20,
            30,
            web.log,
        )
    finally:
        load.stop()
    assert web.poll() is None, "gunicorn exited"

    answers = load.since(0)
    # No 500, and no request without an answer within the client's 5 s timeout.
    unexpected = [
        (f"{a.at - went_down:+.2f}s from the outage", a.status, a.body[:300])
        for a in answers
        if a.status not in (200, 201, 503)
    ]
    assert not unexpected, f"{unexpected[:5]}{faults.processes.logs_text()}"
    outage = [a for a in answers if a.status == 503]
    assert outage
    for answer in outage:
        assert answer.content_type == "application/json"
        assert json.loads(answer.body)["code"] == "database_unavailable"

    acknowledged = {}
    for answer in answers:
        if answer.status in (200, 201):
            version = json.loads(answer.body)["version"]["id"]
            assert acknowledged.setdefault(answer.session_id, version) == version
    rows = faults.pg.query(
        "SELECT session_id, version_id, count(*) OVER (PARTITION BY session_id)"
        " FROM rollouts_session WHERE agent_id = %s",
        [seeded["agent"]],
    )
    stored = {session_id: (version, copies) for session_id, version, copies in rows}
    sent = {a.session_id for a in answers}
    assert set(stored) <= sent
    for session_id, version in acknowledged.items():
        assert stored[session_id] == (version, 1), session_id
        assert version == _expected_version(seeded["slug"], session_id, seeded["v1"], seeded["v2"])
    assert {seeded["v1"], seeded["v2"]} <= set(acknowledged.values())


# --- Redis restarted while the worker and the beat run --------------------------------


def _idle_session(faults: Faults, session_id: str) -> None:
    """A live session last seen ten minutes ago: past the agent's idle timeout (60 s)."""
    faults.pg.query(
        "INSERT INTO rollouts_session (agent_id, session_id, version_id, state, started_at,"
        " last_seen_at, end_reason) VALUES (%s, %s, %s, 'live', now() - interval '10 minutes',"
        " now() - interval '10 minutes', '') RETURNING id",
        [faults.seeded["agent"], session_id, faults.seeded["v1"]],
    )


def _abandoned(faults: Faults, session_id: str) -> bool:
    rows = faults.pg.query("SELECT state FROM rollouts_session WHERE session_id = %s", [session_id])
    return rows == [("abandoned",)]


def test_the_worker_and_the_beat_reconnect_after_a_redis_restart(faults):
    env = faults.env()
    worker = celery_worker(faults.processes, env)
    beat_command = [
        c if not c.startswith("--schedule=") else f"--schedule={faults.var}/beat-schedule"
        for c in compose_command("beat")
    ]
    beat = faults.processes.start("beat", beat_command, env)
    _idle_session(faults, "idle-before")
    wait_for("the first tick", lambda: _abandoned(faults, "idle-before"), 30, worker.log)

    faults.redis.stop()
    # Down long enough that both notice: the worker loses its connection, and the beat
    # fails to send a tick (past the publish's own few quick retries).
    wait_for(
        "the worker to notice the lost broker",
        lambda: "Cannot connect to redis" in worker.log.read_text(),
        15,
        worker.log,
    )
    wait_for(
        "the beat to fail a tick", lambda: "Message Error" in beat.log.read_text(), 15, beat.log
    )
    faults.redis.start()
    _idle_session(faults, "idle-after")

    wait_for(
        "a tick after the restart",
        lambda: _abandoned(faults, "idle-after"),
        45,
        worker.log,
    )
    assert worker.poll() is None, faults.processes.logs_text()
    assert beat.poll() is None, faults.processes.logs_text()
    (after,) = faults.pg.query(
        "SELECT actor, after FROM versions_auditentry WHERE action = 'sessions.abandoned'"
        " AND after::text LIKE '%%idle-after%%'"
    )
    assert after[0] == "system"


# --- a worker killed in the middle of a transition ------------------------------------


def _attempts(faults: Faults, task_id: str) -> list[tuple]:
    return faults.pg.query(
        "SELECT worker, redelivered, outcome, finished_at IS NOT NULL FROM controlplane_taskrun"
        " WHERE task_id = %s ORDER BY id",
        [task_id],
    )


@pytest.mark.parametrize("victim", ["pool process", "whole worker"])
def test_a_transition_whose_worker_was_killed_runs_again_and_applies_once(faults, victim):
    """SIGKILL after the transition committed and before the message was acknowledged:
    the message comes back (the pool process: rejected on worker lost; the whole worker:
    after the visibility timeout, to a new worker) and the second run changes nothing."""
    seeded = faults.seeded
    env = faults.env(
        PRISM_TEST_ONLY_PAUSE_AFTER_TRANSITION_S="60",
        PRISM_BROKER_VISIBILITY_TIMEOUT_S="3" if victim == "whole worker" else "300",
    )
    worker = celery_worker(faults.processes, env)
    (epoch_before,) = faults.pg.query(
        "SELECT epoch FROM rollouts_routing WHERE agent_id = %s", [seeded["agent"]]
    )[0]
    task_id = f"advance-{victim.replace(' ', '-')}"
    # An explicit connection: a Celery app prefers $CELERY_BROKER_URL (the suite's shared
    # Redis) to its broker argument.
    producer = Celery("fault-tests")
    with producer.connection_for_write(faults.redis.url) as connection:
        producer.send_task(
            "rollouts.tasks.apply_transition",
            args=[seeded["rollout"], "advance", 0],
            task_id=task_id,
            connection=connection,
        )

    first = wait_for(
        "the first attempt to commit its transition",
        lambda: (rows := _attempts(faults, task_id)) and rows[0][2] == "applied" and rows[0],
        30,
        worker.log,
    )
    if victim == "pool process":
        pid = int(first[0].rpartition(":")[2])
        assert pid != worker.pid
        os.kill(pid, signal.SIGKILL)
    else:
        faults.processes.kill(worker)
        worker = celery_worker(faults.processes, env, name="worker2")

    attempts = wait_for(
        "the redelivered attempt to finish",
        lambda: len(rows := _attempts(faults, task_id)) >= 2 and rows[1][3] and rows,
        45,
        worker.log,
    )
    assert len(attempts) == 2, attempts
    (_, first_redelivered, *_), (second_worker, redelivered, outcome, _) = attempts
    assert first_redelivered is False
    assert (redelivered, outcome) == (True, "skipped"), faults.processes.logs_text()
    assert second_worker != first[0]

    (stage, state), *_ = faults.pg.query(
        "SELECT stage, state FROM rollouts_rollout WHERE id = %s", [seeded["rollout"]]
    )
    assert (stage, state) == (1, "running")
    (epoch, weights), *_ = faults.pg.query(
        "SELECT epoch, weights FROM rollouts_routing WHERE agent_id = %s", [seeded["agent"]]
    )
    assert epoch == epoch_before + 1
    assert weights == {str(seeded["v1"]): 2500, str(seeded["v2"]): 7500}
    assert faults.pg.query(
        "SELECT count(*) FROM versions_auditentry WHERE action = 'rollout.advance'"
    ) == [(1,)]
    assert faults.pg.query(
        "SELECT count(*) FROM rollouts_rolloutevent WHERE rollout_id = %s AND action = 'advance'",
        [seeded["rollout"]],
    ) == [(1,)]

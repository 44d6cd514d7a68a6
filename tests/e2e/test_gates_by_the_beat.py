"""Gates that decide, in the production topology: gunicorn, a Celery worker and a
separate Celery beat (the commands docker-compose.yml names) on PostgreSQL and Redis, with
the fleet simulator driving sessions through the REST API as harnesses would.

Nobody calls ``evaluate``: the beat alone counts pins, evaluates the gates and moves
the rollout. The configuration is small enough for CI and stated here:

- stages 25% → 50% → 100%, each ``min_duration_s: 2`` and ``min_sessions: 30``;
- gates ``error_rate`` at ``max_increase: 0.2`` and ``cost_usd`` at
  ``max_relative_change: 0.3``, both critical; ``auto_rollback`` on the regression;
- the beat ticks every second and evaluates every second; pins settle after 1 s;
- the simulator starts 40 sessions a second at 1200 times its own clock.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from events.models import Webhook
from metrics.gates import validate_gates
from prism_client import verify
from rollouts import engine
from rollouts.models import Evaluation, Rollout, RolloutState
from tests.client.conftest import issue_token
from tests.conftest import tuple_with
from tests.e2e.servers import ROOT, Processes, Redis, celery_worker, compose_command, prism_env
from tests.e2e.servers import wait_for as wait_until
from tests.endpoints import database_url, free_port
from tests.events.receiver import Receiver
from versions.models import Agent, Version

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

STAGES = [
    {"percent": 25, "min_duration_s": 2, "min_sessions": 30},
    {"percent": 50, "min_duration_s": 2, "min_sessions": 30},
    {"percent": 100},
]
SECRET = "whsec_beat-e2e-0123456789"
GATES = [
    {"metric": "error_rate", "max_increase": 0.2},
    {"metric": "cost_usd", "max_relative_change": 0.3},
]


@pytest.fixture
def topology(tmp_path) -> Iterator[str]:
    """gunicorn, a worker and a beat, each its own process, on a Redis of their own and
    the test database; yields the web URL."""
    redis = Redis()
    redis.start()
    processes = Processes(tmp_path)
    env = prism_env(
        database_url(),
        redis.url,
        tmp_path / "var",
        PRISM_EVALUATE_SECONDS="1",
        PRISM_PIN_SETTLE_S="1",
        PRISM_WEBHOOKS_ALLOW_PRIVATE="true",  # the test's receiver is on loopback
    )
    port = free_port()
    web = compose_command("web")
    web[web.index("--bind") + 1] = f"127.0.0.1:{port}"
    beat = [
        c if not c.startswith("--schedule=") else f"--schedule={tmp_path}/beat-schedule"
        for c in compose_command("beat")
    ]
    try:
        processes.start("web", web, env)
        celery_worker(processes, env)
        processes.start("beat", beat, env)
        yield f"http://127.0.0.1:{port}"
    except BaseException:
        print(processes.logs_text())
        raise
    finally:
        processes.stop_all()
        redis.remove()


def _rollout(*, auto_rollback: bool) -> tuple[Agent, Rollout]:
    agent = Agent.objects.create(slug="research", name="Research")
    versions = []
    for label in ("v1", "v2"):
        version = Version(agent=agent, label=label, **tuple_with(code={"ref": f"git:{label}"}))
        version.save()
        versions.append(version)
    engine.set_stable(agent, versions[0], actor="test")
    rollout = engine.start_rollout(
        agent,
        candidate=versions[1],
        stages=engine.validate_stages(STAGES),
        gates=validate_gates(GATES),
        auto_rollback=auto_rollback,
        actor="test",
    )
    return agent, rollout


def _simulate(url: str, scenario: str, seconds: int) -> subprocess.Popen:
    token = issue_token("sim-harness", "harness")
    command = [
        sys.executable, "manage.py", "simulate", "--url", url, "--token", token,
        "--scenario", scenario, "--agent", "research", "--rate", "40",
        "--duration", str(seconds), "--accel", "1200", "--heartbeat", "1200",
        "--seed", "3", "--timeout", "30", "--progress", "60",
    ]  # fmt: skip
    return subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _until_closed(rollout: Rollout, simulator: subprocess.Popen, timeout: float) -> Rollout:
    def closed() -> Rollout | None:
        current = Rollout.objects.get(pk=rollout.pk)
        return current if current.state not in (RolloutState.RUNNING,) else None

    try:
        return wait_until("the beat to close the rollout", closed, timeout)
    finally:
        simulator.terminate()
        output, _ = simulator.communicate(timeout=30)
        summary = [line for line in output.splitlines() if line.startswith("summary: ")]
        if summary:
            errors = json.loads(summary[-1].removeprefix("summary: "))["error_count"]
            assert errors == 0, output[-2000:]


def test_the_beat_alone_promotes_a_healthy_candidate_through_every_stage(topology):
    agent, rollout = _rollout(auto_rollback=False)
    simulator = _simulate(topology, "healthy", 60)
    closed = _until_closed(rollout, simulator, timeout=90)

    assert closed.state == RolloutState.PROMOTED, closed.last_evaluation
    events = list(closed.events.values_list("action", "actor"))
    assert events == [("start", "test"), ("auto_advance", "system"), ("auto_advance", "system")]
    agent.refresh_from_db()
    assert agent.stable_id == closed.candidate_id
    # Every look was recorded; only the decisions that moved it were applied, by the beat.
    looks = Evaluation.objects.filter(rollout=closed)
    assert looks.filter(applied=True).count() == 2
    assert set(looks.values_list("actor", flat=True)) == {"system"}


def test_the_beat_alone_rolls_back_a_regressed_candidate(topology):
    """The regression scenario's candidate errs three times as often and costs 60% more.
    The rollback reaches a webhook: one signed delivery, sent by the worker."""
    agent, rollout = _rollout(auto_rollback=True)
    receiver = Receiver().start()
    Webhook.objects.create(
        agent=agent, url=receiver.url, secret=SECRET, events=["rollout.rolled_back"]
    )
    simulator = _simulate(topology, "regression", 60)
    closed = _until_closed(rollout, simulator, timeout=90)

    assert closed.state == RolloutState.ROLLED_BACK, closed.last_evaluation
    action, actor, reason = closed.events.values_list("action", "actor", "reason").last()
    assert (action, actor) == ("auto_rollback", "system")
    assert reason.startswith("critical gate failed")
    agent.refresh_from_db()
    assert agent.routing.weights == {str(closed.baseline_id): 10000}
    wait_until("the rollback's webhook delivery", lambda: receiver.got, timeout=30)
    time.sleep(2)  # a duplicate send, were there one, would arrive by now
    (got,) = receiver.got
    assert got.headers["Prism-Event"] == "rollout.rolled_back"
    assert verify(SECRET, got.headers, got.body)
    assert json.loads(got.body)["subject"]["id"] == str(closed.pk)
    receiver.stop()

"""The outbox survives a worker restart: a transition committed by a worker that is
killed before it could deliver the event is still delivered, exactly once, by the
worker that replaces it (the queued dispatch, or the beat's sweep, whichever claims
the attempt first).

Real parts: a Celery worker and a beat as their own processes (the commands
docker-compose.yml names) on a Redis of their own and the test database, and a real
HTTP receiver in the test.
"""

from __future__ import annotations

import signal
import time

import pytest
from celery import Celery

from controlplane.models import TaskRun
from events.models import Delivery, Event, Webhook
from prism_client import verify
from rollouts import engine
from rollouts.models import Rollout
from tests.conftest import tuple_with
from tests.e2e.servers import Processes, Redis, celery_worker, compose_command, prism_env
from tests.e2e.servers import wait_for as wait_until
from tests.endpoints import database_url
from tests.events.receiver import Receiver
from versions.models import Agent, Version

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]
SECRET = "whsec_restart-test-0123456789"


def _running_rollout() -> Rollout:
    agent = Agent.objects.create(slug="research", name="Research")
    v1, v2 = (
        Version(agent=agent, label=label, **tuple_with(code={"ref": f"git:{label}"}))
        for label in ("v1", "v2")
    )
    v1.save()
    v2.save()
    engine.set_stable(agent, v1, actor="test")
    return engine.start_rollout(
        agent,
        candidate=v2,
        stages=engine.validate_stages([{"percent": 25, "min_duration_s": 3600}, 100]),
        gates=[],
        actor="test",
    )


def test_an_event_whose_worker_was_killed_before_delivery_is_delivered_once(tmp_path):
    receiver = Receiver().start()
    redis = Redis()
    redis.start()
    processes = Processes(tmp_path)
    env = prism_env(
        database_url(),
        redis.url,
        tmp_path / "var",
        PRISM_WEBHOOKS_ALLOW_PRIVATE="true",
        # The worker sleeps after the pause has committed, with its one pool process
        # busy: it is killed in that window, before any dispatch could run.
        PRISM_TEST_ONLY_PAUSE_AFTER_TRANSITION_S="60",
        PRISM_BROKER_VISIBILITY_TIMEOUT_S="3",
    )
    rollout = _running_rollout()
    hook = Webhook.objects.create(
        agent=rollout.agent, url=receiver.url, secret=SECRET, events=["rollout.paused"]
    )
    beat = [
        c if not c.startswith("--schedule=") else f"--schedule={tmp_path}/beat-schedule"
        for c in compose_command("beat")
    ]
    try:
        one_process = [*compose_command("worker"), "--concurrency=1", "--hostname=worker1@%h"]
        worker = processes.start("worker1", one_process, env)
        wait_until("worker1", lambda: "ready." in worker.log.read_text(), 45, worker.log)

        producer = Celery("webhook-tests")
        with producer.connection_for_write(redis.url) as broker:
            producer.send_task(
                "rollouts.tasks.apply_transition",
                args=[rollout.pk, "pause", 0],
                task_id="pause-then-die",
                connection=broker,
            )
        wait_until(
            "the pause to commit",
            lambda: TaskRun.objects.filter(task_id="pause-then-die", outcome="applied").exists(),
            30,
            worker.log,
        )
        event = Event.objects.get(type="rollout.paused")
        assert Delivery.objects.get(event=event, webhook=hook).status == "pending"
        processes.kill(worker, signal.SIGKILL)
        assert receiver.got == []  # killed between the transition and the delivery

        replacement = celery_worker(processes, env, name="worker2")
        processes.start("beat", beat, env)
        wait_until(
            "the delivery",
            lambda: Delivery.objects.filter(event=event, status="delivered").exists(),
            45,
            replacement.log,
        )
        # The pause's own message comes back too and changes nothing: no second event.
        wait_until(
            "the redelivered pause to be skipped",
            lambda: TaskRun.objects.filter(task_id="pause-then-die", outcome="skipped").exists(),
            45,
            replacement.log,
        )
        # Three more of the beat's sweeps (one a second), none of which may send it again.
        time.sleep(3)
    except BaseException:
        print(processes.logs_text())
        raise
    finally:
        processes.stop_all()
        redis.remove()
        receiver.stop()

    assert Event.objects.filter(type="rollout.paused").count() == 1
    sent = Delivery.objects.get(event=event, webhook=hook)
    assert (sent.status, sent.attempts, sent.last_status_code) == ("delivered", 1, 200)
    (got,) = receiver.got
    assert got.headers["Prism-Delivery"] == str(sent.pk)
    assert verify(SECRET, got.headers, got.body)

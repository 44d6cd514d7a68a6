"""The task-run ledger: one row per attempt of a state-changing task (``TaskRun``).

Celery delivers at least once (late acknowledgement, redelivery after a lost worker),
so a task may start more than once for one message. The ledger makes that visible:
``begin`` commits a row before the task does anything, and ``finish`` records what the
attempt did, inside the task's own transaction when it changed state, so that "applied"
is written if and only if the change committed.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from django.utils import timezone

from controlplane.models import TaskRun

_WORKER = f"{socket.gethostname()}:"


def begin(request: Any, name: str, args: list[Any]) -> TaskRun:
    """Record that an attempt of the task described by Celery's ``request`` started.

    Call it outside any transaction: the row must commit at once, so that it survives
    the attempt being killed.
    """
    delivery = getattr(request, "delivery_info", None) or {}
    return TaskRun.objects.create(
        task_id=str(request.id or ""),
        name=name,
        args=args,
        redelivered=bool(delivery.get("redelivered")),
        worker=f"{_WORKER}{os.getpid()}",
        started_at=timezone.now(),
    )


def finish(run: TaskRun, outcome: str, detail: str = "") -> None:
    """Close the attempt. Called inside the change's transaction, it commits with it."""
    run.outcome, run.detail, run.finished_at = outcome, detail[:2000], timezone.now()
    TaskRun.objects.filter(pk=run.pk).update(
        outcome=run.outcome, detail=run.detail, finished_at=run.finished_at
    )

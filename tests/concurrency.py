"""Real concurrency against PostgreSQL: threads, each with its own connection, released
together by a barrier so that they meet at the database."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from django.db import connection
from rest_framework.test import APIClient


def race[T](n: int, work: Callable[[int], T], *, timeout: float = 60) -> list[T]:
    """Run ``work(0)`` … ``work(n - 1)`` at once, each in its own thread and connection.

    Each thread opens its connection before the shared barrier, so the calls meet at the
    database rather than at connection setup, and closes it when done. Returns the
    results in index order. No thread dies silently: the first exception any of them
    raised is raised here, and a thread still running after ``timeout`` seconds (a
    deadlock?) fails the test.
    """
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(index: int) -> None:
        try:
            connection.ensure_connection()
            barrier.wait(timeout=timeout)
            results[index] = work(index)
        except BaseException as exc:
            with lock:
                errors.append(exc)
            barrier.abort()  # release the others now, rather than at the barrier's timeout
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))

    alive = [i for i, thread in enumerate(threads) if thread.is_alive()]
    if alive:
        raise AssertionError(
            f"racing threads {alive} still running after {timeout}s (deadlock?)"
        ) from (errors[0] if errors else None)
    if errors:
        raise errors[0]
    return results


def token_client(token: str) -> APIClient:
    """A new client sending ``token``: racing threads must not share one client."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client

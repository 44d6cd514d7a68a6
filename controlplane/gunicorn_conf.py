"""Gunicorn settings for Prism's web processes (``gunicorn -c python:controlplane.gunicorn_conf``).

Only what the Prometheus series need: every worker is a process of its own, so each
keeps its counters in files in one shared folder, ``PROMETHEUS_MULTIPROC_DIR``, and a
scrape of ``/metrics`` sums them (prometheus_client's multiprocess mode). The folder
must be set before any worker imports prometheus_client, which is why it is settled
here, in the master, before the workers fork.

1. Without ``PROMETHEUS_MULTIPROC_DIR``, a fresh private folder is made for this master,
   so two gunicorns on one machine never mix their counts; it is removed at exit.
2. At start (``on_starting``, in the master, before any worker), the folder is made if
   missing and emptied of a previous run's files: counters start at zero with the
   server, as Prometheus expects of a restarted target.
3. When a worker exits (``child_exit``), its live gauges are dropped. Its counters stay:
   what it counted is still part of the total.

Everything else (bind, workers, threads) stays on the command line.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

_private: str | None = None
if not os.environ.get(MULTIPROC_ENV):
    _private = os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="prism-prometheus-")


def on_starting(server: Any) -> None:
    folder = Path(os.environ[MULTIPROC_ENV])
    folder.mkdir(parents=True, exist_ok=True)
    # Only prometheus_client's own files: the folder may be one an operator named.
    for stale in folder.glob("*.db"):
        stale.unlink(missing_ok=True)


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    if _private is not None:
        shutil.rmtree(_private, ignore_errors=True)

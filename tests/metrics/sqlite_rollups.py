"""Rollups on the embedded default (SQLite), where the sketch merge is a Python function
registered on the connection: run by test_rollups_sqlite.py in a subprocess, because the
suite's own database is PostgreSQL. Prints one JSON line of findings."""

from __future__ import annotations

import json
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")


def main() -> None:
    import django

    django.setup()
    from datetime import timedelta

    from django.core.management import call_command
    from django.db import connection
    from django.utils import timezone

    from metrics import rollups
    from metrics.sketch import Sketch
    from rollouts import drain, engine, sessions
    from versions.models import Agent, Version

    call_command("migrate", verbosity=0)
    agent = Agent.objects.create(slug="lite", name="Lite")
    layers = {"code": {"ref": "git:1"}, "model": {"provider": "p", "name": "m", "params": {}},
              "prompts": {"system": "one"}, "tools": []}  # fmt: skip
    version = Version(agent=agent, label="v1", **layers)
    version.save()
    engine.set_stable(agent, version, actor="test")
    latencies = [float(i * i) for i in range(60)]
    for i, latency in enumerate(latencies):
        sessions.assign("lite", f"s{i}")
        sessions.end("lite", f"s{i}", {"success": i % 3 != 0, "latency_ms": latency})
        sessions.feedback("lite", f"s{i}", 1.0)
        sessions.feedback("lite", f"s{i}", 0.5)
    for i in range(10):
        sessions.assign("lite", f"idle{i}")
    drain.abandon_idle(agent, timezone.now() + timedelta(days=1))
    rollups.count_assignments(settle_s=0)

    found = {
        f"{metric}@{epoch}": [s.n, s.total, s.total_sq]
        for (_, epoch, metric), s in rollups.summaries([version.pk]).items()
    }
    latency = next(
        s for (_, _, m), s in rollups.summaries([version.pk]).items() if m == "latency_ms"
    )
    print(json.dumps({
        "vendor": connection.vendor,
        "summaries": found,
        "sketch_matches": latency.sketch == Sketch.of(latencies),
        "assigned": sum(rollups.assigned_counts([version.pk]).values()),
        "with_outcome": sum(rollups.with_outcome_counts([version.pk]).values()),
    }))  # fmt: skip


if __name__ == "__main__":
    main()

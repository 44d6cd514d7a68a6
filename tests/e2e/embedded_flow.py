"""A release on the embedded default (SQLite): run by test_embedded.py in a subprocess,
because the suite's own database is PostgreSQL. Prints one JSON line of findings."""

from __future__ import annotations

import io
import json
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")


def main() -> None:
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from rest_framework.test import APIClient

    from rollouts.tasks import enforce_agent_drain_policies, evaluate_rollouts
    from versions.models import Agent

    call_command("migrate", verbosity=0)

    def client(name: str, role: str) -> APIClient:
        out = io.StringIO()
        call_command("issue_token", name, "--role", role, stdout=out)
        c = APIClient()
        c.credentials(HTTP_AUTHORIZATION=f"Token {out.getvalue().strip()}")
        return c

    manager, harness = client("rm", "release-manager"), client("h", "harness")
    base = "/api/agents/research"
    manager.post("/api/agents/", {"slug": "research", "name": "Research"}, format="json")
    layers = {
        "code": {"ref": "git:1"},
        "model": {"provider": "p", "name": "m", "params": {}},
        "prompts": {"system": "one"},
        "tools": [],
    }
    v1 = manager.post(f"{base}/versions/", layers, format="json").json()["id"]
    layers["prompts"] = {"system": "two"}
    v2 = manager.post(f"{base}/versions/", layers, format="json").json()["id"]
    manager.post(f"{base}/stable/", {"version": v1}, format="json")

    def start(session_id: str):
        return harness.post(f"{base}/sessions/", {"session_id": session_id}, format="json")

    first = [start(f"a{i}") for i in range(20)]
    again = start("a0")
    stages = [{"percent": 50, "min_duration_s": 0, "min_sessions": 0}, {"percent": 100}]
    rollout = manager.post(f"{base}/rollouts/", {"candidate": v2, "stages": stages}, format="json")
    during = [start(f"b{i}").json()["version"]["id"] for i in range(40)]
    pinned = start("a1").json()["version"]["id"]
    rollback = manager.post(f"{base}/rollback/", {}, format="json")
    after = {start(f"c{i}").json()["version"]["id"] for i in range(20)}
    ended = harness.post(f"{base}/sessions/a0/end/", {"outcome": {"success": True}}, format="json")
    fleet = manager.get(f"{base}/fleet/").json()
    print(json.dumps({
        "vendor": connection.vendor,
        "first": sorted({r.status_code for r in first}),
        "first_versions": sorted({r.json()["version"]["id"] for r in first}),
        "again": again.status_code,
        "rollout": rollout.status_code,
        "during": sorted(set(during)),
        "pinned": pinned,
        "rollback": rollback.status_code,
        "after": sorted(after),
        "ended": ended.status_code,
        "states": {str(v["id"]): v["state"] for v in fleet["versions"]},
        # The drain tick's per-agent pass, in-process (the tick itself only enqueues).
        "beat": [
            bool(enforce_agent_drain_policies(Agent.objects.get(slug="research").pk)),
            evaluate_rollouts(),
        ],
        "v1": v1,
        "v2": v2,
    }))  # fmt: skip


if __name__ == "__main__":
    main()

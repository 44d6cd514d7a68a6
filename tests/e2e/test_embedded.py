"""The embedded default (SQLite, no servers) that `make run` uses: a whole release, from
registration to rollback, through the API. SQLite has its own code paths (the two-step
pin upsert, the unprepared hot read), so it gets a run of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_release_runs_end_to_end_on_sqlite(tmp_path):
    env = dict(os.environ)
    env.pop("DATABASE_URL", None)
    env.update(PRISM_VAR_DIR=str(tmp_path), CELERY_BROKER_URL="filesystem://")
    result = subprocess.run(
        [sys.executable, "-m", "tests.e2e.embedded_flow"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    v1, v2 = found["v1"], found["v2"]

    assert found["vendor"] == "sqlite"
    assert (tmp_path / "prism.sqlite3").exists()
    assert found["first"] == [201]
    assert found["first_versions"] == [v1]
    assert found["again"] == 200
    assert found["rollout"] == 201
    assert found["during"] == [v1, v2]  # 50/50: both get new sessions
    assert found["pinned"] == v1  # an existing session keeps its version
    assert found["rollback"] == 200
    assert found["after"] == [v1]  # zero stale assignments after the rollback
    assert found["ended"] == 200
    assert found["states"] == {str(v1): "active", str(v2): "draining"}

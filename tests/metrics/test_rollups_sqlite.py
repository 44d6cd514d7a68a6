"""The rollups on the embedded SQLite default, which merges sketches with a Python
function registered on each connection instead of PostgreSQL's SQL function."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_rollups_add_up_on_sqlite(tmp_path):
    env = dict(os.environ)
    env.pop("DATABASE_URL", None)
    env.update(PRISM_VAR_DIR=str(tmp_path), CELERY_BROKER_URL="filesystem://")
    result = subprocess.run(
        [sys.executable, "-m", "tests.metrics.sqlite_rollups"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])

    assert found["vendor"] == "sqlite"
    summaries = {key.split("@")[0]: value for key, value in found["summaries"].items()}
    assert summaries["success_rate"] == [60, 40, 40]
    assert summaries["feedback_score"] == [60, 30, 15]  # the second feedback replaced the first
    assert summaries["abandon_rate"] == [70, 10, 10]
    assert found["sketch_matches"] is True
    assert (found["assigned"], found["with_outcome"]) == (70, 60)

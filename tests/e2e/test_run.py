"""`make run` (scripts/run) as the README describes it, in a copy of the checkout with its
own var/ and a free port, on the embedded SQLite default: the web answers, the demo
fleet's simulator makes sessions, a rollout is mid-way, a second run is refused, and
Ctrl-C leaves no process behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.endpoints import free_port

ROOT = Path(__file__).resolve().parents[2]
BOOT_S = 180  # migrate, collectstatic and the demo seeding on a busy machine
LINUX = sys.platform.startswith("linux")


def copy_checkout(target: Path) -> None:
    """The files git would check out (tracked, and new ones not ignored), without var/,
    and the built .venv linked in, so nothing is installed."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file() and not name.startswith("var/"):
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    (target / ".venv").symlink_to(Path(sys.prefix))


def start_time(pid: int) -> str | None:
    """A process's start time (clock ticks since boot): with the pid, it names the
    process even if the pid is reused later."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def descendants(root: int) -> set[tuple[int, str]]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {root}
    while frontier:
        children = {pid for pid, parent in parents.items() if parent in frontier}
        found |= children
        frontier = children
    return {(pid, t) for pid in found if (t := start_time(pid)) is not None}


def running_in(folder: Path) -> list[str]:
    """Processes whose command line or working directory is inside ``folder``."""
    hits = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if str(folder) in cmdline or cwd.startswith(str(folder)):
            hits.append(f"{entry.name}: {cmdline}")
    return hits


def get(port: int, path: str, token: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Token {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200
        return json.loads(answer.read())


@pytest.mark.skipif(not LINUX, reason="reads the process tree from /proc")
def test_make_run_serves_the_demo_and_ctrl_c_stops_everything(tmp_path):
    checkout = tmp_path / "prism"
    copy_checkout(checkout)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")}
    env.update(PRISM_PORT=str(port), PRISM_SKIP_BOOTSTRAP="1", PRISM_SIM_ACCEL="120")
    env.pop("PRISM_VAR_DIR", None)
    log = tmp_path / "run.log"
    run = subprocess.Popen(
        [str(checkout / "scripts" / "run")],
        cwd=checkout,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    started: set[tuple[int, str]] = set()
    try:
        deadline = time.monotonic() + BOOT_S
        while f"Prism: http://127.0.0.1:{port}/" not in log.read_text():
            assert run.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        output = log.read_text()
        assert "demo / prism-demo" in output
        assert "Simulator: on" in output

        fleet_file = json.loads((checkout / "var" / "demo" / "fleet.json").read_text())
        token = fleet_file["manager_token"]
        slugs = {a["slug"] for a in get(port, "/api/agents/", token)}
        assert {"research", "support", "coder"} <= slugs

        # The simulator's sessions appear in the fleet counts.
        deadline = time.monotonic() + 90
        while True:
            fleet = get(port, "/api/agents/research/fleet/", token)
            if sum(v["total_sessions"] for v in fleet["versions"]) > 0:
                break
            assert time.monotonic() < deadline, (checkout / "var/log/simulator.log").read_text()
            time.sleep(1)
        assert sum(v["live_sessions"] + v["total_sessions"] for v in fleet["versions"]) > 0
        rollouts = get(port, "/api/agents/research/rollouts/", token)
        assert any(r["state"] == "running" and 0 < r["percent"] < 100 for r in rollouts)

        # /metrics answers loopback with no token; the workers count in var/prometheus.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            exposition = answer.read().decode()
        assert 'prism_assignments_total{agent="research"' in exposition
        assert list((checkout / "var" / "prometheus").glob("counter_*.db"))

        # A second run is refused, naming the port, and changes nothing.
        second = subprocess.run(
            [str(checkout / "scripts" / "run")],
            cwd=checkout,
            capture_output=True,
            text=True,
            env={**env, "PRISM_VAR_DIR": str(tmp_path / "other-var")},
            timeout=60,
        )
        assert second.returncode == 1
        assert f"Port {port} is already in use" in second.stderr
        again = subprocess.run(
            [str(checkout / "scripts" / "run")],
            cwd=checkout,
            capture_output=True,
            text=True,
            env={**env, "PRISM_PORT": str(free_port())},
            timeout=60,
        )
        assert again.returncode == 1
        assert "already running from this folder" in again.stderr

        started = descendants(run.pid)
        commands = " ".join(Path(f"/proc/{pid}/cmdline").read_text() for pid, _ in started)
        for part in ("gunicorn", "celery", "simulate"):
            assert part in commands

        run.send_signal(signal.SIGINT)
        assert run.wait(timeout=60) == 130
    finally:
        if run.poll() is None:
            run.kill()
        for pid, _ in started:
            # Only as a last resort, so a failure leaves no stray process either.
            if start_time(pid) is not None:
                os.kill(pid, signal.SIGKILL)

    left = [pid for pid, t in started if start_time(pid) == t]
    assert left == [], f"still running: {left}"
    assert running_in(checkout) == []
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))  # the port is free again
    assert "Stopping Prism" in log.read_text()
    # Every runtime file went under var/.
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    made = {
        str(p.relative_to(checkout))
        for p in checkout.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and not p.is_symlink()
    }
    stray = {name for name in made - set(listed) if not name.startswith("var/")}
    assert stray == set()
    assert (checkout / "var" / "prism.sqlite3").exists()
    assert (checkout / "var" / "celery" / "control").is_dir()
    assert not (checkout / "control").exists()

"""Instructions per session start, counted by callgrind: a figure noise cannot move.

    scripts/with-postgres .venv/bin/python -m bench.instructions [--requests N]

On a shared machine, wall-clock and CPU-time figures move with everything else that
runs; the number of instructions the server executes per request does not (repeated
runs agree to within 1%). This counts them with valgrind's callgrind, in-process
through every middleware, for the floor and for Prism's session start, so a change to
the hot path can be judged on a noisy machine. PostgreSQL's own work is not counted.

1. Create a fresh database, migrate it and create the fixture, as bench.assign does.
2. Start a Python under callgrind, with instrumentation off; it warms both arms up.
3. For each arm, switch instrumentation on, send N requests, switch it off and dump.
4. Report the instructions per request of each arm and their difference.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.assign import PRISM, SLUG, create_fixture, create_floor_table
from bench.server import FreshDatabase

BASE_DIR = Path(__file__).resolve().parent.parent
FLOOR = "floor"
WARM_UP = 100


def child(url: str, token: str, requests: int, handshake: Path) -> None:
    """Runs under callgrind: warm up, then each arm between two handshakes."""
    os.environ.update(DATABASE_URL=url, DJANGO_SETTINGS_MODULE="bench.settings", DEBUG="false")
    import django

    django.setup()
    from django.core.handlers.wsgi import WSGIHandler

    from bench.profile_assign import wsgi_post

    app = WSGIHandler()
    arms = {
        FLOOR: ("/bench/floor/", ""),
        PRISM: (f"/api/agents/{SLUG}/sessions/", f"Token {token}"),
    }
    for name, (path, auth) in arms.items():
        for i in range(WARM_UP):
            assert wsgi_post(app, path, f'{{"session_id":"{name}-w{i}"}}'.encode(), auth) == 201

    def meet(step: str) -> None:
        (handshake / step).touch()
        while not (handshake / f"{step}.ok").exists():
            time.sleep(0.05)

    for name, (path, auth) in arms.items():
        meet(f"{name}.start")
        for i in range(requests):
            assert wsgi_post(app, path, f'{{"session_id":"{name}-{i}"}}'.encode(), auth) == 201
        meet(f"{name}.end")


def control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def measure(url: str, token: str, requests: int) -> dict[str, float]:
    """Instructions per request of each arm, from callgrind's dumps."""
    with tempfile.TemporaryDirectory(prefix="prism-callgrind-") as tmp:
        handshake = Path(tmp)
        process = subprocess.Popen(
            [
                "valgrind", "--tool=callgrind", "--instr-atstart=no",
                f"--callgrind-out-file={handshake}/out.%p",
                sys.executable, "-m", "bench.instructions", "--child", url, token,
                "--requests", str(requests), "--handshake", str(handshake),
            ],
            cwd=BASE_DIR, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

        def wait_for(step: str) -> None:
            while not (handshake / step).exists():
                if process.poll() is not None:
                    raise RuntimeError("the measured process exited early")
                time.sleep(0.05)

        for arm in (FLOOR, PRISM):
            wait_for(f"{arm}.start")
            control(process.pid, "--zero")
            control(process.pid, "--instr=on")
            (handshake / f"{arm}.start.ok").touch()
            wait_for(f"{arm}.end")
            control(process.pid, "--instr=off")
            control(process.pid, f"--dump={arm}")
            (handshake / f"{arm}.end.ok").touch()
        process.wait(timeout=120)
        counts = {}
        for dump in handshake.glob("out.*.*"):
            text = dump.read_text(errors="replace")
            arm = re.search(r"^desc: Trigger: Client Request: (\w+)|^desc: Trigger: dump (\w+)",
                            text, re.M)  # fmt: skip
            total = re.search(r"^totals: (\d+)", text, re.M)
            if arm and total:
                counts[arm.group(1) or arm.group(2)] = int(total.group(1)) / requests
        return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--child", nargs=2, metavar=("URL", "TOKEN"), help=argparse.SUPPRESS)
    parser.add_argument("--handshake", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child, args.requests, Path(args.handshake))
        return 0
    if not shutil.which("valgrind"):
        raise SystemExit("valgrind is not installed (apt-get install valgrind).")
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        raise SystemExit("Run under scripts/with-postgres, or set DATABASE_URL to PostgreSQL.")
    db = FreshDatabase.create(url, f"prism_instr_{datetime.now(UTC):%Y%m%d%H%M%S}")
    os.environ.update(DATABASE_URL=db.url, DJANGO_SETTINGS_MODULE="bench.settings", DEBUG="false")
    os.environ.setdefault("SECRET_KEY", secrets.token_urlsafe(50))
    try:
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connection

        call_command("migrate", verbosity=0, interactive=False)
        fixture = create_fixture(SLUG)
        create_floor_table()
        connection.close()
        counts = measure(db.url, fixture.token, args.requests)
    finally:
        db.drop()
    floor, prism = counts[FLOOR], counts[PRISM]
    print(f"Instructions per request (callgrind, {args.requests} requests per arm, in-process):")
    print(f"  floor  {floor / 1e6:7.3f} M")
    print(f"  prism  {prism / 1e6:7.3f} M   (+{(prism - floor) / 1e6:.3f} M over the floor)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where one assignment's time goes: both arms called in-process, serially, through the
WSGI handler (all middleware), with no HTTP server and no concurrency.

    scripts/with-postgres .venv/bin/python -m bench.profile_assign [--requests N]

1. Set up a fresh database as bench.assign does.
2. For each arm: warm up, then time N requests (wall and CPU of this process, so the
   rest of the wall time is waiting for PostgreSQL) and count their queries.
3. Profile N Prism requests with cProfile and print the top functions.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import secrets
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.assign import PRISM, SLUG, create_fixture, create_floor_table
from bench.server import FreshDatabase

BASE_DIR = Path(__file__).resolve().parent.parent


def wsgi_post(app, path: str, body: bytes, auth: str) -> int:
    environ = {
        "REQUEST_METHOD": "POST", "PATH_INFO": path, "SCRIPT_NAME": "", "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "127.0.0.1:8000", "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body),
        "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr, "wsgi.multithread": True,
        "wsgi.multiprocess": True, "wsgi.run_once": False, "wsgi.version": (1, 0),
    }  # fmt: skip
    if auth:
        environ["HTTP_AUTHORIZATION"] = auth
    status = []
    response = app(environ, lambda s, h, *a: status.append(s))
    b"".join(response)
    response.close()
    return int(status[0].split()[0])


def measure(app, name: str, path: str, auth: str, n: int) -> None:
    from django.db import connection

    for i in range(200):
        assert wsgi_post(app, path, f'{{"session_id":"{name}w-{i}"}}'.encode(), auth) == 201
    queries: list[str] = []

    def capture(execute, sql, params, many, context):
        queries.append(" ".join(sql.split()))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(capture):
        wsgi_post(app, path, f'{{"session_id":"{name}q"}}'.encode(), auth)
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        wsgi_post(app, path, f'{{"session_id":"{name}-{i}"}}'.encode(), auth)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(
        f"{name:<6} {1000 * wall / n:6.3f} ms wall, {1000 * cpu / n:6.3f} ms CPU per request, "
        f"{len(queries)} queries through Django (plus the health check's SELECT 1):"
    )
    for sql in queries:
        print(f"         {sql[:110]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_assign")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args(argv)
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        raise SystemExit("Run under scripts/with-postgres, or set DATABASE_URL to PostgreSQL.")
    db = FreshDatabase.create(url, f"prism_profile_{datetime.now(UTC):%Y%m%d%H%M%S}")
    os.environ.update(DATABASE_URL=db.url, DJANGO_SETTINGS_MODULE="bench.settings", DEBUG="false")
    os.environ.setdefault("SECRET_KEY", secrets.token_urlsafe(50))
    try:
        import django

        django.setup()
        from django.core.handlers.wsgi import WSGIHandler
        from django.core.management import call_command
        from django.db import connection

        call_command("migrate", verbosity=0, interactive=False)
        fixture = create_fixture(SLUG)
        create_floor_table()
        app = WSGIHandler()
        prism = (f"/api/agents/{fixture.slug}/sessions/", f"Token {fixture.token}")
        measure(app, "floor", "/bench/floor/", "", args.requests)
        measure(app, PRISM, *prism, args.requests)
        # CPU time, not wall time: the waits on PostgreSQL are measured above.
        profiler = cProfile.Profile(time.process_time)
        profiler.enable()
        for i in range(args.requests):
            wsgi_post(app, prism[0], f'{{"session_id":"prof-{i}"}}'.encode(), prism[1])
        profiler.disable()
        for key in ("cumulative", "tottime"):
            print(f"\ncProfile (CPU time) of {args.requests} Prism requests, by {key}:")
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats(key).print_stats(args.top)
            print(out.getvalue().split("\n", 6)[-1].rstrip())
        connection.close()
    finally:
        db.drop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

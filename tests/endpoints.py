"""Addresses for the processes and servers tests start: a free port, and the test
database as a URL a separate process (gunicorn, a worker) can connect with."""

from __future__ import annotations

import socket
from urllib.parse import quote

from django.db import connection


def free_port() -> int:
    """A TCP port nothing listens on right now (the caller binds it soon after)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url() -> str:
    """The database this test runs on, as a ``DATABASE_URL`` for a process of its own."""
    s = connection.settings_dict
    auth = quote(s["USER"]) + (":" + quote(s["PASSWORD"]) if s["PASSWORD"] else "")
    if not s["HOST"] or s["HOST"].startswith("/"):
        return f"postgresql://{auth}@/{s['NAME']}?host={quote(s['HOST'] or '/tmp')}"
    return f"postgresql://{auth}@{s['HOST']}:{s['PORT'] or 5432}/{s['NAME']}"

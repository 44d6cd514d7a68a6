"""The benchmark's infrastructure: a fresh PostgreSQL database and a gunicorn server,
both started and removed by the benchmark itself."""

from __future__ import annotations

import http.client
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

HOST = "127.0.0.1"


@dataclass
class FreshDatabase:
    """A database created for one run on the server ``DATABASE_URL`` points at, so the
    benchmark never touches existing data. When the role may not create databases, the
    given database is used as it is (``fresh`` is then False)."""

    admin_url: str
    url: str
    name: str
    fresh: bool

    @classmethod
    def create(cls, admin_url: str, name: str) -> FreshDatabase:
        url = urlunsplit(urlsplit(admin_url)._replace(path="/" + name))
        try:
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
        except psycopg.errors.InsufficientPrivilege:
            dbname = urlsplit(admin_url).path.lstrip("/")
            return cls(admin_url, admin_url, dbname, fresh=False)
        return cls(admin_url, url, name, fresh=True)

    def drop(self) -> None:
        if self.fresh:
            with psycopg.connect(self.admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@dataclass
class GunicornConfig:
    workers: int
    threads: int
    reuse_port: bool = True
    keepalive_s: int = 75

    def args(self) -> list[str]:
        args = [
            "--worker-class", "gthread", "--workers", str(self.workers),
            "--threads", str(self.threads), "--keep-alive", str(self.keepalive_s),
            "--log-level", "warning", "--timeout", "60",
        ]  # fmt: skip
        # With one shared listener, the first gthread worker to wake up accepts every
        # connection a small keep-alive client opens, and the other workers idle. With
        # SO_REUSEPORT each worker listens on its own socket and the kernel spreads
        # connections over them.
        return [*args, "--reuse-port"] if self.reuse_port else args

    def describe(self) -> str:
        listener = "a listener per worker (SO_REUSEPORT)" if self.reuse_port else "one listener"
        return (
            f"gthread, {self.workers} workers x {self.threads} threads, {listener}, "
            f"keep-alive {self.keepalive_s}s"
        )


class Gunicorn:
    """Prism's WSGI app under gunicorn on 127.0.0.1, with the given environment."""

    def __init__(self, config: GunicornConfig, env: dict[str, str], log_path: Path) -> None:
        self.config = config
        self.env = env
        self.log_path = log_path
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self._log = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, ready_path: str, headers: dict[str, str], timeout_s: float = 60) -> None:
        base_dir = Path(__file__).resolve().parent.parent
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "--config",
            str(base_dir / "controlplane" / "gunicorn_conf.py"),
            "controlplane.wsgi:application",
            "--chdir",
            str(base_dir),
            "--bind",
            f"{HOST}:{self.port}",
            *self.config.args(),
        ]
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            command, env=self.env, cwd=base_dir, stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited at start-up:\n{self.log_tail()}")
            try:
                conn = http.client.HTTPConnection(HOST, self.port, timeout=5)
                conn.request("GET", ready_path, headers=headers)
                if conn.getresponse().status == 200:
                    conn.close()
                    return
                conn.close()
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"gunicorn did not answer within {timeout_s}s:\n{self.log_tail()}")

    def post(self, path: str, body: str, headers: dict[str, str]) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=10)
        try:
            conn.request(
                "POST", path, body=body, headers={"Content-Type": "application/json", **headers}
            )
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def gunicorn_version() -> str:
    import gunicorn

    return gunicorn.__version__

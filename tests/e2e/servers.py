"""Throwaway servers and real processes for the fault tests.

Each fault test owns its PostgreSQL and its Redis, started from the local binaries the
way scripts/with-postgres and scripts/with-redis start them, on private Unix sockets,
so that it can stop and restart them without touching the suite's shared servers.
Prism's own processes are started with the commands docker-compose.yml names.

Every wait here has a deadline; nothing blocks forever.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import yaml

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def wait_for(what: str, ready: Callable[[], Any], timeout: float, log: Path | None = None) -> Any:
    """Poll ``ready`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = ready()
        except (OSError, psycopg.Error):
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            tail = f"\n--- {log.name}\n{log.read_text()[-6000:]}" if log and log.exists() else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{tail}")
        time.sleep(0.1)


def _postgres_bin() -> Path:
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not candidates:
        raise RuntimeError("the fault tests need the PostgreSQL server binaries (initdb)")
    return Path(candidates[-1])


class Postgres:
    """A PostgreSQL cluster in its own folder, listening only on a socket in it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.data = folder / "data"
        self.log = folder / "postgres.log"
        self._bin = _postgres_bin()
        # initdb refuses to run as root; use the account the Debian package creates.
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    @classmethod
    def create(cls) -> Postgres:
        pg = cls(_private_folder("prism-fault-pg."))
        pg._run("initdb", "-D", pg.data, "-U", "prism", "--auth=trust", "-E", "UTF8")
        return pg

    def copy(self) -> Postgres:
        """A new cluster holding the same data (this one must be stopped)."""
        other = Postgres(_private_folder("prism-fault-pg."))
        subprocess.run(["cp", "-a", str(self.data), str(other.data)], check=True, timeout=60)
        return other

    @property
    def url(self) -> str:
        return f"postgresql://prism@/prism?host={self.folder}"

    def start(self) -> None:
        options = (
            f"-c listen_addresses='' -c unix_socket_directories='{self.folder}' "
            "-c fsync=off -c max_connections=100"
        )
        self._run("pg_ctl", "-D", self.data, "-s", "-w", "-t", "30", "-l", self.log,
                  "-o", options, "start")  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", self.data, "-s", "-w", "-t", "30", "-m", mode, "stop")

    def createdb(self) -> None:
        self._run("createdb", "-h", self.folder, "-U", "prism", "prism")

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(
            host=str(self.folder), user="prism", dbname="prism", autocommit=True, connect_timeout=5
        )

    def query(self, sql: str, params: Any = None) -> list[tuple]:
        with self.connect() as conn:
            return conn.execute(sql, params).fetchall()

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", self.data, "-s", "-w", "-m", "immediate", "stop", check=False)
        shutil.rmtree(self.folder, ignore_errors=True)

    def _run(self, tool: str, *args: Any, check: bool = True) -> None:
        command = [*self._as, str(self._bin / tool), *map(str, args)]
        subprocess.run(command, check=check, timeout=60, capture_output=True)


class Redis:
    """A redis-server without persistence on a private socket. A restart loses its data,
    like a crashed production Redis without an append-only file."""

    def __init__(self) -> None:
        self.folder = _private_folder("prism-fault-redis.")
        self.socket = self.folder / "redis.sock"
        self.log = self.folder / "redis.log"
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis+socket://{self.socket}"

    def start(self) -> None:
        command = [
            "redis-server", "--port", "0", "--unixsocket", str(self.socket),
            "--unixsocketperm", "700", "--save", "", "--appendonly", "no",
            "--dir", str(self.folder), "--logfile", str(self.log),
        ]  # fmt: skip
        self._proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_for("redis to listen", self.socket.exists, 10, self.log)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
        self._proc = None
        wait_for("redis to remove its socket", lambda: not self.socket.exists(), 10)

    def remove(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=10)
        shutil.rmtree(self.folder, ignore_errors=True)


def _private_folder(prefix: str) -> Path:
    # Under /tmp rather than pytest's tmp_path: the postgres account must reach it, and
    # a Unix socket path must stay under about 100 characters.
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    folder.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    return folder


def compose_command(service: str) -> list[str]:
    spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return shlex.split(spec["services"][service]["command"])


def prism_env(database_url: str, broker_url: str, var: Path, **extra: str) -> dict[str, str]:
    """The environment of a production process, pointed at these servers."""
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url,
        CELERY_BROKER_URL=broker_url,
        SECRET_KEY=env.get("SECRET_KEY") or "prism-fault-tests-secret-key-0123456789abcdef",
        DEBUG="false",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        PRISM_VAR_DIR=str(var),
        PRISM_BEAT_SECONDS="1",
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        **extra,
    )
    return env


class Process(subprocess.Popen):
    """A started Prism process and the file its output goes to."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("a") as out:
            # Its own process group: a prefork worker or gunicorn is a tree of processes.
            super().__init__(
                command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip


class Processes:
    """The Prism processes a test started, each with a log file, all killed at the end."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[Process] = []

    def start(self, name: str, command: list[str], env: dict[str, str]) -> Process:
        proc = Process(command, env, self.logs / f"{name}.log")
        self.started.append(proc)
        return proc

    def kill(self, proc: Process, sig: int = signal.SIGKILL) -> None:
        """Signal the whole group: the process and every child it forked."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(timeout=10)

    def stop_all(self) -> None:
        """SIGKILL every group: the servers they used are thrown away with them, so a
        graceful shutdown would only cost time."""
        for proc in self.started:
            self.kill(proc)

    def logs_text(self) -> str:
        return "".join(f"\n--- {p.log.name}\n{p.log.read_text()[-4000:]}" for p in self.started)


def celery_worker(processes: Processes, env: dict[str, str], name: str = "worker") -> Process:
    """The compose worker (prefork, two pool processes), ready to consume."""
    proc = processes.start(name, [*compose_command("worker"), f"--hostname={name}@%h"], env)
    wait_for(f"{name} to be ready", lambda: "ready." in proc.log.read_text(), 45, proc.log)
    return proc

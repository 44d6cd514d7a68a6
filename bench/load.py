"""Load generators: closed-loop clients on keep-alive connections, each request a new
session id.

``wrk`` is the default: it is C with an epoll loop, so on a small machine it takes
little CPU away from the server it measures. When it is missing and cannot be
installed, a lean asyncio client speaking raw HTTP/1.1 takes its place; it costs the
server more CPU, so its numbers are comparable with each other but not with wrk's.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

LUA_SCRIPT = Path(__file__).with_name("post_session.lua")


@dataclass
class Load:
    """What one timed run of one arm did, as the client saw it."""

    requests: int  # responses received within the run
    sent: int  # requests written (a run can stop with some in flight)
    unexpected: int  # responses whose status was not the expected one
    duration_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: dict[str, int] = field(default_factory=dict)  # socket errors, by kind

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0


class Client:
    name = ""

    def run(
        self,
        url: str,
        *,
        prefix: str,
        auth: str,
        expected: int,
        connections: int,
        duration_s: float,
    ) -> Load:
        raise NotImplementedError


# --- wrk ---------------------------------------------------------------------------------


def find_wrk(*, install: bool, log) -> str | None:
    """The path to wrk, installing it with apt-get when allowed and possible."""
    path = shutil.which("wrk")
    if path or not install:
        return path
    if shutil.which("apt-get") is None:
        return None
    prefix: list[str] = []
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            return None
        if subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode != 0:
            return None
        prefix = ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log("wrk is missing; installing it with apt-get …")
    for steps in (
        [["install", "-y", "-q", "wrk"]],
        [["update", "-q"], ["install", "-y", "-q", "wrk"]],
    ):
        ok = True
        for step in steps:
            done = subprocess.run(
                [*prefix, "apt-get", *step], env=env, capture_output=True, text=True, timeout=600
            )
            ok = done.returncode == 0
            if not ok:
                break
        if ok and shutil.which("wrk"):
            return shutil.which("wrk")
    log("apt-get could not install wrk.")
    return None


class WrkClient(Client):
    name = "wrk"

    def __init__(self, path: str, threads: int = 2) -> None:
        self.path = path
        self.threads = threads

    def version(self) -> str:
        out = subprocess.run([self.path, "--version"], capture_output=True, text=True)
        return (out.stdout or out.stderr).splitlines()[0].strip()

    def run(
        self,
        url: str,
        *,
        prefix: str,
        auth: str,
        expected: int,
        connections: int,
        duration_s: float,
    ) -> Load:
        threads = max(1, min(self.threads, connections))
        command = [
            self.path,
            "-t",
            str(threads),
            "-c",
            str(connections),
            "-d",
            f"{duration_s:g}s",
            "--timeout",
            "10s",
            "-s",
            str(LUA_SCRIPT),
            url,
            "--",
            prefix,
            auth,
            str(expected),
        ]
        out = subprocess.run(command, capture_output=True, text=True, timeout=duration_s + 60)
        line = next((line for line in out.stdout.splitlines() if line.startswith("BENCH ")), None)
        if out.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        data = json.loads(line.removeprefix("BENCH "))
        return Load(
            requests=data["requests"],
            sent=data["sent"],
            unexpected=data["unexpected"],
            duration_s=data["duration_us"] / 1e6,
            p50_ms=data["p50_us"] / 1000,
            p99_ms=data["p99_us"] / 1000,
            max_ms=data["max_us"] / 1000,
            errors={k: v for k, v in data["errors"].items() if v},
        )


# --- asyncio fallback --------------------------------------------------------------------


def percentile(sorted_values: list[int], p: float) -> int:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return 0
    rank = max(1, -(-len(sorted_values) * p // 100))
    return sorted_values[int(rank) - 1]


class PythonClient(Client):
    """Raw HTTP/1.1 over asyncio streams: one coroutine per keep-alive connection."""

    name = "python-asyncio"

    def version(self) -> str:
        return "asyncio raw HTTP/1.1 client (bench/load.py)"

    def run(
        self,
        url: str,
        *,
        prefix: str,
        auth: str,
        expected: int,
        connections: int,
        duration_s: float,
    ) -> Load:
        return asyncio.run(self._run(url, prefix, auth, expected, connections, duration_s))

    async def _run(
        self,
        url: str,
        prefix: str,
        auth: str,
        expected: int,
        connections: int,
        duration_s: float,
    ) -> Load:
        rest = url.removeprefix("http://")
        hostport, _, path = rest.partition("/")
        host, _, port = hostport.partition(":")
        head = f"POST /{path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\n"
        if auth:
            head += f"Authorization: {auth}\r\n"
        latencies: list[int] = []
        counts = {"sent": 0, "unexpected": 0}
        errors: dict[str, int] = {}
        start = time.perf_counter()
        deadline = start + duration_s

        async def connection(number: int) -> None:
            reader, writer = await asyncio.open_connection(host, int(port))
            n = 0
            try:
                while time.perf_counter() < deadline:
                    n += 1
                    body = f'{{"session_id":"{prefix}-{number}-{n}"}}'.encode()
                    request = f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body
                    began = time.perf_counter_ns()
                    writer.write(request)
                    counts["sent"] += 1
                    status = await _read_response(reader)
                    latencies.append(time.perf_counter_ns() - began)
                    if status != expected:
                        counts["unexpected"] += 1
            except (OSError, asyncio.IncompleteReadError, ValueError):
                errors["read"] = errors.get("read", 0) + 1
            finally:
                writer.close()

        await asyncio.gather(*(connection(i + 1) for i in range(connections)))
        elapsed = time.perf_counter() - start
        latencies.sort()
        return Load(
            requests=len(latencies),
            sent=counts["sent"],
            unexpected=counts["unexpected"],
            duration_s=elapsed,
            p50_ms=percentile(latencies, 50) / 1e6,
            p99_ms=percentile(latencies, 99) / 1e6,
            max_ms=(latencies[-1] if latencies else 0) / 1e6,
            errors=errors,
        )


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one response with a Content-Length body; return its status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    if length is None:
        raise ValueError("response without Content-Length")
    await reader.readexactly(length)
    return status

"""Small real HTTP servers the source tests start: a fake agent platform's outcome
export (it speaks real HTTP; only the platform behind it is pretend), an exporter of
counters in Prometheus' text format, and a real Prometheus server to scrape it (or
Prism's own /metrics)."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.endpoints import free_port


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class Server:
    """A ThreadingHTTPServer on a free port, in a daemon thread, stopped by ``close``."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class ExportHandler(_Quiet):
    def do_GET(self) -> None:
        export: FakeExport = self.server.owner  # type: ignore[attr-defined]
        query = parse_qs(urlsplit(self.path).query)
        cursor = query.get("cursor", [None])[0]
        with export.lock:
            export.requests.append(self.path)
            mode = export.mode
        if mode == "slow":
            time.sleep(export.delay)
        if mode == "500" or cursor in export.fail_at:
            self._send(500, b'{"error": "the export is down"}')
            return
        if mode == "garbage":
            self._send(200, b"<html>not json</html>")
            return
        outcomes, next_cursor = export.pages.get(cursor, ([], cursor))
        body = {"outcomes": outcomes}
        if next_cursor is not None:
            body["next_cursor"] = next_cursor
        self._send(200, json.dumps(body).encode())

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class FakeExport(Server):
    """``pages`` maps a cursor (None for the first request) to (outcomes, next cursor)."""

    def __init__(self) -> None:
        self.pages: dict[str | None, tuple[list[dict], str | None]] = {}
        self.requests: list[str] = []
        self.mode = "ok"
        self.delay = 0.0
        self.fail_at: set[str] = set()  # cursors whose page answers 500
        self.lock = threading.Lock()
        super().__init__(ExportHandler)


class ExporterHandler(_Quiet):
    def do_GET(self) -> None:
        exporter: Exporter = self.server.owner  # type: ignore[attr-defined]
        with exporter.lock:
            lines = []
            for name in sorted({name for name, _ in exporter.counters}):
                lines.append(f"# TYPE {name} counter")
                for (metric, labels), value in sorted(exporter.counters.items()):
                    if metric == name:
                        rendered = ",".join(f'{k}="{v}"' for k, v in labels)
                        lines.append(f"{name}{{{rendered}}} {value}")
        body = ("\n".join(lines) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Exporter(Server):
    """Counters in Prometheus' text exposition format, set by the test."""

    def __init__(self) -> None:
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self.lock = threading.Lock()
        super().__init__(ExporterHandler)

    def set(self, name: str, value: float, **labels: str) -> None:
        with self.lock:
            self.counters[(name, tuple(sorted(labels.items())))] = value


def wait_for(what: str, probe: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if probe():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what} after {timeout}s")


class Prometheus:
    """A real Prometheus on a free port, scraping ``target`` every second; with
    ``token_file``, sending the token in it as a bearer token."""

    def __init__(self, tmp: Path, target: str, token_file: Path | None = None) -> None:
        self.port = free_port()
        config = tmp / "prometheus.yml"
        authorization = (
            f"    authorization:\n      type: Bearer\n      credentials_file: {token_file}\n"
            if token_file is not None
            else ""
        )
        config.write_text(
            "global:\n  scrape_interval: 1s\n"
            "scrape_configs:\n  - job_name: prism-test\n    scrape_interval: 1s\n"
            f"{authorization}"
            f"    static_configs:\n      - targets: ['{target}']\n"
        )
        self.log = open(tmp / "prometheus.log", "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"

    def query(self, promql: str) -> list:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())["data"]["result"]

    def value(self, promql: str) -> float | None:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def targets(self) -> list[dict]:
        with urllib.request.urlopen(f"{self.url}/api/v1/targets", timeout=5) as response:
            return json.loads(response.read())["data"]["activeTargets"]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)
        self.log.close()

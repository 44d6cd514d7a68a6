"""bench.scale's interleaved timing: the targets take turns request by request, warm-ups
are not counted, and the ratio is of the targets' own medians."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench.scale import Interleaved, Target, Timing, interleaved_gets, side_by_side_args


@pytest.fixture
def servers() -> Iterator[tuple[list[Target], list[str]]]:
    """Two local servers, "a" and "b", that log which of them each request reached
    (in the order the requests arrived) and answer 200 and 404."""
    arrivals: list[str] = []
    running = []

    def handler(name: str, status: int) -> type[BaseHTTPRequestHandler]:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                arrivals.append(name)
                body = f"{name}:{self.path}".encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    targets = []
    for name, status in (("a", 200), ("b", 404)):
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler(name, status))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        running.append(server)
        targets.append(Target(name, server.server_address[1], f"/{name}/", {}))
    yield targets, arrivals
    for server in running:
        server.shutdown()
        server.server_close()


def test_targets_take_turns_request_by_request_reversed_every_round(servers):
    targets, arrivals = servers
    measured = interleaved_gets(targets, requests=4, rounds=2, warmup=1, budget_s=60)
    # One warm-up each, then round 1 (a first), then round 2 (b first).
    assert arrivals == ["a", "b", *"abab", *"baba"]
    assert [len(measured.timings[t].ms) for t in "ab"] == [4, 4]
    assert len(measured.rounds) == 2


def test_statuses_and_bodies_are_each_targets_own_and_warm_ups_are_not_counted(servers):
    targets, _ = servers
    measured = interleaved_gets(targets, requests=6, rounds=3, warmup=2, budget_s=60)
    assert measured.timings["a"].statuses == {200: 6}
    assert measured.timings["b"].statuses == {404: 6}
    assert measured.timings["b"].last_body == b"b:/b/"


def test_the_ratio_is_of_all_requests_medians_and_the_rounds_show_its_spread():
    measured = Interleaved(
        timings={
            "big": Timing([3.0, 4.0, 9.0], {}, b""),
            "small": Timing([1.0, 2.0, 2.5], {}, b""),
        },
        rounds=[{"big": 3.0, "small": 1.0}, {"big": 9.0, "small": 2.0}],
    )
    assert measured.ratio("big", "small") == 2.0
    assert measured.ratios("big", "small") == [3.0, 4.5]


@pytest.mark.parametrize("options", [["--rounds", "0"], ["--requests", "5", "--rounds", "6"]])
def test_rounds_outside_one_to_the_requests_are_refused_with_a_message(options, capsys):
    with pytest.raises(SystemExit) as exit:
        side_by_side_args("bench", None, options)
    assert exit.value.code == 2
    assert "--rounds must be from 1 to --requests" in capsys.readouterr().err
    assert side_by_side_args("bench", None, ["--requests", "5", "--rounds", "5"]).rounds == 5

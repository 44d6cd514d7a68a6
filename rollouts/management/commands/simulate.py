"""``manage.py simulate``: a fleet of simulated harnesses driving a Prism over HTTP.

It uses only the REST API (through ``prism_client``), never the database, so it can
drive any Prism it can reach: ``--url`` names it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from prism_client import Client, PrismError
from simulator import demo
from simulator.fleet import AgentRun, Driver, Fleet, Stats, ensure_agent, wait_for
from simulator.scenarios import SCENARIOS


class Command(BaseCommand):
    help = (
        "Drive Prism's REST API with simulated harnesses: assign, heartbeat, obey "
        "directives, end with outcomes, send late feedback. Either one scenario on one "
        "agent (--scenario), or the demo fleet that `manage.py demo` wrote (--fleet)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--url", default=os.environ.get("PRISM_URL", "http://127.0.0.1:8000"))
        parser.add_argument("--fleet", help="the fleet file `manage.py demo` wrote")
        parser.add_argument("--scenario", choices=sorted(SCENARIOS))
        parser.add_argument("--agent", help="agent slug (default: the scenario's own)")
        parser.add_argument(
            "--token", default=os.environ.get("PRISM_TOKEN"), help="harness token ($PRISM_TOKEN)"
        )
        parser.add_argument(
            "--manager-token",
            default=os.environ.get("PRISM_MANAGER_TOKEN"),
            help="release-manager token, for --setup and the rainbow's deploys",
        )
        parser.add_argument(
            "--setup",
            action="store_true",
            help="create the agent, versions and rollout through the API if missing",
        )
        parser.add_argument("--seed", type=int, default=1)
        parser.add_argument(
            "--accel", type=float, help="simulated seconds per real second (default 60)"
        )
        parser.add_argument(
            "--duration", type=float, help="real seconds to run (default: until stopped)"
        )
        parser.add_argument("--rate", type=float, help="new sessions per real second, per agent")
        parser.add_argument(
            "--heartbeat", type=float, help="simulated seconds between heartbeats (default 60)"
        )
        parser.add_argument(
            "--tag", help="session ids are sim-TAG-N (default: the seed and the start time)"
        )
        parser.add_argument("--concurrency", type=int, default=8, help="HTTP worker threads")
        parser.add_argument(
            "--timeout", type=float, default=5.0, help="seconds per HTTP attempt (default 5)"
        )
        parser.add_argument("--progress", type=float, default=10.0, help="seconds between lines")
        parser.add_argument(
            "--wait", type=float, default=60.0, help="seconds to wait for Prism to answer"
        )

    def handle(self, *args, **options):
        logging.getLogger("prism_client").setLevel(logging.ERROR)
        runs, harness_token, manager_token, accel = self._plan(options)
        if options["accel"] is not None:
            accel = options["accel"]
        if not harness_token:
            raise CommandError("a harness token is needed: --token or $PRISM_TOKEN")
        if not options["timeout"] > 0:
            raise CommandError("--timeout must be above 0")
        if options["concurrency"] < 1:
            raise CommandError("--concurrency must be at least 1")
        if options["heartbeat"] is not None:
            if not options["heartbeat"] > 0:
                raise CommandError("--heartbeat must be above 0")
            runs = [
                replace(r, scenario=replace(r.scenario, heartbeat_s=options["heartbeat"]))
                for r in runs
            ]
        stop = threading.Event()
        previous = {
            sig: signal.signal(sig, lambda *_: stop.set())
            for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            self._simulate(runs, harness_token, manager_token, accel, stop, options)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _simulate(self, runs, harness_token, manager_token, accel, stop, options) -> None:
        stats = Stats(options["seed"])
        try:
            fleet = Fleet(accel=accel, concurrency=options["concurrency"], stats=stats)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        tag = options["tag"] or f"{options['seed']}-{int(time.time()):x}"

        def client(slug: str, token: str, observer=None) -> Client:
            return Client(
                options["url"],
                token,
                slug,
                timeout=options["timeout"],
                retries=2,
                observer=observer,
            )

        try:
            for n, run in enumerate(runs):
                manager = client(run.slug, manager_token) if manager_token else None
                harness = client(run.slug, harness_token, stats.observe)
                if n == 0:
                    # A client of its own: the probes are not the fleet's traffic.
                    wait_for(client(run.slug, harness_token), options["wait"], stop)
                if options["setup"]:
                    if manager is None:
                        raise CommandError("--setup needs a release-manager token")
                    ensure_agent(manager, run.spec, accel)
                driver = Driver(fleet, run, harness, manager, options["seed"] * 1000 + n, tag)
                fleet.drivers.append(driver)
        except PrismError as exc:
            raise CommandError(f"Prism at {options['url']}: {exc}") from None

        names = ", ".join(f"{r.slug} ({r.scenario.name}, {r.rate_per_s:g}/s)" for r in runs)
        self.stdout.write(
            f"Simulating {names} against {options['url']}; the clock runs {accel:g}x "
            "faster than real time (stop with Ctrl-C)."
        )
        try:
            fleet.run(options["duration"], stop, self._progress, options["progress"])
        except (PrismError, ValueError) as exc:
            raise CommandError(str(exc)) from None
        for driver in fleet.drivers:
            driver.client.report_pending()
        self.stdout.write(f"Simulator stopped: {stats.line()}")
        for error, count in stats.errors.most_common(5):
            self.stdout.write(f"  {count} x {error}")
        self.stdout.write("summary: " + json.dumps(stats.summary(), sort_keys=True))

    def _progress(self, line: str) -> None:
        self.stdout.write(f"simulator: {line}")
        self.stdout.flush()

    def _plan(self, options) -> tuple[list[AgentRun], str | None, str | None, float]:
        if options["fleet"]:
            path = Path(options["fleet"])
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise CommandError(f"cannot read the fleet file {path}: {exc}") from None
            by_slug = {spec.slug: spec for spec in demo.DEMO}
            runs = []
            for entry in data["agents"]:
                spec = by_slug.get(entry["slug"]) or demo.BY_SCENARIO[entry["scenario"]]
                spec = replace(spec, slug=entry["slug"])
                rate = options["rate"] or entry.get("rate_per_s", spec.rate_per_s)
                runs.append(AgentRun(entry["slug"], SCENARIOS[entry["scenario"]], rate, spec))
            return (
                runs,
                options["token"] or data["harness_token"],
                options["manager_token"] or data.get("manager_token"),
                float(data.get("accel", 60.0)),
            )
        if not options["scenario"]:
            raise CommandError("give --scenario (with --token) or --fleet")
        spec = demo.BY_SCENARIO[options["scenario"]]
        if options["agent"]:
            spec = replace(spec, slug=options["agent"])
        rate = options["rate"] or spec.rate_per_s
        if rate <= 0:
            raise CommandError("--rate must be above 0")
        run = AgentRun(spec.slug, SCENARIOS[options["scenario"]], rate, spec)
        return [run], options["token"], options["manager_token"], 60.0

"""The fleet: simulated harnesses driving Prism over HTTP with ``prism_client``.

One scheduler thread keeps a heap of timed events (arrivals, heartbeats, ends, late
feedback, deploys) and hands each due one to a bounded pool of worker threads that make
the HTTP call. When Prism is slow, the pool's slots run out and the scheduler waits, so
the fleet never floods it; the lag shows in the progress lines.

The clock: scenario times are simulated seconds, turned into real seconds by dividing
by ``accel``. Arrival rates are real sessions per second, so the load does not change
with the acceleration; only how long each session lasts does.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from prism_client import (
    Call,
    Client,
    Directive,
    NotFound,
    PrismError,
    Refused,
    Session,
    Unavailable,
)
from simulator import demo
from simulator.scenarios import Scenario
from simulator.traffic import Arrivals, Quality, SessionPlan

log = logging.getLogger("simulator")

# Statuses each call may answer with; anything else counts as an error.
EXPECTED = {
    "start": {200, 201},
    "report": {200, 201},
    "heartbeat": {200},
    "end": {200},
    "feedback": {200},
    "routing": {200, 304},
    "version": {200},
}
RESERVOIR = 20_000  # latency samples kept per call


class Stats:
    """Counters and latencies, fed by every HTTP attempt (the client's observer) and by
    the fleet. Thread-safe."""

    def __init__(self, seed: int = 0) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.statuses: Counter[tuple[str, int | None]] = Counter()
        self.errors: Counter[str] = Counter()
        self.latencies: dict[str, list[float]] = {}
        self.seen: Counter[str] = Counter()
        self.rng = random.Random(seed)

    def observe(self, call: Call) -> None:
        with self.lock:
            if call.stale:
                self.counts["reconnects"] += 1
                return
            self.statuses[(call.name, call.status)] += 1
            if call.status is None:
                self.errors[f"{call.name}: {call.error}"] += 1
            elif call.status not in EXPECTED.get(call.name, range(100, 500)):
                self.errors[f"{call.name}: HTTP {call.status}"] += 1
            # Reservoir sampling keeps a uniform sample of a long run's latencies.
            samples = self.latencies.setdefault(call.name, [])
            self.seen[call.name] += 1
            if len(samples) < RESERVOIR:
                samples.append(call.seconds)
            else:
                slot = self.rng.randrange(self.seen[call.name])
                if slot < RESERVOIR:
                    samples[slot] = call.seconds

    def count(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counts[name] += n

    @property
    def error_count(self) -> int:
        with self.lock:
            return sum(self.errors.values())

    def percentile_ms(self, name: str, p: float) -> float | None:
        with self.lock:
            samples = sorted(self.latencies.get(name, []))
        if not samples:
            return None
        index = min(len(samples) - 1, max(0, math.ceil(p / 100 * len(samples)) - 1))
        return samples[index] * 1000

    def summary(self) -> dict[str, Any]:
        """Counts, errors and latency percentiles (ms), for machines."""
        with self.lock:
            counts, errors = dict(self.counts), dict(self.errors)
            names = sorted(self.latencies)
        return {
            "counts": counts,
            "errors": errors,
            "error_count": sum(errors.values()),
            "p50_ms": {n: self.percentile_ms(n, 50) for n in names},
            "p99_ms": {n: self.percentile_ms(n, 99) for n in names},
        }

    def line(self) -> str:
        with self.lock:
            c = dict(self.counts)
        p99 = {n: self.percentile_ms(n, 99) for n in ("start", "heartbeat", "end")}
        shown = " ".join(f"{n}={v:.1f}ms" for n, v in p99.items() if v is not None)
        return (
            f"sessions started={c.get('started', 0)} live={c.get('started', 0) - c.get('over', 0)} "
            f"ended={c.get('ended', 0)} local={c.get('local_pins', 0)} "
            f"drain={c.get('told_drain', 0)} terminate={c.get('told_terminate', 0)} "
            f"deploys={c.get('deploys', 0)} errors={self.error_count} p99 {shown}"
        )


@dataclass(order=True)
class _Event:
    at: float
    seq: int
    run: Callable[[], None] = field(compare=False)


@dataclass
class _Live:
    """One simulated session in flight."""

    plan: SessionPlan
    session: Session | None = None
    ends_at: float = 0.0
    end_token: int = 0
    over: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True)
class AgentRun:
    """One agent's share of the fleet."""

    slug: str
    scenario: Scenario
    rate_per_s: float
    spec: demo.AgentSpec | None = None  # what deploys start from (rainbow)


class Driver:
    """The harnesses of one agent: arrivals, sessions, and (rainbow) the deploys."""

    def __init__(
        self,
        fleet: Fleet,
        run: AgentRun,
        harness: Client,
        manager: Client | None,
        seed: int,
        tag: str,
    ) -> None:
        self.fleet = fleet
        self.run = run
        self.scenario = run.scenario
        self.client = harness
        self.manager = manager
        self.arrivals = Arrivals(seed, run.scenario.durations)
        self.tag = tag
        self.baseline: int | None = None
        self.deploys = 0
        self.next_arrival = self.next_deploy = 0.0

    def begin(self) -> None:
        """Learn the stable the run starts from (the regression's baseline), then start
        the arrivals and, for a fleet that deploys, the deploy clock."""
        self.baseline = self.client.refresh_routing().stable
        self.next_arrival = time.monotonic() + self.arrivals.gap(self.run.rate_per_s)
        self.fleet.on_schedule(self.next_arrival, self.arrive)
        if self.scenario.deploy_every_s is not None:
            if self.manager is None:
                raise ValueError(
                    f"the {self.scenario.name} scenario deploys: it needs a release-manager token"
                )
            self.next_deploy = time.monotonic() + self.fleet.real(self.scenario.deploy_every_s)
            self.fleet.on_schedule(self.next_deploy, self.deploy)

    def quality(self, version_id: int) -> Quality:
        if self.scenario.candidate_quality is not None and version_id != self.baseline:
            return self.scenario.candidate_quality
        return self.scenario.quality

    # --- events (each runs on a worker thread) -------------------------------------

    def arrive(self) -> None:
        # Drawn on the scheduler thread, in order: the same seed, the same sessions.
        plan = self.arrivals.next()
        # Open loop: each arrival is due a gap after the previous one was due, not after
        # it was handled, so a slow server shows as lag, never as a lower offered rate.
        self.next_arrival += self.arrivals.gap(self.run.rate_per_s)
        self.fleet.on_schedule(self.next_arrival, self.arrive)
        self.fleet.submit(lambda: self.start(plan))

    def start(self, plan: SessionPlan) -> None:
        live = _Live(plan)
        session_id = f"sim-{self.tag}-{plan.number}"
        try:
            live.session = self.client.start(session_id)
        except PrismError as exc:
            self.fleet.stats.count("start_failed")
            log.debug("start of %s failed: %s", session_id, exc)
            return
        self.fleet.stats.count("started")
        if live.session.local:
            self.fleet.stats.count("local_pins")
        if live.session.directive != Directive.CONTINUE:
            self._obey(live, live.session.directive)
            return
        now = time.monotonic()
        duration = self.fleet.real(plan.duration_s)
        beat = self.fleet.real(self.scenario.heartbeat_s)
        with live.lock:
            live.ends_at = now + duration
            token = live.end_token
        self.fleet.at(live.ends_at, lambda: self.end(live, token))
        first = plan.heartbeat_phase * beat
        if first < duration:
            self.fleet.at(now + first, lambda: self.heartbeat(live))

    def heartbeat(self, live: _Live) -> None:
        if live.over:
            return
        try:
            directive = live.session.heartbeat()
        except NotFound:
            # Prism lost the session (e.g. a local pin it refused): nothing left to do.
            self._finish(live, "lost")
            return
        except PrismError as exc:
            log.debug("heartbeat of %s failed: %s", live.session.session_id, exc)
            directive = live.session.directive
        if directive != Directive.CONTINUE:
            self._obey(live, directive)
            return
        nxt = time.monotonic() + self.fleet.real(self.scenario.heartbeat_s)
        if nxt < live.ends_at:
            self.fleet.at(nxt, lambda: self.heartbeat(live))

    def _obey(self, live: _Live, directive: Directive) -> None:
        """``drain``: finish the step, checkpoint and end soon. ``terminate``: stop now;
        Prism has already counted the session as expired."""
        if directive == Directive.TERMINATE:
            self.fleet.stats.count("told_terminate")
            self._finish(live, "terminated")
            return
        self.fleet.stats.count("told_drain")
        with live.lock:
            soon = time.monotonic() + self.fleet.real(self.scenario.checkpoint_s)
            if live.ends_at and live.ends_at <= soon:
                return  # it ends on its own before it could checkpoint
            live.ends_at = soon
            live.end_token += 1
            token = live.end_token
        self.fleet.at(live.ends_at, lambda: self.end(live, token))

    def end(self, live: _Live, token: int) -> None:
        with live.lock:
            if live.over or token != live.end_token:
                return
        ending = live.plan.ending(self.quality(live.session.version.id))
        try:
            live.session.end(ending.outcome)
        except PrismError as exc:
            log.debug("end of %s failed: %s", live.session.session_id, exc)
            self.fleet.stats.count("end_failed")
        self._finish(live, "ended")
        if ending.feedback is not None:
            delay = self.fleet.real(ending.feedback_delay_s)
            self.fleet.after(delay, lambda: self.feedback(live.session, ending.feedback))

    def _finish(self, live: _Live, how: str) -> None:
        with live.lock:
            if live.over:
                return
            live.over = True
        self.fleet.stats.count("over")
        self.fleet.stats.count(how)

    def feedback(self, session: Session, value: float) -> None:
        try:
            session.feedback(value)
            self.fleet.stats.count("feedback")
        except PrismError as exc:
            log.debug("feedback of %s failed: %s", session.session_id, exc)

    def deploy(self) -> None:
        """Register a new version and roll it out, superseding any rollout in flight."""
        self.next_deploy += self.fleet.real(self.scenario.deploy_every_s)
        self.fleet.on_schedule(self.next_deploy, self.deploy)
        self.fleet.submit(self._deploy)

    def _deploy(self) -> None:
        spec = self.run.spec
        self.deploys += 1
        layers = demo.deploy_layers(spec, self.deploys, self.tag)
        base = f"/api/agents/{self.run.slug}"
        try:
            version = self.manager.request(
                "POST",
                f"{base}/versions/",
                {"label": f"{self.tag}-{self.deploys}", **layers},
                idempotent=True,
            )
            stages = demo.scaled_stages(
                [{"percent": 50, "min_duration_s": 300, "min_sessions": 0}, {"percent": 100}],
                self.fleet.accel,
            )
            self.manager.request(
                "POST",
                f"{base}/rollouts/",
                {
                    "candidate": version["id"],
                    "stages": stages,
                    "supersede": True,
                    "reason": f"simulated deploy {self.deploys}",
                },
            )
        except PrismError as exc:
            log.warning("deploy %s of %s failed: %s", self.deploys, self.run.slug, exc)
            self.fleet.stats.count("deploy_failed")
            return
        self.fleet.stats.count("deploys")


class Fleet:
    """Runs drivers until a duration passes or ``stop`` is set.

    ``concurrency`` worker threads make the HTTP calls; at most twice that many calls
    wait for a thread, beyond which the scheduler holds back.
    """

    def __init__(self, *, accel: float, concurrency: int = 8, stats: Stats | None = None):
        if not (math.isfinite(accel) and accel > 0):
            raise ValueError("accel must be a positive number")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.accel = accel
        self.concurrency = concurrency
        self.stats = stats or Stats()
        self.drivers: list[Driver] = []
        self._heap: list[_Event] = []
        self._seq = itertools.count()
        self._wake = threading.Condition()
        self._slots = threading.BoundedSemaphore(concurrency * 2)
        self._pool: ThreadPoolExecutor | None = None
        self._stopping = threading.Event()
        self.lag_s = 0.0

    def real(self, simulated_s: float) -> float:
        return simulated_s / self.accel

    def at(self, when: float, run: Callable[[], None]) -> None:
        """Run ``run`` on a worker thread at monotonic time ``when``."""
        with self._wake:
            heapq.heappush(self._heap, _Event(when, next(self._seq), lambda: self.submit(run)))
            self._wake.notify()

    def after(self, delay_s: float, run: Callable[[], None]) -> None:
        """Run ``run`` on the scheduler thread after ``delay_s`` (for cheap work that
        must stay in order, such as drawing the next arrival)."""
        self.on_schedule(time.monotonic() + delay_s, run)

    def on_schedule(self, when: float, run: Callable[[], None]) -> None:
        """Run ``run`` on the scheduler thread at monotonic time ``when``."""
        with self._wake:
            heapq.heappush(self._heap, _Event(when, next(self._seq), run))
            self._wake.notify()

    def submit(self, run: Callable[[], None]) -> None:
        while not self._slots.acquire(timeout=0.2):
            if self._stopping.is_set():
                return
        try:
            self._pool.submit(self._guarded, run)
        except RuntimeError:  # the pool is shutting down
            self._slots.release()

    def _guarded(self, run: Callable[[], None]) -> None:
        try:
            run()
        except Exception:
            self.stats.count("job_errors")
            log.exception("simulated harness job failed")
        finally:
            self._slots.release()

    def run(
        self,
        duration_s: float | None,
        stop: threading.Event,
        progress: Callable[[str], None] | None = None,
        progress_every_s: float = 10.0,
    ) -> None:
        """Drive the fleet; returns once ``duration_s`` has passed or ``stop`` is set,
        after in-flight calls have finished."""
        self._stopping = stop
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="harness")
        deadline = math.inf if duration_s is None else time.monotonic() + duration_s
        next_progress = time.monotonic() + progress_every_s
        try:
            for driver in self.drivers:
                driver.begin()
            while not stop.is_set():
                now = time.monotonic()
                if now >= deadline:
                    break
                if progress is not None and now >= next_progress:
                    progress(f"{self.stats.line()} lag={self.lag_s:.2f}s")
                    next_progress = now + progress_every_s
                with self._wake:
                    if not self._heap or self._heap[0].at > now:
                        wait = min(self._heap[0].at - now if self._heap else 0.2, 0.2)
                        self._wake.wait(max(wait, 0.0))
                        continue
                    event = heapq.heappop(self._heap)
                self.lag_s = max(0.0, now - event.at)
                event.run()
        finally:
            stop.set()
            self._pool.shutdown(wait=True, cancel_futures=True)


def ensure_agent(manager: Client, spec: demo.AgentSpec, accel: float) -> dict[str, Any]:
    """Create the agent, its versions, stable and rollout through the REST API, where they
    do not exist yet (a release manager's calls; each step is idempotent or checked).
    Returns the ids found or made."""
    base = f"/api/agents/{spec.slug}"
    try:
        manager.request("GET", f"{base}/", idempotent=True)
    except NotFound:
        manager.request(
            "POST",
            "/api/agents/",
            {
                "slug": spec.slug,
                "name": spec.name,
                "drain_policy": demo.scaled_policy(spec.policy, accel),
            },
        )
    ids = []
    for label, layers in spec.versions:
        version = manager.request(
            "POST", f"{base}/versions/", {"label": label, **layers}, idempotent=True
        )
        ids.append(version["id"])
    agent = manager.request("GET", f"{base}/", idempotent=True)
    if agent.get("stable") is None:
        manager.request("POST", f"{base}/stable/", {"version": ids[0]}, idempotent=True)
    rollout = None
    if spec.stages is not None and len(ids) > 1:
        existing = manager.request("GET", f"{base}/rollouts/", idempotent=True)
        rollout = next((r for r in existing if r["candidate"] == ids[1]), None)
        if rollout is None:
            rollout = manager.request(
                "POST",
                f"{base}/rollouts/",
                {
                    "candidate": ids[1],
                    "stages": demo.scaled_stages(spec.stages, accel),
                    "gates": spec.gates,
                    "auto_rollback": spec.auto_rollback,
                    "reason": "simulated release",
                },
            )
            for _ in range(spec.advanced):
                rollout = manager.request(
                    "POST",
                    f"/api/rollouts/{rollout['id']}/advance/",
                    {"reason": "the demo starts mid-rollout"},
                )
    return {"versions": ids, "rollout": rollout["id"] if rollout else None}


def wait_for(client: Client, deadline_s: float, stop: threading.Event | None = None) -> None:
    """Wait until Prism answers (the web server may still be starting); any answer
    will do, even a refusal: the agent may be set up only next."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            client.refresh_routing()
            return
        except Refused:
            return
        except Unavailable:
            if time.monotonic() > deadline or (stop is not None and stop.is_set()):
                raise
            # The client fails fast for offline_s after a failure; wait that out.
            time.sleep(max(0.5, client.offline_s))

"""``manage.py simulate`` against a live Prism: the traffic each scenario sends through
the REST API, and what the beat makes of it. The beat is played by a thread calling the
beat's own tasks, so a test decides when the fleet is looked at."""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from django.db import connection

from metrics.gates import validate_gates
from metrics.models import Outcome
from metrics.tasks import count_assignments
from rollouts import engine
from rollouts.drain import live_counts
from rollouts.models import Rollout, RolloutState, Session
from rollouts.tasks import enforce_agent_drain_policies
from simulator.scenarios import SCENARIOS
from simulator.traffic import Arrivals
from tests.client.conftest import issue_token
from versions.models import Agent, AuditEntry

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def tokens(db) -> dict[str, str]:
    return {
        "harness": issue_token("sim-harness", "harness"),
        "manager": issue_token("sim-manager", "release-manager"),
    }


class Beat(threading.Thread):
    """Runs the beat's tasks every ``every`` seconds and notes the most versions that
    had live sessions at once."""

    def __init__(self, slug: str, every: float = 0.3) -> None:
        super().__init__(daemon=True)
        self.slug = slug
        self.every = every
        self.halt = threading.Event()
        self.most_live = 0
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.halt.wait(self.every):
                # The tick's fan-out, done in this thread: one policy pass per agent.
                for agent_id in Agent.objects.values_list("pk", flat=True):
                    enforce_agent_drain_policies(agent_id)
                count_assignments()
                # The tick's fan-out, done in this thread: one evaluation per rollout.
                engine.evaluate_open_rollouts()
                agent = Agent.objects.filter(slug=self.slug).first()
                if agent is not None:
                    self.most_live = max(self.most_live, len(live_counts(agent)))
        except BaseException as exc:  # reported by stop(), on the test's thread
            self.failure = exc
        finally:
            connection.close()

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=30)
        if self.failure is not None:
            raise self.failure


def simulate(live_server, tokens, *args: str) -> dict:
    """Run the command as harnesses would run it: in a process of its own. ``args`` are
    its options, a few to a string."""
    command = [sys.executable, "manage.py", "simulate", "--url", live_server.url]
    command += ["--token", tokens["harness"], "--manager-token", tokens["manager"]]
    # A generous timeout: these tests are not about latency, and the machine may be busy.
    command += ["--progress", "60", "--timeout", "30"]
    command += [word for arg in args for word in arg.split()]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("summary: "), result.stdout
    return json.loads(last.removeprefix("summary: "))


def split_agent(make_version, *, stages, gates=(), auto_rollback=False):
    """The research agent with v1 stable and a rollout of v2."""
    agent = Agent.objects.create(slug="research", name="Research")
    v1, v2 = make_version(agent, "v1"), make_version(agent, "v2")
    engine.set_stable(agent, v1, actor="test")
    rollout = engine.start_rollout(
        agent,
        candidate=v2,
        stages=engine.validate_stages(stages),
        gates=validate_gates(list(gates)),
        auto_rollback=auto_rollback,
        actor="test",
    )
    return agent, v1, v2, rollout


FAST = "--accel 1200 --heartbeat 1200 --seed 3 --tag shape"


def test_the_soak_holds_steady_mixed_traffic(live_server, tokens):
    summary = simulate(
        live_server,
        tokens,
        "--scenario soak --setup --rate 15 --accel 600 --heartbeat 600 --duration 5",
    )
    counts = summary["counts"]
    assert summary["error_count"] == 0, summary["errors"]
    # 15 a second for 5 s, fewer if the server falls behind: the fleet waits for it.
    assert 20 <= counts["started"] <= 110
    sessions = Session.objects.filter(agent__slug="soak")
    assert sessions.count() == counts["started"]
    outcomes = Outcome.objects.filter(agent__slug="soak", ended_at__isnull=False)
    assert outcomes.count() == counts["ended"] > 10
    assert {o.success for o in outcomes} == {True, False}
    assert all(o.latency_ms > 0 and o.cost_usd > 0 for o in outcomes)
    assert Outcome.objects.filter(agent__slug="soak", feedback__isnull=False).exists()
    # Heartbeats: sessions still live were seen after they started.
    beat = [s for s in sessions if (s.last_seen_at - s.started_at).total_seconds() > 0.5]
    assert beat
    assert summary["p99_ms"]["heartbeat"] is not None


@pytest.mark.parametrize(
    ("scenario", "low", "high"), [("healthy", 0.7, 1.4), ("regression", 1.2, 2.5)]
)
def test_each_version_behaves_as_its_scenario_says(
    live_server, tokens, make_version, scenario, low, high
):
    """Every recorded outcome is the one the seed draws for that session on the quality
    of the version it was pinned to, and the arms differ as the scenario says."""
    _, v1, v2, _ = split_agent(
        make_version, stages=[{"percent": 50, "min_duration_s": 3600}, {"percent": 100}]
    )
    summary = simulate(
        live_server, tokens, f"--scenario {scenario} --agent research --rate 30 --duration 6", FAST
    )
    assert summary["error_count"] == 0, summary["errors"]

    played = SCENARIOS[scenario]
    arrivals = Arrivals(3 * 1000, played.durations)  # the first agent's seed: seed * 1000
    plans = [arrivals.next() for _ in range(summary["counts"]["started"] + 100)]
    arms: dict[int, list[Outcome]] = {v1.pk: [], v2.pk: []}
    for outcome in Outcome.objects.filter(agent__slug="research", ended_at__isnull=False):
        plan = plans[int(outcome.session_id.removeprefix("sim-shape-"))]
        quality = played.quality
        if outcome.version_id == v2.pk and played.candidate_quality is not None:
            quality = played.candidate_quality
        drawn = plan.ending(quality).outcome
        recorded = {field: getattr(outcome, field) for field in drawn}
        assert recorded == drawn
        arms[outcome.version_id].append(outcome)
    baseline, candidate = arms[v1.pk], arms[v2.pk]
    assert len(baseline) >= 20
    assert len(candidate) >= 20
    ratio = statistics.median(o.cost_usd for o in candidate) / statistics.median(
        o.cost_usd for o in baseline
    )
    assert low <= ratio <= high


def test_the_rainbow_leaves_four_versions_live_and_the_oldest_is_force_drained(live_server, tokens):
    # The policy the demo scales, but with room for a busy machine: heartbeats may lag
    # (idle timeout 30 s) and a session told to drain has 5 s to end itself.
    Agent.objects.create(
        slug="coder",
        name="Code reviewer",
        idle_timeout_s=30,
        max_session_age_s=3600,
        drain_grace_s=5,
        max_live_versions=4,
    )
    beat = Beat("coder")
    beat.start()
    try:
        summary = simulate(
            live_server,
            tokens,
            "--scenario rainbow --setup --rate 6 --accel 600 --heartbeat 300 --duration 16",
            "--seed 5",
        )
    finally:
        beat.stop()
    assert summary["error_count"] == 0, summary["errors"]
    assert summary["counts"]["deploys"] >= 4  # one every 1200 / 600 = 2 s
    assert beat.most_live >= 4
    forced = AuditEntry.objects.filter(agent__slug="coder", action="version.force_drained")
    assert forced.exists()
    assert "max_live_versions=4" in forced.first().reason
    # The harnesses obeyed: sessions told to drain ended themselves.
    assert summary["counts"]["told_drain"] >= 1
    drained = Session.objects.filter(agent__slug="coder", drain_at__isnull=False)
    assert drained.filter(end_reason="ended by harness").exists()


# Tolerances loose enough for the few hundred sessions these short runs make: an
# anytime-valid interval on 70 candidate sessions is still about +-0.1 wide.
GATES = [
    {"metric": "error_rate", "max_increase": 0.2},
    {"metric": "cost_usd", "max_relative_change": 0.3},
]


def test_a_healthy_candidate_is_promoted_stage_by_stage(live_server, tokens, make_version):
    stages = [{"percent": p, "min_duration_s": 2, "min_sessions": 30} for p in (25, 50)]
    _, _, v2, rollout = split_agent(make_version, stages=[*stages, {"percent": 100}], gates=GATES)
    beat = Beat("research")
    beat.start()
    try:
        simulate(
            live_server,
            tokens,
            "--scenario healthy --agent research --rate 40 --duration 16",
            FAST,
        )
    finally:
        beat.stop()
    rollout.refresh_from_db()
    assert rollout.state == RolloutState.PROMOTED, json.dumps(rollout.last_evaluation, indent=1)
    assert [e.action for e in rollout.events.all()] == ["start", "auto_advance", "auto_advance"]
    assert Agent.objects.get(slug="research").stable_id == v2.pk


def test_a_regressed_candidate_is_rolled_back(live_server, tokens, make_version):
    agent, v1, _, rollout = split_agent(
        make_version,
        stages=[{"percent": 50, "min_duration_s": 2, "min_sessions": 30}, {"percent": 100}],
        gates=[
            {"metric": "error_rate", "max_increase": 0.02},
            {"metric": "cost_usd", "max_relative_change": 0.2},
        ],
        auto_rollback=True,
    )
    beat = Beat("research")
    beat.start()
    try:
        simulate(
            live_server,
            tokens,
            "--scenario regression --agent research --rate 40 --duration 12",
            FAST,
        )
    finally:
        beat.stop()
    rollout = Rollout.objects.get(pk=rollout.pk)
    assert rollout.state == RolloutState.ROLLED_BACK
    agent.refresh_from_db()
    assert agent.stable_id == v1.pk
    assert agent.routing.weights == {str(v1.pk): 10000}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_it_shuts_down_cleanly_on_a_signal(live_server, tokens, sig):
    command = [sys.executable, "manage.py", "simulate", "--url", live_server.url]
    command += ["--token", tokens["harness"], "--manager-token", tokens["manager"]]
    command += ["--scenario", "soak", "--setup", "--rate", "10", "--accel", "600"]
    command += ["--heartbeat", "300", "--timeout", "30"]
    fleet = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while not Session.objects.filter(agent__slug="soak").count() >= 10:
            assert fleet.poll() is None, fleet.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        fleet.send_signal(sig)
        out, err = fleet.communicate(timeout=30)
    finally:
        if fleet.poll() is None:
            fleet.kill()
    assert fleet.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1].removeprefix("summary: "))
    assert summary["error_count"] == 0
    # Nothing more is sent once it has stopped.
    count = Session.objects.filter(agent__slug="soak").count()
    assert count == summary["counts"]["started"]
    time.sleep(0.5)
    assert Session.objects.filter(agent__slug="soak").count() == count

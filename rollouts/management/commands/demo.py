"""``manage.py demo``: seed the demo fleet through Prism's services, and write the file
``simulate --fleet`` reads (tokens and agents)."""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from controlplane.models import ApiToken, hash_key
from metrics.gates import validate_gates
from rollouts import engine
from rollouts.models import Rollout, RolloutState
from simulator import demo
from versions import services
from versions.models import Agent, Version

DEMO_USER = "demo"


class Command(BaseCommand):
    help = (
        "Create the demo agents, versions and rollouts (one caught mid-rollout), the demo "
        "login, and the simulator's tokens. Times Prism keeps are divided by --accel to "
        "match the simulator's clock. Running it again changes nothing already there."
    )

    def add_arguments(self, parser):
        parser.add_argument("--accel", type=float, default=60.0)
        parser.add_argument("--out", default=str(Path(settings.VAR_DIR) / "demo" / "fleet.json"))

    def handle(self, *args, accel: float, out: str, **options):
        if not accel > 0:
            raise CommandError("--accel must be above 0")
        call_command("demo_login", stdout=self.stdout)
        actor = get_user_model().objects.get(username=DEMO_USER)
        for spec in demo.DEMO:
            self.stdout.write(f"  {self._seed(spec, accel, actor)}")
        self.stdout.write(demo.scaling_note(accel))

        path = Path(out)
        tokens = self._tokens(path)
        data = {
            "accel": accel,
            **tokens,
            "agents": [
                {"slug": s.slug, "scenario": s.scenario, "rate_per_s": s.rate_per_s}
                for s in demo.DEMO
            ],
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        # The file holds tokens: readable by this user only, from its first byte on.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2)
        self.stdout.write(f"Simulator fleet file: {path}")

    def _seed(self, spec: demo.AgentSpec, accel: float, actor) -> str:
        policy = demo.scaled_policy(spec.policy, accel)
        agent = Agent.objects.filter(slug=spec.slug).first()
        if agent is None:
            agent = services.create_agent(
                slug=spec.slug, name=spec.name, drain_policy=policy, actor=actor
            )
        else:
            agent = services.update_agent(
                agent, changes=policy, actor=actor, reason=f"demo at {accel:g}x"
            )
        versions: list[Version] = []
        for label, layers in spec.versions:
            version, _ = services.register_version(
                agent, layers=layers, label=label, notes="demo", actor=actor
            )
            versions.append(version)
        if agent.stable_id is None:
            engine.set_stable(agent, versions[0], actor=actor, reason="demo")
        timed = " ".join(f"{k}={spec.policy[k]}->{policy[k]}" for k in demo.TIMED_POLICY_FIELDS)
        what = f"{spec.slug} ({spec.scenario}): {timed}"
        if spec.stages:
            minimum = spec.stages[0]["min_duration_s"]
            what += f" stage min_duration_s={minimum}->{math.ceil(minimum / accel)}"
        if spec.stages is None or len(versions) < 2:
            return what
        rollout = Rollout.objects.filter(agent=agent, candidate=versions[1]).first()
        if rollout is None:
            rollout = engine.start_rollout(
                agent,
                candidate=versions[1],
                stages=engine.validate_stages(demo.scaled_stages(spec.stages, accel)),
                gates=validate_gates(spec.gates),
                auto_rollback=spec.auto_rollback,
                actor=actor,
                reason="demo release",
            )
            for _ in range(spec.advanced):
                rollout = engine.transition(
                    rollout.pk, "advance", actor=actor, reason="the demo starts mid-rollout"
                )
        if rollout.state == RolloutState.RUNNING:
            return f"{what}; rollout {rollout.pk} of {versions[1].label} at {rollout.percent:g}%"
        return f"{what}; rollout {rollout.pk} {rollout.state}"

    def _tokens(self, path: Path) -> dict[str, str]:
        """The simulator's tokens: those in the file while they still work, else new."""
        try:
            known = json.loads(path.read_text())
        except (OSError, ValueError):
            known = {}
        tokens = {}
        for key, username, role in (
            ("harness_token", "demo-harness", "harness"),
            ("manager_token", "demo-deployer", "release-manager"),
        ):
            token = known.get(key)
            if not (token and ApiToken.objects.filter(key_hash=hash_key(token)).exists()):
                out = io.StringIO()
                call_command("issue_token", username, "--role", role, stdout=out)
                token = out.getvalue().strip()
            tokens[key] = token
        return tokens

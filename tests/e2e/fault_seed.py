"""Seed a fault test's database: ``python -m tests.e2e.fault_seed`` prints what it made.

One agent, ``faults``, with v1 stable and a rollout of v2 at 50% (so an assignment can
go either way and its version can be checked against the bucket), a harness token and
a release-manager token. Run once into the template cluster every fault test copies.
"""

from __future__ import annotations

import json
import os

import django


def seed() -> dict:
    from django.contrib.auth import get_user_model

    from controlplane.models import ApiToken, Profile, Role
    from metrics.gates import validate_gates
    from rollouts import engine
    from tests.conftest import tuple_with
    from versions.models import Agent, Version

    def token(role: str) -> str:
        user = get_user_model().objects.create_user(f"fault-{role}")
        Profile.objects.create(user=user, role=role)
        return ApiToken.issue(user)

    agent = Agent.objects.create(slug="faults", name="Fault tests", idle_timeout_s=60)
    v1 = Version(agent=agent, label="v1", **tuple_with(code={"ref": "git:f1"}))
    v1.save()
    v2 = Version(agent=agent, label="v2", **tuple_with(code={"ref": "git:f2"}))
    v2.save()
    engine.set_stable(agent, v1, actor="fault-seed")
    rollout = engine.start_rollout(
        agent,
        candidate=v2,
        stages=engine.validate_stages(
            [{"percent": 50, "min_duration_s": 3600}, {"percent": 75, "min_duration_s": 3600}, 100]
        ),
        gates=validate_gates([]),
        actor="fault-seed",
    )
    return {
        "agent": agent.pk,
        "slug": agent.slug,
        "v1": v1.pk,
        "v2": v2.pk,
        "rollout": rollout.pk,
        "harness_token": token(Role.HARNESS),
        "manager_token": token(Role.RELEASE_MANAGER),
    }


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    django.setup()
    print(json.dumps(seed()))

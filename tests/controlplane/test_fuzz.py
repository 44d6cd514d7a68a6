"""The whole OpenAPI schema, fuzzed: no request answers 5xx, and every documented answer
matches its schema.

Schemathesis generates requests for every operation in ``/api/schema/`` and sends them to
the WSGI app on the test PostgreSQL, as a release manager and as a harness. Path
parameters are mostly those of seeded agents, versions, rollouts and sessions, so the
requests reach real objects rather than ending in 404s; the share of 2xx answers must
reach ``MIN_SUCCESS_SHARE`` to prove it. Failures are collected over the whole run and
reported together, each with a curl command that reproduces it.

``PRISM_FUZZ_EXAMPLES`` is the number of requests for the whole run (default 400, spread
evenly over operations and roles); for a longer run:
``PRISM_FUZZ_EXAMPLES=5000 scripts/test tests/controlplane/test_fuzz.py``.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
from django.contrib.auth import get_user_model
from django.core.wsgi import get_wsgi_application
from django.utils import timezone
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import response_schema_conformance

from controlplane import health
from controlplane.models import ApiToken, Profile, Role
from metrics.gates import validate_gates
from rollouts import engine, sessions
from tests.conftest import tuple_with
from versions.models import Agent, Version

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

TOTAL_EXAMPLES = int(os.environ.get("PRISM_FUZZ_EXAMPLES", "400"))
MIN_SUCCESS_SHARE = 0.2
ROLES = (Role.RELEASE_MANAGER, Role.HARNESS)
CHECKS = [not_a_server_error, response_schema_conformance]
# Positive cases on seeded objects, per operation: this many strategies for each random
# one (positive or negative), which keeps most requests on real objects.
SEEDED_WEIGHT = 3


@dataclass
class Seeded:
    tokens: dict[str, str]
    slugs: list[str]
    versions: list[int]
    rollouts: list[int]
    sessions: list[tuple[str, str]]


def _seed() -> Seeded:
    """Three agents in different states, so that most operations have a target for which
    they may succeed: one with a running rollout, one with a paused one, one with two
    stables in its history (an agent rollback has somewhere to go)."""
    tokens = {}
    for role in ROLES:
        user = get_user_model().objects.create_user(f"fuzz-{role}")
        Profile.objects.create(user=user, role=role)
        tokens[role] = ApiToken.issue(user)

    stages = engine.validate_stages(
        [{"percent": 25, "min_duration_s": 3600}, {"percent": 50, "min_duration_s": 3600}, 100]
    )
    slugs, versions, rollouts, started = [], [], [], []
    for n, slug in enumerate(("research", "support", "billing")):
        agent = Agent.objects.create(slug=slug, name=f"{slug.title()} agent")
        made = []
        for label in ("v1", "v2", "v3"):
            version = Version(
                agent=agent, label=label, **tuple_with(code={"ref": f"{slug}-{label}"})
            )
            version.save()
            made.append(version)
        engine.set_stable(agent, made[0], actor="fuzz-seed")
        if slug == "billing":
            engine.set_stable(agent, made[1], actor="fuzz-seed")
        else:
            rollout = engine.start_rollout(
                agent,
                candidate=made[1],
                stages=stages,
                gates=validate_gates([{"metric": "error_rate", "max_increase": 0.05}]),
                actor="fuzz-seed",
            )
            if slug == "support":
                engine.transition(rollout.pk, "pause", actor="fuzz-seed")
            rollouts.append(rollout.pk)
        for i in range(3):
            session_id = f"{slug}-session-{n}{i}"
            sessions.assign(slug, session_id)
            started.append((slug, session_id))
        sessions.end(slug, started[-1][1], {"success": True, "latency_ms": 120.0})
        slugs.append(slug)
        versions.extend(v.pk for v in made)
    return Seeded(tokens, slugs, versions, rollouts, started)


def _seeded_parameters(operation: Any, seeded: Seeded) -> list[dict[str, Any]]:
    """Path (and query) parameter sets that name seeded objects, for one operation."""
    names = set(operation.path_parameters.schema.get("properties", {}))
    path = operation.path
    if {"slug", "session_id"} <= names:
        return [{"path_parameters": {"slug": s, "session_id": i}} for s, i in seeded.sessions]
    if "slug" in names:
        return [{"path_parameters": {"slug": slug}} for slug in seeded.slugs]
    if "id" in names and path.startswith("/api/rollouts/"):
        return [{"path_parameters": {"id": pk}} for pk in seeded.rollouts]
    if "id" in names and path.endswith("/diff/"):
        first, *others = seeded.versions[:3]
        return [{"path_parameters": {"id": first}, "query": {"against": other}} for other in others]
    if "id" in names:
        return [{"path_parameters": {"id": pk}} for pk in seeded.versions]
    if path == "/api/audit/":
        return [{"query": {"agent": slug}} for slug in seeded.slugs]
    return [{}]


@dataclass
class Tally:
    statuses: Counter = field(default_factory=Counter)
    by_role: dict[str, Counter] = field(default_factory=dict)
    failures: dict[tuple[str, str], str] = field(default_factory=dict)

    def record(self, role: str, status: int) -> None:
        self.statuses[status] += 1
        self.by_role.setdefault(role, Counter())[f"{status // 100}xx"] += 1

    def share_2xx(self) -> float:
        ok = sum(n for status, n in self.statuses.items() if 200 <= status < 300)
        return ok / max(1, sum(self.statuses.values()))


def _fuzz_operation(
    operation: Any, strategy: Any, role: str, token: str, checks: list, tally: Tally, n: int
) -> None:
    headers = {"Authorization": f"Token {token}"}

    @settings(
        max_examples=n,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: schemathesis.Case) -> None:
        response = case.call(headers=headers)
        tally.record(role, response.status_code)
        try:
            case.validate_response(response, checks=checks, headers=headers)
        except FailureGroup as group:
            for failure in group.exceptions:
                key = (f"{role} {operation.label}", failure.title)
                tally.failures.setdefault(
                    key, f"{failure.title}: {failure.message[:400]}\n    {case.as_curl_command()}"
                )

    run()


def fuzz(checks: list) -> tuple[Tally, str]:
    """Seed, then send every operation's generated requests as each role; return the
    tally and a one-line summary of it."""
    seeded = _seed()
    schema = schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20, "the schema lost operations"
    per_operation = max(1, TOTAL_EXAMPLES // (len(operations) * len(ROLES)))
    tally = Tally()
    started = timezone.now()
    for role in ROLES:
        for operation in operations:
            # The beat keeps ticking, as a running one would: a late beat is a true 503.
            health.record_tick()
            strategies = [
                operation.as_strategy(**parameters)
                for parameters in _seeded_parameters(operation, seeded)
            ] * SEEDED_WEIGHT
            strategies.append(operation.as_strategy())
            strategies.append(operation.as_strategy(schemathesis.GenerationMode.NEGATIVE))
            _fuzz_operation(
                operation,
                st.one_of(strategies),
                role,
                seeded.tokens[role],
                checks,
                tally,
                per_operation,
            )
    total = sum(tally.statuses.values())
    assert total >= len(operations) * len(ROLES), "operations went untested"
    summary = (
        f"{total} requests in {(timezone.now() - started).total_seconds():.1f}s, "
        f"by status {dict(sorted(tally.statuses.items()))}, by role "
        f"{ {str(role): dict(counts) for role, counts in tally.by_role.items()} }"
    )
    print(summary)
    return tally, summary


def _report(tally: Tally, summary: str) -> str:
    return f"{len(tally.failures)} distinct failures ({summary}):\n" + "\n".join(
        f"- {who}: {what}" for (who, _), what in sorted(tally.failures.items())
    )


def test_no_generated_request_gets_a_server_error():
    tally, summary = fuzz([not_a_server_error])
    assert not tally.failures, _report(tally, summary)
    # Most requests reached real objects and were accepted: 401s, 404s and 400s alone
    # would make a run without server errors easy.
    assert tally.share_2xx() >= MIN_SUCCESS_SHARE, summary
    for role in ROLES:
        assert tally.by_role[role]["2xx"], f"no 2xx at all as {role}: {summary}"


def test_every_documented_answer_matches_its_schema():
    tally, summary = fuzz([response_schema_conformance])
    assert not tally.failures, _report(tally, summary)

"""Request bodies at every write endpoint (controlplane/api.py): text and numbers the
database cannot store, fields nobody reads, and every error in one answer."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from controlplane.models import Role
from metrics.models import Outcome
from rollouts import engine
from rollouts.models import Routing, Session
from tests.conftest import tuple_with
from tests.controlplane.conftest import client_for, snapshot
from versions.audit import SYSTEM

World = dict[str, Any]
Body = Callable[[World], dict[str, Any]]

LONG = "x" * 2001
NEW_TUPLE = {
    **tuple_with(code={"ref": "git:edgesnew"}),
    "label": "v9",
    "notes": "Release notes",
}
STAGES = [{"percent": 20, "min_duration_s": 60}, {"percent": 100}]
GATES = [{"metric": "error_rate", "max_increase": 0.01, "critical": True}]


def _version(world: World) -> dict[str, Any]:
    return {"version": world["v1"].pk, "reason": "set it by hand"}


def _rollout(world: World) -> dict[str, Any]:
    return {
        "candidate": world["v2"].pk,
        "baseline": world["v1"].pk,
        "stages": STAGES,
        "gates": GATES,
        "auto_rollback": True,
        "supersede": True,
        "reason": "next release",
    }


# (method, URL template, role, a valid body, a body with every field wrong, and the
# errors it must get in one answer, as dotted paths into the error object)
WRITES: list[tuple[str, str, str, Body, Body, set[str]]] = [
    (
        "POST",
        "/api/agents/",
        Role.RELEASE_MANAGER,
        lambda w: {"slug": "fresh", "name": "Fresh", "drain_policy": {"idle_timeout_s": 60}},
        lambda w: {"slug": "not a slug", "name": "", "drain_policy": {"idle_timeout_s": -1}},
        {"slug", "name", "drain_policy.idle_timeout_s"},
    ),
    (
        "PATCH",
        "/api/agents/{slug}/",
        Role.RELEASE_MANAGER,
        lambda w: {"name": "Renamed", "drain_policy": {"drain_grace_s": 10}, "reason": "why"},
        lambda w: {"name": "", "drain_policy": {"max_live_versions": 0}, "reason": LONG},
        {"name", "drain_policy.max_live_versions", "reason"},
    ),
    (
        "POST",
        "/api/agents/{slug}/versions/",
        Role.RELEASE_MANAGER,
        lambda w: copy.deepcopy(NEW_TUPLE),
        lambda w: {"code": {}, "model": [], "prompts": 1, "tools": {}, "label": "a b"},
        {"code.ref", "model", "prompts", "tools", "label"},
    ),
    (
        "POST",
        "/api/agents/{slug}/stable/",
        Role.RELEASE_MANAGER,
        _version,
        lambda w: {"version": "one", "reason": LONG},
        {"version", "reason"},
    ),
    (
        "POST",
        "/api/agents/{slug}/rollback/",
        Role.RELEASE_MANAGER,
        lambda w: {"reason": "bad release", "evacuate": False, "epoch": 1},
        lambda w: {"reason": LONG, "evacuate": "maybe", "epoch": -1},
        {"reason", "evacuate", "epoch"},
    ),
    (
        "POST",
        "/api/agents/{slug}/rollouts/",
        Role.RELEASE_MANAGER,
        _rollout,
        lambda w: {
            "candidate": "v2",
            "baseline": 10**12,
            "stages": "fast",
            "gates": {"metric": "error_rate"},
            "auto_rollback": "maybe",
            "supersede": "maybe",
            "reason": LONG,
        },
        {"candidate", "baseline", "stages", "gates", "auto_rollback", "supersede", "reason"},
    ),
    *[
        (
            "POST",
            f"/api/rollouts/{{rollout}}/{action}/",
            Role.RELEASE_MANAGER,
            lambda w: {"reason": "by hand", "evacuate": False},
            lambda w: {"reason": LONG, "evacuate": "maybe"},
            {"reason", "evacuate"},
        )
        for action in ("pause", "resume", "advance", "rollback", "evaluate")
    ],
    (
        "POST",
        "/api/agents/{slug}/sessions/{session_id}/heartbeat/",
        Role.HARNESS,
        lambda w: {},
        lambda w: {},
        set(),
    ),
    (
        "POST",
        "/api/agents/{slug}/sessions/{session_id}/end/",
        Role.HARNESS,
        lambda w: {"outcome": {"success": True, "latency_ms": 812.5, "cost_usd": 0.02}},
        lambda w: {"outcome": {"success": "yes", "latency_ms": -1, "feedback": 2}},
        {"outcome.success", "outcome.latency_ms", "outcome.feedback"},
    ),
    (
        "POST",
        "/api/agents/{slug}/sessions/{session_id}/feedback/",
        Role.HARNESS,
        lambda w: {"feedback": 0.5},
        lambda w: {"feedback": "high"},
        {"feedback"},
    ),
]
# The session start is the assignment hot path; its body has its own tests
# (tests/rollouts/test_sessions_api.py), but what it cannot store is refused here too.
STORABLE_ONLY = [
    (
        "POST",
        "/api/agents/{slug}/sessions/",
        Role.HARNESS,
        lambda w: {"session_id": "edges-new", "version": w["v1"].pk},
        None,
        set(),
    ),
]


def fill(template: str, world: World) -> str:
    return template.format(
        slug=world["agent"].slug, rollout=world["rollout"].pk, session_id=world["session_id"]
    )


def send(world: World, method: str, template: str, role: str, raw: str):
    client = client_for(world, role)
    return getattr(client, method.lower())(
        fill(template, world), raw, content_type="application/json"
    )


def error_paths(errors: Any, prefix: str = "") -> set[str]:
    """The dotted paths of a DRF error object down to its lists of messages."""
    if not isinstance(errors, dict):
        return {prefix}
    paths: set[str] = set()
    for key, value in errors.items():
        paths |= error_paths(value, f"{prefix}.{key}" if prefix else key)
    return paths


def cases(rows):
    for method, template, role, valid, wrong, expected in rows:
        yield pytest.param(
            method, template, role, valid, wrong, expected, id=f"{method} {template}"
        )


ROW = ("method", "template", "role", "valid", "wrong", "expected")

# --- what the database cannot store -----------------------------------------------------

_BIG = "__a number too large for a double__"


def _leaves(value: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    yield path, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, (*path, index))


def _holder(body: Any, path: tuple) -> Any:
    for step in path[:-1]:
        body = body[step]
    return body


def unstorable_variants(body: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """``(word the answer must use, the error key it must be under, raw JSON)``, one bad
    value at a time: a NUL and a lone surrogate in every string and every key, a number
    beyond a double for every number, and a stray key holding a NUL."""

    def spoilt(path: tuple, change: Callable[[Any, Any], None]) -> str:
        copied = copy.deepcopy(body)
        change(_holder(copied, path), path[-1])
        return json.dumps(copied).replace(json.dumps(_BIG), "1e400")

    def set_to(new: Any):
        def change(holder: Any, step: Any) -> None:
            holder[step] = new

        return change

    def rename(new_key: str):
        def change(holder: Any, step: Any) -> None:
            holder[new_key] = holder.pop(step)

        return change

    for path, value in _leaves(body):
        if not path:
            continue
        field = str(path[0])
        if isinstance(value, str):
            yield "NUL", field, spoilt(path, set_to(value[:1] + "\x00" + value[1:]))
            yield "surrogate", field, spoilt(path, set_to(value + "\ud800"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            yield "", field, spoilt(path, set_to(_BIG))
        if isinstance(path[-1], str):
            # A bad top-level key names no field: it is the body's own error.
            where = field if len(path) > 1 else "non_field_errors"
            yield "NUL", where, spoilt(path, rename(path[-1] + "\x00"))
            yield "surrogate", where, spoilt(path, rename(path[-1] + "\udfff"))
    yield "NUL", "non_field_errors", json.dumps({**body, "stray\x00": 1})


@pytest.mark.parametrize(ROW, list(cases(WRITES + STORABLE_ONLY)))
def test_text_and_numbers_the_database_cannot_store_are_400_at_every_write(
    api_world, db, method, template, role, valid, wrong, expected
):
    before = snapshot()
    for word, key, raw in unstorable_variants(valid(api_world)):
        response = send(api_world, method, template, role, raw)

        assert response.status_code == 400, (raw, response.content[:300])
        errors = response.json()
        assert key in errors, (raw, errors)
        assert word.lower() in json.dumps(errors[key]).lower(), (raw, errors)
        assert snapshot() == before, raw


# --- unknown fields, and every error at once --------------------------------------------


@pytest.mark.parametrize(ROW, list(cases(WRITES)))
def test_an_unknown_field_is_400_naming_it_at_every_write(
    api_world, db, method, template, role, valid, wrong, expected
):
    before = snapshot()

    response = send(
        api_world, method, template, role, json.dumps({**valid(api_world), "sucess": True})
    )

    assert response.status_code == 400, response.content
    assert response.json() == {"sucess": ["Unknown field."]}
    assert snapshot() == before


@pytest.mark.parametrize(ROW, list(cases(WRITES)))
def test_every_field_error_comes_in_one_answer_at_every_write(
    api_world, db, method, template, role, valid, wrong, expected
):
    before = snapshot()

    response = send(
        api_world, method, template, role, json.dumps({**wrong(api_world), "sucess": True})
    )

    assert response.status_code == 400, response.content
    assert error_paths(response.json()) == {*expected, "sucess"}
    assert snapshot() == before


@pytest.mark.parametrize("raw", ["[]", '["reason"]', '"reason"', "42", "true", "null"])
@pytest.mark.parametrize(ROW, list(cases(WRITES)))
def test_a_body_that_is_not_an_object_is_400_at_every_write(
    api_world, db, method, template, role, valid, wrong, expected, raw
):
    before = snapshot()

    response = send(api_world, method, template, role, raw)

    assert response.status_code == 400, response.content
    assert "non_field_errors" in response.json()
    assert snapshot() == before


# What the world must look like for a valid body to be accepted.
GIVEN: dict[str, Callable[[World], None]] = {
    "/api/agents/{slug}/stable/": lambda w: engine.transition(
        w["rollout"].pk, "rollback", actor=SYSTEM
    ),
    "/api/rollouts/{rollout}/resume/": lambda w: engine.transition(
        w["rollout"].pk, "pause", actor=SYSTEM
    ),
}


@pytest.mark.parametrize(ROW, list(cases(WRITES)))
def test_the_valid_bodies_are_accepted(
    api_world, db, method, template, role, valid, wrong, expected
):
    """The sweeps above spoil these bodies; unspoilt, each is a request that works."""
    if template in GIVEN:
        GIVEN[template](api_world)
    body = valid(api_world)
    if template.endswith("/rollback/") and "epoch" in body:
        body["epoch"] = Routing.objects.get(agent=api_world["agent"]).epoch

    response = send(api_world, method, template, role, json.dumps(body))

    assert response.status_code in (200, 201), response.content


# --- the outcome that was lost -----------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [{"success": True}, {"success": True, "latency_ms": 10}, {"error": False, "outcome": {}}],
    ids=["bare", "bare-two-fields", "beside-the-wrapper"],
)
def test_an_outcome_field_outside_its_wrapper_is_400_and_the_session_lives(api_world, db, body):
    session_id = api_world["session_id"]

    response = send(
        api_world,
        "POST",
        "/api/agents/{slug}/sessions/{session_id}/end/",
        Role.HARNESS,
        json.dumps(body),
    )

    assert response.status_code == 400
    hint = 'Unknown field. Outcome fields go inside "outcome": {"outcome": {...}}.'
    assert response.json() == {key: [hint] for key in body if key != "outcome"}
    assert Session.objects.get(session_id=session_id).state == "live"
    assert not Outcome.objects.filter(session_id=session_id).exists()


# --- numbers beyond any clock --------------------------------------------------------------


@pytest.mark.parametrize("key", ["min_duration_s", "max_duration_s"])
def test_a_stage_duration_beyond_any_clock_is_400_and_starts_nothing(api_world, db, key):
    stage = {"percent": 10, "min_duration_s": 1, key: 10**15}
    body = {**_rollout(api_world), "stages": [stage, {"percent": 100}]}
    before = snapshot()

    response = send(
        api_world, "POST", "/api/agents/{slug}/rollouts/", Role.RELEASE_MANAGER, json.dumps(body)
    )

    assert response.status_code == 400, response.content[:300]
    assert "stages[0]" in response.json()
    assert snapshot() == before

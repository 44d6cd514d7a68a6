"""The rollout endpoints: stages, transitions, validation, agent rollback
and roles, all through the REST API."""

from __future__ import annotations

from typing import Any

import pytest

from rollouts import engine
from rollouts.models import Rollout, RolloutEvent, Routing
from rollouts.routing import Table, bucket
from versions.models import Agent, AuditEntry

pytestmark = pytest.mark.django_db

SLUG = "research"
ROLLOUTS = f"/api/agents/{SLUG}/rollouts/"
ROUTING = f"/api/agents/{SLUG}/routing/"
FLEET = f"/api/agents/{SLUG}/fleet/"
STABLE = f"/api/agents/{SLUG}/stable/"
AGENT_ROLLBACK = f"/api/agents/{SLUG}/rollback/"
SESSIONS = f"/api/agents/{SLUG}/sessions/"

# A first stage that never advances by itself and halts at the first evaluation.
HALTS_AT_ONCE = [
    {"percent": 50, "min_duration_s": 0, "min_sessions": 1000, "max_duration_s": 0},
    {"percent": 100},
]
PROMPT_CHANGE = {"system": "You are a terse research assistant.\nCite sources."}


# --- helpers ------------------------------------------------------------------------------


def post(client, url: str, body: dict[str, Any] | None = None):
    return client.post(url, body or {}, format="json")


def start(client, candidate, **body: Any):
    return post(client, ROLLOUTS, {"candidate": candidate.pk, **body})


def act(client, rollout_id: int, action: str, **body: Any):
    return post(client, f"/api/rollouts/{rollout_id}/{action}/", body)


def rollout_state(client, rollout_id: int) -> dict:
    response = client.get(f"/api/rollouts/{rollout_id}/")
    assert response.status_code == 200
    return response.json()


def weights(client) -> dict[int, int]:
    response = client.get(ROUTING)
    assert response.status_code == 200
    return {int(k): v for k, v in response.json()["weights"].items()}


def session_ids_landing_on(version_id: int, n: int, prefix: str) -> list[str]:
    """Session ids that the current routing table sends to ``version_id``, computed
    locally from the documented hash, as a fail-static harness would."""
    routing = Routing.objects.get(agent__slug=SLUG)
    table = Table.compile(routing.epoch, {int(k): v for k, v in routing.weights.items()})
    found, i = [], 0
    while len(found) < n:
        session_id = f"{prefix}-{i}"
        i += 1
        if table.pick(bucket(SLUG, session_id)) == version_id:
            found.append(session_id)
    return found


def open_session(client, session_id: str, *, new: bool = True) -> int:
    """Assign (or, with ``new=False``, re-read the pin of) a session; its version id."""
    response = post(client, SESSIONS, {"session_id": session_id})
    assert response.status_code == (201 if new else 200), response.content
    return response.json()["version"]["id"]


def sessions_on(client, version_id: int, n: int, prefix: str) -> list[str]:
    ids = session_ids_landing_on(version_id, n, prefix)
    for session_id in ids:
        assert open_session(client, session_id) == version_id
    return ids


def heartbeat(client, session_id: str) -> str:
    response = post(client, f"{SESSIONS}{session_id}/heartbeat/")
    assert response.status_code == 200
    return response.json()["directive"]


def fleet_row(client, version_id: int) -> dict:
    response = client.get(FLEET)
    assert response.status_code == 200
    return next(row for row in response.json()["versions"] if row["id"] == version_id)


@pytest.fixture
def v1(agent, make_version, release_manager):
    version = make_version(agent, "v1")
    response = post(release_manager, STABLE, {"version": version.pk})
    assert response.status_code == 200, response.content
    return version


@pytest.fixture
def v3(agent, make_version):
    return make_version(agent, "v3")


# --- the state machine ------------------------------------------------------------------


def test_it_moves_through_the_default_stages_and_promotes_at_100(release_manager, harness, v1, v2):
    before_rollout = sessions_on(harness, v1.pk, 2, "old")
    response = start(release_manager, v2)
    assert response.status_code == 201, response.content
    rollout = response.json()
    assert [s["percent"] for s in rollout["stages"]] == [5, 25, 50, 100]
    assert (rollout["state"], rollout["stage"], rollout["percent"]) == ("running", 0, 5)
    assert (rollout["baseline"], rollout["candidate"]) == (v1.pk, v2.pk)
    assert weights(release_manager) == {v1.pk: 9500, v2.pk: 500}

    for stage, (baseline_bp, candidate_bp) in enumerate([(7500, 2500), (5000, 5000)], 1):
        response = act(release_manager, rollout["id"], "advance")
        assert response.status_code == 200, response.content
        assert (response.json()["state"], response.json()["stage"]) == ("running", stage)
        assert weights(release_manager) == {v1.pk: baseline_bp, v2.pk: candidate_bp}

    response = act(release_manager, rollout["id"], "advance")
    assert response.status_code == 200
    assert response.json()["state"] == "promoted"
    assert response.json()["percent"] == 100
    assert response.json()["ended_at"] is not None
    assert weights(release_manager) == {v2.pk: 10000}
    assert release_manager.get(f"/api/agents/{SLUG}/").json()["stable"] == v2.pk
    assert release_manager.get(ROUTING).json()["stable"] == v2.pk
    # The old stable drains: no new sessions, but its live ones stay pinned to it.
    old = fleet_row(release_manager, v1.pk)
    assert (old["state"], old["weight"], old["live_sessions"]) == ("draining", 0, 2)
    assert old["drain"]["live_at_start"] == 2
    assert fleet_row(release_manager, v2.pk)["state"] == "active"
    assert all(open_session(harness, sid, new=False) == v1.pk for sid in before_rollout)


def test_a_second_rollout_while_one_is_open_is_a_409(release_manager, v1, v2, v3):
    first = start(release_manager, v2)
    assert first.status_code == 201
    response = start(release_manager, v3)
    assert response.status_code == 409
    assert "detail" in response.json()
    assert Rollout.objects.count() == 1
    assert weights(release_manager) == {v1.pk: 9500, v2.pk: 500}


@pytest.mark.parametrize("state", ["paused", "halted"])
def test_a_paused_or_halted_rollout_still_blocks_a_new_one(release_manager, v1, v2, v3, state):
    rollout = start(release_manager, v2, stages=HALTS_AT_ONCE).json()
    act(release_manager, rollout["id"], "pause" if state == "paused" else "evaluate")
    assert rollout_state(release_manager, rollout["id"])["state"] == state
    assert start(release_manager, v3).status_code == 409


def test_supersede_drains_the_old_candidate_and_starts_from_the_stable(
    release_manager, harness, v1, v2, v3
):
    old = start(release_manager, v2).json()
    act(release_manager, old["id"], "advance")
    assert weights(release_manager) == {v1.pk: 7500, v2.pk: 2500}
    on_v2 = sessions_on(harness, v2.pk, 1, "v2")[0]

    response = start(release_manager, v3, supersede=True)
    assert response.status_code == 201, response.content
    new = response.json()
    assert (new["baseline"], new["candidate"], new["stage"]) == (v1.pk, v3.pk, 0)
    assert rollout_state(release_manager, old["id"])["state"] == "superseded"
    assert weights(release_manager) == {v1.pk: 9500, v3.pk: 500}
    row = fleet_row(release_manager, v2.pk)
    assert (row["state"], row["weight"], row["live_sessions"]) == ("draining", 0, 1)
    assert heartbeat(harness, on_v2) == "continue"  # draining, not evacuated
    assert Rollout.objects.filter(state__in=["running", "paused", "halted"]).count() == 1


# States, and the actions each allows; every other action answers 409.
ALLOWED = {
    "running": {"pause", "advance", "rollback", "evaluate"},
    "paused": {"resume", "advance", "rollback"},
    "halted": {"resume", "advance", "rollback"},
    # Rollback always wins: while the candidate is still the stable.
    "promoted": {"rollback"},
    "rolled_back": set(),
    "superseded": set(),
}
ACTIONS = ("pause", "resume", "advance", "rollback", "evaluate")


def rollout_in(client, state: str, candidate, other) -> int:
    rollout_id = start(client, candidate, stages=HALTS_AT_ONCE).json()["id"]
    setup = {
        "running": None,
        "paused": "pause",
        "halted": "evaluate",
        "promoted": "advance",
        "rolled_back": "rollback",
    }
    if state == "superseded":
        assert start(client, other, supersede=True).status_code == 201
    elif setup[state]:
        assert act(client, rollout_id, setup[state]).status_code == 200
    assert rollout_state(client, rollout_id)["state"] == state
    return rollout_id


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("state", list(ALLOWED))
def test_each_action_is_refused_with_409_where_the_state_does_not_allow_it(
    release_manager, v1, v2, v3, state, action
):
    rollout_id = rollout_in(release_manager, state, v2, v3)
    audit_before = AuditEntry.objects.count()
    epoch_before = release_manager.get(ROUTING).json()["epoch"]

    response = act(release_manager, rollout_id, action)

    if action in ALLOWED[state]:
        assert response.status_code == 200, response.content
        return
    assert response.status_code == 409, response.content
    assert response.json()["detail"]
    assert rollout_state(release_manager, rollout_id)["state"] == state
    assert AuditEntry.objects.count() == audit_before
    assert release_manager.get(ROUTING).json()["epoch"] == epoch_before


def test_actions_on_an_unknown_rollout_are_404(release_manager):
    assert act(release_manager, 999999, "rollback").status_code == 404
    assert release_manager.get("/api/rollouts/999999/").status_code == 404


def test_rollback_routes_everything_back_to_the_baseline(release_manager, v1, v2):
    rollout = start(release_manager, v2).json()
    act(release_manager, rollout["id"], "advance")
    response = act(release_manager, rollout["id"], "rollback", reason="error spike")
    assert response.status_code == 200
    assert response.json()["state"] == "rolled_back"
    assert weights(release_manager) == {v1.pk: 10000}
    assert fleet_row(release_manager, v2.pk)["weight"] == 0
    assert response.json()["events"][-1]["reason"] == "error spike"


def test_a_stage_past_max_duration_halts_as_inconclusive_and_resume_restores_it(
    release_manager, v1, v2
):
    stages = [
        {"percent": 10, "min_duration_s": 0, "min_sessions": 0},
        {"percent": 40, "min_duration_s": 0, "min_sessions": 1000, "max_duration_s": 0},
        {"percent": 100},
    ]
    rollout = start(release_manager, v2, stages=stages).json()
    act(release_manager, rollout["id"], "evaluate")  # stage 0 passes at once
    assert weights(release_manager) == {v1.pk: 6000, v2.pk: 4000}

    response = act(release_manager, rollout["id"], "evaluate")
    assert response.status_code == 200
    halted = response.json()
    assert (halted["state"], halted["stage"]) == ("halted", 1)
    assert weights(release_manager) == {v1.pk: 10000}
    assert halted["events"][-1]["action"] == "halt"
    assert halted["events"][-1]["actor"] == release_manager.user.username
    assert halted["events"][-1]["reason"].startswith("inconclusive")
    assert halted["evaluations"][-1]["verdict"] == "halt"

    response = act(release_manager, rollout["id"], "resume", reason="more time")
    assert response.status_code == 200
    assert (response.json()["state"], response.json()["stage"]) == ("running", 1)
    assert weights(release_manager) == {v1.pk: 6000, v2.pk: 4000}


def test_pause_keeps_weights_and_stops_evaluation(release_manager, v1, v2):
    stages = [{"percent": 20, "min_duration_s": 0, "min_sessions": 0}, {"percent": 100}]
    rollout = start(release_manager, v2, stages=stages).json()
    assert act(release_manager, rollout["id"], "pause").json()["state"] == "paused"
    assert weights(release_manager) == {v1.pk: 8000, v2.pk: 2000}
    assert act(release_manager, rollout["id"], "evaluate").status_code == 409
    assert act(release_manager, rollout["id"], "resume").json()["state"] == "running"
    assert act(release_manager, rollout["id"], "evaluate").json()["state"] == "promoted"


THREE_STAGES = [{"percent": 10, "min_duration_s": 0, "min_sessions": 0}, 50, 100]


def test_advance_with_the_stage_seen_moves_one_stage_only(release_manager, v1, v2):
    rollout = start(release_manager, v2, stages=THREE_STAGES).json()
    first = act(release_manager, rollout["id"], "advance", stage=0)
    second = act(release_manager, rollout["id"], "advance", stage=0)  # the double click

    assert first.status_code == 200, first.content
    assert first.json()["stage"] == 1
    assert second.status_code == 409
    assert "stage" in second.json()["detail"]
    assert rollout_state(release_manager, rollout["id"])["stage"] == 1
    assert weights(release_manager) == {v1.pk: 5000, v2.pk: 5000}
    assert AuditEntry.objects.filter(action="rollout.advance").count() == 1


@pytest.mark.parametrize("action", ["pause", "resume", "evaluate", "advance"])
def test_an_action_with_a_stage_the_rollout_has_left_is_a_409(release_manager, v1, v2, action):
    rollout = start(release_manager, v2, stages=THREE_STAGES).json()
    assert engine.evaluate_open_rollouts()["changed"] == 1  # the beat: stage 0 -> 1
    if action == "resume":
        act(release_manager, rollout["id"], "pause")
    before = rollout_state(release_manager, rollout["id"])
    audit_before = AuditEntry.objects.count()

    response = act(release_manager, rollout["id"], action, stage=0)

    assert response.status_code == 409, response.content
    assert "stage" in response.json()["detail"]
    after = rollout_state(release_manager, rollout["id"])
    assert (after["state"], after["stage"]) == (before["state"], before["stage"])
    assert AuditEntry.objects.count() == audit_before
    # At the stage it is at, the same action is fine.
    assert act(release_manager, rollout["id"], action, stage=1).status_code == 200


def test_a_rollback_with_a_stage_only_the_beat_moved_on_from_still_rolls_back(
    release_manager, v1, v2
):
    stages = [
        {"percent": 10, "min_duration_s": 0, "min_sessions": 0},
        {"percent": 50, "min_duration_s": 0, "min_sessions": 0},
        100,
    ]
    rollout = start(release_manager, v2, stages=stages).json()
    engine.evaluate_open_rollouts()
    engine.evaluate_open_rollouts()
    assert rollout_state(release_manager, rollout["id"])["state"] == "promoted"

    response = act(release_manager, rollout["id"], "rollback", stage=0, reason="bad at 10%")

    assert response.status_code == 200, response.content
    assert response.json()["state"] == "rolled_back"
    assert weights(release_manager) == {v1.pk: 10000}


def test_a_rollback_with_a_stage_a_person_moved_on_from_is_a_409(release_manager, v1, v2):
    rollout = start(release_manager, v2, stages=THREE_STAGES).json()
    engine.evaluate_open_rollouts()  # the beat: 0 -> 1
    act(release_manager, rollout["id"], "advance", reason="a colleague")  # a person: 1 -> 2

    response = act(release_manager, rollout["id"], "rollback", stage=0)

    assert response.status_code == 409
    assert rollout_state(release_manager, rollout["id"])["state"] == "promoted"
    assert act(release_manager, rollout["id"], "rollback", stage=2).status_code == 200


@pytest.mark.parametrize("stage", [-1, "one", 1.5, True])
def test_a_bad_stage_is_a_400(release_manager, v1, v2, stage):
    rollout = start(release_manager, v2, stages=THREE_STAGES).json()
    response = act(release_manager, rollout["id"], "advance", stage=stage)
    assert response.status_code == 400, response.content
    assert "stage" in response.json()
    assert rollout_state(release_manager, rollout["id"])["stage"] == 0


def test_advance_is_a_human_override_audited_with_actor_and_reason(release_manager, v1, v2):
    gates = [{"metric": "error_rate", "max_increase": 0.01}]
    rollout = start(release_manager, v2, gates=gates).json()  # nothing would pass yet
    response = act(release_manager, rollout["id"], "advance", reason="hotfix, ship it")
    assert response.status_code == 200
    assert response.json()["stage"] == 1

    entries = release_manager.get(
        "/api/audit/", {"agent": SLUG, "action": "rollout.advance"}
    ).json()
    entries = entries["results"] if isinstance(entries, dict) else entries
    assert len(entries) == 1
    entry = entries[0]
    assert entry["actor"] == release_manager.user.username
    assert entry["reason"] == "hotfix, ship it"
    assert (entry["before"]["stage"], entry["after"]["stage"]) == (0, 1)
    assert entry["before"]["weights"] == {str(v1.pk): 9500, str(v2.pk): 500}
    assert entry["after"]["weights"] == {str(v1.pk): 7500, str(v2.pk): 2500}
    event = response.json()["events"][-1]
    assert (event["action"], event["actor"], event["reason"]) == (
        "advance",
        release_manager.user.username,
        "hotfix, ship it",
    )


def test_a_single_stage_prompt_change_is_a_cutover_with_warnings(
    release_manager, agent, make_version, v1
):
    candidate = make_version(agent, "prompt", prompts=PROMPT_CHANGE)
    response = start(release_manager, candidate, stages=[{"percent": 100}])
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["state"] == "promoted"
    assert body["warnings"]
    assert all(isinstance(w, str) and w for w in body["warnings"])
    assert weights(release_manager) == {candidate.pk: 10000}
    assert Agent.objects.get(pk=agent.pk).stable_id == candidate.pk


def test_a_single_stage_code_only_change_is_a_cutover_without_warnings(
    release_manager, agent, make_version, v1
):
    candidate = make_version(agent, "code-only", code={"ref": "git:ffffffff"})
    response = start(release_manager, candidate, stages=[100])
    assert response.status_code == 201, response.content
    assert (response.json()["state"], response.json()["warnings"]) == ("promoted", [])
    assert weights(release_manager) == {candidate.pk: 10000}


def test_a_multi_stage_prompt_change_carries_no_warning(release_manager, agent, make_version, v1):
    candidate = make_version(agent, "prompt", prompts=PROMPT_CHANGE)
    response = start(release_manager, candidate)
    assert (response.status_code, response.json()["warnings"]) == (201, [])


# --- the stable ---------------------------------------------------------------------------


def test_the_first_stable_can_be_set_directly(release_manager, agent, make_version):
    version = make_version(agent, "first")
    assert release_manager.get(ROUTING).json()["weights"] == {}
    response = post(release_manager, STABLE, {"version": version.pk})
    assert response.status_code == 200
    assert response.json()["stable"] == version.pk
    assert weights(release_manager) == {version.pk: 10000}


def test_the_stable_can_only_be_set_while_no_rollout_is_open(release_manager, v1, v2, v3):
    rollout = start(release_manager, v2).json()
    response = post(release_manager, STABLE, {"version": v3.pk})
    assert response.status_code == 409
    assert "detail" in response.json()
    assert weights(release_manager) == {v1.pk: 9500, v2.pk: 500}

    act(release_manager, rollout["id"], "rollback")
    response = post(release_manager, STABLE, {"version": v3.pk})
    assert response.status_code == 200
    assert weights(release_manager) == {v3.pk: 10000}


def test_the_stable_must_be_a_version_of_the_agent(release_manager, make_version, v1):
    stranger = make_version(Agent.objects.create(slug="other", name="Other"), "x")
    response = post(release_manager, STABLE, {"version": stranger.pk})
    assert response.status_code == 400
    assert "version" in response.json()
    assert post(release_manager, STABLE, {"version": "v1"}).status_code == 400
    assert release_manager.post(STABLE, [v1.pk], format="json").status_code == 400
    assert weights(release_manager) == {v1.pk: 10000}


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stages", "key", "named"),
    [
        pytest.param([10, 5, 100], "stages[1]", "rise", id="not-rising"),
        pytest.param([10, 10, 100], "stages[1]", "rise", id="repeated"),
        pytest.param([0, 100], "stages[0]", "percent", id="zero"),
        pytest.param([-5, 100], "stages[0]", "percent", id="negative"),
        pytest.param([50, 101], "stages[1]", "percent", id="over-100"),
        pytest.param([5, 50], "stages", "100", id="last-not-100"),
        pytest.param([{"percent": "5"}, 100], "stages[0]", "percent", id="string-percent"),
        pytest.param([{"percent": True}, 100], "stages[0]", "percent", id="bool-percent"),
        pytest.param([{"min_sessions": 5}, 100], "stages[0]", "percent", id="no-percent"),
        pytest.param([{"percent": 5, "speed": 2}, 100], "stages[0]", "speed", id="unknown"),
        pytest.param(
            [{"percent": 5, "min_sessions": -1}, 100],
            "stages[0]",
            "min_sessions",
            id="negative-min-sessions",
        ),
        pytest.param(
            [{"percent": 5, "min_duration_s": 1.5}, 100],
            "stages[0]",
            "min_duration_s",
            id="fractional-duration",
        ),
        pytest.param(
            [{"percent": 5, "min_duration_s": 60, "max_duration_s": 30}, 100],
            "stages[0]",
            "max_duration_s",
            id="max-below-min",
        ),
        pytest.param([], "stages", "", id="empty"),
        pytest.param("5,25,100", "stages", "", id="not-a-list"),
        pytest.param(["fast", 100], "stages[0]", "", id="not-an-object"),
    ],
)
def test_bad_stages_are_a_400_naming_the_field(release_manager, v1, v2, stages, key, named):
    response = start(release_manager, v2, stages=stages)
    assert response.status_code == 400, response.content
    errors = response.json()
    assert key in errors, errors
    assert named in " ".join(errors[key])
    assert not Rollout.objects.exists()
    assert weights(release_manager) == {v1.pk: 10000}


def test_an_unknown_candidate_is_a_400(release_manager, v1):
    response = post(release_manager, ROLLOUTS, {"candidate": 999999})
    assert response.status_code == 400
    assert "candidate" in response.json()
    assert "candidate" in post(release_manager, ROLLOUTS, {}).json()
    assert "candidate" in post(release_manager, ROLLOUTS, {"candidate": "v2"}).json()


def test_a_candidate_of_another_agent_is_a_400(release_manager, make_version, v1):
    stranger = make_version(Agent.objects.create(slug="other", name="Other"), "x")
    response = start(release_manager, stranger)
    assert response.status_code == 400
    assert "candidate" in response.json()
    assert not Rollout.objects.exists()


def test_the_baseline_as_candidate_is_a_400(release_manager, v1):
    response = start(release_manager, v1)
    assert response.status_code == 400
    assert "candidate" in response.json()


def test_a_baseline_of_another_agent_is_a_400(release_manager, make_version, v1, v2):
    stranger = make_version(Agent.objects.create(slug="other", name="Other"), "x")
    response = start(release_manager, v2, baseline=stranger.pk)
    assert response.status_code == 400
    assert "baseline" in response.json()


def test_a_rollout_without_a_stable_is_a_409(release_manager, agent, v2, v3):
    response = start(release_manager, v2)
    assert response.status_code == 409
    assert "detail" in response.json()
    # Naming a baseline does not make up for having nothing in production.
    assert start(release_manager, v3, baseline=v2.pk).status_code == 409
    assert not Rollout.objects.exists()
    assert release_manager.get(ROUTING).json()["weights"] == {}


def _error_text(errors: Any) -> str:
    if isinstance(errors, dict):
        return " ".join(f"{k} {_error_text(v)}" for k, v in errors.items())
    if isinstance(errors, list):
        return " ".join(_error_text(e) for e in errors)
    return str(errors)


@pytest.mark.parametrize(
    ("gate", "named"),
    [
        pytest.param({"metric": "happiness", "max_increase": 0.1}, "metric", id="unknown-metric"),
        pytest.param({"max_increase": 0.1}, "metric", id="no-metric"),
        pytest.param(
            {"metric": ["error_rate"], "max_increase": 0.1}, "metric", id="metric-not-a-string"
        ),
        pytest.param(
            {"metric": "success_rate", "max_increase": 0.01},
            "max_increase",
            id="increase-on-higher-is-better",
        ),
        pytest.param(
            {"metric": "error_rate", "max_decrease": 0.01},
            "max_decrease",
            id="decrease-on-lower-is-better",
        ),
        pytest.param(
            {"metric": "error_rate", "max_increase": 0.01, "max_relative_change": 0.1},
            "tolerance",
            id="two-tolerances",
        ),
        pytest.param({"metric": "error_rate"}, "tolerance", id="no-tolerance"),
        pytest.param(
            {"metric": "error_rate", "max_increase": 0.01, "stat": "p95"},
            "stat",
            id="p95-on-a-rate",
        ),
        pytest.param(
            {"metric": "latency_ms", "max_increase": -1}, "max_increase", id="negative-tolerance"
        ),
        pytest.param(
            {"metric": "latency_ms", "max_increase": 5, "critical": "yes"},
            "critical",
            id="critical-not-bool",
        ),
        pytest.param(
            {"metric": "latency_ms", "max_increase": 5, "window": 3}, "window", id="unknown-field"
        ),
    ],
)
def test_bad_gates_are_a_400_naming_the_field(release_manager, v1, v2, gate, named):
    response = start(release_manager, v2, gates=[gate])
    assert response.status_code == 400, response.content
    assert named in _error_text(response.json())
    assert not Rollout.objects.exists()


def test_valid_gates_are_stored_normalised(release_manager, v1, v2):
    gates = [
        {"metric": "error_rate", "max_increase": 0},
        {"metric": "success_rate", "max_decrease": 0.02, "critical": False},
        {"metric": "latency_ms", "stat": "p95", "max_relative_change": 0.1},
    ]
    response = start(release_manager, v2, gates=gates)
    assert response.status_code == 201, response.content
    stored = response.json()["gates"]
    assert [(g["metric"], g["critical"], g["stat"]) for g in stored] == [
        ("error_rate", True, "mean"),
        ("success_rate", False, "mean"),
        ("latency_ms", True, "p95"),
    ]
    assert stored[0]["max_increase"] == 0


# --- agent rollback ---------------------------------------------------------------------------


def test_agent_rollback_rolls_back_the_open_rollout(release_manager, v1, v2):
    rollout = start(release_manager, v2).json()
    act(release_manager, rollout["id"], "advance")
    response = post(release_manager, AGENT_ROLLBACK, {"reason": "pager"})
    assert response.status_code == 200
    assert response.json()["weights"] == {str(v1.pk): 10000}
    assert response.json()["stable"] == v1.pk
    assert rollout_state(release_manager, rollout["id"])["state"] == "rolled_back"
    assert AuditEntry.objects.filter(action="rollout.rollback", reason="pager").count() == 1


def _cutover(client, candidate) -> None:
    response = start(client, candidate, stages=[100])
    assert response.json()["state"] == "promoted", response.content


def test_agent_rollback_without_a_rollout_goes_back_one_stable_at_a_time(
    release_manager, v1, v2, v3
):
    _cutover(release_manager, v2)
    _cutover(release_manager, v3)
    assert weights(release_manager) == {v3.pk: 10000}

    first = post(release_manager, AGENT_ROLLBACK, {"reason": "v3 is bad"})
    assert first.status_code == 200
    assert (first.json()["stable"], first.json()["weights"]) == (v2.pk, {str(v2.pk): 10000})

    second = post(release_manager, AGENT_ROLLBACK)
    assert second.status_code == 200
    assert (second.json()["stable"], second.json()["weights"]) == (v1.pk, {str(v1.pk): 10000})
    assert second.json()["epoch"] == first.json()["epoch"] + 1

    third = post(release_manager, AGENT_ROLLBACK)
    assert third.status_code == 409
    assert "detail" in third.json()
    assert weights(release_manager) == {v1.pk: 10000}
    # The first rollback undid v3's cutover, still the latest rollout; v2's cutover
    # was no longer the latest, so the second went back to the previous stable.
    entries = AuditEntry.objects.filter(action__endswith=".rollback").order_by("id")
    assert [(e.action, e.actor, e.reason) for e in entries] == [
        ("rollout.rollback", release_manager.user.username, "v3 is bad"),
        ("agent.rollback", release_manager.user.username, ""),
    ]
    assert (entries[1].before["stable"], entries[1].after["stable"]) == (v2.pk, v1.pk)
    states = dict(Rollout.objects.values_list("candidate_id", "state"))
    assert states == {v2.pk: "promoted", v3.pk: "rolled_back"}


def test_a_double_clicked_rollback_with_the_epoch_rolls_back_one_step_only(
    release_manager, viewer, v1, v2, v3
):
    _cutover(release_manager, v2)
    _cutover(release_manager, v3)
    seen = viewer.get(f"/api/agents/{v1.agent.slug}/routing/").json()["epoch"]

    first = post(release_manager, AGENT_ROLLBACK, {"epoch": seen})
    second = post(release_manager, AGENT_ROLLBACK, {"epoch": seen})

    assert first.status_code == 200
    assert second.status_code == 409
    assert f"since epoch {seen}" in second.json()["detail"]
    assert weights(release_manager) == {v2.pk: 10000}
    assert AuditEntry.objects.filter(action__endswith=".rollback").count() == 1


def test_a_stale_epoch_also_guards_the_rollback_of_an_open_rollout(release_manager, v1, v2):
    response = start(release_manager, v2, stages=[10, 100])
    epoch = weights_epoch(release_manager)
    post(release_manager, f"/api/rollouts/{response.json()['id']}/pause/")

    assert post(release_manager, AGENT_ROLLBACK, {"epoch": epoch - 1}).status_code == 409
    assert Rollout.objects.get().state == "paused"
    assert post(release_manager, AGENT_ROLLBACK, {"epoch": epoch}).status_code == 200
    assert Rollout.objects.get().state == "rolled_back"


def weights_epoch(client) -> int:
    return client.get(ROUTING).json()["epoch"]


QUICK_THEN_100 = [{"percent": 50, "min_duration_s": 0, "min_sessions": 0}, {"percent": 100}]


def promoted_by_the_beat(client, candidate) -> tuple[int, int]:
    """A rollout the beat promotes right after a person looked at it: the rollout's id
    and the routing epoch the person saw."""
    rollout_id = start(client, candidate, stages=QUICK_THEN_100).json()["id"]
    seen = weights_epoch(client)
    assert engine.evaluate_open_rollouts()["changed"] == 1
    assert rollout_state(client, rollout_id)["state"] == "promoted"
    return rollout_id, seen


def test_a_rollback_clicked_after_the_beat_promoted_still_rolls_back(release_manager, v1, v2):
    rollout_id, _ = promoted_by_the_beat(release_manager, v2)

    response = act(release_manager, rollout_id, "rollback", reason="saw errors at 50%")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["state"] == "rolled_back"
    assert body["events"][-1]["actor"] == release_manager.user.username
    assert weights(release_manager) == {v1.pk: 10000}
    assert release_manager.get(ROUTING).json()["stable"] == v1.pk
    assert fleet_row(release_manager, v2.pk)["weight"] == 0
    entry = AuditEntry.objects.get(action="rollout.rollback")
    assert (entry.reason, entry.before["state"]) == ("saw errors at 50%", "promoted")


def test_an_agent_rollback_with_the_epoch_seen_before_a_promotion_rolls_it_back(
    release_manager, harness, v1, v2
):
    rollout_id, seen = promoted_by_the_beat(release_manager, v2)
    on_v2 = sessions_on(harness, v2.pk, 1, "c")[0]

    first = post(release_manager, AGENT_ROLLBACK, {"epoch": seen, "evacuate": True})
    second = post(release_manager, AGENT_ROLLBACK, {"epoch": seen})

    assert first.status_code == 200, first.content
    assert (first.json()["stable"], first.json()["weights"]) == (v1.pk, {str(v1.pk): 10000})
    assert rollout_state(release_manager, rollout_id)["state"] == "rolled_back"
    assert heartbeat(harness, on_v2) == "drain"
    # The person's own rollback moved the routing: a second click is refused.
    assert second.status_code == 409
    assert weights(release_manager) == {v1.pk: 10000}
    assert AuditEntry.objects.filter(action__endswith=".rollback").count() == 1


def test_an_agent_rollback_with_an_epoch_older_than_a_persons_change_is_refused(
    release_manager, v1, v2
):
    rollout_id = start(release_manager, v2, stages=QUICK_THEN_100).json()["id"]
    seen = weights_epoch(release_manager)
    act(release_manager, rollout_id, "advance", reason="a colleague promoted it")

    response = post(release_manager, AGENT_ROLLBACK, {"epoch": seen})

    assert response.status_code == 409
    assert f"since epoch {seen}" in response.json()["detail"]
    assert rollout_state(release_manager, rollout_id)["state"] == "promoted"
    assert weights(release_manager) == {v2.pk: 10000}


def test_an_agent_rollback_with_an_epoch_from_the_future_is_refused(release_manager, v1, v2):
    start(release_manager, v2)
    epoch = weights_epoch(release_manager)
    assert post(release_manager, AGENT_ROLLBACK, {"epoch": epoch + 5}).status_code == 409
    assert weights(release_manager) == {v1.pk: 9500, v2.pk: 500}


def test_a_bad_gate_among_several_is_reported_at_its_index(release_manager, v1, v2):
    gates = [
        {"metric": "error_rate", "max_increase": 0.01},
        {"metric": "success_rate", "max_increase": 0.01},
    ]
    response = start(release_manager, v2, gates=gates)
    assert response.status_code == 400
    errors = response.json()["gates"]
    assert errors[0] == {}
    assert list(errors[1]) == ["max_increase"]


def test_agent_rollback_with_no_previous_stable_is_a_409(release_manager, agent, v1):
    response = post(release_manager, AGENT_ROLLBACK)
    assert response.status_code == 409
    assert "detail" in response.json()
    assert weights(release_manager) == {v1.pk: 10000}


def test_agent_rollback_of_an_agent_with_nothing_routed_is_a_409(release_manager, agent):
    assert post(release_manager, AGENT_ROLLBACK).status_code == 409


def test_agent_rollback_with_evacuate_drains_the_candidates_live_sessions(
    release_manager, harness, v1, v2
):
    start(release_manager, v2, stages=[50, 100])
    on_v2 = sessions_on(harness, v2.pk, 2, "cand")
    on_v1 = sessions_on(harness, v1.pk, 1, "base")
    assert {heartbeat(harness, sid) for sid in on_v2} == {"continue"}

    response = post(release_manager, AGENT_ROLLBACK, {"evacuate": True, "reason": "bad"})
    assert response.status_code == 200
    assert {heartbeat(harness, sid) for sid in on_v2} == {"drain"}
    assert heartbeat(harness, on_v1[0]) == "continue"
    assert AuditEntry.objects.filter(action="version.evacuated").count() == 1


def test_agent_rollback_with_evacuate_and_no_rollout_drains_the_rolled_back_stable(
    release_manager, harness, v1, v2
):
    _cutover(release_manager, v2)
    on_v2 = sessions_on(harness, v2.pk, 1, "s")[0]
    response = post(release_manager, AGENT_ROLLBACK, {"evacuate": True})
    assert response.status_code == 200
    assert response.json()["stable"] == v1.pk
    assert heartbeat(harness, on_v2) == "drain"


def test_agent_rollback_without_evacuate_lets_sessions_finish(release_manager, harness, v1, v2):
    start(release_manager, v2, stages=[50, 100])
    on_v2 = sessions_on(harness, v2.pk, 1, "cand")[0]
    post(release_manager, AGENT_ROLLBACK)
    assert heartbeat(harness, on_v2) == "continue"
    assert open_session(harness, on_v2, new=False) == v2.pk  # the pin stands


def test_after_a_rollback_the_very_next_assignments_all_land_on_the_baseline(
    release_manager, harness, v1, v2
):
    start(release_manager, v2, stages=[50, 100])
    # Warm the routing table cache at the rollout's epoch, on both arms.
    sessions_on(harness, v2.pk, 3, "warm-c")
    sessions_on(harness, v1.pk, 3, "warm-b")

    assert post(release_manager, AGENT_ROLLBACK).status_code == 200

    landed = {open_session(harness, f"after-{i}") for i in range(200)}
    assert landed == {v1.pk}


def test_rollouts_are_listed_per_agent_newest_first(release_manager, viewer, v1, v2, v3):
    first = start(release_manager, v2).json()
    second = start(release_manager, v3, supersede=True).json()
    listed = viewer.get(ROLLOUTS).json()
    assert [r["id"] for r in listed] == [second["id"], first["id"]]
    assert [r["state"] for r in listed] == ["running", "superseded"]


# --- roles ------------------------------------------------------------------------------------


def _world(client, v2) -> int:
    return start(client, v2).json()["id"]


def test_a_viewer_reads_rollouts_fleet_and_routing_but_changes_nothing(
    release_manager, viewer, v1, v2, v3
):
    rollout_id = _world(release_manager, v2)
    for url in (ROLLOUTS, f"/api/rollouts/{rollout_id}/", FLEET, ROUTING):
        assert viewer.get(url).status_code == 200, url
    writes = [
        (ROLLOUTS, {"candidate": v3.pk, "supersede": True}),
        (STABLE, {"version": v3.pk}),
        (AGENT_ROLLBACK, {}),
        *[(f"/api/rollouts/{rollout_id}/{action}/", {}) for action in ACTIONS],
    ]
    for url, body in writes:
        assert post(viewer, url, body).status_code == 403, url
    assert rollout_state(release_manager, rollout_id)["state"] == "running"
    assert Rollout.objects.count() == 1
    assert not RolloutEvent.objects.exclude(action="start").exists()


def test_the_harness_may_not_touch_rollouts(release_manager, harness, v1, v2):
    rollout_id = _world(release_manager, v2)
    for url in (ROLLOUTS, f"/api/rollouts/{rollout_id}/", FLEET):
        assert harness.get(url).status_code == 403, url
    assert harness.get(ROUTING).status_code == 200  # for local, fail-static routing
    for url in (
        ROLLOUTS,
        STABLE,
        AGENT_ROLLBACK,
        *[f"/api/rollouts/{rollout_id}/{action}/" for action in ACTIONS],
    ):
        assert post(harness, url, {"candidate": v2.pk, "version": v2.pk}).status_code == 403, url
    assert rollout_state(release_manager, rollout_id)["state"] == "running"


@pytest.mark.parametrize(("client_name", "code"), [("anonymous", 401), ("outsider", 403)])
def test_strangers_are_refused(request, release_manager, v1, v2, client_name, code):
    client = request.getfixturevalue(client_name)
    rollout_id = _world(release_manager, v2)
    for url in (ROLLOUTS, f"/api/rollouts/{rollout_id}/", FLEET, ROUTING):
        assert client.get(url).status_code == code, url
    for url in (
        ROLLOUTS,
        STABLE,
        AGENT_ROLLBACK,
        *[f"/api/rollouts/{rollout_id}/{action}/" for action in ACTIONS],
    ):
        assert post(client, url, {}).status_code == code, url
    assert rollout_state(release_manager, rollout_id)["state"] == "running"

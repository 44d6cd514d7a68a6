"""The dashboard in a real browser: Debian's Chromium driven by Playwright against a live
server on PostgreSQL. Live updates arrive without a reload, rollback works from the
page, the charts draw the data, the pages pass axe-core, and nothing is fetched from
outside the server."""

from __future__ import annotations

import json
import shutil
import threading
import urllib.request
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from django.conf import settings
from django.utils import timezone
from playwright.sync_api import Page, sync_playwright

from controlplane.models import ApiToken, Role
from rollouts import engine, sessions, snapshots
from rollouts.models import FleetSnapshot, Rollout, RolloutEvent
from tests.dashboard.conftest import PASSWORD, make_user, open_sessions, start
from versions.audit import SYSTEM
from versions.models import Agent, AuditEntry

pytestmark = pytest.mark.django_db(transaction=True)

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(settings.VAR_DIR) / "test-artifacts"
WAIT_MS = 15_000
LIVE_AT_START = 24


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("Debian's chromium is needed for the browser tests: apt-get install chromium")
    return path


def in_browser(scenario: Callable[[Page], Any]) -> Any:
    """Run ``scenario(page)`` in a thread of its own and return what it returns.

    Playwright's sync API keeps an asyncio loop running in its thread, and Django's ORM
    refuses to run in a thread with a running loop; the test's own thread stays free
    for the database.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
                try:
                    context = browser.new_context(viewport={"width": 1280, "height": 900})
                    outcome["value"] = scenario(context.new_page())
                finally:
                    browser.close()
        except BaseException as exc:  # handed to the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="playwright")
    thread.start()
    thread.join(timeout=240)
    assert not thread.is_alive(), "the browser scenario did not finish"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def serious_violations(page: Page) -> list[str]:
    results = Axe().run(page)
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in results.response["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def api_post(base: str, path: str, token: str, body: dict) -> dict:
    request = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def log_in(page: Page, base: str, path: str, username: str) -> None:
    page.goto(base + path)
    assert "/login/" in page.url
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("#login-submit")
    page.wait_for_url(base + path)


def chart(page: Page, element_id: str) -> dict:
    """What Plotly drew in one chart: its traces' names and points, and its shapes."""
    page.wait_for_function(
        f"document.getElementById('{element_id}') && "
        f"document.getElementById('{element_id}').data !== undefined",
        timeout=WAIT_MS,
    )
    return page.evaluate(
        """id => {
            const el = document.getElementById(id);
            return {
                traces: el.data.map(t => ({name: t.name, x: t.x.length, y: Array.from(t.y)})),
                shapes: (el.layout.shapes || []).length,
                labels: (el.layout.annotations || []).map(a => a.text),
            };
        }""",
        element_id,
    )


@pytest.fixture
def scene(make_version):
    """research mid-rollout with live sessions and snapshots; support with a rollout
    that was halted twice, so its rollout page has an evaluation history."""
    research = Agent.objects.create(slug="research", name="Research agent")
    v1 = make_version(research, "v1")
    engine.set_stable(research, v1, actor="ci-pipeline")
    v2 = make_version(
        research,
        "v2",
        model={"provider": "anthropic", "name": "claude-opus", "params": {"temperature": 0.2}},
        prompts={"system": "You are a careful research assistant.\nCite every source."},
        tools=[{"name": "search", "description": "Search the web and the archive"}],
    )
    rollout = start(research, v2, stages=[{"percent": 50, "min_duration_s": 3600}, 100])
    open_sessions(research, LIVE_AT_START)
    engine.evaluate_open_rollouts()
    now = timezone.now()
    # An hour and a half of history for the chart: v1 alone, then v2 deployed an hour
    # ago and growing, the way the beat would have recorded it.
    deployed = now - timedelta(minutes=60)
    RolloutEvent.objects.filter(rollout=rollout).update(at=deployed)
    AuditEntry.objects.filter(agent=research, action="agent.stable_set").update(
        at=now - timedelta(minutes=100)
    )
    history = []
    for step in range(45):
        at = now - timedelta(minutes=96 - 2 * step)
        grown = max(0.0, (at - deployed).total_seconds() / 3600)
        live = {str(v1.pk): 22 - round(10 * grown) + step % 3}
        if grown:
            live[str(v2.pk)] = round(12 * grown)
        history.append(FleetSnapshot(agent=research, at=at, live=live))
    FleetSnapshot.objects.bulk_create(history)
    for minutes in (4, 3, 2, 1):
        snapshots.record(now - timedelta(minutes=minutes))

    support = Agent.objects.create(slug="support", name="Support agent")
    s1, s2 = make_version(support, "s1"), make_version(support, "s2")
    engine.set_stable(support, s1, actor="ci-pipeline")
    halted = start(
        support, s2, stages=[{"percent": 50, "min_duration_s": 0, "max_duration_s": 1}, 100]
    )
    for i in range(6):
        sessions.assign(support.slug, f"t-{i}")
        sessions.end(support.slug, f"t-{i}", {"error": i == 0, "latency_ms": 100.0 + i})
    at = timezone.now()
    engine.transition(halted.pk, "evaluate", actor=SYSTEM, now=at + timedelta(seconds=5))
    engine.transition(halted.pk, "resume", actor="ci-pipeline", now=at + timedelta(seconds=6))
    engine.transition(halted.pk, "evaluate", actor=SYSTEM, now=at + timedelta(seconds=12))
    halted.refresh_from_db()

    user = make_user(Role.RELEASE_MANAGER)
    token = ApiToken.issue(make_user(Role.HARNESS))
    return {
        "research": research,
        "v1": v1,
        "v2": v2,
        "rollout": rollout,
        "halted": halted,
        "user": user,
        "token": token,
        "series": snapshots.series(research, now - timedelta(hours=6)),
    }


def test_the_board_updates_live_rolls_back_and_draws_the_data(live_server, scene):
    base = live_server.url
    user, rollout, v2 = scene["user"], scene["rollout"], scene["v2"]

    def scenario(page: Page) -> dict:
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        seen: dict[str, Any] = {}
        log_in(page, base, "/agents/research/", user.username)
        seen["chart_before"] = chart(page, "rainbow-chart")
        page.evaluate("window.__mark = 1")

        for i in range(5):
            api_post(
                base, "/api/agents/research/sessions/", scene["token"], {"session_id": f"b-{i}"}
            )
        page.wait_for_function(
            "document.querySelector('#fleet [data-live-total]').textContent.trim() === "
            f"'{LIVE_AT_START + 5}'",
            timeout=WAIT_MS,
        )
        seen["mark_after_sessions"] = page.evaluate("window.__mark")
        seen["board_violations"] = serious_violations(page)
        seen["board_shot"] = str(screenshot(page, "fleet-board.png"))

        epoch = page.inner_text("#fleet [data-epoch]").strip()
        page.click("#rollback-open")
        page.wait_for_selector("dialog#confirm-dialog[open]", timeout=WAIT_MS)
        seen["dialog_violations"] = serious_violations(page)
        page.fill("#confirm-reason", "error rate looks off on v2")
        page.click("#confirm-submit")
        page.wait_for_selector("#toasts .toast-success", timeout=WAIT_MS)
        seen["toast"] = page.inner_text("#toasts .toast-success")
        page.wait_for_function(
            f"document.querySelector('#fleet [data-epoch]').textContent.trim() !== '{epoch}'",
            timeout=WAIT_MS,
        )
        seen["candidate_weight"] = page.inner_text(
            f"#fleet tr[data-version='{v2.pk}'] [data-weight]"
        )
        seen["audit_line"] = page.inner_text("#fleet li[data-audit-action='rollout.rollback']")
        seen["dialog_left"] = page.locator("dialog#confirm-dialog").count()
        seen["mark_after_rollback"] = page.evaluate("window.__mark")
        # The refresh after the rollback redraws the chart with the rollback marked.
        page.wait_for_function(
            "document.getElementById('rainbow-chart').layout.shapes.length === "
            f"{seen['chart_before']['shapes'] + 1}",
            timeout=WAIT_MS,
        )
        seen["chart_after"] = chart(page, "rainbow-chart")
        seen["offline"] = [url for url in requests if not url.startswith(base)]
        return seen

    seen = in_browser(scenario)

    assert seen["mark_after_sessions"] == 1, "the page reloaded"
    assert seen["mark_after_rollback"] == 1, "the page reloaded"
    assert seen["board_violations"] == []
    assert seen["dialog_violations"] == []
    assert seen["offline"] == []
    # The chart draws one stacked trace per version found in the snapshots, with one
    # point per snapshot, and the start of the rollout as a marker.
    series = scene["series"]
    expected = {vid for _, live in series for vid in live}
    assert len(seen["chart_before"]["traces"]) == len(expected) == 2
    assert len(series) == 45 + 4
    for trace in seen["chart_before"]["traces"]:
        assert trace["x"] == len(series)
    totals = [
        sum(point) for point in zip(*(t["y"] for t in seen["chart_before"]["traces"]), strict=True)
    ]
    assert totals == [sum(live.values()) for _, live in series]
    # The stable being set and the rollout's start are marked.
    assert seen["chart_before"]["labels"] == ["stable set to v1", "deploy v2"]
    assert seen["chart_before"]["shapes"] == 2
    # The rollback happened, from the page, in the name of the person who clicked.
    assert seen["chart_after"]["labels"][-1] == "roll back v2"
    assert "Rolled back research" in seen["toast"]
    assert seen["candidate_weight"].strip() == "0%"
    assert user.username in seen["audit_line"]
    assert seen["dialog_left"] == 0
    rollout.refresh_from_db()
    assert rollout.state == "rolled_back"
    entry = AuditEntry.objects.get(action="rollout.rollback")
    assert (entry.actor, entry.actor_user_id, entry.reason) == (
        user.username,
        user.pk,
        "error rate looks off on v2",
    )
    assert Path(seen["board_shot"]).stat().st_size > 10_000


def test_the_rollout_and_diff_pages_draw_their_data_and_pass_axe(live_server, scene):
    base = live_server.url
    halted: Rollout = scene["halted"]
    reports = [e.evaluation for e in halted.events.all() if e.evaluation]
    v1, v2 = scene["v1"], scene["v2"]

    def scenario(page: Page) -> dict:
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        seen: dict[str, Any] = {}
        log_in(page, base, f"/rollouts/{halted.pk}/", scene["user"].username)
        seen["samples"] = chart(page, "samples-chart")
        seen["gates"] = [chart(page, f"gate-chart-{i}") for i in range(len(halted.gates))]
        seen["timeline"] = page.locator("#progress tr[data-event]").count()
        seen["rollout_violations"] = serious_violations(page)
        screenshot(page, "rollout.png")

        page.goto(f"{base}/versions/{v2.pk}/diff/{v1.pk}/")
        seen["verdict"] = page.inner_text("#verdict-title")
        seen["diff_violations"] = serious_violations(page)
        screenshot(page, "diff.png")
        seen["offline"] = [url for url in requests if not url.startswith(base)]
        return seen

    seen = in_browser(scenario)

    assert seen["rollout_violations"] == []
    assert seen["diff_violations"] == []
    assert seen["offline"] == []
    assert len(reports) == 2
    # Ended sessions per arm at each evaluation: candidate, baseline and the minimum.
    assert [t["name"] for t in seen["samples"]["traces"]] == ["candidate", "baseline", "required"]
    assert all(t["x"] == len(reports) for t in seen["samples"]["traces"])
    candidate, baseline = seen["samples"]["traces"][:2]
    assert candidate["y"] == [r["min_sessions"]["candidate"] for r in reports]
    assert baseline["y"] == [r["min_sessions"]["baseline"] for r in reports]
    # All six sessions count at the first look; resuming a halted stage starts its
    # samples over, so the look after the resume has none yet.
    assert candidate["y"][0] + baseline["y"][0] == 6
    assert candidate["y"][-1] + baseline["y"][-1] == 0
    # One chart per gate, one verdict point per evaluation.
    assert len(seen["gates"]) == 2
    for drawn in seen["gates"]:
        assert drawn["traces"][0]["name"] == "verdict"
        assert drawn["traces"][0]["x"] == len(reports)
        assert drawn["traces"][0]["y"] == ["inconclusive"] * len(reports)
    assert seen["timeline"] == halted.events.count() == 4
    assert seen["verdict"].startswith("Rainbow required")


def test_actions_work_from_the_keyboard_and_focus_survives_the_live_refresh(live_server, scene):
    base = live_server.url
    rollout = scene["rollout"]
    pause, resume = f"#action-pause-{rollout.pk}", f"#action-resume-{rollout.pk}"

    def scenario(page: Page) -> dict:
        seen: dict[str, Any] = {}
        log_in(page, base, f"/rollouts/{rollout.pk}/", scene["user"].username)
        page.focus(pause)
        page.keyboard.press("Enter")
        page.wait_for_selector("dialog#confirm-dialog[open]", timeout=WAIT_MS)
        seen["focus_in_dialog"] = page.evaluate("document.activeElement.id")
        page.keyboard.type("pausing from the keyboard")
        page.keyboard.press("Tab")
        seen["focus_next"] = page.evaluate("document.activeElement.id")
        page.keyboard.press("Enter")
        page.wait_for_selector("#toasts .toast-success", timeout=WAIT_MS)
        page.wait_for_selector(resume, timeout=WAIT_MS)

        # Escape closes a confirm step without acting.
        page.focus(resume)
        page.keyboard.press("Enter")
        page.wait_for_selector("dialog#confirm-dialog[open]", timeout=WAIT_MS)
        page.keyboard.press("Escape")
        page.wait_for_selector("dialog#confirm-dialog", state="detached", timeout=WAIT_MS)

        # The progress partial is replaced every 2 s; the focused button stays focused.
        page.focus(resume)
        page.evaluate(
            """() => { window.__swaps = 0;
                document.body.addEventListener('htmx:afterSettle', e => {
                    if (e.detail.target.id === 'progress') window.__swaps += 1; }); }"""
        )
        page.wait_for_function("window.__swaps >= 2", timeout=WAIT_MS)
        seen["focus_after_refresh"] = page.evaluate("document.activeElement.id")
        return seen

    seen = in_browser(scenario)

    assert seen["focus_in_dialog"] == "confirm-reason"
    assert seen["focus_next"] == "confirm-submit"
    assert seen["focus_after_refresh"] == resume.removeprefix("#")
    rollout.refresh_from_db()
    assert rollout.state == "paused"
    entry = AuditEntry.objects.get(action="rollout.pause")
    assert (entry.actor, entry.reason) == (scene["user"].username, "pausing from the keyboard")

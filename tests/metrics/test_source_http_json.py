"""Polling an ``http_json`` source: a fake agent platform's export over real HTTP, with
cursor paging, first-report-wins deduplication, unknown sessions, and errors."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from metrics import rollups, sources, tasks
from metrics.models import MetricSource, Outcome
from metrics.sources import http_json
from rollouts import engine, sessions
from rollouts.models import Session
from tests.concurrency import race
from tests.metrics.servers import FakeExport

pytestmark = pytest.mark.django_db


@pytest.fixture
def export():
    server = FakeExport()
    yield server
    server.close()


@pytest.fixture
def v1(agent, make_version):
    version = make_version(agent, "v1")
    engine.set_stable(agent, version, actor="test")
    return version


def source_for(agent, export, **kwargs) -> MetricSource:
    return MetricSource.objects.create(
        agent=agent, kind="http_json", url=f"{export.url}/export?team=a", **kwargs
    )


def later(seconds: float = 3600):
    return timezone.now() + timedelta(seconds=seconds)


def test_it_pages_by_cursor_and_records_outcomes_like_the_api_end(agent, v1, export):
    for sid in ("a", "b", "c"):
        sessions.assign(agent.slug, sid)
    export.pages = {
        None: ([{"session_id": "a", "success": True, "latency_ms": 120}], "p2"),
        "p2": ([{"session_id": "b", "error": True, "user": "ignored"}], "p3"),
        "p3": ([], "p3"),
    }
    source = source_for(agent, export)

    assert sources.poll(source.pk) == "ok"

    assert export.requests == [
        "/export?team=a",
        "/export?team=a&cursor=p2",
        "/export?team=a&cursor=p3",
    ]
    source.refresh_from_db()
    assert (source.cursor, source.recorded_count, source.consecutive_errors) == ("p3", 2, 0)
    assert source.last_success_at is not None
    assert source.poll_lease_until is None
    ended = dict(Session.objects.values_list("session_id", "state"))
    assert ended == {"a": "ended", "b": "ended", "c": "live"}
    a = Outcome.objects.get(session_id="a")
    assert (a.success, a.latency_ms, a.source) == (True, 120.0, f"http_json:{source.pk}")
    # Fed to the rollups like any end.
    epoch = Session.objects.get(session_id="a").epoch
    assert rollups.with_outcome_counts([v1.pk]) == {(v1.pk, epoch): 2}

    # The next poll starts where this one stopped.
    export.pages["p3"] = ([{"session_id": "c", "success": False}], "p4")
    assert sources.poll(source.pk, later()) == "ok"
    assert export.requests[3] == "/export?team=a&cursor=p3"
    source.refresh_from_db()
    assert (source.cursor, source.recorded_count) == ("p4", 3)


def test_the_first_report_of_a_session_wins(agent, v1, export):
    for sid in ("a", "b"):
        sessions.assign(agent.slug, sid)
    sessions.end(agent.slug, "b", {"success": True})  # the harness told us first
    export.pages = {
        None: ([{"session_id": "a", "success": True}, {"session_id": "b", "success": False}], "2"),
        "2": ([{"session_id": "a", "success": False}], "3"),
    }
    source = source_for(agent, export)
    assert sources.poll(source.pk) == "ok"

    source.refresh_from_db()
    assert (source.recorded_count, source.duplicate_count) == (1, 2)
    assert dict(Outcome.objects.values_list("session_id", "success")) == {"a": True, "b": True}
    success = [s for (_, _, m), s in rollups.summaries([v1.pk]).items() if m == "success_rate"]
    assert [(s.n, s.total) for s in success] == [(2, 2.0)]


def test_outcomes_for_unknown_sessions_are_counted_and_shown(agent, v1, export, viewer):
    sessions.assign(agent.slug, "known")
    export.pages = {
        None: (
            [
                {"session_id": "ghost-1", "success": True},
                {"session_id": "known", "success": True},
                {"session_id": "ghost-2", "error": True},
            ],
            "next",
        )
    }
    source = source_for(agent, export)
    assert sources.poll(source.pk) == "ok"

    source.refresh_from_db()
    assert (source.recorded_count, source.unknown_count) == (1, 2)
    assert source.last_unknown == ["ghost-2", "ghost-1"]
    assert not Outcome.objects.filter(session_id__startswith="ghost").exists()
    status = viewer.get(f"/api/sources/{source.pk}/").json()["status"]
    assert status["unknown_sessions"] == {"count": 2, "recent": ["ghost-2", "ghost-1"]}


def test_invalid_outcomes_are_counted_and_skipped(agent, v1, export):
    for sid in ("a", "b"):
        sessions.assign(agent.slug, sid)
    export.pages = {
        None: (
            [
                {"session_id": "a", "success": "yes"},
                {"session_id": "", "success": True},
                {"success": True},
                "not an object",
                {"session_id": "b", "feedback": 3},
                {"session_id": "b", "latency_ms": 5},
            ],
            "n",
        )
    }
    source = source_for(agent, export)
    assert sources.poll(source.pk) == "ok"
    source.refresh_from_db()
    assert (source.invalid_count, source.recorded_count) == (5, 1)
    assert Session.objects.get(session_id="a").state == "live"


@pytest.mark.parametrize(
    ("mode", "message"),
    [("500", "HTTP 500 from the source: the export is down"), ("garbage", "not JSON")],
)
def test_a_failing_export_is_an_error_counted_on_the_source(agent, v1, export, mode, message):
    export.mode = mode
    source = source_for(agent, export)
    for i in range(3):
        assert sources.poll(source.pk, later(i * 3600)) == "error"
    source.refresh_from_db()
    assert message in source.last_error
    assert (source.consecutive_errors, source.error_count, source.last_success_at) == (3, 3, None)
    assert source.poll_lease_until is None
    assert source.cursor == ""
    assert sources.standing(agent.pk).errors["success_rate"].startswith(f"source {source.pk}")

    export.mode = "ok"
    assert sources.poll(source.pk, later(4 * 3600)) == "ok"
    source.refresh_from_db()
    assert (source.consecutive_errors, source.error_count) == (0, 3)
    assert source.last_success_at is not None
    assert sources.standing(agent.pk).errors == {}


def test_a_timeout_is_an_error(agent, v1, export):
    export.mode, export.delay = "slow", 1.5
    source = source_for(agent, export, timeout_s=0.3)
    assert sources.poll(source.pk) == "error"
    source.refresh_from_db()
    assert source.last_error == "timed out after 0.3 s"
    assert source.consecutive_errors == 1


def test_an_unreachable_export_is_an_error(agent, v1, export):
    url = f"{export.url}/export"
    export.close()
    source = MetricSource.objects.create(agent=agent, kind="http_json", url=url)
    assert sources.poll(source.pk) == "error"
    source.refresh_from_db()
    assert source.last_error.startswith("unreachable")


def test_an_error_after_some_pages_keeps_their_progress(agent, v1, export):
    sessions.assign(agent.slug, "a")
    export.pages = {None: ([{"session_id": "a", "success": True}], "p2")}
    export.fail_at = {"p2"}
    source = source_for(agent, export)

    assert sources.poll(source.pk) == "error"

    source.refresh_from_db()
    assert (source.cursor, source.recorded_count, source.consecutive_errors) == ("p2", 1, 1)
    assert Session.objects.get(session_id="a").state == "ended"
    export.fail_at = set()
    assert sources.poll(source.pk, later()) == "ok"
    assert export.requests[-1] == "/export?team=a&cursor=p2"


def test_a_source_polled_recently_is_not_polled_again(agent, v1, export):
    export.pages = {None: ([], "x")}
    source = source_for(agent, export)
    now = timezone.now()
    assert sources.poll(source.pk, now) == "ok"
    assert sources.poll(source.pk, now + timedelta(seconds=1)) == "skipped"
    assert len(export.requests) == 1
    MetricSource.objects.filter(pk=source.pk).update(enabled=False)
    assert sources.poll(source.pk, now + timedelta(hours=1)) == "skipped"
    assert len(export.requests) == 1


def test_the_beat_task_polls_every_due_source(agent, v1, export, make_version):
    export.pages = {None: ([], "x")}
    due = source_for(agent, export)
    recent = source_for(agent, export, last_polled_at=timezone.now())
    off = source_for(agent, export, enabled=False)

    result = tasks.poll_sources.apply()
    assert result.successful(), result.traceback
    assert result.get() == {"polled": 1, "failed": 0, "skipped": 0}
    polled = dict(MetricSource.objects.values_list("pk", "poll_count"))
    assert polled == {due.pk: 1, recent.pk: 0, off.pk: 0}


def test_a_poll_that_outlives_its_lease_can_be_taken_over(agent, v1, export):
    export.pages = {None: ([], "x")}
    source = source_for(agent, export)
    now = timezone.now()
    MetricSource.objects.filter(pk=source.pk).update(
        poll_lease_until=now + timedelta(seconds=30), last_polled_at=now - timedelta(hours=1)
    )
    assert sources.poll(source.pk, now) == "skipped"  # another poll holds it
    assert sources.poll(source.pk, now + sources.LEASE) == "ok"  # that one died


@pytest.mark.django_db(transaction=True)
def test_two_workers_never_poll_one_source_at_once(agent, v1, export):
    export.pages = {None: ([], "x")}
    export.mode, export.delay = "slow", 0.5  # "slow" still answers, after a delay
    source = source_for(agent, export)
    now = timezone.now()

    results = race(6, lambda i: sources.poll(source.pk, now + timedelta(milliseconds=i)))

    assert sorted(results) == ["ok"] + ["skipped"] * 5
    assert len(export.requests) == 1
    assert MetricSource.objects.get(pk=source.pk).poll_count == 1


def test_page_urls_keep_other_parameters_and_replace_the_cursor():
    assert http_json.page_url("http://x/e?a=1&cursor=old", "new") == "http://x/e?a=1&cursor=new"
    assert http_json.page_url("http://x/e", None) == "http://x/e"
    assert http_json.page_url("http://x/e", "a b&c") == "http://x/e?cursor=a+b%26c"

"""A failing metric source is announced once per failure episode, not at every poll."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from events.models import Event
from metrics import sources
from metrics.models import MetricSource


def test_a_failing_source_is_announced_once_per_episode(agent, receiver, settings):
    source = MetricSource.objects.create(agent=agent, kind="http_json", url=receiver.url)
    receiver.statuses = [500, 500, 500, 200, 503]
    start = timezone.now()
    every = timedelta(seconds=settings.PRISM_SOURCE_POLL_SECONDS)

    outcomes = [sources.poll(source.pk, start + n * every) for n in range(5)]

    assert outcomes == ["error", "error", "error", "ok", "error"]
    kinds = list(Event.objects.order_by("id").values_list("type", "data"))
    assert [kind for kind, _ in kinds] == [
        "metric_source.failing",
        "metric_source.recovered",
        "metric_source.failing",
    ]
    assert kinds[0][1]["error"].startswith("HTTP 500")
    assert kinds[1][1]["failed_polls"] == 3
    assert Event.objects.first().text == (
        f"research: metric source {source.pk} (http_json) is failing: {kinds[0][1]['error']}"
    )

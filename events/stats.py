"""Delivery figures for Prism's own Prometheus metrics."""

from __future__ import annotations

from django.db.models import Count

from events.models import Delivery, DeliveryCount, DeliveryStatus


def delivery_counts() -> dict[tuple[str, str, str], int]:
    """{(agent slug, event type, "delivered" | "failed" | "pending"): deliveries}.

    Delivered and failed are counters: ended deliveries, kept in ``DeliveryCount`` by
    the transaction that ended each. Pending is a gauge, read through the partial index
    of pending deliveries, so a scrape costs what is in flight, not the history.
    """
    counts: dict[tuple[str, str, str], int] = {}
    for slug, event_type, status, count in DeliveryCount.objects.values_list(
        "agent__slug", "event_type", "status", "count"
    ):
        counts[(slug, event_type, status)] = count
    pending = (
        Delivery.objects.filter(status=DeliveryStatus.PENDING)
        .values_list("agent__slug", "event__type")
        .annotate(n=Count("*"))
        .order_by()
    )
    for slug, event_type, n in pending:
        counts[(slug, event_type, DeliveryStatus.PENDING.value)] = n
    return counts

"""Read-only admin for session outcomes, the samples every gate is computed from."""

from __future__ import annotations

from django.contrib import admin

from controlplane.admin import ReadOnlyAdmin
from metrics.models import Outcome
from versions.admin import VersionListFilter


@admin.register(Outcome)
class OutcomeAdmin(ReadOnlyAdmin, admin.ModelAdmin):
    list_display = [
        "session_id",
        "agent",
        "version",
        "ended_at",
        "success",
        "error",
        "latency_ms",
        "cost_usd",
        "hallucination",
        "feedback",
        "source",
    ]
    list_select_related = ["agent", "version__agent"]
    list_filter = [
        "agent",
        ("version", VersionListFilter),
        "success",
        "error",
        "hallucination",
        "source",
        "ended_at",
    ]
    search_fields = ["session_id"]
    # One row per ended session: skip the unfiltered COUNT(*) on every page.
    show_full_result_count = False
    fields = [
        "session_id",
        "agent",
        "version",
        "started_at",
        "ended_at",
        "success",
        "error",
        "latency_ms",
        "cost_usd",
        "hallucination",
        "feedback",
        "feedback_at",
        "source",
    ]
    readonly_fields = fields

"""Read-only admin for session outcomes, the samples every gate is computed from."""

from __future__ import annotations

from django.contrib import admin

from controlplane.admin import ReadOnlyAdmin, json_block
from metrics.models import MetricSource, Observation, Outcome, Rollup
from versions.admin import VersionListFilter


@admin.register(Outcome)
class OutcomeAdmin(ReadOnlyAdmin, admin.ModelAdmin):
    list_display = [
        "session_id",
        "agent",
        "version",
        "epoch",
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
        "epoch",
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


@admin.register(MetricSource)
class MetricSourceAdmin(ReadOnlyAdmin, admin.ModelAdmin):
    """Sources are configured through the API, which validates and audits; the admin
    shows them and the state of their polling."""

    list_display = [
        "__str__",
        "agent",
        "kind",
        "url",
        "enabled",
        "last_success_at",
        "consecutive_errors",
        "recorded_count",
        "unknown_count",
    ]
    list_select_related = ["agent"]
    list_filter = ["agent", "kind", "enabled"]
    search_fields = ["name", "url"]
    readonly_fields = [
        field.name for field in MetricSource._meta.fields if field.name not in ("config",)
    ] + ["config_json"]
    exclude = ["config"]

    @admin.display(description="config")
    def config_json(self, source: MetricSource):
        return json_block(source.config)


@admin.register(Observation)
class ObservationAdmin(ReadOnlyAdmin, admin.ModelAdmin):
    list_display = ["at", "source", "version", "metric", "n", "total", "total_sq"]
    list_select_related = ["source", "version__agent"]
    list_filter = ["metric", ("version", VersionListFilter), "source"]
    show_full_result_count = False
    date_hierarchy = "at"


@admin.register(Rollup)
class RollupAdmin(ReadOnlyAdmin, admin.ModelAdmin):
    """The raw shards, for auditing a gate's numbers."""

    list_display = ["version", "epoch", "metric", "shard", "n", "total", "total_sq"]
    list_select_related = ["version__agent"]
    list_filter = ["metric", ("version", VersionListFilter)]
    show_full_result_count = False

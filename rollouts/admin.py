"""Read-only admin for rollouts, routing, version lifecycles and sessions.

Auditors read here; every change goes through the API or the beat, which audit it.
"""

from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.safestring import SafeString

from controlplane.admin import ReadOnlyAdmin, json_block
from rollouts.models import (
    Evaluation,
    Lifecycle,
    Rollout,
    RolloutEvent,
    Routing,
    RoutingChange,
    Session,
)
from versions.admin import VersionListFilter


class RolloutEventInline(ReadOnlyAdmin, admin.TabularInline):
    model = RolloutEvent
    fields = [
        "at",
        "actor",
        "action",
        "from_state",
        "to_state",
        "from_stage",
        "to_stage",
        "reason",
        "evaluation_display",
    ]
    readonly_fields = fields
    extra = 0

    @admin.display(description="evaluation")
    def evaluation_display(self, event: RolloutEvent) -> SafeString:
        return json_block(event.evaluation)


@admin.register(Rollout)
class RolloutAdmin(ReadOnlyAdmin, admin.ModelAdmin):
    list_display = [
        "id",
        "agent",
        "candidate",
        "baseline",
        "state",
        "stage",
        "started_at",
        "ended_at",
    ]
    list_select_related = ["agent", "candidate__agent", "baseline__agent"]
    list_filter = ["state", "agent", "started_at"]
    search_fields = ["agent__slug", "candidate__label", "candidate__fingerprint"]
    inlines = [RolloutEventInline]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "agent",
                    "candidate",
                    "baseline",
                    "state",
                    "stage",
                    "auto_rollback",
                    "started_at",
                    "stage_started_at",
                    "ended_at",
                    "created_by",
                ]
            },
        ),
        (
            "Plan",
            {"fields": ["stages_display", "gates_display", "warnings_display"]},
        ),
        ("Last evaluation", {"fields": ["evaluated_at", "last_evaluation_display"]}),
    ]
    readonly_fields = [name for _, options in fieldsets for name in options["fields"]]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Rollout]:
        return (
            super()
            .get_queryset(request)
            .select_related("agent", "candidate__agent", "baseline__agent", "created_by")
        )

    @admin.display(description="stages")
    def stages_display(self, rollout: Rollout) -> SafeString:
        return json_block(rollout.stages)

    @admin.display(description="gates")
    def gates_display(self, rollout: Rollout) -> SafeString:
        return json_block(rollout.gates)

    @admin.display(description="warnings")
    def warnings_display(self, rollout: Rollout) -> SafeString:
        return json_block(rollout.warnings)

    @admin.display(description="last evaluation")
    def last_evaluation_display(self, rollout: Rollout) -> SafeString:
        return json_block(rollout.last_evaluation)


@admin.register(Routing)
class RoutingAdmin(ReadOnlyAdmin, admin.ModelAdmin):
    list_display = ["agent", "epoch", "weights", "updated_at"]
    list_select_related = ["agent"]
    fields = ["agent", "epoch", "weights_display", "stable_history", "updated_at"]
    readonly_fields = fields

    @admin.display(description="weights (basis points by version id)")
    def weights_display(self, routing: Routing) -> SafeString:
        return json_block(routing.weights)


@admin.register(RoutingChange)
class RoutingChangeAdmin(ReadOnlyAdmin, admin.ModelAdmin):
    """Every routing epoch: who moved it, for which rollout, to which weights. The
    rollback-wins rule and the sample-ratio check read this log, so auditors can too."""

    list_display = ["agent", "epoch", "at", "actor", "system", "action", "rollout", "stage"]
    list_select_related = ["agent", "rollout"]
    list_filter = ["system", "action", "agent"]
    search_fields = ["actor", "action"]
    fields = [
        *["agent", "epoch", "at", "actor", "system", "action", "rollout", "stage"],
        "weights_display",
    ]
    readonly_fields = fields

    @admin.display(description="weights (basis points by version id)")
    def weights_display(self, change: RoutingChange) -> SafeString:
        return json_block(change.weights)


@admin.register(Evaluation)
class EvaluationAdmin(ReadOnlyAdmin, admin.ModelAdmin):
    """Every look at a rollout's gates, with the evidence it was judged on."""

    list_display = ["rollout", "at", "stage", "epoch", "decision", "applied", "actor"]
    list_select_related = ["rollout"]
    list_filter = ["decision", "applied"]
    # One row per beat look per rollout: the biggest table after sessions.
    show_full_result_count = False
    fields = [
        *["rollout", "at", "actor", "stage", "epoch", "decision", "applied", "reason"],
        "report_display",
    ]
    readonly_fields = fields

    @admin.display(description="report")
    def report_display(self, evaluation: Evaluation) -> SafeString:
        return json_block(evaluation.report)


@admin.register(Lifecycle)
class LifecycleAdmin(ReadOnlyAdmin, admin.ModelAdmin):
    list_display = [
        "version",
        "agent",
        "first_routed_at",
        "drain_started_at",
        "live_at_drain_start",
        "drained_at",
        "forced_drain_at",
    ]
    list_select_related = ["version__agent", "agent"]
    list_filter = ["agent", "drained_at", "forced_drain_at"]
    search_fields = ["version__label", "version__fingerprint", "forced_drain_reason"]
    fields = [
        "version",
        "agent",
        "first_routed_at",
        "drain_started_at",
        "live_at_drain_start",
        "drained_at",
        "forced_drain_at",
        "forced_drain_reason",
    ]
    readonly_fields = fields


@admin.register(Session)
class SessionAdmin(ReadOnlyAdmin, admin.ModelAdmin):
    list_display = ["session_id", "agent", "version", "state", "started_at", "last_seen_at"]
    list_select_related = ["agent", "version__agent"]
    list_filter = ["state", "agent", ("version", VersionListFilter), "started_at"]
    search_fields = ["session_id"]
    # Sessions are the biggest table; skip the unfiltered COUNT(*) on every page.
    show_full_result_count = False
    fields = [
        "session_id",
        "agent",
        "version",
        "state",
        "started_at",
        "last_seen_at",
        "ended_at",
        "drain_at",
        "end_reason",
    ]
    readonly_fields = fields

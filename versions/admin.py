"""Admin for auditors: version tuples with their diffs, agents, and the audit log.

All of it is read-only. Versions are immutable, and agents change through the API so
that every change lands in the audit trail.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.db.models import Field
from django.http import HttpRequest
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.text import Truncator

from controlplane.admin import ReadOnlyAdmin, json_block, pretty_json
from versions.diff import diff_versions
from versions.fingerprint import LAYERS
from versions.models import Agent, AuditEntry, Version


class VersionListFilter(admin.RelatedFieldListFilter):
    """Filter by version, named ``agent@label``, in one query instead of one per version."""

    def field_choices(
        self, field: Field, request: HttpRequest, model_admin: admin.ModelAdmin
    ) -> list[tuple[int, str]]:
        versions = Version.objects.select_related("agent").order_by("agent__slug", "-id")
        return [(version.pk, str(version)) for version in versions]


def previous_version(version: Version) -> Version | None:
    """The version of the same agent registered just before this one (largest lower id)."""
    return (
        Version.objects.filter(agent_id=version.agent_id, id__lt=version.id)
        .select_related("agent")
        .order_by("-id")
        .first()
    )


def _diff_lines(unified_diff: str) -> list[tuple[str, str]]:
    """Tag each line of a unified diff with a CSS class: file, hunk, add, del or ctx.

    ``---``/``+++`` are file headers only before the first hunk; inside a hunk they are
    a removed ``--…`` line or an added ``++…`` line.
    """
    lines = []
    in_hunk = False
    for line in unified_diff.splitlines():
        if line.startswith("@@"):
            kind, in_hunk = "hunk", True
        elif not in_hunk and line.startswith(("+++", "---")):
            kind = "file"
        elif line.startswith("+"):
            kind = "add"
        elif line.startswith("-"):
            kind = "del"
        else:
            kind = "ctx"
        lines.append((kind, line))
    return lines


def _value(value: Any) -> str:
    return "—" if value is None else json.dumps(value, sort_keys=True, ensure_ascii=False)


def _leaf_changes(changes: Any, path: str = "") -> list[tuple[str, str, str]]:
    """Flatten ``{key: {"before", "after"}}``, nested for params, into rows of
    ``(path, before, after)``. An absent value is ``None`` and shows as a dash."""
    if not isinstance(changes, dict):
        return [(path, "", _value(changes))]
    rows = []
    for key, value in changes.items():
        where = f"{path}.{key}" if path else str(key)
        if isinstance(value, dict) and value.keys() == {"before", "after"}:
            rows.append((where, _value(value["before"]), _value(value["after"])))
        else:
            rows.extend(_leaf_changes(value, where))
    return rows


def _tool_name(tool: Any) -> str:
    return str(tool.get("name", "?")) if isinstance(tool, dict) else str(tool)


def diff_context(diff: dict[str, Any]) -> dict[str, Any]:
    """Flatten a ``diff_versions`` result into lists the template can walk.

    Prompt part names are user data, so they are never used as template lookups (a part
    called ``items`` would shadow ``dict.items``).
    """
    layers = diff.get("layers", {})
    code = layers.get("code", {})
    model = layers.get("model", {})
    prompts = layers.get("prompts", {})
    tools = layers.get("tools", {})
    parts = []
    for name, part in sorted(prompts.get("parts", {}).items()):
        status = part.get("status", "")
        # An added or removed part is trivially 0% similar; only an edit has a size.
        similarity = part.get("similarity") if status == "modified" else None
        parts.append(
            {
                "name": name,
                "status": status,
                "similarity": (
                    f"{similarity:.0%}" if isinstance(similarity, int | float) else None
                ),
                "lines": _diff_lines(part.get("unified_diff") or ""),
            }
        )
    return {
        "risk": diff.get("risk", ""),
        "rainbow_required": diff.get("rainbow_required", False),
        "breaking": diff.get("breaking", False),
        "changed_layers": list(diff.get("changed_layers", [])),
        "reasons": list(diff.get("reasons", [])),
        "code": {
            "changed": code.get("changed", False),
            "before": pretty_json(code.get("before")),
            "after": pretty_json(code.get("after")),
        },
        "model": {
            "changed": model.get("changed", False),
            "before": pretty_json(model.get("before")),
            "after": pretty_json(model.get("after")),
            "changes": _leaf_changes(model.get("changes", {})),
        },
        "prompts": {"changed": prompts.get("changed", False), "parts": parts},
        "tools": {
            "changed": tools.get("changed", False),
            "added": [_tool_name(tool) for tool in tools.get("added", [])],
            "removed": [_tool_name(tool) for tool in tools.get("removed", [])],
            "modified": [
                {
                    "name": str(tool.get("name", "?")),
                    "breaking": tool.get("breaking", False),
                    "changes": list(tool.get("changes", [])),
                }
                for tool in tools.get("modified", [])
            ],
        },
    }


@admin.register(Version)
class VersionAdmin(ReadOnlyAdmin, admin.ModelAdmin):
    list_display = ["short_fingerprint", "agent", "label", "created_at", "created_by"]
    list_select_related = ["agent", "created_by"]
    list_filter = ["agent", "created_at"]
    search_fields = ["label", "fingerprint", "notes", "agent__slug"]
    ordering = ["-id"]
    fieldsets = [
        (None, {"fields": ["agent", "label", "fingerprint", "notes", "created_at", "created_by"]}),
        ("Tuple", {"fields": ["tuple_display", "layer_fingerprints"]}),
        ("Diff against the previous version", {"fields": ["diff_display"]}),
    ]
    readonly_fields = [name for _, options in fieldsets for name in options["fields"]]

    @admin.display(description="fingerprint", ordering="fingerprint")
    def short_fingerprint(self, version: Version) -> SafeString:
        return format_html("<code>{}</code>", version.short_fingerprint)

    @admin.display(description="tuple")
    def tuple_display(self, version: Version) -> SafeString:
        return render_to_string(
            "admin/versions/version_tuple.html",
            {"layers": [(layer, pretty_json(getattr(version, layer))) for layer in LAYERS]},
        )

    @admin.display(description="layer fingerprints")
    def layer_fingerprints(self, version: Version) -> SafeString:
        rows = format_html_join(
            "",
            "<tr><th>{}</th><td><code>{}</code></td></tr>",
            version.layer_fingerprints.items(),
        )
        return format_html("<table>{}</table>", rows)

    @admin.display(description="diff")
    def diff_display(self, version: Version) -> SafeString:
        previous = previous_version(version)
        context: dict[str, Any] = {"version": version, "previous": previous}
        if previous is not None:
            context["previous_url"] = reverse("admin:versions_version_change", args=[previous.pk])
            context.update(diff_context(diff_versions(previous, version)))
        return render_to_string("admin/versions/version_diff.html", context)


@admin.register(Agent)
class AgentAdmin(ReadOnlyAdmin, admin.ModelAdmin):
    list_display = ["slug", "name", "stable", "created_at"]
    list_select_related = ["stable__agent"]
    search_fields = ["slug", "name"]
    fieldsets = [
        (None, {"fields": ["slug", "name", "stable", "created_at", "links"]}),
        ("Drain policy", {"fields": list(Agent.DRAIN_POLICY_FIELDS)}),
    ]
    readonly_fields = [name for _, options in fieldsets for name in options["fields"]]

    @admin.display(description="see also")
    def links(self, agent: Agent) -> SafeString:
        return format_html(
            '<a href="{}?agent__id__exact={}">versions</a> · '
            '<a href="{}?agent__id__exact={}">audit trail</a>',
            reverse("admin:versions_version_changelist"),
            agent.pk,
            reverse("admin:versions_auditentry_changelist"),
            agent.pk,
        )


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin, admin.ModelAdmin):
    list_display = ["at", "actor", "action", "agent", "object_display", "reason_display"]
    list_select_related = ["agent"]
    list_filter = ["action", "agent", "actor"]
    date_hierarchy = "at"
    search_fields = ["reason", "object_repr", "actor", "request_id"]
    # The trail only grows; skip the unfiltered COUNT(*) on every page.
    show_full_result_count = False
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "at",
                    "actor",
                    "actor_user",
                    "action",
                    "agent",
                    "object_type",
                    "object_id",
                    "object_repr",
                    "reason",
                    "request_id",
                ]
            },
        ),
        ("Change", {"fields": ["before_display", "after_display"]}),
    ]
    readonly_fields = [name for _, options in fieldsets for name in options["fields"]]

    @admin.display(description="object", ordering="object_repr")
    def object_display(self, entry: AuditEntry) -> SafeString:
        return format_html("{} <small>({})</small>", entry.object_repr, entry.object)

    @admin.display(description="reason")
    def reason_display(self, entry: AuditEntry) -> str:
        return Truncator(entry.reason).chars(120)

    @admin.display(description="before")
    def before_display(self, entry: AuditEntry) -> SafeString:
        return json_block(entry.before)

    @admin.display(description="after")
    def after_display(self, entry: AuditEntry) -> SafeString:
        return json_block(entry.after)

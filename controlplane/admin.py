"""Admin for access control: roles on users, and API tokens (revocable, never readable).

``ReadOnlyAdmin`` and the JSON helpers live here because every app's admin uses them:
auditors read the admin, and changes go through the API, which writes the audit trail.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.db import transaction
from django.db.models import Model, QuerySet
from django.forms import BaseInlineFormSet, ModelForm
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.safestring import SafeString

from controlplane import tokens
from controlplane.models import ApiToken, Profile, TaskRun
from versions.audit import record

User = get_user_model()


class ReadOnlyAdmin:
    """Mix into a ModelAdmin or an inline: view only, no add, change or delete.

    The change view still renders, as Django's view-only page, and a POST to it
    answers 403. Actions are off, so the changelist has no bulk delete.
    """

    actions = None

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def json_block(value: Any) -> SafeString:
    """Indented JSON in a <pre>, escaped: the values are user data (prompts, reasons)."""
    return format_html(
        '<pre class="prism-json" style="white-space: pre-wrap; margin: 0">{}</pre>',
        pretty_json(value),
    )


class ProfileInline(admin.StackedInline):
    model = Profile
    can_delete = False
    max_num = 1
    fields = ["role"]
    verbose_name = "Prism role"
    verbose_name_plural = "Prism role"


admin.site.unregister(User)


@admin.register(User)
class PrismUserAdmin(UserAdmin):
    """Django's user admin, plus the Prism role. Role changes are audited."""

    inlines = [ProfileInline]
    list_display = [*UserAdmin.list_display, "role"]
    list_select_related = ["profile"]

    @admin.display(description="role", ordering="profile__role")
    def role(self, user: Any) -> str:
        profile = getattr(user, "profile", None)
        return profile.role if profile is not None else "—"

    def save_formset(
        self, request: HttpRequest, form: ModelForm, formset: BaseInlineFormSet, change: bool
    ) -> None:
        if formset.model is not Profile:
            super().save_formset(request, form, formset, change)
            return
        # The forms' instances already carry the new role; ``initial`` has the old one.
        changed = [
            (f.instance, f.initial.get("role") if f.instance.pk else None)
            for f in formset.forms
            if f.has_changed()
        ]
        # changeform_view runs in a transaction, so the role and its entry commit together.
        super().save_formset(request, form, formset, change)
        for profile, before in changed:
            record(
                "user.role_changed",
                profile.user,
                actor=request.user,
                reason="changed in the admin",
                before={"role": before},
                after={"role": profile.role},
            )


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens are issued with ``manage.py issue_token``; here they can only be revoked
    (the "Revoke" action, or deleting them).

    Only a hash and a short prefix are stored, and the hash is not shown either.
    """

    list_display = ["prefix", "user", "scope", "created_at", "expires_at", "revoked_at"]
    list_select_related = ["user"]
    list_filter = ["created_at", "revoked_at", "expires_at"]
    search_fields = ["prefix", "user__username"]
    fields = ["prefix", "user", "scope", "created_at", "expires_at", "revoked_at"]
    readonly_fields = fields
    ordering = ["-created_at"]
    actions = ["revoke"]

    @admin.display(description="agents")
    def scope(self, token: ApiToken) -> str:
        return ", ".join(token.agents) if token.agents is not None else "every agent"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    @admin.action(description="Revoke selected tokens", permissions=["delete"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        revoked = sum(
            tokens.revoke(token, actor=request.user, reason="revoked in the admin")
            for token in queryset.select_related("user")
        )
        self.message_user(request, f"Revoked {revoked} of {queryset.count()} selected tokens.")

    def delete_model(self, request: HttpRequest, obj: ApiToken) -> None:
        self.delete_queryset(request, ApiToken.objects.filter(pk=obj.pk))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        # The bulk action is not wrapped in a transaction by the admin; the revocation
        # and its audit entries must commit together.
        with transaction.atomic():
            for token in queryset.select_related("user"):
                record(
                    "token.revoked",
                    token.user,
                    actor=request.user,
                    reason="revoked in the admin",
                    before={"prefix": token.prefix},
                )
            queryset.delete()


@admin.register(TaskRun)
class TaskRunAdmin(ReadOnlyAdmin, admin.ModelAdmin):
    """What the workers really ran: each attempt of a state-changing task, so an auditor
    can tell a redelivered message from a transition applied twice."""

    list_display = ["name", "task_id", "started_at", "finished_at", "outcome", "redelivered"]
    list_filter = ["outcome", "redelivered", "name"]
    search_fields = ["task_id", "name", "worker"]
    show_full_result_count = False
    fields = [
        "task_id",
        "name",
        "args",
        "redelivered",
        "worker",
        "started_at",
        "finished_at",
        "outcome",
        "detail",
    ]
    readonly_fields = fields

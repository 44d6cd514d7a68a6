"""Admin for the outbox: events read-only, webhooks editable (audited, the URL checked
as the API checks it, the secret shown only on the add form), deliveries read-only
with a re-send action for the failed ones."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest

from controlplane.admin import ReadOnlyAdmin, json_block
from events import delivery, urlguard
from events.models import Delivery, DeliveryStatus, Event, EventType, Webhook
from versions.audit import record

EDITABLE = ("url", "events", "active", "description")


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin, admin.ModelAdmin):
    list_display = ["id", "occurred_at", "agent", "type", "subject_repr", "text"]
    list_select_related = ["agent"]
    list_filter = ["type", "agent"]
    search_fields = ["text", "subject_repr"]
    show_full_result_count = False
    date_hierarchy = "occurred_at"
    exclude = ["data"]
    readonly_fields = [f.name for f in Event._meta.fields if f.name != "data"] + ["data_json"]

    @admin.display(description="data")
    def data_json(self, event: Event):
        return json_block(event.data)


class WebhookForm(forms.ModelForm):
    events = forms.MultipleChoiceField(
        choices=EventType.choices,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: every event.",
    )

    class Meta:
        model = Webhook
        fields = ["agent", "url", "events", "active", "description", "secret"]

    def clean_url(self) -> str:
        url = self.cleaned_data["url"]
        try:
            urlguard.resolve(url, allow_private=settings.PRISM_WEBHOOKS_ALLOW_PRIVATE)
        except urlguard.UnsafeURL as exc:
            raise forms.ValidationError(str(exc)) from None
        return url

    def clean_events(self) -> list[str]:
        return sorted(set(self.cleaned_data["events"]))


@admin.register(Webhook)
class WebhookAdmin(admin.ModelAdmin):
    form = WebhookForm
    list_display = ["id", "agent", "url", "active", "created_by", "created_at"]
    list_select_related = ["agent", "created_by"]
    list_filter = ["agent", "active"]

    def get_fields(self, request: HttpRequest, obj: Webhook | None = None) -> list[str]:
        # The secret is set (or generated) on the add form and never shown again.
        fields = ["agent", "url", "events", "active", "description"]
        return [*fields, "secret"] if obj is None else fields

    def get_readonly_fields(self, request: HttpRequest, obj: Webhook | None = None):
        return ["agent"] if obj is not None else []

    def save_model(self, request: HttpRequest, obj: Webhook, form: Any, change: bool) -> None:
        with transaction.atomic():
            before = None
            if change:
                before = {name: form.initial.get(name) for name in EDITABLE}
            else:
                obj.created_by = request.user
            obj.save()
            after = {name: getattr(obj, name) for name in EDITABLE}
            action = "webhook.updated" if change else "webhook.created"
            record(action, obj, actor=request.user, before=before, after=after)

    def delete_model(self, request: HttpRequest, obj: Webhook) -> None:
        with transaction.atomic():
            before = {name: getattr(obj, name) for name in EDITABLE}
            record("webhook.deleted", obj, actor=request.user, before=before)
            obj.delete()

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        for hook in queryset:
            self.delete_model(request, hook)


@admin.register(Delivery)
class DeliveryAdmin(ReadOnlyAdmin, admin.ModelAdmin):
    list_display = [
        "id",
        "event",
        "webhook",
        "status",
        "attempts",
        "last_status_code",
        "latency_ms",
        "next_attempt_at",
        "delivered_at",
    ]
    list_select_related = ["event", "webhook"]
    list_filter = ["status", "agent", "event__type"]
    show_full_result_count = False
    readonly_fields = [f.name for f in Delivery._meta.fields]
    actions = ["resend"]

    @admin.action(description="Re-send the selected failed deliveries", permissions=["view"])
    def resend(self, request: HttpRequest, queryset: QuerySet) -> None:
        sent = 0
        for delivery_id in queryset.filter(status=DeliveryStatus.FAILED).values_list(
            "pk", flat=True
        ):
            try:
                delivery.redeliver(delivery_id, actor=request.user, reason="re-sent in the admin")
            except delivery.NotFailed:
                continue  # re-sent by someone else meanwhile
            sent += 1
        skipped = queryset.count() - sent
        self.message_user(request, f"{sent} re-sent; {skipped} not failed, left as they are.")
        if skipped:
            messages.info(request, "Only failed deliveries are re-sent.")

"""REST API for webhooks and their deliveries: release managers configure and re-send,
viewers read (never a secret), harnesses have no business here. Every change is
audited in its own transaction."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import transaction
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema, extend_schema_field, inline_serializer
from rest_framework import serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.generics import ListAPIView
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.api import Conflict, StrictFieldsMixin, StrictSerializer
from events import delivery, urlguard
from events.models import Delivery, EventType, Webhook, new_secret
from events.outbox import body
from versions.audit import record
from versions.models import Agent

EDITABLE = ("url", "events", "active", "description")
MAX_SECRET_CHARS = 200


class WebhookSerializer(StrictFieldsMixin, serializers.ModelSerializer):
    """A webhook as everyone may read it: its secret is never shown again after it was
    created (``WebhookCreated`` carries it once)."""

    agent = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    url = serializers.CharField(max_length=urlguard.MAX_URL_CHARS, trim_whitespace=False)
    events = serializers.ListField(
        child=serializers.ChoiceField(EventType.choices),
        required=False,
        max_length=len(EventType.choices),
        help_text="The event types to deliver; empty (the default) for all of them.",
    )
    secret = serializers.CharField(
        write_only=True,
        required=False,
        min_length=16,
        max_length=MAX_SECRET_CHARS,
        help_text="The HMAC key that signs every delivery; generated when left out.",
    )
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = Webhook
        fields = [
            "id",
            "agent",
            "url",
            "events",
            "secret",
            "active",
            "description",
            "created_by",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "agent", "created_by", "created_at", "updated_at"]

    def validate_url(self, url: str) -> str:
        try:
            urlguard.resolve(url, allow_private=settings.PRISM_WEBHOOKS_ALLOW_PRIVATE)
        except urlguard.UnsafeURL as exc:
            raise ValidationError(str(exc)) from None
        return url

    def validate_events(self, types: list[str]) -> list[str]:
        return sorted(set(types))


class WebhookCreated(WebhookSerializer):
    """The answer to a create: the webhook and, this once, its secret."""

    secret = serializers.CharField(
        read_only=True, help_text="Shown only in this answer: keep it to verify signatures."
    )


class EventBody(serializers.Serializer):
    """What every webhook delivery's body is: a stable schema."""

    id = serializers.IntegerField()
    type = serializers.ChoiceField(EventType.choices)
    occurred_at = serializers.DateTimeField()
    agent = serializers.CharField(help_text="The agent's slug.")
    subject = inline_serializer(
        "EventSubject",
        {
            "type": serializers.CharField(help_text="rollout, version or metricsource"),
            "id": serializers.CharField(),
            "name": serializers.CharField(),
        },
    )
    data = serializers.DictField(help_text="The facts of the event; depends on its type.")
    text = serializers.CharField(help_text="A one-line summary (Slack-compatible).")


class DeliverySerializer(serializers.ModelSerializer):
    event = serializers.SerializerMethodField()

    class Meta:
        model = Delivery
        fields = [
            "id",
            "webhook",
            "status",
            "attempts",
            "next_attempt_at",
            "last_attempt_at",
            "last_status_code",
            "latency_ms",
            "response_excerpt",
            "error",
            "created_at",
            "delivered_at",
            "event",
        ]

    @extend_schema_field(EventBody)
    def get_event(self, obj: Delivery) -> dict[str, Any]:
        return body(obj.event)


def _snapshot(hook: Webhook) -> dict[str, Any]:
    """What the audit keeps of a webhook: never its secret."""
    return {name: getattr(hook, name) for name in EDITABLE}


class AgentWebhooks(APIView):
    @extend_schema(responses=WebhookSerializer(many=True))
    def get(self, request: Request, slug: str) -> Response:
        agent = get_object_or_404(Agent, slug=slug)
        hooks = Webhook.objects.filter(agent=agent).select_related("agent", "created_by")
        return Response(WebhookSerializer(hooks.order_by("id"), many=True).data)

    @extend_schema(request=WebhookSerializer, responses={201: WebhookCreated})
    def post(self, request: Request, slug: str) -> Response:
        agent = get_object_or_404(Agent, slug=slug)
        given = WebhookSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        values = dict(given.validated_data)
        values.setdefault("secret", new_secret())
        with transaction.atomic():
            hook = Webhook.objects.create(agent=agent, created_by=request.user, **values)
            record("webhook.created", hook, actor=request.user, after=_snapshot(hook))
        return Response(WebhookCreated(hook).data, status=status.HTTP_201_CREATED)


class WebhookDetail(APIView):
    scope_model = Webhook

    @extend_schema(responses=WebhookSerializer)
    def get(self, request: Request, pk: int) -> Response:
        hook = get_object_or_404(Webhook.objects.select_related("agent", "created_by"), pk=pk)
        return Response(WebhookSerializer(hook).data)

    @extend_schema(request=WebhookSerializer, responses=WebhookSerializer)
    def patch(self, request: Request, pk: int) -> Response:
        with transaction.atomic():
            hook = get_object_or_404(
                Webhook.objects.select_for_update(of=("self",)).select_related("agent"), pk=pk
            )
            given = WebhookSerializer(hook, data=request.data, partial=True)
            given.is_valid(raise_exception=True)
            before = _snapshot(hook)
            for name, value in given.validated_data.items():
                setattr(hook, name, value)
            hook.save()
            after = {**_snapshot(hook), "secret_changed": "secret" in given.validated_data}
            record("webhook.updated", hook, actor=request.user, before=before, after=after)
        return Response(WebhookSerializer(hook).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, pk: int) -> Response:
        with transaction.atomic():
            hook = get_object_or_404(
                Webhook.objects.select_for_update(of=("self",)).select_related("agent"), pk=pk
            )
            record("webhook.deleted", hook, actor=request.user, before=_snapshot(hook))
            hook.delete()
        return Response(status=status.HTTP_204_NO_CONTENT)


class DeliveryPages(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


class WebhookDeliveries(ListAPIView):
    """``GET /webhooks/{id}/deliveries/``: newest first, paged, with each event's body."""

    serializer_class = DeliverySerializer
    pagination_class = DeliveryPages
    scope_model = Webhook

    def get_queryset(self):
        hook = get_object_or_404(Webhook, pk=self.kwargs["pk"])
        return Delivery.objects.filter(webhook=hook).select_related("event__agent").order_by("-id")


class RedeliverSerializer(StrictSerializer):
    reason = serializers.CharField(required=False, allow_blank=True, max_length=500, default="")


class DeliveryRedeliver(APIView):
    scope_model = Delivery

    @extend_schema(request=RedeliverSerializer, responses=DeliverySerializer)
    def post(self, request: Request, pk: int) -> Response:
        get_object_or_404(Delivery, pk=pk)
        given = RedeliverSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        try:
            again = delivery.redeliver(pk, actor=request.user, **given.validated_data)
        except delivery.NotFailed as exc:
            raise Conflict(str(exc)) from None
        again = Delivery.objects.select_related("event__agent").get(pk=again.pk)
        return Response(DeliverySerializer(again).data)

"""REST API for metric sources: release managers configure, viewers read, and
harnesses have no business here. Every change is audited in its own transaction."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from metrics import sources
from metrics.models import MetricSource, SourceKind
from versions.audit import record
from versions.models import Agent

EDITABLE = ("name", "url", "config", "enabled", "timeout_s")
MAX_TIMEOUT_S = 30.0


class SourceSerializer(serializers.ModelSerializer):
    """A source and the state of its polling. Writes are checked as a whole by
    ``metrics.sources.validate`` (scheme, kind, queries), so a PATCH cannot leave a
    source half-valid."""

    agent = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    kind = serializers.ChoiceField(SourceKind.choices)
    name = serializers.CharField(max_length=100, required=False, allow_blank=True)
    url = serializers.CharField(max_length=2000, trim_whitespace=False)
    config = serializers.JSONField(required=False)
    timeout_s = serializers.FloatField(min_value=0.1, max_value=MAX_TIMEOUT_S, required=False)
    status = serializers.SerializerMethodField()

    class Meta:
        model = MetricSource
        fields = [
            "id",
            "agent",
            "kind",
            "name",
            "url",
            "config",
            "enabled",
            "timeout_s",
            "created_at",
            "updated_at",
            "status",
        ]
        read_only_fields = ["id", "agent", "created_at", "updated_at", "status"]

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise ValidationError({"non_field_errors": ["Expected an object."]})
        unknown = sorted(set(data) - set(EDITABLE) - {"kind"})
        if unknown:
            raise ValidationError({key: ["Unknown or read-only field."] for key in unknown})
        if self.instance is not None and data.get("kind", self.instance.kind) != self.instance.kind:
            raise ValidationError({"kind": ["A source's kind cannot change; add a new source."]})
        return super().to_internal_value(data)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        current = self.instance
        kind = attrs.get("kind", current.kind if current else None)
        url = attrs.get("url", current.url if current else None)
        config = attrs.get("config", current.config if current else {})
        try:
            attrs["config"] = sources.validate(kind, url, config)
        except sources.ConfigError as exc:
            raise ValidationError({key: [message] for key, message in exc.errors.items()}) from None
        return attrs

    def get_status(self, source: MetricSource) -> dict[str, Any]:
        return {
            "last_polled_at": source.last_polled_at,
            "last_success_at": source.last_success_at,
            "last_error_at": source.last_error_at,
            "last_error": source.last_error,
            "consecutive_errors": source.consecutive_errors,
            "errors": source.error_count,
            "polls": source.poll_count,
            "recorded": source.recorded_count,
            "duplicates": source.duplicate_count,
            "invalid": source.invalid_count,
            "unknown_sessions": {"count": source.unknown_count, "recent": source.last_unknown},
            "cursor": source.cursor,
        }


def _snapshot(source: MetricSource) -> dict[str, Any]:
    return {"kind": source.kind, **{name: getattr(source, name) for name in EDITABLE}}


class AgentSources(APIView):
    @extend_schema(responses=SourceSerializer(many=True))
    def get(self, request: Request, slug: str) -> Response:
        agent = get_object_or_404(Agent, slug=slug)
        rows = MetricSource.objects.filter(agent=agent).select_related("agent")
        return Response(SourceSerializer(rows, many=True).data)

    @extend_schema(request=SourceSerializer, responses={201: SourceSerializer})
    def post(self, request: Request, slug: str) -> Response:
        agent = get_object_or_404(Agent, slug=slug)
        body = SourceSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        with transaction.atomic():
            source = MetricSource.objects.create(
                agent=agent, created_by=request.user, **body.validated_data
            )
            record(
                "source.created",
                source,
                actor=request.user,
                agent=agent,
                after=_snapshot(source),
            )
        return Response(SourceSerializer(source).data, status=status.HTTP_201_CREATED)


class SourceDetail(APIView):
    scope_model = MetricSource

    @extend_schema(responses=SourceSerializer)
    def get(self, request: Request, pk: int) -> Response:
        source = get_object_or_404(MetricSource.objects.select_related("agent"), pk=pk)
        return Response(SourceSerializer(source).data)

    @extend_schema(request=SourceSerializer, responses=SourceSerializer)
    def patch(self, request: Request, pk: int) -> Response:
        with transaction.atomic():
            source = get_object_or_404(
                MetricSource.objects.select_for_update(of=("self",)).select_related("agent"),
                pk=pk,
            )
            body = SourceSerializer(source, data=request.data, partial=True)
            body.is_valid(raise_exception=True)
            before = _snapshot(source)
            for name, value in body.validated_data.items():
                setattr(source, name, value)
            # Only what a person edits: the beat may be writing the polling state.
            source.save(update_fields=[*EDITABLE, "updated_at"])
            record(
                "source.updated",
                source,
                actor=request.user,
                agent=source.agent,
                before=before,
                after=_snapshot(source),
            )
        return Response(SourceSerializer(source).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, pk: int) -> Response:
        with transaction.atomic():
            source = get_object_or_404(
                MetricSource.objects.select_for_update(of=("self",)).select_related("agent"),
                pk=pk,
            )
            record(
                "source.deleted",
                source,
                actor=request.user,
                agent=source.agent,
                before=_snapshot(source),
            )
            source.delete()
        return Response(status=status.HTTP_204_NO_CONTENT)

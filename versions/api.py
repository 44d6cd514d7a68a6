"""REST API for agents, versions, diffs and the audit log (the README's API section)."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import generics, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.api import StrictFieldsMixin, StrictSerializer
from controlplane.auth import agent_scope
from controlplane.models import Role
from versions import services
from versions.diff import diff_versions
from versions.models import Agent, AuditEntry, Version

MAX_LAYER_BYTES = 256 * 1024
MAX_TOOLS = 128
MAX_PROMPT_PARTS = 64
TOOL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


def _json_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def _bounded(value: Any, layer: str) -> Any:
    size = _json_size(value)
    if size > MAX_LAYER_BYTES:
        raise serializers.ValidationError(
            f"The {layer} layer is {size} bytes; the limit is {MAX_LAYER_BYTES} bytes."
        )
    return value


def _digits(value: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also accepts "²", which ``int`` refuses."""
    return value.isascii() and value.isdigit()


def _storable(value: Any) -> None:
    """Reject what JSON or PostgreSQL cannot hold.

    NaN and infinities are not JSON; jsonb refuses the NUL character; a lone surrogate
    has no UTF-8 encoding, so neither the fingerprint nor the database can take it.
    """
    try:
        json.dumps(value, allow_nan=False)
    except ValueError:
        raise serializers.ValidationError("NaN and infinite numbers are not valid JSON.") from None
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, str):
            if "\x00" in item:
                raise serializers.ValidationError("Text may not contain the NUL character.")
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise serializers.ValidationError(
                    "Text must be valid Unicode (no lone surrogates)."
                ) from None


# --- agents -----------------------------------------------------------------------


class DrainPolicySerializer(StrictSerializer):
    idle_timeout_s = serializers.IntegerField(min_value=1, max_value=365 * 86400, required=False)
    max_session_age_s = serializers.IntegerField(min_value=1, max_value=365 * 86400, required=False)
    drain_grace_s = serializers.IntegerField(min_value=0, max_value=7 * 86400, required=False)
    max_live_versions = serializers.IntegerField(min_value=1, max_value=100, required=False)
    retain_drained = serializers.IntegerField(min_value=0, max_value=100, required=False)

    unknown_field_message = "Unknown drain policy field."


class AgentSerializer(StrictFieldsMixin, serializers.ModelSerializer):
    drain_policy = DrainPolicySerializer(required=False)
    stable = serializers.PrimaryKeyRelatedField(read_only=True, allow_null=True)

    class Meta:
        model = Agent
        fields = ["slug", "name", "drain_policy", "stable", "created_at"]
        read_only_fields = ["created_at"]

    def to_representation(self, instance: Agent) -> dict:
        data = super().to_representation(instance)
        data["drain_policy"] = instance.drain_policy
        return data


class AgentUpdateSerializer(StrictSerializer):
    name = serializers.CharField(max_length=200, required=False)
    drain_policy = DrainPolicySerializer(required=False)
    reason = serializers.CharField(max_length=2000, required=False, allow_blank=True)


class AgentList(generics.ListCreateAPIView):
    serializer_class = AgentSerializer
    queryset = Agent.objects.all()
    read_roles = frozenset({Role.VIEWER, Role.HARNESS, Role.RELEASE_MANAGER})
    scope_filtered = True

    def get_queryset(self) -> QuerySet[Agent]:
        scope = agent_scope(self.request)
        agents = super().get_queryset()
        return agents if scope is None else agents.filter(slug__in=scope)

    def perform_create(self, serializer):
        data = serializer.validated_data
        serializer.instance = services.create_agent(
            slug=data["slug"],
            name=data["name"],
            drain_policy=data.get("drain_policy", {}),
            actor=self.request.user,
        )


class AgentDetail(APIView):
    read_roles = frozenset({Role.VIEWER, Role.HARNESS, Role.RELEASE_MANAGER})

    @extend_schema(responses=AgentSerializer)
    def get(self, request: Request, slug: str) -> Response:
        return Response(AgentSerializer(get_object_or_404(Agent, slug=slug)).data)

    @extend_schema(request=AgentUpdateSerializer, responses=AgentSerializer)
    def patch(self, request: Request, slug: str) -> Response:
        agent = get_object_or_404(Agent, slug=slug)
        body = AgentUpdateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        changes = dict(body.validated_data.get("drain_policy", {}))
        if "name" in body.validated_data:
            changes["name"] = body.validated_data["name"]
        agent = services.update_agent(
            agent,
            changes=changes,
            actor=request.user,
            reason=body.validated_data.get("reason", ""),
        )
        return Response(AgentSerializer(agent).data)


# --- versions -----------------------------------------------------------------------


class CodeLayerField(serializers.JSONField):
    def to_internal_value(self, data):
        data = super().to_internal_value(data)
        if not isinstance(data, dict):
            raise serializers.ValidationError("Expected an object with a 'ref'.")
        ref = data.get("ref")
        if not isinstance(ref, str) or not ref.strip() or len(ref) > 256:
            raise serializers.ValidationError(
                {"ref": "A git sha or image digest is required (1 to 256 characters)."}
            )
        _storable(data)
        return _bounded(data, "code")


class ModelLayerField(serializers.JSONField):
    def to_internal_value(self, data):
        data = super().to_internal_value(data)
        if not isinstance(data, dict):
            raise serializers.ValidationError("Expected an object {provider, name, params}.")
        errors = {}
        for key in ("provider", "name"):
            value = data.get(key)
            if not isinstance(value, str) or not value.strip() or len(value) > 200:
                errors[key] = "A non-empty string of at most 200 characters is required."
        params = data.setdefault("params", {})
        if not isinstance(params, dict):
            errors["params"] = "Expected an object of model parameters."
        if errors:
            raise serializers.ValidationError(errors)
        _storable(data)
        return _bounded(data, "model")


class PromptsLayerField(serializers.JSONField):
    def to_internal_value(self, data):
        data = super().to_internal_value(data)
        if not isinstance(data, dict):
            raise serializers.ValidationError(
                'Expected an object of named prompt parts, e.g. {"system": "..."}.'
            )
        if len(data) > MAX_PROMPT_PARTS:
            raise serializers.ValidationError(f"At most {MAX_PROMPT_PARTS} prompt parts.")
        bad = [name for name in data if not name or len(name) > 128]
        if bad:
            raise serializers.ValidationError("Prompt part names must be 1 to 128 characters.")
        _storable(data)
        return _bounded(data, "prompts")


class ToolsLayerField(serializers.JSONField):
    """A list of tools; each ``input_schema`` must be a valid JSON Schema for an object."""

    def to_internal_value(self, data):
        data = super().to_internal_value(data)
        if not isinstance(data, list):
            raise serializers.ValidationError("Expected a list of tools.")
        if len(data) > MAX_TOOLS:
            raise serializers.ValidationError(f"At most {MAX_TOOLS} tools.")
        errors: dict[str, Any] = {}
        seen: set[str] = set()
        for index, tool in enumerate(data):
            problem = self._tool_problem(tool, seen)
            if problem:
                errors[str(index)] = problem
        if errors:
            raise serializers.ValidationError(errors)
        _storable(data)
        return _bounded(data, "tools")

    @staticmethod
    def _tool_problem(tool: Any, seen: set[str]) -> Any:
        if not isinstance(tool, dict):
            return "Expected an object {name, description, input_schema}."
        name = tool.get("name")
        if not isinstance(name, str) or not TOOL_NAME.match(name):
            return {"name": "1 to 128 letters, digits, '_', '.' or '-'."}
        if name in seen:
            return {"name": f"Duplicate tool name {name!r}."}
        seen.add(name)
        if not isinstance(tool.get("description", ""), str):
            return {"description": "Expected a string."}
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            return {"input_schema": "Expected a JSON Schema object."}
        if not isinstance(schema.get("$schema", ""), str):
            # validator_for() looks the value up as a URI and crashes on anything else.
            return {"input_schema": '"$schema" must be a URI string.'}
        validator = jsonschema.validators.validator_for(
            schema, default=jsonschema.Draft202012Validator
        )
        try:
            validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
            return {"input_schema": f"Not a valid JSON Schema at {where}: {exc.message}"}
        if schema.get("type") != "object":
            return {"input_schema": 'A tool\'s input schema must have "type": "object".'}
        return None


class VersionSerializer(StrictFieldsMixin, serializers.ModelSerializer):
    agent = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    code = CodeLayerField()
    model = ModelLayerField()
    prompts = PromptsLayerField()
    tools = ToolsLayerField()
    label = serializers.CharField(max_length=100, required=False, allow_null=True, allow_blank=True)
    notes = serializers.CharField(max_length=10000, required=False, allow_blank=True)
    layers = serializers.SerializerMethodField()
    created_by = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True
    )

    class Meta:
        model = Version
        fields = [
            "id",
            "agent",
            "label",
            "fingerprint",
            "layers",
            "code",
            "model",
            "prompts",
            "tools",
            "notes",
            "created_at",
            "created_by",
        ]
        read_only_fields = ["id", "fingerprint", "created_at"]

    def get_layers(self, version: Version) -> dict[str, str]:
        return version.layer_fingerprints

    def validate_label(self, value: str | None) -> str | None:
        value = (value or "").strip()
        if value and not re.match(r"^[\w.+:@/-]+$", value):
            raise serializers.ValidationError(
                "Use letters, digits and . _ - + : @ / only (no spaces)."
            )
        return value or None


def version_payload(version: Version) -> dict:
    """The whole tuple as the API shows it; sessions embed this too."""
    return VersionSerializer(version).data


@extend_schema_view(
    post=extend_schema(
        responses={
            201: VersionSerializer,
            200: OpenApiResponse(VersionSerializer, "The tuple is already known: that version."),
        }
    )
)
class AgentVersions(generics.ListCreateAPIView):
    serializer_class = VersionSerializer
    read_roles = frozenset({Role.VIEWER, Role.HARNESS, Role.RELEASE_MANAGER})

    def get_agent(self) -> Agent:
        return get_object_or_404(Agent, slug=self.kwargs["slug"])

    def get_queryset(self) -> QuerySet[Version]:
        return (
            Version.objects.filter(agent=self.get_agent())
            .select_related("agent", "created_by")
            .order_by("-id")
        )

    def create(self, request: Request, *args, **kwargs) -> Response:
        agent = self.get_agent()
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            version, created = services.register_version(
                agent,
                layers={layer: data[layer] for layer in ("code", "model", "prompts", "tools")},
                label=data.get("label"),
                notes=data.get("notes", ""),
                actor=request.user,
            )
        except services.LabelTaken as exc:
            raise serializers.ValidationError({"label": [str(exc)]}) from None
        return Response(
            VersionSerializer(version).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


class VersionDetail(generics.RetrieveAPIView):
    """Versions are immutable: PUT, PATCH and DELETE answer 405."""

    serializer_class = VersionSerializer
    queryset = Version.objects.select_related("agent", "created_by")
    read_roles = frozenset({Role.VIEWER, Role.HARNESS, Role.RELEASE_MANAGER})
    scope_model = Version


# The diff's shape, for the schema only: versions.diff builds the answer itself.


class ValueChangeSerializer(serializers.Serializer):
    before = serializers.JSONField(allow_null=True, help_text="null: absent before")
    after = serializers.JSONField(allow_null=True, help_text="null: absent after")


class DiffReasonSerializer(serializers.Serializer):
    layer = serializers.ChoiceField(choices=["code", "model", "prompts", "tools"])
    kind = serializers.CharField(help_text="e.g. model_changed, tool_removed, type_changed")
    breaking = serializers.BooleanField(help_text="Existing tool calls may be refused.")
    rainbow = serializers.BooleanField(help_text="The change needs a staged rollout.")
    message = serializers.CharField()


class CodeDiffSerializer(serializers.Serializer):
    changed = serializers.BooleanField()
    before = serializers.JSONField()
    after = serializers.JSONField()
    changes = serializers.DictField(child=ValueChangeSerializer())


class ModelDiffSerializer(serializers.Serializer):
    changed = serializers.BooleanField()
    before = serializers.JSONField()
    after = serializers.JSONField()
    changes = serializers.DictField(
        child=serializers.JSONField(),
        help_text="provider, name and other fields as {before, after}; params as "
        "{param: {before, after}}.",
    )


class PromptPartDiffSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["added", "removed", "unchanged", "modified"])
    similarity = serializers.FloatField(min_value=0, max_value=1)
    unified_diff = serializers.CharField(allow_blank=True)


class PromptsDiffSerializer(serializers.Serializer):
    changed = serializers.BooleanField()
    parts = serializers.DictField(child=PromptPartDiffSerializer())


class SchemaChangeSerializer(serializers.Serializer):
    kind = serializers.CharField(help_text="e.g. required_param_added, type_changed")
    path = serializers.CharField(allow_blank=True, help_text="Where in the tool, dotted.")
    breaking = serializers.BooleanField()
    message = serializers.CharField()


class ToolDiffSerializer(serializers.Serializer):
    name = serializers.CharField()
    breaking = serializers.BooleanField()
    changes = SchemaChangeSerializer(many=True)


class ToolsDiffSerializer(serializers.Serializer):
    changed = serializers.BooleanField()
    added = serializers.ListField(child=serializers.CharField())
    removed = serializers.ListField(child=serializers.CharField())
    modified = ToolDiffSerializer(many=True)


class DiffLayersSerializer(serializers.Serializer):
    code = CodeDiffSerializer()
    model = ModelDiffSerializer()
    prompts = PromptsDiffSerializer()
    tools = ToolsDiffSerializer()


class VersionDiffSerializer(serializers.Serializer):
    before = serializers.IntegerField(help_text="The version compared against.")
    after = serializers.IntegerField()
    changed_layers = serializers.ListField(
        child=serializers.ChoiceField(choices=["code", "model", "prompts", "tools"])
    )
    rainbow_required = serializers.BooleanField()
    breaking = serializers.BooleanField()
    risk = serializers.ChoiceField(choices=["none", "low", "rainbow", "breaking"])
    reasons = DiffReasonSerializer(many=True)
    layers = DiffLayersSerializer()


class VersionDiff(APIView):
    scope_model = Version

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "against",
                int,
                required=True,
                description="The version to compare with (the 'before').",
            )
        ],
        responses=VersionDiffSerializer,
    )
    def get(self, request: Request, pk: int) -> Response:
        version = get_object_or_404(Version, pk=pk)
        against = request.query_params.get("against", "")
        if not _digits(against):
            raise serializers.ValidationError({"against": ["A version id is required."]})
        other = get_object_or_404(Version, pk=int(against))
        if other.agent_id != version.agent_id:
            raise serializers.ValidationError(
                {"against": ["Both versions must belong to the same agent."]}
            )
        return Response(diff_versions(other, version))


# --- audit ---------------------------------------------------------------------------


class AuditEntrySerializer(serializers.ModelSerializer):
    agent = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    object = serializers.CharField(read_only=True)

    class Meta:
        model = AuditEntry
        fields = [
            "id",
            "at",
            "actor",
            "action",
            "agent",
            "object",
            "object_repr",
            "reason",
            "before",
            "after",
            "request_id",
        ]


class AuditList(generics.ListAPIView):
    serializer_class = AuditEntrySerializer
    scope_param = "agent"
    scope_filtered = True

    @extend_schema(
        parameters=[
            OpenApiParameter("agent", str),
            OpenApiParameter("action", str),
            OpenApiParameter("limit", int),
        ]
    )
    def get(self, request: Request, *args, **kwargs) -> Response:
        return super().get(request, *args, **kwargs)

    def get_queryset(self) -> QuerySet[AuditEntry]:
        entries = AuditEntry.objects.select_related("agent")
        scope = agent_scope(self.request)
        if scope is not None:
            entries = entries.filter(agent__slug__in=scope)
        slug = self.request.query_params.get("agent")
        if slug:
            entries = entries.filter(agent=get_object_or_404(Agent, slug=slug))
        action = self.request.query_params.get("action")
        if action:
            entries = entries.filter(action=action)
        limit = self.request.query_params.get("limit", "200")
        if not _digits(limit) or not 1 <= int(limit) <= 1000:
            raise serializers.ValidationError({"limit": ["An integer from 1 to 1000."]})
        return entries[: int(limit)]

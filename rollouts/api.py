"""REST API for routing, sessions, rollouts and the fleet (DESIGN §9)."""

from __future__ import annotations

import functools
import json
from datetime import datetime
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.api import Conflict
from controlplane.models import Role, hash_key
from metrics.gates import GateError, validate_gates
from rollouts import drain, engine, sessions
from rollouts.models import Rollout, Routing
from rollouts.routing import etag
from versions.models import Agent, Version

HARNESS_AND_MANAGER = frozenset({Role.HARNESS, Role.RELEASE_MANAGER})
EVERYONE = frozenset({Role.VIEWER, Role.HARNESS, Role.RELEASE_MANAGER})


def _agent(slug: str) -> Agent:
    return get_object_or_404(Agent, slug=slug)


def _version_of(agent: Agent, value: Any, field: str) -> Version:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError({field: ["A version id (integer) is required."]})
    version = Version.objects.filter(pk=value).first()
    if version is None:
        raise ValidationError({field: [f"Version {value} does not exist."]})
    if version.agent_id != agent.pk:
        raise ValidationError({field: [f"Version {value} belongs to another agent."]})
    return version


class ReasonSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")
    evacuate = serializers.BooleanField(required=False, default=False)


def routing_payload(agent: Agent, routing: Routing | None) -> dict[str, Any]:
    return {
        "agent": agent.slug,
        "epoch": routing.epoch if routing else 0,
        "stable": agent.stable_id,
        "weights": dict(routing.weights) if routing else {},
        "assignment": {
            "bucket": "int(sha256(f'{slug}:{session_id}').hexdigest()[:16], 16) % 10000",
            "order": "versions by ascending id; cumulative weight ranges",
        },
    }


# --- routing and stable -----------------------------------------------------------------


class RoutingView(APIView):
    read_roles = EVERYONE

    @extend_schema(responses={200: dict, 304: None})
    def get(self, request: Request, slug: str) -> Response:
        agent = _agent(slug)
        routing = Routing.objects.filter(agent=agent).first()
        tag = etag(routing) if routing else f'"{agent.pk}-0"'
        if tag in [t.strip() for t in request.headers.get("If-None-Match", "").split(",")]:
            return Response(status=status.HTTP_304_NOT_MODIFIED, headers={"ETag": tag})
        return Response(routing_payload(agent, routing), headers={"ETag": tag})


class StableView(APIView):
    @extend_schema(
        request=inline_serializer(
            "SetStable",
            {
                "version": serializers.IntegerField(),
                "reason": serializers.CharField(required=False),
            },
        ),
        responses=dict,
    )
    def post(self, request: Request, slug: str) -> Response:
        agent = _agent(slug)
        data = request.data if isinstance(request.data, dict) else {}
        version = _version_of(agent, data.get("version"), "version")
        body = ReasonSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            routing = engine.set_stable(
                agent, version, actor=request.user, reason=body.validated_data["reason"]
            )
        except engine.TransitionError as exc:
            raise Conflict(str(exc)) from None
        return Response(routing_payload(agent, routing))


class AgentRollbackSerializer(ReasonSerializer):
    epoch = serializers.IntegerField(
        required=False,
        allow_null=True,
        default=None,
        min_value=0,
        help_text="The routing epoch you looked at; the rollback is refused (409) if the "
        "routing changed since, so a double click rolls back one step only.",
    )


class AgentRollbackView(APIView):
    @extend_schema(request=AgentRollbackSerializer, responses=dict)
    def post(self, request: Request, slug: str) -> Response:
        agent = _agent(slug)
        body = AgentRollbackSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = dict(body.validated_data)
        try:
            routing = engine.rollback_agent(
                agent, actor=request.user, expect_epoch=data.pop("epoch"), **data
            )
        except engine.TransitionError as exc:
            raise Conflict(str(exc)) from None
        agent.refresh_from_db()
        return Response(routing_payload(agent, routing))


# --- rollouts ----------------------------------------------------------------------------


class RolloutSerializer(serializers.ModelSerializer):
    agent = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    percent = serializers.FloatField(read_only=True)
    evaluations = serializers.SerializerMethodField()
    events = serializers.SerializerMethodField()
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    stage_deadline = serializers.SerializerMethodField()

    class Meta:
        model = Rollout
        fields = [
            "id",
            "agent",
            "state",
            "stage",
            "percent",
            "candidate",
            "baseline",
            "stages",
            "gates",
            "auto_rollback",
            "warnings",
            "evaluations",
            "events",
            "started_at",
            "stage_started_at",
            "stage_deadline",
            "ended_at",
            "created_by",
            "evaluated_at",
        ]

    def get_evaluations(self, rollout: Rollout) -> list[dict]:
        """The evaluations that caused transitions, then the latest one."""
        found = [e.evaluation for e in rollout.events.all() if e.evaluation]
        if rollout.last_evaluation and rollout.last_evaluation not in found:
            found.append(rollout.last_evaluation)
        return found

    def get_events(self, rollout: Rollout) -> list[dict]:
        return [
            {
                "at": e.at,
                "actor": e.actor,
                "action": e.action,
                "from_state": e.from_state,
                "to_state": e.to_state,
                "from_stage": e.from_stage,
                "to_stage": e.to_stage,
                "reason": e.reason,
            }
            for e in rollout.events.all()
        ]

    def get_stage_deadline(self, rollout: Rollout) -> datetime | None:
        return engine.stage_deadline(rollout)


class RolloutCreateSerializer(serializers.Serializer):
    candidate = serializers.IntegerField()
    baseline = serializers.IntegerField(required=False, allow_null=True)
    stages = serializers.JSONField(required=False)
    gates = serializers.JSONField(required=False)
    auto_rollback = serializers.BooleanField(required=False, default=False)
    supersede = serializers.BooleanField(required=False, default=False)
    reason = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")


def _rollout_response(rollout_id: int, code: int = status.HTTP_200_OK) -> Response:
    rollout = (
        Rollout.objects.select_related("agent", "created_by")
        .prefetch_related("events")
        .get(pk=rollout_id)
    )
    return Response(RolloutSerializer(rollout).data, status=code)


class AgentRollouts(APIView):
    @extend_schema(responses=RolloutSerializer(many=True))
    def get(self, request: Request, slug: str) -> Response:
        agent = _agent(slug)
        rollouts = (
            Rollout.objects.filter(agent=agent)
            .select_related("agent", "created_by")
            .prefetch_related("events")[:100]
        )
        return Response(RolloutSerializer(rollouts, many=True).data)

    @extend_schema(request=RolloutCreateSerializer, responses={201: RolloutSerializer})
    def post(self, request: Request, slug: str) -> Response:
        agent = _agent(slug)
        body = RolloutCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        candidate = _version_of(agent, data["candidate"], "candidate")
        baseline = (
            _version_of(agent, data["baseline"], "baseline")
            if data.get("baseline") is not None
            else None
        )
        try:
            stages = engine.validate_stages(data.get("stages"))
            gates = validate_gates(data.get("gates", []))
            rollout = engine.start_rollout(
                agent,
                candidate=candidate,
                baseline=baseline,
                stages=stages,
                gates=gates,
                auto_rollback=data["auto_rollback"],
                supersede=data["supersede"],
                actor=request.user,
                reason=data["reason"],
            )
        except (engine.StageError, GateError) as exc:
            # DRF's shape, as for every other field: {"field": ["message", ...]}.
            raise ValidationError(
                {
                    key: [message] if isinstance(message, str) else message
                    for key, message in exc.errors.items()
                }
            ) from None
        except engine.TransitionError as exc:
            raise Conflict(str(exc)) from None
        return _rollout_response(rollout.pk, status.HTTP_201_CREATED)


class RolloutDetail(APIView):
    @extend_schema(responses=RolloutSerializer)
    def get(self, request: Request, pk: int) -> Response:
        get_object_or_404(Rollout, pk=pk)
        return _rollout_response(pk)


class RolloutActionSerializer(ReasonSerializer):
    stage = serializers.IntegerField(
        required=False,
        allow_null=True,
        default=None,
        min_value=0,
        help_text="The stage you looked at; the action is refused (409) if the rollout is "
        "no longer at it. A rollback still applies if only the beat moved it on since.",
    )


class RolloutAction(APIView):
    action_name = ""

    @extend_schema(request=RolloutActionSerializer, responses=RolloutSerializer)
    def post(self, request: Request, pk: int) -> Response:
        get_object_or_404(Rollout, pk=pk)
        body = RolloutActionSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = dict(body.validated_data)
        try:
            engine.transition(
                pk, self.action_name, actor=request.user, expect_stage=data.pop("stage"), **data
            )
        except engine.TransitionError as exc:
            raise Conflict(str(exc)) from None
        return _rollout_response(pk)


def rollout_action(name: str) -> type[RolloutAction]:
    return type(f"Rollout{name.title()}", (RolloutAction,), {"action_name": name})


# --- forced drains ---------------------------------------------------------------------


class StrictBooleanField(serializers.BooleanField):
    """true or false only: "yes" or 1 for a switch that terminates sessions is a bug."""

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


class VersionDrainSerializer(serializers.Serializer):
    reason = serializers.CharField(
        max_length=2000, help_text="Why: recorded in the audit trail and shown on the board."
    )
    terminate = StrictBooleanField(
        required=False,
        default=False,
        help_text="Tell sessions to terminate (and mark them expired) instead of draining.",
    )

    def validate_reason(self, value: str) -> str:
        if not isinstance(self.initial_data.get("reason"), str):
            raise ValidationError("A text reason is required.")
        return value


class VersionDrainView(APIView):
    @extend_schema(
        request=VersionDrainSerializer,
        responses=inline_serializer(
            "VersionDrain",
            {
                "version": serializers.IntegerField(),
                "forced": serializers.BooleanField(),
                "forced_at": serializers.DateTimeField(),
                "reason": serializers.CharField(),
                "terminate": serializers.BooleanField(),
                "live_sessions": serializers.IntegerField(),
                "sessions_told_to_drain": serializers.IntegerField(),
            },
        ),
    )
    def post(self, request: Request, pk: int) -> Response:
        version = get_object_or_404(Version, pk=pk)
        data = request.data if isinstance(request.data, dict) else {}
        body = VersionDrainSerializer(data=data)
        body.is_valid(raise_exception=True)
        try:
            result = drain.force_drain(
                version,
                actor=request.user,
                reason=body.validated_data["reason"],
                terminate=body.validated_data["terminate"],
            )
        except drain.DrainRefused as exc:
            raise Conflict(str(exc)) from None
        lifecycle = result.lifecycle
        return Response(
            {
                "version": version.pk,
                "forced": True,
                "forced_at": lifecycle.forced_drain_at,
                "reason": lifecycle.forced_drain_reason,
                "terminate": lifecycle.forced_terminate,
                "live_sessions": result.live_sessions,
                "sessions_told_to_drain": result.sessions_told_to_drain,
            }
        )


# --- sessions ------------------------------------------------------------------------------


def _session_id(value: Any) -> str:
    if not isinstance(value, str) or not sessions.valid_session_id(value):
        raise ValidationError({"session_id": ["1 to 200 printable characters are required."]})
    return value


class SessionCreate(APIView):
    read_roles = HARNESS_AND_MANAGER
    write_roles = HARNESS_AND_MANAGER

    @extend_schema(
        request=inline_serializer(
            "SessionStart",
            {
                "session_id": serializers.CharField(max_length=200),
                "version": serializers.IntegerField(
                    required=False,
                    help_text="Report a pin made locally while Prism was unreachable: "
                    "the version the session already runs on.",
                ),
            },
        ),
        responses={201: dict, 200: dict},
    )
    def post(self, request: Request, slug: str) -> HttpResponse:
        data = request.data if isinstance(request.data, dict) else {}
        session_id = _session_id(data.get("session_id"))
        reported = data.get("version")
        if reported is not None and (isinstance(reported, bool) or not isinstance(reported, int)):
            raise ValidationError({"version": ["A version id (integer) is required."]})
        try:
            assignment = sessions.assign(slug, session_id, reported)
        except sessions.NotFound:
            raise NotFound(f"No agent {slug!r}.") from None
        except sessions.NoRoute:
            raise Conflict("The agent has no stable version yet; nothing to route to.") from None
        except sessions.UnknownVersion:
            raise ValidationError(
                {"version": [f"Version {reported} is not a version of {slug!r}."]}
            ) from None
        except sessions.PinConflict as exc:
            raise Conflict(
                f"Session {session_id!r} is already pinned to version {exc.pinned}."
            ) from None
        return _assignment_response(assignment)


def _assignment_response(assignment: sessions.Assignment) -> HttpResponse:
    return HttpResponse(
        sessions.assignment_json(assignment),
        content_type="application/json",
        status=status.HTTP_201_CREATED if assignment.created else status.HTTP_200_OK,
    )


_full_session_create = SessionCreate.as_view()


@functools.wraps(_full_session_create)
def session_create(request: HttpRequest, slug: str) -> HttpResponse:
    """``POST /agents/{slug}/sessions/``: the hot path, in front of the full DRF view.

    A harness with a token, a plain ``{"session_id"}`` body and nothing unusual to handle
    is served with one statement and no DRF machinery. Everything else (browser
    sessions, reported pins, bad input, unknown agents, refusals, directives that must
    write) goes to ``SessionCreate``, so the contract and its errors are defined in one
    place.
    """
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    if request.method == "POST" and scheme == "Token" and key:
        try:
            body = json.loads(request.body)
        except ValueError:
            body = None
        plain = isinstance(body, dict) and body.keys() == {"session_id"}
        session_id = body["session_id"] if plain else None
        if isinstance(session_id, str) and sessions.valid_session_id(session_id):
            assignment = sessions.assign_for_token(
                slug, session_id, hash_key(key.strip()), HARNESS_AND_MANAGER
            )
            if assignment is not None:
                return _assignment_response(assignment)
    return _full_session_create(request, slug=slug)


class SessionHeartbeat(APIView):
    read_roles = HARNESS_AND_MANAGER
    write_roles = HARNESS_AND_MANAGER

    @extend_schema(request=None, responses=dict)
    def post(self, request: Request, slug: str, session_id: str) -> Response:
        try:
            session = sessions.heartbeat(slug, session_id)
        except sessions.NotFound:
            raise NotFound(f"No session {session_id!r} for agent {slug!r}.") from None
        return Response(
            {"directive": session.directive, "state": session.state, "version": session.version_id}
        )


class OutcomeSerializer(serializers.Serializer):
    success = serializers.BooleanField(required=False, allow_null=True, default=None)
    error = serializers.BooleanField(required=False, allow_null=True, default=None)
    latency_ms = serializers.FloatField(required=False, allow_null=True, min_value=0)
    cost_usd = serializers.FloatField(required=False, allow_null=True, min_value=0)
    hallucination = serializers.BooleanField(required=False, allow_null=True, default=None)
    feedback = serializers.FloatField(required=False, allow_null=True, min_value=-1, max_value=1)

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise ValidationError("Expected an object.")
        errors = {}
        unknown = set(data) - set(self.fields)
        for key in sorted(unknown):
            errors[key] = ["Unknown outcome field."]
        # Strict types: "true" or 1 for a boolean is a harness bug worth reporting.
        for key in ("success", "error", "hallucination"):
            if key in data and data[key] is not None and not isinstance(data[key], bool):
                errors[key] = ["Must be true, false or null."]
        for key in ("latency_ms", "cost_usd", "feedback"):
            value = data.get(key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                errors[key] = ["Must be a number or null."]
        if errors:
            raise ValidationError(errors)
        return {k: v for k, v in super().to_internal_value(data).items() if k in data}


class EndSerializer(serializers.Serializer):
    outcome = OutcomeSerializer(required=False, default=dict)


class SessionEnd(APIView):
    read_roles = HARNESS_AND_MANAGER
    write_roles = HARNESS_AND_MANAGER

    @extend_schema(request=EndSerializer, responses=dict)
    def post(self, request: Request, slug: str, session_id: str) -> Response:
        body = EndSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            session, changed = sessions.end(slug, session_id, body.validated_data["outcome"])
        except sessions.NotFound:
            raise NotFound(f"No session {session_id!r} for agent {slug!r}.") from None
        return Response(
            {
                "session_id": session.session_id,
                "state": session.state,
                "ended_at": session.ended_at,
                "already_ended": not changed,
            }
        )


class SessionFeedback(APIView):
    read_roles = HARNESS_AND_MANAGER
    write_roles = HARNESS_AND_MANAGER

    @extend_schema(
        request=inline_serializer(
            "Feedback", {"feedback": serializers.FloatField(min_value=-1, max_value=1)}
        ),
        responses=dict,
    )
    def post(self, request: Request, slug: str, session_id: str) -> Response:
        value = request.data.get("feedback") if isinstance(request.data, dict) else None
        if isinstance(value, bool) or not isinstance(value, int | float) or not -1 <= value <= 1:
            raise ValidationError({"feedback": ["A number from -1 to 1 is required."]})
        try:
            session = sessions.feedback(slug, session_id, float(value))
        except sessions.NotFound:
            raise NotFound(f"No session {session_id!r} for agent {slug!r}.") from None
        return Response({"session_id": session.session_id, "feedback": float(value)})


# --- fleet ---------------------------------------------------------------------------------


def fleet_payload(agent: Agent) -> dict[str, Any]:
    rows = drain.fleet(agent)
    return {
        "agent": agent.slug,
        "stable": agent.stable_id,
        "versions": [
            {
                "id": row.version.pk,
                "label": row.version.label,
                "fingerprint": row.version.fingerprint,
                "state": row.state,
                "weight": row.weight,
                "live_sessions": row.live_sessions,
                "total_sessions": row.total_sessions,
                "drain": row.drain,
            }
            for row in rows
        ],
    }


class FleetView(APIView):
    @extend_schema(responses=dict)
    def get(self, request: Request, slug: str) -> Response:
        return Response(fleet_payload(_agent(slug)))

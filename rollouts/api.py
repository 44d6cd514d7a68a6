"""REST API for routing, sessions, rollouts and the fleet (the README's API section)."""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.generics import ListAPIView
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane import db
from controlplane.api import Conflict, StrictBooleanField, StrictFloatField, StrictSerializer
from controlplane.auth import (
    authorise,
    caller_for_key,
    caller_from_row,
    caller_statement,
    token_key,
)
from controlplane.models import Role
from metrics.gates import DEFAULT_GATES, GateError, validate_gates
from rollouts import drain, engine, fleet, sessions
from rollouts.models import Evaluation, Rollout, Routing, SessionState
from rollouts.routing import etag
from versions.api import VersionSerializer
from versions.models import Agent, Version

HARNESS_AND_MANAGER = frozenset({Role.HARNESS, Role.RELEASE_MANAGER})
EVERYONE = frozenset({Role.VIEWER, Role.HARNESS, Role.RELEASE_MANAGER})


def _agent(slug: str) -> Agent:
    return get_object_or_404(Agent, slug=slug)


@extend_schema_field(OpenApiTypes.INT)
class VersionRef(serializers.Field):
    """A version of the agent in the serializer's context, given by its id."""

    default_error_messages = {
        "invalid": "A version id (integer) is required.",
        "missing": "Version {value} does not exist.",
        "elsewhere": "Version {value} belongs to another agent.",
    }

    def to_internal_value(self, data: Any) -> Version:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        version = Version.objects.filter(pk=data).first()
        if version is None:
            self.fail("missing", value=data)
        if version.agent_id != self.context["agent"].pk:
            self.fail("elsewhere", value=data)
        return version

    def to_representation(self, value: Version) -> int:
        return value.pk


class ReasonSerializer(StrictSerializer):
    reason = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")
    evacuate = StrictBooleanField(required=False, default=False)


# --- answers, typed for the schema ------------------------------------------------------


class AssignmentRuleSerializer(serializers.Serializer):
    bucket = serializers.CharField(help_text="How a session id becomes a bucket in [0, 10000).")
    order = serializers.CharField(help_text="How buckets map to versions.")


class RoutingSerializer(serializers.Serializer):
    agent = serializers.CharField()
    epoch = serializers.IntegerField(help_text="Increments on every routing change.")
    stable = serializers.IntegerField(allow_null=True, help_text="The stable version's id.")
    weights = serializers.DictField(
        child=serializers.IntegerField(min_value=0, max_value=10000),
        help_text="Basis points by version id; they sum to 10000 (empty with no stable).",
    )
    assignment = AssignmentRuleSerializer()


class DrainSerializer(serializers.Serializer):
    """Null fields while the version is not draining."""

    started_at = serializers.DateTimeField(allow_null=True)
    live_at_start = serializers.IntegerField(allow_null=True)
    progress = serializers.FloatField(allow_null=True, min_value=0, max_value=1)
    eta_s = serializers.FloatField(
        allow_null=True,
        help_text="Median seconds until drained: the agent's survival curve conditioned on "
        "each live session's age, capped by what the drain policy leaves it.",
    )
    forced = serializers.BooleanField()
    forced_reason = serializers.CharField(allow_blank=True)
    drained_at = serializers.DateTimeField(allow_null=True)


class FleetVersionSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    label = serializers.CharField(allow_null=True)
    fingerprint = serializers.CharField()
    state = serializers.ChoiceField(
        choices=[drain.INACTIVE, drain.ACTIVE, drain.DRAINING, drain.DRAINED]
    )
    weight = serializers.IntegerField(help_text="Basis points of new sessions.")
    live_sessions = serializers.IntegerField(help_text="Exact at the moment of the request.")
    total_sessions = serializers.IntegerField(
        help_text="Sessions ever pinned to it, from the rollups the beat counts new pins "
        "into: it trails the newest pins by up to a beat tick plus the pin settle delay."
    )
    drain = DrainSerializer()


class FleetSerializer(serializers.Serializer):
    agent = serializers.CharField()
    stable = serializers.IntegerField(allow_null=True)
    versions = FleetVersionSerializer(many=True)


DIRECTIVES = [sessions.CONTINUE, sessions.DRAIN, sessions.TERMINATE]


class SessionStartAnswer(serializers.Serializer):
    session_id = serializers.CharField()
    version = VersionSerializer(help_text="The whole tuple the session is pinned to.")
    directive = serializers.ChoiceField(choices=DIRECTIVES)
    state = serializers.ChoiceField(choices=SessionState.choices)
    started_at = serializers.DateTimeField()


class HeartbeatAnswer(serializers.Serializer):
    directive = serializers.ChoiceField(
        choices=DIRECTIVES,
        help_text="continue; drain: finish the step, checkpoint, end; terminate: stop now.",
    )
    state = serializers.ChoiceField(choices=SessionState.choices)
    version = serializers.IntegerField(help_text="The version the session is pinned to.")


class EndAnswer(serializers.Serializer):
    session_id = serializers.CharField()
    state = serializers.ChoiceField(choices=SessionState.choices)
    ended_at = serializers.DateTimeField(allow_null=True)
    already_ended = serializers.BooleanField(help_text="True: an earlier end stands.")


class FeedbackAnswer(serializers.Serializer):
    session_id = serializers.CharField()
    feedback = serializers.FloatField(min_value=-1, max_value=1)


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

    @extend_schema(
        responses={
            200: RoutingSerializer,
            304: OpenApiResponse(description="Not modified since the ETag in If-None-Match."),
        }
    )
    def get(self, request: Request, slug: str) -> Response:
        agent = _agent(slug)
        routing = Routing.objects.filter(agent=agent).first()
        tag = etag(routing) if routing else f'"{agent.pk}-0"'
        if tag in [t.strip() for t in request.headers.get("If-None-Match", "").split(",")]:
            return Response(status=status.HTTP_304_NOT_MODIFIED, headers={"ETag": tag})
        return Response(routing_payload(agent, routing), headers={"ETag": tag})


class StableSerializer(StrictSerializer):
    version = VersionRef()
    reason = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")


class StableView(APIView):
    @extend_schema(request=StableSerializer, responses=RoutingSerializer)
    def post(self, request: Request, slug: str) -> Response:
        agent = _agent(slug)
        body = StableSerializer(data=request.data, context={"agent": agent})
        body.is_valid(raise_exception=True)
        data = body.validated_data
        try:
            routing = engine.set_stable(
                agent, data["version"], actor=request.user, reason=data["reason"]
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
    @extend_schema(request=AgentRollbackSerializer, responses=RoutingSerializer)
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
    gate_verdicts = serializers.SerializerMethodField()
    events = serializers.SerializerMethodField()
    created_by = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True
    )
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
            "gate_verdicts",
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

    def get_gate_verdicts(self, rollout: Rollout) -> list[dict]:
        """The latest verdict of every gate, with its estimate, interval and samples."""
        return list((rollout.last_evaluation or {}).get("gates", []))

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


class RolloutCreateSerializer(StrictSerializer):
    candidate = VersionRef()
    baseline = VersionRef(required=False, allow_null=True, default=None)
    stages = serializers.JSONField(
        required=False, help_text="[{percent, min_duration_s?, min_sessions?, max_duration_s?}]"
    )
    gates = serializers.JSONField(
        required=False, help_text="[{metric, max_increase | max_decrease | ..., critical?, stat?}]"
    )
    auto_rollback = StrictBooleanField(required=False, default=False)
    supersede = StrictBooleanField(required=False, default=False)
    reason = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")

    def to_internal_value(self, data):
        """The fields, then the stages and gates whatever else failed, so every error
        comes in one answer. Stage and gate errors keep their own keys ("stages[1]")."""
        errors: dict[str, Any] = {}
        try:
            value = super().to_internal_value(data)
        except ValidationError as exc:
            if not isinstance(data, Mapping) or not isinstance(exc.detail, Mapping):
                raise
            errors.update(exc.detail)
            value = {}
        try:
            value["stages"] = engine.validate_stages(data.get("stages"))
        except engine.StageError as exc:
            errors.update(_as_field_errors(exc.errors))
        try:
            # No gates named: the defaults, one per built-in metric. An explicit [] means
            # none at all (the start's audit entry says so).
            gates = data.get("gates")
            value["gates"] = validate_gates(
                copy.deepcopy(DEFAULT_GATES) if gates is None else gates
            )
        except GateError as exc:
            errors.update(_as_field_errors(exc.errors))
        if errors:
            raise ValidationError(errors)
        return value


def _as_field_errors(errors: dict[str, Any]) -> dict[str, Any]:
    """DRF's shape, as for every other field: ``{"field": ["message", ...]}``."""
    return {
        key: [message] if isinstance(message, str) else message for key, message in errors.items()
    }


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
        body = RolloutCreateSerializer(data=request.data, context={"agent": agent})
        body.is_valid(raise_exception=True)
        data = body.validated_data
        try:
            rollout = engine.start_rollout(
                agent,
                candidate=data["candidate"],
                baseline=data["baseline"],
                stages=data["stages"],
                gates=data["gates"],
                auto_rollback=data["auto_rollback"],
                supersede=data["supersede"],
                actor=request.user,
                reason=data["reason"],
            )
        except (engine.StageError, GateError) as exc:
            raise ValidationError(_as_field_errors(exc.errors)) from None
        except engine.TransitionError as exc:
            raise Conflict(str(exc)) from None
        return _rollout_response(rollout.pk, status.HTTP_201_CREATED)


class RolloutDetail(APIView):
    scope_model = Rollout

    @extend_schema(responses=RolloutSerializer)
    def get(self, request: Request, pk: int) -> Response:
        get_object_or_404(Rollout, pk=pk)
        return _rollout_response(pk)


class EvaluationSerializer(serializers.ModelSerializer):
    class Meta:
        model = Evaluation
        fields = ["id", "at", "actor", "stage", "epoch", "decision", "reason", "applied", "report"]


class EvaluationPages(PageNumberPagination):
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000


class RolloutEvaluations(ListAPIView):
    """``GET /rollouts/{id}/evaluations/``: every look at the rollout's gates, newest
    first, paged: the history its charts draw."""

    serializer_class = EvaluationSerializer
    pagination_class = EvaluationPages
    scope_model = Rollout

    def get_queryset(self):
        rollout = get_object_or_404(Rollout, pk=self.kwargs["pk"])
        return Evaluation.objects.filter(rollout=rollout).order_by("-at", "-id")


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
    scope_model = Rollout

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
    scope_model = Version

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

SESSION_START_FIELDS = ("session_id", "version", "started_at", "epoch")


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _instant(value: Any) -> datetime | None:
    """An ISO 8601 date and time with its UTC offset, or None."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _session_start(data: Any) -> tuple[str, sessions.Report | None]:
    """The session id and, for a pin made locally, the report: every field error at once.

    A report is ``version`` with ``started_at`` (when the session really began) and,
    optionally, the ``epoch`` of the routing table the harness routed with.
    """
    if not isinstance(data, dict):
        raise ValidationError({"non_field_errors": ["Expected a JSON object."]})
    errors: dict[str, list[str]] = {
        key: ["Unknown field."] for key in sorted(set(data) - set(SESSION_START_FIELDS))
    }
    session_id = data.get("session_id")
    if not isinstance(session_id, str) or not sessions.valid_session_id(session_id):
        errors["session_id"] = ["1 to 200 printable characters are required."]
    version, started_at, epoch = (data.get(key) for key in SESSION_START_FIELDS[1:])
    if version is None:
        for key in ("started_at", "epoch"):
            if key in data:
                errors[key] = ["Only for a reported pin, with its version."]
    else:
        if not _integer(version):
            errors["version"] = ["A version id (integer) is required."]
        if _instant(started_at) is None:
            errors["started_at"] = [
                "A reported pin needs the ISO 8601 time the session started, with its UTC "
                'offset, e.g. "2026-01-31T09:30:00Z".'
            ]
        if epoch is not None and not (_integer(epoch) and epoch >= 0):
            errors["epoch"] = ["The routing epoch (a non-negative integer) or null."]
    if errors:
        raise ValidationError(errors)
    if version is None:
        return session_id, None
    return session_id, sessions.Report(version, _instant(started_at), epoch)


class SessionCreate(APIView):
    """The full path of ``POST /agents/{slug}/sessions/``: it defines the contract and its
    errors. ``session_create`` serves the common case without DRF, the same way."""

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
                "started_at": serializers.DateTimeField(
                    required=False,
                    help_text="With version: when the session really started (ISO 8601 "
                    "with offset; at most 30 days ago).",
                ),
                "epoch": serializers.IntegerField(
                    required=False,
                    allow_null=True,
                    min_value=0,
                    help_text="With version: the routing epoch of the table the harness "
                    "routed with, if it knows it.",
                ),
            },
        ),
        responses={
            201: SessionStartAnswer,
            200: OpenApiResponse(SessionStartAnswer, "A known session: its existing pin."),
        },
    )
    def post(self, request: Request, slug: str) -> HttpResponse:
        session_id, report = _session_start(request.data)
        try:
            assignment = sessions.assign(slug, session_id, report)
        except sessions.NotFound:
            raise NotFound(f"No agent {slug!r}.") from None
        except sessions.NoRoute:
            raise Conflict("The agent has no stable version yet; nothing to route to.") from None
        except sessions.InvalidReport as exc:
            raise ValidationError(
                {field: [message] for field, message in exc.errors.items()}
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
        headers={"Allow": _ALLOW},
    )


_full_session_create = SessionCreate.as_view()
# DRF sets Allow on every answer of the full view; the fast path sets the same.
_ALLOW = ", ".join(SessionCreate().allowed_methods)
_FAST_ACCEPT = frozenset({None, "*/*", "application/json"})
_UTF_8 = frozenset({"utf-8", "utf8"})


def _plain_start(request: HttpRequest) -> tuple[str, str] | None:
    """(token key, session id) if the request is a plain session start that the full
    view would accept as it stands, else None.

    Plain means: a POST with no query string (DRF reads ``?format=``), asking for JSON
    or anything, sending ``Content-Type: application/json`` in UTF-8 (what DRF's parser
    takes), authenticated by a token, with a body that is exactly ``{"session_id"}``
    and a valid id. Anything else, however odd, is the full view's to answer.
    """
    if request.method != "POST" or request.META.get("QUERY_STRING"):
        return None
    if request.META.get("HTTP_ACCEPT") not in _FAST_ACCEPT:
        return None
    if request.content_type != "application/json":
        return None
    if request.content_params.get("charset", "utf-8").lower() not in _UTF_8:
        return None
    key = token_key(request.META.get("HTTP_AUTHORIZATION", ""))
    if key is None:
        return None
    try:
        body = json.loads(request.body.decode())
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than Python's
        return None
    if not isinstance(body, dict) or body.keys() != {"session_id"}:
        return None
    session_id = body["session_id"]
    if not isinstance(session_id, str) or not sessions.valid_session_id(session_id):
        return None
    return key, session_id


@functools.wraps(_full_session_create)
def session_create(request: HttpRequest, slug: str) -> HttpResponse:
    """``POST /agents/{slug}/sessions/``: the fast path, in front of the full DRF view.

    A plain start (``_plain_start``) by a caller the one authorisation rule allows is
    served without DRF: the caller's token read (controlplane's prepared statement)
    and the agent's routing read (rollouts') in one round trip, then
    ``sessions.assign`` as the full view calls it, given that routing row. Everything
    else, and every error, goes to ``SessionCreate``, which words the answer; nothing
    has been written by then. Both answer with the same bytes.
    """
    plain = _plain_start(request)
    if plain is not None:
        key, session_id = plain
        routing = sessions.routing_statement(slug)
        if routing is None:  # the agent's first start in this process
            caller, read = caller_for_key(key), {}
        else:
            token_row, routing_row = db.fetchone_each([caller_statement(key), routing])
            caller, read = caller_from_row(token_row), {"routing_row": routing_row}
        if authorise(caller, roles=HARNESS_AND_MANAGER, agent=slug).allowed:
            try:
                return _assignment_response(sessions.assign(slug, session_id, **read))
            except (sessions.NotFound, sessions.NoRoute):
                pass
    return _full_session_create(request, slug=slug)


class HeartbeatSerializer(StrictSerializer):
    """A heartbeat carries nothing: an empty object, or no body at all."""


class SessionHeartbeat(APIView):
    read_roles = HARNESS_AND_MANAGER
    write_roles = HARNESS_AND_MANAGER

    @extend_schema(request=HeartbeatSerializer, responses=HeartbeatAnswer)
    def post(self, request: Request, slug: str, session_id: str) -> Response:
        HeartbeatSerializer(data=request.data).is_valid(raise_exception=True)
        try:
            session = sessions.heartbeat(slug, session_id)
        except sessions.NotFound:
            raise NotFound(f"No session {session_id!r} for agent {slug!r}.") from None
        return Response(
            {"directive": session.directive, "state": session.state, "version": session.version_id}
        )


class OutcomeSerializer(StrictSerializer):
    """What a session's end reports; a field left out is not reported (null likewise)."""

    success = StrictBooleanField(required=False, allow_null=True)
    error = StrictBooleanField(required=False, allow_null=True)
    latency_ms = StrictFloatField(required=False, allow_null=True, min_value=0)
    cost_usd = StrictFloatField(required=False, allow_null=True, min_value=0)
    hallucination = StrictBooleanField(required=False, allow_null=True)
    feedback = StrictFloatField(required=False, allow_null=True, min_value=-1, max_value=1)


class EndSerializer(StrictSerializer):
    outcome = OutcomeSerializer(required=False, default=dict)

    def unknown_field_error(self, key: str) -> str:
        # The outcome's own fields sent bare would otherwise end the session without it.
        if key in OutcomeSerializer().fields:
            return 'Unknown field. Outcome fields go inside "outcome": {"outcome": {...}}.'
        return self.unknown_field_message


class SessionEnd(APIView):
    read_roles = HARNESS_AND_MANAGER
    write_roles = HARNESS_AND_MANAGER

    @extend_schema(request=EndSerializer, responses=EndAnswer)
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


class FeedbackSerializer(StrictSerializer):
    feedback = StrictFloatField(
        min_value=-1, max_value=1, help_text="The user's verdict, from -1 (bad) to 1 (good)."
    )


class SessionFeedback(APIView):
    read_roles = HARNESS_AND_MANAGER
    write_roles = HARNESS_AND_MANAGER

    @extend_schema(request=FeedbackSerializer, responses=FeedbackAnswer)
    def post(self, request: Request, slug: str, session_id: str) -> Response:
        body = FeedbackSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        value = body.validated_data["feedback"]
        try:
            session = sessions.feedback(slug, session_id, value)
        except sessions.NotFound:
            raise NotFound(f"No session {session_id!r} for agent {slug!r}.") from None
        return Response({"session_id": session.session_id, "feedback": value})


# --- fleet ---------------------------------------------------------------------------------


def fleet_payload(agent: Agent) -> dict[str, Any]:
    rows = fleet.fleet(agent)
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
    @extend_schema(responses=FleetSerializer)
    def get(self, request: Request, slug: str) -> Response:
        return Response(fleet_payload(_agent(slug)))

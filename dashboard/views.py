"""The release manager's dashboard: thin views over ``dashboard.services``.

One view, two renders: a page view renders the whole page, and for an htmx request
(not boosted) just the partial its target names, e.g. ``dashboard/board.html#fleet``.
Polled partials answer 286 once nothing is live, which stops the polling.

Actions (rollback, pause, resume, advance) are two steps. A GET renders the confirm
step (a dialog for htmx, a page without JavaScript) with the routing epoch or stage the
page showed; the POST calls the engine with it, so a double click acts once and the
second click gets 409 with a clear message. The answer is a toast and a refresh event.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods
from django_htmx.http import HttpResponseStopPolling, trigger_client_event
from rest_framework.exceptions import ValidationError

from dashboard import charts, diffs, forms, services
from dashboard.access import can_act, manager, reader
from rollouts import drain, engine
from rollouts.api_forecast import ForecastQuery, forecast_for
from rollouts.models import Rollout
from versions.models import Agent, Version

login = auth_views.LoginView.as_view(
    template_name="dashboard/login.html", redirect_authenticated_user=True
)
logout = auth_views.LogoutView.as_view()


# --- rendering ---------------------------------------------------------------------------


def page(
    request: HttpRequest,
    template: str,
    context: dict[str, Any],
    *,
    partials: dict[str, str],
    default: str,
    stop_polling: bool = False,
) -> HttpResponse:
    """The whole page, or for htmx the partial named by the request's target element.

    With ``stop_polling`` the partial is answered with 286: htmx swaps it in and stops
    polling, and the partial itself is rendered without its polling trigger.
    """
    context = {"can_act": can_act(request.user), **context}
    # A history restore (back button after hx-push-url) wants the whole page back.
    if request.htmx and not request.htmx.boosted and not request.htmx.history_restore_request:
        name = partials.get(request.htmx.target or "", default)
        html = render_to_string(f"{template}#{name}", context, request)
        if stop_polling:
            return HttpResponseStopPolling(html)
        return HttpResponse(html)
    return render(request, template, context)


def bad_request(request: HttpRequest, message: str) -> HttpResponse:
    return refused(request, message, status=400)


def refused(request: HttpRequest, message: str, *, status: int) -> HttpResponse:
    """An action or input the dashboard cannot honour: a toast for htmx, else a page."""
    response = render(
        request, "dashboard/error.html", {"message": message, "status": status}, status=status
    )
    if request.htmx:
        trigger_client_event(response, "prism:toast", {"level": "error", "message": message})
    return response


def form_errors(form) -> str:
    return "; ".join(
        f"{name}: {' '.join(errors)}" if name != "__all__" else " ".join(errors)
        for name, errors in form.errors.items()
    )


def done(request: HttpRequest, message: str, fallback: str) -> HttpResponse:
    """An action succeeded: a toast and a refresh of the live partials for htmx, or a
    message and a redirect back without JavaScript."""
    if request.htmx:
        response = HttpResponse(status=204)
        trigger_client_event(response, "prism:toast", {"level": "success", "message": message})
        trigger_client_event(response, "prism:refresh", {})
        return response
    messages.success(request, message)
    target = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        target = fallback
    return HttpResponseRedirect(target)


# --- pages -------------------------------------------------------------------------------


@require_GET
@reader
def home(request: HttpRequest) -> HttpResponse:
    rows, live = services.agents_overview()
    return page(
        request,
        "dashboard/home.html",
        {"rows": rows, "live": live},
        partials={"agents": "agents"},
        default="agents",
        stop_polling=not live,
    )


@require_GET
@reader
def board(request: HttpRequest, slug: str) -> HttpResponse:
    agent = get_object_or_404(Agent, slug=slug)
    window_form = forms.WindowForm(request.GET, windows=list(charts.WINDOWS))
    if not window_form.is_valid():
        return bad_request(request, form_errors(window_form))
    window = window_form.cleaned_data["window"] or charts.DEFAULT_WINDOW
    context: dict[str, Any] = {"agent": agent, "window": window, "windows": list(charts.WINDOWS)}
    target = request.htmx.target if request.htmx else None
    if target == "rainbow-data":
        live = services.agent_is_live(agent)
        context.update(figure=charts.rainbow_figure(agent, window), live=live)
        stop_polling = not live
    else:
        data = services.board(agent)
        live = data.live
        beat = services.beat_status()
        context.update(board=data, live=live, beat=beat)
        if not request.htmx:
            context["figure"] = charts.rainbow_figure(agent, window)
            context["values"] = forecast_initial(agent)
        # A late beat keeps the fleet polling, so the warning goes once the beat is back.
        stop_polling = not live and not beat.late
    return page(
        request,
        "dashboard/board.html",
        context,
        partials={"fleet": "fleet", "rainbow-data": "chart"},
        default="fleet",
        stop_polling=stop_polling,
    )


#: What the board's what-if panel starts from besides the agent's own drain policy.
FORECAST_DEPLOY_EVERY_H = 24


def forecast_initial(agent: Agent) -> dict[str, Any]:
    return {
        "deploy_every_h": FORECAST_DEPLOY_EVERY_H,
        "max_session_age_s": agent.max_session_age_s,
        "max_live_versions": agent.max_live_versions,
    }


@require_GET
@reader
def forecast(request: HttpRequest, slug: str) -> HttpResponse:
    """The board's what-if panel: the drain forecast for a deploy cadence and a drain
    policy (the agent's own unless the form says otherwise). Reads only."""
    agent = get_object_or_404(Agent, slug=slug)
    values = {**forecast_initial(agent), **request.GET.dict()}
    query = ForecastQuery(data=values)
    context: dict[str, Any] = {"agent": agent, "values": values}
    status = 200
    if query.is_valid():
        now = timezone.now()
        try:
            result = forecast_for(agent, query.validated_data, now=now)
        except ValidationError as exc:
            context["errors"], status = exc.detail, 400
        else:
            context.update(
                forecast=result,
                figure={**charts.forecast_figure(result), "at": now.isoformat()},
            )
    else:
        context["errors"], status = query.errors, 400
    if request.htmx:
        html = render_to_string("dashboard/forecast.html#panel", context, request)
        return HttpResponse(html, status=status)
    return render(request, "dashboard/forecast.html", context, status=status)


@require_GET
@reader
def rollout_page(request: HttpRequest, pk: int) -> HttpResponse:
    rollout = get_object_or_404(
        Rollout.objects.select_related("agent", "candidate", "baseline", "created_by"),
        pk=pk,
    )
    summary = services.rollout_summary(rollout)
    reports = charts.evaluations(rollout)
    context = {
        "agent": rollout.agent,
        "summary": summary,
        "timeline": services.timeline(rollout),
        "reports": reports,
        "evaluation_rows": charts.evaluation_rows(reports),
        "samples_figure": charts.samples_figure(reports),
        "gate_charts": charts.gate_figures(rollout, reports),
        "live": summary.is_open,
    }
    return page(
        request,
        "dashboard/rollout.html",
        context,
        partials={"progress": "progress", "rollout-charts": "charts"},
        default="progress",
        stop_polling=not summary.is_open,
    )


@require_GET
@reader
def version_page(request: HttpRequest, pk: int) -> HttpResponse:
    version = get_object_or_404(Version.objects.select_related("agent", "created_by"), pk=pk)
    versions, ordinal = services.versions_of([version.agent_id])
    others = [v for v in reversed(versions.values()) if v.pk != version.pk]
    previous = max((v.pk for v in others if v.pk < version.pk), default=None)
    return render(
        request,
        "dashboard/version.html",
        {
            "agent": version.agent,
            "version": version,
            "colour": services.colour(ordinal.get(version.pk, 0)),
            "layers": diffs.version_layers(version),
            "others": others,
            "previous": previous,
            "can_act": can_act(request.user),
        },
    )


@require_GET
@reader
def version_diff(request: HttpRequest, pk: int, other: int) -> HttpResponse:
    """``/versions/{pk}/diff/{other}/``: ``other`` is the before, as in the API."""
    after = get_object_or_404(Version.objects.select_related("agent"), pk=pk)
    before = get_object_or_404(Version.objects.select_related("agent"), pk=other)
    if before.agent_id != after.agent_id:
        return bad_request(request, "Both versions must belong to the same agent.")
    versions, _ = services.versions_of([after.agent_id])
    return render(
        request,
        "dashboard/diff.html",
        {
            "agent": after.agent,
            "before": before,
            "after": after,
            "versions": list(reversed(versions.values())),
            **diffs.diff_page(before, after),
        },
    )


@require_GET
@reader
def compare(request: HttpRequest, slug: str) -> HttpResponse:
    """The diff page's selector: any two versions of the agent."""
    agent = get_object_or_404(Agent, slug=slug)
    form = forms.CompareForm(request.GET)
    if not form.is_valid():
        return bad_request(request, form_errors(form))
    before, after = form.cleaned_data["before"], form.cleaned_data["after"]
    found = set(
        Version.objects.filter(agent=agent, pk__in=[before, after]).values_list("pk", flat=True)
    )
    if found != {before, after}:
        return bad_request(request, f"Choose two versions of {agent.slug}.")
    return redirect("dashboard:version-diff", pk=after, other=before)


@require_GET
@reader
def audit(request: HttpRequest, slug: str) -> HttpResponse:
    agent = get_object_or_404(Agent, slug=slug)
    form = forms.AuditFilterForm(request.GET)
    if not form.is_valid():
        return bad_request(request, form_errors(form))
    action, actor = form.cleaned_data["action"], form.cleaned_data["actor"]
    number = form.cleaned_data["page"] or 1
    rows, has_next = services.audit_entries(agent, action=action, actor=actor, page=number)
    actions, actors = services.audit_choices(agent)
    return page(
        request,
        "dashboard/audit.html",
        {
            "agent": agent,
            "rows": rows,
            "page_number": number,
            "has_next": has_next,
            "action": action,
            "actor": actor,
            "actions": actions,
            "actors": actors,
        },
        partials={"audit-entries": "entries"},
        default="entries",
    )


# --- actions -----------------------------------------------------------------------------


def confirm(request: HttpRequest, context: dict[str, Any]) -> HttpResponse:
    """The confirm step: a dialog for htmx, a page of its own without JavaScript."""
    context = {"next": request.GET.get("next", ""), **context}
    if request.htmx:
        return HttpResponse(render_to_string("dashboard/confirm.html#dialog", context, request))
    return render(request, "dashboard/confirm.html", context)


@require_http_methods(["GET", "POST"])
@manager
def agent_rollback(request: HttpRequest, slug: str) -> HttpResponse:
    """One-click rollback of an agent: the open rollout, or else the previous stable."""
    agent = get_object_or_404(Agent, slug=slug)
    board_url = reverse("dashboard:board", args=[agent.slug])
    if request.method == "GET":
        query = forms.ConfirmAgentRollbackForm(request.GET)
        if not query.is_valid():
            return bad_request(request, form_errors(query))
        data = services.board(agent)
        return confirm(
            request,
            {
                "agent": agent,
                "title": f"Roll back {agent.slug}?",
                "summary": data.rollback.summary,
                "possible": data.rollback.possible,
                "action_url": request.path,
                "hidden": {"epoch": query.cleaned_data["epoch"]},
                "evacuate": data.rollback.moving_off if data.rollback.possible else None,
                "evacuate_live": data.rollback.live_on_moving_off,
                "confirm_label": "Roll back now",
                "danger": True,
                "cancel_url": board_url,
            },
        )
    form = forms.AgentRollbackForm(request.POST)
    if not form.is_valid():
        return bad_request(request, form_errors(form))
    try:
        routing = engine.rollback_agent(
            agent,
            actor=request.user,
            reason=form.cleaned_data["reason"],
            evacuate=form.evacuate,
            expect_epoch=form.cleaned_data["epoch"],
        )
    except engine.TransitionError as exc:
        return refused(request, f"Not rolled back: {exc}", status=409)
    agent.refresh_from_db()
    target = Version.objects.filter(pk=agent.stable_id).first()
    name = target.display_name if target else "—"
    evacuated = " Live sessions on the old version were told to drain." if form.evacuate else ""
    return done(
        request,
        f"Rolled back {agent.slug}: new sessions go to {name} (routing epoch "
        f"{routing.epoch}).{evacuated}",
        board_url,
    )


@require_http_methods(["GET", "POST"])
@manager
def version_drain(request: HttpRequest, pk: int) -> HttpResponse:
    """Force-drain a draining version whose sessions linger: each live session gets
    ``drain`` (or ``terminate``) at its next heartbeat, audited in the person's name."""
    version = get_object_or_404(Version.objects.select_related("agent"), pk=pk)
    board_url = reverse("dashboard:board", args=[version.agent.slug])
    live = services.live_sessions_of(version)
    if request.method == "GET":
        return confirm(
            request,
            {
                "agent": version.agent,
                "title": f"Force-drain {version.display_name}?",
                "summary": f"{live} live sessions on {version.display_name} will be told to "
                "drain at their next heartbeat. A reason is required.",
                "possible": live > 0,
                "action_url": request.path,
                "hidden": {},
                "reason_required": True,
                "drain_choice": True,
                "confirm_label": "Force drain now",
                "danger": True,
                "cancel_url": board_url,
            },
        )
    form = forms.DrainForm(request.POST)
    if not form.is_valid():
        return bad_request(request, form_errors(form))
    try:
        drained = drain.force_drain(
            version,
            actor=request.user,
            reason=form.cleaned_data["reason"],
            terminate=form.terminate,
        )
    except drain.DrainRefused as exc:
        return refused(request, f"Not drained: {exc}", status=409)
    verb = "terminate" if form.terminate else "drain"
    return done(
        request,
        f"Force-drained {version.display_name}: {drained.live_sessions} live sessions are told "
        f"to {verb} at their next heartbeat.",
        board_url,
    )


_PAST = {"pause": "paused", "resume": "resumed", "advance": "advanced", "rollback": "rolled back"}


@require_http_methods(["GET", "POST"])
@manager
def rollout_action(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    """Pause, resume, advance or roll back one rollout, from the stage the page showed.

    Rollback is not tied to the stage: it always wins, and a second one finds the
    rollout closed.
    """
    spec = services.ACTIONS.get(action)
    if spec is None:
        return refused(request, f"Unknown action {action!r}.", status=404)
    rollout = get_object_or_404(
        Rollout.objects.select_related("agent", "candidate", "baseline"), pk=pk
    )
    rollout_url = reverse("dashboard:rollout", args=[rollout.pk])
    if request.method == "GET":
        query = forms.ConfirmRolloutActionForm(request.GET)
        if not query.is_valid():
            return bad_request(request, form_errors(query))
        stage = query.cleaned_data["stage"]
        live = services.live_sessions_of(rollout.candidate)
        return confirm(
            request,
            {
                "agent": rollout.agent,
                "title": spec.title.format(pk=rollout.pk),
                "summary": f"{rollout.candidate.display_name} against "
                f"{rollout.baseline.display_name}, {rollout.state} at {rollout.percent:g}%. "
                + spec.explain,
                "possible": True,
                "action_url": request.path,
                "hidden": {"stage": rollout.stage if stage is None else stage},
                "evacuate": rollout.candidate if action == "rollback" else None,
                "evacuate_live": live,
                "confirm_label": spec.label,
                "danger": spec.danger,
                "cancel_url": rollout_url,
            },
        )
    form = forms.RolloutActionForm(request.POST)
    if not form.is_valid():
        return bad_request(request, form_errors(form))
    try:
        after = engine.transition(
            rollout.pk,
            action,
            actor=request.user,
            reason=form.cleaned_data["reason"],
            evacuate=form.evacuate if action == "rollback" else False,
            expect_stage=None if action == "rollback" else form.cleaned_data["stage"],
        )
    except engine.TransitionError as exc:
        return refused(request, f"Not {_PAST[action]}: {exc} Look again before acting.", status=409)
    return done(
        request,
        f"Rollout {after.pk} {_PAST[action]}: now {after.state} at {after.percent:g}%.",
        rollout_url,
    )

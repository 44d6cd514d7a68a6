from django.urls import path

from rollouts import api, api_forecast

urlpatterns = [
    # The session routes first: they carry the harnesses' traffic, and Django tries the
    # patterns in order (these overlap no other).
    path("agents/<slug:slug>/sessions/", api.session_create, name="session-create"),
    path(
        "agents/<slug:slug>/sessions/<path:session_id>/heartbeat/",
        api.SessionHeartbeat.as_view(),
        name="session-heartbeat",
    ),
    path(
        "agents/<slug:slug>/sessions/<path:session_id>/end/",
        api.SessionEnd.as_view(),
        name="session-end",
    ),
    path(
        "agents/<slug:slug>/sessions/<path:session_id>/feedback/",
        api.SessionFeedback.as_view(),
        name="session-feedback",
    ),
    path("agents/<slug:slug>/routing/", api.RoutingView.as_view(), name="agent-routing"),
    path("agents/<slug:slug>/stable/", api.StableView.as_view(), name="agent-stable"),
    path("agents/<slug:slug>/rollback/", api.AgentRollbackView.as_view(), name="agent-rollback"),
    path("agents/<slug:slug>/rollouts/", api.AgentRollouts.as_view(), name="agent-rollouts"),
    path("agents/<slug:slug>/fleet/", api.FleetView.as_view(), name="agent-fleet"),
    path("agents/<slug:slug>/forecast/", api_forecast.ForecastView.as_view(), name="forecast"),
    path("versions/<int:pk>/drain/", api.VersionDrainView.as_view(), name="version-drain"),
    path("rollouts/<int:pk>/", api.RolloutDetail.as_view(), name="rollout-detail"),
    path(
        "rollouts/<int:pk>/evaluations/",
        api.RolloutEvaluations.as_view(),
        name="rollout-evaluations",
    ),
    *[
        path(
            f"rollouts/<int:pk>/{name}/", api.rollout_action(name).as_view(), name=f"rollout-{name}"
        )
        for name in ("pause", "resume", "advance", "rollback", "evaluate")
    ],
]

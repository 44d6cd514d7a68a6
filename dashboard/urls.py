from django.urls import path

from dashboard import views

app_name = "dashboard"

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", views.login, name="login"),
    path("logout/", views.logout, name="logout"),
    path("agents/<slug:slug>/", views.board, name="board"),
    path("agents/<slug:slug>/rollback/", views.agent_rollback, name="agent-rollback"),
    path("agents/<slug:slug>/audit/", views.audit, name="audit"),
    path("agents/<slug:slug>/forecast/", views.forecast, name="forecast"),
    path("agents/<slug:slug>/compare/", views.compare, name="compare"),
    path("versions/<int:pk>/", views.version_page, name="version"),
    path("versions/<int:pk>/diff/<int:other>/", views.version_diff, name="version-diff"),
    path("versions/<int:pk>/drain/", views.version_drain, name="version-drain"),
    path("rollouts/<int:pk>/", views.rollout_page, name="rollout"),
    path("rollouts/<int:pk>/<slug:action>/", views.rollout_action, name="rollout-action"),
]

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from controlplane.health import HealthView
from controlplane.schema import DocsView
from rollouts.exposition import metrics_view
from versions import api as versions_api

api = [
    # First, for the session routes' sake: Django tries the patterns in order, and the
    # harnesses' traffic is nearly all session starts, heartbeats and ends.
    path("", include("rollouts.urls")),
    path("agents/", versions_api.AgentList.as_view(), name="agent-list"),
    path("agents/<slug:slug>/", versions_api.AgentDetail.as_view(), name="agent-detail"),
    path(
        "agents/<slug:slug>/versions/", versions_api.AgentVersions.as_view(), name="agent-versions"
    ),
    path("versions/<int:pk>/", versions_api.VersionDetail.as_view(), name="version-detail"),
    path("versions/<int:pk>/diff/", versions_api.VersionDiff.as_view(), name="version-diff"),
    path("audit/", versions_api.AuditList.as_view(), name="audit-list"),
    path("", include("metrics.urls")),
    path("", include("events.urls")),
    path("health/", HealthView.as_view(), name="health"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", DocsView.as_view(url_name="schema"), name="docs"),
]

urlpatterns = [
    path("api/", include(api)),
    path("admin/", admin.site.urls),
    # Prometheus' default path: at the root, outside the API and its authentication.
    path("metrics", metrics_view, name="metrics"),
    path("", include("dashboard.urls")),
]

from django.urls import path

from metrics import api

urlpatterns = [
    path("agents/<slug:slug>/sources/", api.AgentSources.as_view(), name="agent-sources"),
    path("sources/<int:pk>/", api.SourceDetail.as_view(), name="source-detail"),
]

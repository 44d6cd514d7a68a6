"""Prism's URLs, plus the full session view on a path of its own, so a test can send
the same request through the fast path and through the full view."""

from django.urls import path

from controlplane.urls import urlpatterns as prism
from rollouts import api

FULL_VIEW = "/full/agents/{slug}/sessions/"

urlpatterns = [
    path("full/agents/<slug:slug>/sessions/", api.SessionCreate.as_view()),
    *prism,
]

"""Teach drf-spectacular about the token scheme so the schema documents it; the docs view."""

from django.http import HttpResponse
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.views import SpectacularSwaggerView


class TokenScheme(OpenApiAuthenticationExtension):
    target_class = "controlplane.auth.TokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": (
                "`Token <key>`; issue one with `manage.py issue_token USER --role ROLE`."
            ),
        }


class DocsView(SpectacularSwaggerView):
    """Swagger UI. OPTIONS gets a plain answer: DRF's metadata has no HTML template (500)."""

    def options(self, request, *args, **kwargs) -> HttpResponse:
        return HttpResponse(headers={"Allow": "GET, HEAD, OPTIONS"})

"""Who may see and do what on the dashboard: the same roles as the API.

Every page needs a login. Viewers and release managers read; only release managers
act. A refusal is decided here, before a view runs, so a refused action changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render, resolve_url
from django_htmx.http import HttpResponseClientRedirect, trigger_client_event

from controlplane.models import Role, role_of

READ_ROLES = frozenset({Role.VIEWER, Role.RELEASE_MANAGER})
ACT_ROLES = frozenset({Role.RELEASE_MANAGER})


def can_act(user) -> bool:
    return role_of(user) in ACT_ROLES


def forbidden(request: HttpRequest, message: str) -> HttpResponse:
    response = render(request, "dashboard/error.html", {"message": message}, status=403)
    if request.htmx:
        trigger_client_event(response, "prism:toast", {"level": "error", "message": message})
    return response


def require_role(roles: frozenset[str]) -> Callable:
    def decorator(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @wraps(view)
        def wrapped(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            if not request.user.is_authenticated:
                if request.htmx:
                    # Redirect the whole page, not the fragment, to the login page.
                    here = request.htmx.current_url_abs_path or request.get_full_path()
                    query = urlencode({"next": here})
                    return HttpResponseClientRedirect(f"{resolve_url(settings.LOGIN_URL)}?{query}")
                return redirect_to_login(request.get_full_path())
            role = role_of(request.user)
            if role is None:
                return forbidden(request, "Your account has no Prism role.")
            if role not in roles:
                label = Role(role).label.split(" (")[0].lower()
                return forbidden(request, f"The {label} role may not do this.")
            return view(request, *args, **kwargs)

        return wrapped

    return decorator


reader = require_role(READ_ROLES)
manager = require_role(ACT_ROLES)

"""Request-scoped plumbing that runs before any view: a request id for the audit trail,
JSON errors under /api/, refusing text PostgreSQL cannot store, a body size limit, and
trailing-slash redirects that keep the method."""

from __future__ import annotations

import contextvars
import json
import re
import uuid
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponsePermanentRedirect, JsonResponse
from django.middleware import common
from django.utils.http import escape_leading_slashes

# The audit log reads this so every entry written during a request carries its id,
# without threading the request through every service function.
current_request_id: contextvars.ContextVar[str] = contextvars.ContextVar(
    "current_request_id", default=""
)
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class RequestIdMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        incoming = request.headers.get("X-Request-ID", "")
        request_id = incoming if _VALID_ID.match(incoming) else uuid.uuid4().hex
        token = current_request_id.set(request_id)
        try:
            response = self.get_response(request)
        finally:
            current_request_id.reset(token)
        response["X-Request-ID"] = request_id
        return response


class BodySizeLimitMiddleware:
    """Answer 413 for bodies over ``PRISM_MAX_BODY_BYTES``.

    DRF reads the raw stream and so bypasses Django's DATA_UPLOAD_MAX_MEMORY_SIZE;
    checking Content-Length up front refuses the body before anything is read.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        length = request.META.get("CONTENT_LENGTH") or "0"
        try:
            size = int(length)
        except ValueError:
            return JsonResponse({"detail": "Invalid Content-Length header."}, status=400)
        limit = settings.PRISM_MAX_BODY_BYTES
        if size > limit:
            return JsonResponse(
                {"detail": f"Request body is {size} bytes; the limit is {limit} bytes."},
                status=413,
            )
        return self.get_response(request)


def is_api(request: HttpRequest) -> bool:
    return request.path_info.startswith("/api/")


def _is_json(response: HttpResponse) -> bool:
    content_type = response.get("Content-Type", "").split(";")[0].strip()
    return content_type == "application/json" or content_type.endswith("+json")


class ApiErrorsAsJsonMiddleware:
    """Every error under /api/ answers ``{"detail": ...}``, whoever produced it.

    DRF views already do; this covers what happens outside them: the resolver's 404, a
    405 from a view whose renderer is HTML (the docs) or YAML (the schema), a 400 for a
    bad Host header, and Django's 500 page. Headers such as ``Allow`` are kept. With
    DEBUG on, a 500 keeps Django's technical page, which is what a developer wants.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if response.status_code < 400 or not is_api(request) or _is_json(response):
            return response
        if response.status_code >= 500 and settings.DEBUG:
            return response
        body: dict[str, str] = {"detail": self._detail(request, response.status_code)}
        if response.status_code >= 500:
            body["request_id"] = current_request_id.get()
        replacement = JsonResponse(body, status=response.status_code)
        for header, value in response.items():
            if header.lower() not in ("content-type", "content-length"):
                replacement[header] = value
        return replacement

    @staticmethod
    def _detail(request: HttpRequest, status: int) -> str:
        if status == 404:
            return "Not found."
        if status == 405:
            return f'Method "{request.method}" not allowed.'
        if status >= 500:
            return (
                "Server error: the request failed on Prism's side. Quote request id "
                f"{current_request_id.get()} when you report it."
            )
        return f"{HttpResponse(status=status).reason_phrase}."


class UnstorableInputMiddleware:
    """Refuse a NUL character in the path, the query string or a cookie.

    PostgreSQL text cannot hold NUL, so any such value that reaches a query (a session
    id in the path, an audit filter, the session cookie) fails with a 500. No Prism
    identifier can contain one, so the request is refused here, once, for every route:
    404 for a path (nothing can be there), 400 for a query string or a cookie.

    Lone surrogates need no check here: Django re-quotes undecodable bytes in the path
    and replaces them in the query string. Bodies are checked where JSON is parsed
    (``controlplane.api.JSONParser``).
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        problem = self._problem(request)
        if problem is None:
            return self.get_response(request)
        status, detail = problem
        if is_api(request):
            return JsonResponse({"detail": detail}, status=status)
        return HttpResponse(detail, status=status, content_type="text/plain; charset=utf-8")

    @staticmethod
    def _problem(request: HttpRequest) -> tuple[int, str] | None:
        # The raw forms are checked first, so a clean request costs three substring
        # searches and parses nothing.
        if "\x00" in request.path:
            return 404, "Not found: no URL here contains the NUL character."
        query = request.META.get("QUERY_STRING", "")
        if "%00" in query or "\x00" in query:
            names = [
                name
                for name, values in request.GET.lists()
                if "\x00" in name or any("\x00" in value for value in values)
            ]
            where = f"parameter {names[0]!r}" if names and "\x00" not in names[0] else "string"
            return 400, f"The query {where} contains the NUL character (%00), which is refused."
        cookies = request.META.get("HTTP_COOKIE", "")
        # A quoted cookie may spell NUL as the octal escape \000, which Django decodes.
        if "\\" in cookies or "\x00" in cookies:
            for name, value in request.COOKIES.items():
                if "\x00" in value or "\x00" in name:
                    shown = name.replace("\x00", "")
                    return 400, f"The {shown} cookie contains the NUL character, which is refused."
        return None


class CommonMiddleware(common.CommonMiddleware):
    """Django's, except that under /api/ a path missing its trailing slash answers 308.

    Django answers an empty 301, and clients follow a 301 with a GET: a POST to
    ``.../end`` would silently lose its body. A 308 tells the client to repeat the same
    method with the same body at the ``Location``; the JSON body says so to a person.
    """

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        if (
            response.status_code == 404
            and is_api(request)
            and self.should_redirect_with_slash(request)
        ):
            location = escape_leading_slashes(request.get_full_path(force_append_slash=True))
            target = location.split("?", 1)[0]
            detail = (
                f"This URL ends with a slash: {target}. Repeat the request there, with the "
                "same method and body."
            )
            return HttpResponsePermanentRedirect(
                location,
                preserve_request=True,  # 308, not 301
                content=json.dumps({"detail": detail}),
                content_type="application/json",
            )
        return super().process_response(request, response)

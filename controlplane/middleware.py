"""Request-scoped plumbing: a request id for the audit trail, and a body size limit."""

from __future__ import annotations

import contextvars
import re
import uuid
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

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

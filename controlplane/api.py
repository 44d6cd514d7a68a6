"""Shared API plumbing: the state-conflict exception, the JSON parser, the error handler."""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError
from rest_framework import exceptions, parsers, status
from rest_framework.views import exception_handler as drf_exception_handler

# Configuration is never this deep; JSON that is would exhaust Python's recursion limit
# in the decoder, the fingerprint or the schema check, and answer 500 instead of 400.
MAX_JSON_DEPTH = 64


class Conflict(exceptions.APIException):
    """A request that is valid but not allowed in the current state (409)."""

    status_code = status.HTTP_409_CONFLICT
    default_detail = "This change conflicts with the current state."
    default_code = "conflict"


class JSONParser(parsers.JSONParser):
    """DRF's strict JSON parser (no NaN), refusing documents nested too deeply."""

    def parse(self, stream, media_type=None, parser_context=None):
        too_deep = exceptions.ParseError(
            f"JSON parse error - nested deeper than {MAX_JSON_DEPTH} levels."
        )
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise too_deep from None
        if _deeper_than(data, MAX_JSON_DEPTH):
            raise too_deep
        return data


def _deeper_than(value, limit: int) -> bool:
    """Whether objects and arrays nest more than ``limit`` levels (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def exception_handler(exc, context):
    """DRF's handler, plus Django validation errors as 400 and integrity races as 409."""
    if isinstance(exc, DjangoValidationError):
        detail = exc.message_dict if hasattr(exc, "error_dict") else {"detail": exc.messages}
        exc = exceptions.ValidationError(detail)
    elif isinstance(exc, IntegrityError):
        exc = Conflict("The change conflicts with a concurrent change; retry it.")
    return drf_exception_handler(exc, context)

"""Shared API plumbing: the state-conflict exception, the JSON parser, strict
serializers and fields, the error handler."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError
from rest_framework import exceptions, parsers, serializers, status
from rest_framework.settings import api_settings
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
    """DRF's strict JSON parser (no NaN), refusing what no view could use or store.

    That is: documents nested too deeply, and anywhere in the document, in keys as in
    values, text PostgreSQL cannot store (the NUL character; lone surrogates, which have
    no UTF-8 form) and numbers beyond a double (``1e400`` parses as infinity, which
    neither JSON nor jsonb can hold). Refusing them here, where every body is parsed,
    covers every endpoint, present and future, and every layer of a version tuple.
    """

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
        problems = unstorable(data)
        if problems:
            raise exceptions.ParseError(problems)
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


_MAX_PROBLEMS = 20


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return "contains the NUL character (\\u0000), which cannot be stored"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            code = ord(text[exc.start])
            return f"contains a lone surrogate (\\u{code:04x}), which is not valid Unicode"
    return None


def _pointer(path: tuple) -> str:
    """A JSON Pointer (RFC 6901) to ``path``."""
    return "".join("/" + str(step).replace("~", "~0").replace("/", "~1") for step in path)


def unstorable(data: Any) -> dict[str, list[str]]:
    """What in a parsed JSON document cannot be stored, as DRF field errors.

    1. Walk the document breadth-first, without recursion, checking every key and
       every string for NUL and lone surrogates, and every float for infinity.
    2. File each problem under the top-level field it is in, so the answer reads like
       any other field error; a bad top-level key, or a body that is not an object,
       goes under ``non_field_errors``.
    3. Stop after a bounded number of problems: the answer stays small.
    """
    errors: dict[str, list[str]] = {}
    count = 0

    def add(path: tuple, message: str) -> None:
        nonlocal count
        count += 1
        if count <= _MAX_PROBLEMS:
            # Only clean keys are walked into, so a top-level key here is a field name.
            field = path[0] if path and isinstance(data, dict) else None
            key = api_settings.NON_FIELD_ERRORS_KEY if field is None else field
            errors.setdefault(key, []).append(message)

    pending: deque[tuple[Any, tuple]] = deque([(data, ())])
    while pending and count < _MAX_PROBLEMS:
        item, path = pending.popleft()
        if isinstance(item, dict):
            for key, value in item.items():
                problem = _text_problem(key)
                if problem:
                    where = _pointer(path) or "the body"
                    add(path, f"A key in {where} {problem}.")
                else:
                    pending.append((value, (*path, key)))
        elif isinstance(item, list):
            pending.extend((value, (*path, index)) for index, value in enumerate(item))
        elif isinstance(item, str):
            problem = _text_problem(item)
            if problem:
                add(path, f"The text at {_pointer(path) or '/'} {problem}.")
        elif isinstance(item, float) and not math.isfinite(item):
            where = _pointer(path) or "/"
            add(path, f"The number at {where} is too large: only finite numbers are allowed.")
    return errors


# --- serializers ---------------------------------------------------------------------


class StrictFieldsMixin:
    """A serializer that answers 400 for fields it does not know, with every other error.

    DRF drops unknown keys silently, so a typo (``sucess``) or a field sent at the wrong
    level (an outcome without its ``outcome`` wrapper) would be lost while the answer
    says 200. Read-only fields are known, so an object sent back as it was shown is
    accepted. Unknown fields and field errors come in one answer, never in rounds.
    """

    unknown_field_message = "Unknown field."

    def unknown_field_error(self, key: str) -> str:
        """The message for one unknown key; a serializer may point to where it belongs."""
        return self.unknown_field_message

    def to_internal_value(self, data):
        if not isinstance(data, Mapping):
            return super().to_internal_value(data)  # DRF's "expected a dictionary"
        unknown = {key: [self.unknown_field_error(key)] for key in data if key not in self.fields}
        try:
            value = super().to_internal_value(data)
        except exceptions.ValidationError as exc:
            if not unknown or not isinstance(exc.detail, Mapping):
                raise
            raise exceptions.ValidationError({**exc.detail, **unknown}) from None
        if unknown:
            raise exceptions.ValidationError(unknown)
        return value


class StrictSerializer(StrictFieldsMixin, serializers.Serializer):
    pass


class StrictBooleanField(serializers.BooleanField):
    """``true`` or ``false`` only: DRF also takes "yes", 1 and "true", and a harness
    sending those has a bug worth reporting."""

    default_error_messages = {"invalid": "Must be true or false."}

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("invalid")
        return data


class StrictFloatField(serializers.FloatField):
    """A JSON number only: DRF also takes the strings "0.5" and "nan", and ``true``."""

    default_error_messages = {"invalid": "Must be a number."}

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int | float):
            self.fail("invalid")
        return super().to_internal_value(data)


def exception_handler(exc, context):
    """DRF's handler, plus Django validation errors as 400 and integrity races as 409."""
    if isinstance(exc, DjangoValidationError):
        detail = exc.message_dict if hasattr(exc, "error_dict") else {"detail": exc.messages}
        exc = exceptions.ValidationError(detail)
    elif isinstance(exc, IntegrityError):
        exc = Conflict("The change conflicts with a concurrent change; retry it.")
    return drf_exception_handler(exc, context)

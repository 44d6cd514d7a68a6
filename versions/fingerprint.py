"""Content addresses for version tuples. Pure: no Django, no I/O.

The canonical form is JSON with sorted keys, no whitespace and UTF-8, with tools
sorted by name. Integral floats are written as integers (``1.0`` → ``1``) because JSON
has one number type and a harness in another language must reach the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

LAYERS = ("code", "model", "prompts", "tools")


def _normalise(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("NaN and infinite numbers are not valid JSON")
        return int(value) if value.is_integer() else value
    if isinstance(value, dict):
        return {str(k): _normalise(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_normalise(v) for v in value]
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def canonical_layer(name: str, value: Any) -> Any:
    value = _normalise(value)
    if name == "tools":
        value = sorted(value, key=lambda tool: str(tool.get("name", "")))
    return value


def canonical_json(value: Any) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _digest(value: Any) -> str:
    return "sha256:" + hashlib.sha256(canonical_json(value)).hexdigest()


def layer_fingerprint(name: str, value: Any) -> str:
    return _digest(canonical_layer(name, value))


def fingerprint(layers: dict[str, Any]) -> str:
    """The tuple's fingerprint over the canonical JSON of all four layers."""
    return _digest({name: canonical_layer(name, layers[name]) for name in LAYERS})


def fingerprints(layers: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """The tuple fingerprint and the per-layer fingerprints, in one pass."""
    return fingerprint(layers), {name: layer_fingerprint(name, layers[name]) for name in LAYERS}

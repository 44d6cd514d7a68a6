"""Change risk between two version tuples. Pure: no Django, no I/O.

Every layer is compared in the canonical form the fingerprint uses, so a layer counts
as changed exactly when its layer fingerprint changes: ``1`` and ``1.0`` are the same
number, and reordering tools or object keys is no change at all.

Each difference becomes a *reason* that says whether it needs a rainbow rollout and
whether it breaks existing tool calls. The verdict is derived from the reasons alone,
so whatever the UI or the API shows as "why" is also what decided it.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from versions.fingerprint import LAYERS, canonical_json, canonical_layer

_MISSING = object()

# The schema keywords classified on their own; any other keyword that changes is an
# additive "schema_changed".
_SCHEMA_KEYWORDS = ("type", "enum", "description", "properties", "required", "items")

# The tool keys compared on their own; any other key that changes is a "tool_changed".
_TOOL_KEYS = ("name", "description", "input_schema")

# An exact character comparison is quadratic. Beyond this many character pairs (about
# 1,400 characters each side) texts are compared word by word, which stays fast up to
# the 256 KB layer limit and differs from the exact ratio only by a hair.
_CHAR_PAIR_BUDGET = 2_000_000
_TOKEN = re.compile(r"\S+\s*|\s+")


class VersionLike(Protocol):
    @property
    def id(self) -> Any: ...

    @property
    def layers(self) -> Mapping[str, Any]: ...


def diff_versions(before: VersionLike, after: VersionLike) -> dict[str, Any]:
    """Diff two versions; ``before`` is the one being moved away from."""
    return {"before": before.id, "after": after.id, **diff_tuples(before.layers, after.layers)}


def diff_tuples(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """Compare two four-layer tuples and classify the change.

    1. Diff each layer in detail and collect its reasons.
    2. Mark a layer changed when its canonical form differs; only changed layers
       contribute reasons.
    3. A changed layer with no specific reason (a shape the classifier does not know)
       gets a generic one that still demands a rainbow, unless it is the code layer:
       when unsure, be cautious.
    4. Derive ``rainbow_required``, ``breaking`` and ``risk`` from the reasons.
    """
    differs = {
        "code": _diff_code,
        "model": _diff_model,
        "prompts": _diff_prompts,
        "tools": _diff_tools,
    }
    layers: dict[str, Any] = {}
    reasons: list[dict[str, Any]] = []
    changed_layers: list[str] = []
    for name in LAYERS:
        old, new = _layer(before, name), _layer(after, name)
        changed = _canon_layer(name, old) != _canon_layer(name, new)
        detail, layer_reasons = differs[name](old, new)
        layers[name] = {"changed": changed, **detail}
        if not changed:
            continue
        changed_layers.append(name)
        if not layer_reasons:
            layer_reasons = [_fallback_reason(name)]
        reasons.extend(layer_reasons)

    rainbow = any(reason["rainbow"] for reason in reasons)
    breaking = any(reason["breaking"] for reason in reasons)
    if breaking:
        risk = "breaking"
    elif rainbow:
        risk = "rainbow"
    elif changed_layers:
        risk = "low"
    else:
        risk = "none"
    return {
        "changed_layers": changed_layers,
        "rainbow_required": rainbow,
        "breaking": breaking,
        "risk": risk,
        "reasons": reasons,
        "layers": layers,
    }


# --- layers ----------------------------------------------------------------------------


def _diff_code(old: Any, new: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    old_d, new_d = _as_dict(old), _as_dict(new)
    changes = _key_changes(old_d, new_d)
    detail = {"before": copy.deepcopy(old), "after": copy.deepcopy(new), "changes": changes}
    reasons = []
    if changes:
        what = _describe(old_d, new_d, changes)
        reasons.append(
            _reason(
                "code",
                "code_changed",
                f"code changed ({what}); a code-only change is deterministic and testable, "
                "so a single-stage cutover is allowed",
                rainbow=False,
            )
        )
    return detail, reasons


def _diff_model(old: Any, new: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    old_d, new_d = _as_dict(old), _as_dict(new)
    identity = {
        key: {
            "before": _or_none(old_d.get(key, _MISSING)),
            "after": _or_none(new_d.get(key, _MISSING)),
        }
        for key in ("provider", "name")
        if not _same(old_d.get(key, _MISSING), new_d.get(key, _MISSING))
    }
    old_params, new_params = _as_dict(old_d.get("params")), _as_dict(new_d.get("params"))
    params = _key_changes(old_params, new_params)
    others = _key_changes(
        {k: v for k, v in old_d.items() if k not in ("provider", "name", "params")},
        {k: v for k, v in new_d.items() if k not in ("provider", "name", "params")},
    )
    changes: dict[str, Any] = {**identity, "params": params, **others}
    detail = {"before": copy.deepcopy(old), "after": copy.deepcopy(new), "changes": changes}

    reasons = []
    if identity:
        reasons.append(
            _reason(
                "model",
                "model_changed",
                f"model changed from {_model_label(old_d)} to {_model_label(new_d)}; "
                "behaviour shifts unpredictably",
            )
        )
    if params:
        what = _describe(old_params, new_params, params)
        reasons.append(
            _reason(
                "model",
                "model_params_changed",
                f"model params changed: {what}; sampling changes behaviour",
            )
        )
    for key in others:
        what = _arrow(old_d.get(key, _MISSING), new_d.get(key, _MISSING))
        reasons.append(_reason("model", "model_changed", f"model field {key!r} changed ({what})"))
    return detail, reasons


def _diff_prompts(old: Any, new: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    old_d, new_d = _as_dict(old), _as_dict(new)
    parts: dict[str, Any] = {}
    reasons = []
    for name in sorted(old_d.keys() | new_d.keys()):
        before_text = _prompt_text(old_d[name]) if name in old_d else ""
        after_text = _prompt_text(new_d[name]) if name in new_d else ""
        if name not in old_d:
            status, ratio = "added", 0.0
        elif name not in new_d:
            status, ratio = "removed", 0.0
        elif _same(old_d[name], new_d[name]):
            status, ratio = "unchanged", 1.0
        else:
            status, ratio = "modified", _similarity(before_text, after_text)
        lines = list(
            difflib.unified_diff(
                before_text.splitlines(),
                after_text.splitlines(),
                fromfile=f"before/{name}",
                tofile=f"after/{name}",
                lineterm="",
            )
        )
        parts[name] = {"status": status, "similarity": ratio, "unified_diff": "\n".join(lines)}
        if status != "unchanged":
            # lines[:2] are the ---/+++ file headers, not content.
            plus = sum(1 for line in lines[2:] if line.startswith("+"))
            minus = sum(1 for line in lines[2:] if line.startswith("-"))
            reasons.append(
                _reason(
                    "prompts",
                    "prompt_changed",
                    f"prompt part {name!r} {status} (similarity {ratio:.4f}, "
                    f"+{plus}/-{minus} lines); prompt changes cascade",
                )
            )
    return {"parts": parts}, reasons


def _diff_tools(old: Any, new: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    old_t, new_t = _tools_by_name(old), _tools_by_name(new)
    added = sorted(new_t.keys() - old_t.keys())
    removed = sorted(old_t.keys() - new_t.keys())
    reasons = []
    for name in removed:
        reasons.append(
            _reason(
                "tools",
                "tool_removed",
                f"tool {name!r} removed; existing calls to it break",
                breaking=True,
            )
        )
    for name in added:
        reasons.append(
            _reason("tools", "tool_added", f"tool {name!r} added; new call patterns appear")
        )
    modified = []
    for name in sorted(old_t.keys() & new_t.keys()):
        changes = _tool_changes(old_t[name], new_t[name])
        if not changes:
            continue
        modified.append(
            {
                "name": name,
                "breaking": any(change["breaking"] for change in changes),
                "changes": changes,
            }
        )
        for change in changes:
            reasons.append(
                _reason(
                    "tools",
                    change["kind"],
                    f"tool {name!r}: {change['message']}",
                    breaking=change["breaking"],
                )
            )
    return {"added": added, "removed": removed, "modified": modified}, reasons


# --- tool schemas --------------------------------------------------------------------


def _tool_changes(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    changes = []
    if not _same(old.get("description", _MISSING), new.get("description", _MISSING)):
        changes.append(_change("description_changed", "description", "tool description changed"))
    changes.extend(
        _schema_changes(
            _or_empty(old.get("input_schema")), _or_empty(new.get("input_schema")), "", ""
        )
    )
    for key in sorted((old.keys() | new.keys()) - set(_TOOL_KEYS)):
        before, after = old.get(key, _MISSING), new.get(key, _MISSING)
        if not _same(before, after):
            changes.append(
                _change(
                    "tool_changed", key, f"tool field {key!r} changed ({_arrow(before, after)})"
                )
            )
    return changes


def _schema_changes(old: Any, new: Any, path: str, label: str) -> list[dict[str, Any]]:
    """Classify the changes between two JSON Schemas of tool input.

    A change is breaking when a call that the old schema accepted may be rejected by
    the new one, since models and in-flight sessions still make the old calls:

    1. ``type``, ``enum``, ``description``, ``required`` and ``properties`` are judged by
       that rule; an absent ``type`` or ``enum`` accepts anything.
    2. Recurse into properties present on both sides, and into ``items``.
    3. Any other keyword that changes is additive (``schema_changed``).
    """
    if _same(old, new):
        return []
    subject = f"parameter {label!r}" if label else "the input schema"
    if not isinstance(old, dict) or not isinstance(new, dict):
        # e.g. boolean schemas; too rare to judge finely, so report it as a change.
        return [_change("schema_changed", path, f"schema of {subject} changed")]

    changes = []
    changes.extend(_type_changes(old, new, path, subject))
    changes.extend(_enum_changes(old, new, path, subject))
    if not _same(old.get("description", _MISSING), new.get("description", _MISSING)):
        changes.append(
            _change(
                "description_changed",
                _join(path, "description"),
                f"description of {subject} changed",
            )
        )
    changes.extend(_property_changes(old, new, path, label))
    old_items, new_items = old.get("items"), new.get("items")
    if isinstance(_or_empty(old_items), dict) and isinstance(_or_empty(new_items), dict):
        changes.extend(
            _schema_changes(
                _or_empty(old_items), _or_empty(new_items), _join(path, "items"), f"{label}[]"
            )
        )
    elif not _same(old_items, new_items):
        changes.append(
            _change("schema_changed", _join(path, "items"), f"'items' of {subject} changed")
        )
    for key in sorted((old.keys() | new.keys()) - set(_SCHEMA_KEYWORDS)):
        before, after = old.get(key, _MISSING), new.get(key, _MISSING)
        if not _same(before, after):
            changes.append(
                _change(
                    "schema_changed",
                    _join(path, key),
                    f"{key!r} of {subject} changed ({_arrow(before, after)})",
                )
            )
    return changes


def _type_changes(old: dict, new: dict, path: str, subject: str) -> list[dict[str, Any]]:
    before, after = old.get("type", _MISSING), new.get("type", _MISSING)
    if _same(before, after):
        return []
    old_types, new_types = _types(before), _types(after)
    where = _join(path, "type")
    if old_types == new_types:
        return [_change("schema_changed", where, f"type list of {subject} reordered")]
    what = f"{_type_label(old_types)} to {_type_label(new_types)}"
    if _accepts_all(new_types, old_types):
        return [_change("type_widened", where, f"type of {subject} widened from {what}")]
    return [_change("type_changed", where, f"type of {subject} changed from {what}", True)]


def _enum_changes(old: dict, new: dict, path: str, subject: str) -> list[dict[str, Any]]:
    before, after = old.get("enum", _MISSING), new.get("enum", _MISSING)
    if _same(before, after):
        return []
    where = _join(path, "enum")
    if before is _MISSING and isinstance(after, list):
        return [_change("enum_introduced", where, f"{subject} now restricted to an enum", True)]
    if after is _MISSING and isinstance(before, list):
        return [_change("enum_lifted", where, f"enum of {subject} lifted")]
    if not isinstance(before, list) or not isinstance(after, list):
        return [_change("schema_changed", where, f"enum of {subject} changed")]

    old_keys, new_keys = {_canon(v) for v in before}, {_canon(v) for v in after}
    gone = [v for v in before if _canon(v) not in new_keys]
    came = [v for v in after if _canon(v) not in old_keys]
    changes = []
    if gone:
        changes.append(
            _change(
                "enum_values_removed",
                where,
                f"enum values removed from {subject}: {_values(gone)}",
                True,
            )
        )
    if came:
        changes.append(
            _change("enum_values_added", where, f"enum values added to {subject}: {_values(came)}")
        )
    if not changes:
        changes.append(_change("schema_changed", where, f"enum of {subject} reordered"))
    return changes


def _property_changes(old: dict, new: dict, path: str, label: str) -> list[dict[str, Any]]:
    # A name listed in "required" is a parameter even without a "properties" entry.
    old_props, new_props = _as_dict(old.get("properties")), _as_dict(new.get("properties"))
    old_req, new_req = _names(old.get("required")), _names(new.get("required"))
    old_params, new_params = old_props.keys() | old_req, new_props.keys() | new_req

    changes = []
    for name in sorted(old_params | new_params):
        where = _join(path, "properties", name)
        param = f"{label}.{name}" if label else name
        if name not in old_params:
            if name in new_req:
                changes.append(
                    _change(
                        "required_param_added", where, f"required parameter {param!r} added", True
                    )
                )
            else:
                changes.append(
                    _change("optional_param_added", where, f"optional parameter {param!r} added")
                )
            continue
        if name not in new_params:
            changes.append(_change("param_removed", where, f"parameter {param!r} removed", True))
            continue
        if name in new_req and name not in old_req:
            changes.append(
                _change("param_now_required", where, f"parameter {param!r} is now required", True)
            )
        elif name in old_req and name not in new_req:
            changes.append(
                _change("param_now_optional", where, f"parameter {param!r} is now optional")
            )
        changes.extend(
            _schema_changes(old_props.get(name, {}), new_props.get(name, {}), where, param)
        )
    return changes


def _types(value: Any) -> frozenset[str] | None:
    """The set of JSON types a ``type`` keyword allows; None means any type."""
    if value is _MISSING or value is None:
        return None
    if isinstance(value, list):
        return frozenset(str(v) for v in value)
    return frozenset([str(value)])


def _accepts_all(new: frozenset[str] | None, old: frozenset[str] | None) -> bool:
    if new is None:
        return True
    if old is None:
        return False
    # Every integer is a number, so integer -> number widens.
    return all(t in new or (t == "integer" and "number" in new) for t in old)


def _type_label(types: frozenset[str] | None) -> str:
    if types is None:
        return "any"
    if len(types) == 1:
        return next(iter(types))
    return "[" + ", ".join(sorted(types)) + "]"


# --- helpers ---------------------------------------------------------------------------


def _similarity(a: str, b: str) -> float:
    """difflib's SequenceMatcher ratio, rounded to 4 places."""
    if a == b:
        return 1.0
    if not a or not b:
        return 0.0
    if len(a) * len(b) <= _CHAR_PAIR_BUDGET:
        # autojunk off: on texts over 200 characters it treats every common letter as
        # junk, and near-identical prompts then score close to 0.
        return round(difflib.SequenceMatcher(None, a, b, autojunk=False).ratio(), 4)
    tokens_a, tokens_b = _TOKEN.findall(a), _TOKEN.findall(b)
    matcher = difflib.SequenceMatcher(None, tokens_a, tokens_b)
    # Weigh matched words by their length so the ratio stays one over characters.
    matched = sum(
        len(token)
        for i, _, size in matcher.get_matching_blocks()
        for token in tokens_a[i : i + size]
    )
    return round(2 * matched / (len(a) + len(b)), 4)


def _prompt_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(_canon_value(value), indent=2, sort_keys=True, ensure_ascii=False)


def _tools_by_name(tools: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(tools, list):
        return {}
    return {str(tool.get("name", "")): tool for tool in tools if isinstance(tool, dict)}


def _key_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{key: {"before", "after"}}`` for every key whose value differs; absent is None."""
    changes = {}
    for key in sorted(old.keys() | new.keys()):
        before, after = old.get(key, _MISSING), new.get(key, _MISSING)
        if not _same(before, after):
            changes[key] = {"before": _or_none(before), "after": _or_none(after)}
    return changes


def _layer(layers: Mapping[str, Any], name: str) -> Any:
    value = layers.get(name)
    if value is None:
        return [] if name == "tools" else {}
    return value


def _canon_layer(name: str, value: Any) -> bytes:
    return canonical_json(canonical_layer(name, value))


def _canon_value(value: Any) -> Any:
    # canonical_layer only treats the tools layer specially; any other name gives the
    # plain normal form (integral floats as ints) of an arbitrary JSON value.
    return canonical_layer("value", value)


def _canon(value: Any) -> bytes:
    return canonical_json(_canon_value(value))


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON: 1 == 1.0, but True != 1 (Python's == would say they are equal)."""
    if a is _MISSING or b is _MISSING:
        return a is b
    return _canon(a) == _canon(b)


def _as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _or_empty(value: Any) -> Any:
    return {} if value is None else value


def _or_none(value: Any) -> Any:
    return None if value is _MISSING else copy.deepcopy(value)


def _names(value: Any) -> set[str]:
    return {v for v in value if isinstance(v, str)} if isinstance(value, list) else set()


def _join(*parts: str) -> str:
    return ".".join(part for part in parts if part)


def _short(value: Any) -> str:
    if value is _MISSING:
        return "unset"
    text = value if isinstance(value, str) else canonical_json(_canon_value(value)).decode()
    return text if len(text) <= 60 else text[:59] + "…"


def _arrow(before: Any, after: Any) -> str:
    return f"{_short(before)} → {_short(after)}"


def _describe(old: dict[str, Any], new: dict[str, Any], keys: Iterable[str]) -> str:
    return ", ".join(
        f"{key} {_arrow(old.get(key, _MISSING), new.get(key, _MISSING))}" for key in keys
    )


def _values(values: list[Any]) -> str:
    # As JSON, so the string "1" and the number 1 read differently.
    return ", ".join(canonical_json(_canon_value(v)).decode() for v in values)


def _model_label(model: dict[str, Any]) -> str:
    return f"{_short(model.get('provider', _MISSING))}/{_short(model.get('name', _MISSING))}"


def _change(kind: str, path: str, message: str, breaking: bool = False) -> dict[str, Any]:
    return {"kind": kind, "path": path, "breaking": breaking, "message": message}


def _reason(
    layer: str, kind: str, message: str, *, rainbow: bool = True, breaking: bool = False
) -> dict[str, Any]:
    return {
        "layer": layer,
        "kind": kind,
        "breaking": breaking,
        "rainbow": rainbow,
        "message": message,
    }


def _fallback_reason(layer: str) -> dict[str, Any]:
    if layer == "code":
        return _reason(
            "code", "code_changed", "code changed; a single-stage cutover is allowed", rainbow=False
        )
    kind = {"model": "model_changed", "prompts": "prompt_changed", "tools": "tool_changed"}[layer]
    return _reason(layer, kind, f"the {layer} layer changed in a shape not classified finer")

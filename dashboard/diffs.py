"""Version tuples and diffs laid out for reading: per layer, side by side.

The verdict and its reasons come from ``versions.diff``; this module only arranges them
(and pairs prompt lines for a two-column view).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import Any

from versions.diff import diff_versions
from versions.models import Version


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def compact(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def prompt_text(value: Any) -> str:
    return value if isinstance(value, str) else pretty(value)


def version_layers(version: Version) -> dict[str, Any]:
    """The tuple laid out per layer, for the version page."""
    model = version.model if isinstance(version.model, dict) else {}
    params = model.get("params") if isinstance(model.get("params"), dict) else {}
    tools = version.tools if isinstance(version.tools, list) else []
    prompts = version.prompts if isinstance(version.prompts, dict) else {}
    return {
        "code": pretty(version.code),
        "model": {
            "provider": compact(model.get("provider")),
            "name": compact(model.get("name")),
            "params": [(key, compact(value)) for key, value in sorted(params.items())],
            "other": [
                (key, compact(value))
                for key, value in sorted(model.items())
                if key not in ("provider", "name", "params")
            ],
        },
        "prompts": [(name, prompt_text(prompts[name])) for name in sorted(prompts)],
        "tools": [
            {
                "name": compact(tool.get("name")) if isinstance(tool, dict) else compact(tool),
                "description": compact(tool.get("description")) if isinstance(tool, dict) else "",
                "schema": pretty(tool.get("input_schema")) if isinstance(tool, dict) else "",
            }
            for tool in sorted(
                tools, key=lambda t: str(t.get("name", "")) if isinstance(t, dict) else ""
            )
        ],
        "fingerprints": list(version.layer_fingerprints.items()),
    }


@dataclass(frozen=True)
class SideRow:
    """One line of a side-by-side text diff. The marks say in text what colour says."""

    kind: str  # same, changed, removed, added
    left_no: int | None
    left: str
    right_no: int | None
    right: str

    @property
    def left_mark(self) -> str:
        return {"changed": "~", "removed": "-"}.get(self.kind, "")

    @property
    def right_mark(self) -> str:
        return {"changed": "~", "added": "+"}.get(self.kind, "")


def side_by_side(before: str, after: str) -> list[SideRow]:
    """Pair the lines of two texts for a two-column diff.

    1. Match lines with difflib's SequenceMatcher (autojunk off: prompts repeat lines).
    2. Equal runs pair line for line; a replaced run pairs its lines in order and pads
       the shorter side; deletions and insertions leave the other side empty.
    """
    a, b = before.splitlines(), after.splitlines()
    rows: list[SideRow] = []
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            rows.extend(
                SideRow("same", i + 1, a[i], j + 1, b[j])
                for i, j in zip(range(i1, i2), range(j1, j2), strict=True)
            )
            continue
        left, right = list(range(i1, i2)), list(range(j1, j2))
        for k in range(max(len(left), len(right))):
            i = left[k] if k < len(left) else None
            j = right[k] if k < len(right) else None
            kind = (
                "changed"
                if i is not None and j is not None
                else "removed"
                if j is None
                else "added"
            )
            rows.append(
                SideRow(
                    kind,
                    None if i is None else i + 1,
                    "" if i is None else a[i],
                    None if j is None else j + 1,
                    "" if j is None else b[j],
                )
            )
    return rows


def diff_page(before: Version, after: Version) -> dict[str, Any]:
    """``versions.diff``'s verdict and per-layer details, laid out side by side."""
    diff = diff_versions(before, after)
    layers = diff["layers"]
    before_prompts = before.prompts if isinstance(before.prompts, dict) else {}
    after_prompts = after.prompts if isinstance(after.prompts, dict) else {}
    parts = []
    for name, part in sorted(layers["prompts"].get("parts", {}).items()):
        status = part.get("status", "")
        parts.append(
            {
                "name": name,
                "status": status,
                "similarity": part.get("similarity"),
                "similarity_text": f"{part.get('similarity', 0):.0%}",
                "rows": side_by_side(
                    prompt_text(before_prompts[name]) if name in before_prompts else "",
                    prompt_text(after_prompts[name]) if name in after_prompts else "",
                ),
            }
        )
    tools = layers["tools"]
    tool_rows = [
        {"name": name, "change": "added", "breaking": False, "changes": []}
        for name in tools.get("added", [])
    ]
    tool_rows += [
        {
            "name": name,
            "change": "removed",
            "breaking": True,
            "changes": [{"message": "existing calls to it break", "breaking": True}],
        }
        for name in tools.get("removed", [])
    ]
    tool_rows += [
        {
            "name": tool["name"],
            "change": "modified",
            "breaking": tool.get("breaking", False),
            "changes": tool.get("changes", []),
        }
        for tool in tools.get("modified", [])
    ]
    model = layers["model"]
    before_model = model.get("before") if isinstance(model.get("before"), dict) else {}
    after_model = model.get("after") if isinstance(model.get("after"), dict) else {}
    model_rows = []
    for key in ("provider", "name"):
        old, new = before_model.get(key), after_model.get(key)
        model_rows.append((key, compact(old), compact(new), old != new))
    old_params = before_model.get("params") if isinstance(before_model.get("params"), dict) else {}
    new_params = after_model.get("params") if isinstance(after_model.get("params"), dict) else {}
    changed_params = model.get("changes", {}).get("params", {})
    for key in sorted(old_params.keys() | new_params.keys()):
        model_rows.append(
            (
                f"params.{key}",
                compact(old_params.get(key)),
                compact(new_params.get(key)),
                key in changed_params,
            )
        )
    return {
        "diff": diff,
        "reasons": diff["reasons"],
        "parts": parts,
        "tool_rows": sorted(tool_rows, key=lambda row: row["name"]),
        "model_rows": model_rows,
        "model_changed": model.get("changed", False),
        "code": {
            "changed": layers["code"].get("changed", False),
            "before": pretty(layers["code"].get("before")),
            "after": pretty(layers["code"].get("after")),
        },
    }

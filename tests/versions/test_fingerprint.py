"""Content addresses for version tuples (versions/fingerprint.py). Pure unit tests: no database."""

from __future__ import annotations

import copy
import hashlib
import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from versions.fingerprint import (
    LAYERS,
    canonical_json,
    canonical_layer,
    fingerprint,
    fingerprints,
    layer_fingerprint,
)

SMALL: dict[str, Any] = {
    "code": {"ref": "abc"},
    "model": {"provider": "p", "name": "m", "params": {"temperature": 1.0, "top_p": 0.5}},
    "prompts": {"system": "Héllo"},
    "tools": [
        {"name": "b", "description": "", "input_schema": {"type": "object"}},
        {"name": "a", "input_schema": {}},
    ],
}

# Written out by hand: sorted keys, no whitespace, raw UTF-8, tools sorted by name, and
# the integral float 1.0 written as 1.
SMALL_CANONICAL = (
    '{"code":{"ref":"abc"},'
    '"model":{"name":"m","params":{"temperature":1,"top_p":0.5},"provider":"p"},'
    '"prompts":{"system":"Héllo"},'
    '"tools":[{"input_schema":{},"name":"a"},'
    '{"description":"","input_schema":{"type":"object"},"name":"b"}]}'
).encode()
SMALL_SHA256 = "e36aebcca73630348bdb4769df753165a9c9e1cd2e639707fe349ab05fbf0d4e"


def reference_fingerprint(layers: dict[str, Any]) -> str:
    """An independent statement of the canonical form: sorted keys, no whitespace, UTF-8."""

    def normal(value: Any) -> Any:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, dict):
            return {k: normal(v) for k, v in value.items()}
        if isinstance(value, list):
            return [normal(v) for v in value]
        return value

    doc = {name: normal(layers[name]) for name in ("code", "model", "prompts", "tools")}
    doc["tools"] = sorted(doc["tools"], key=lambda tool: tool["name"])
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


# --- pinned bytes --------------------------------------------------------------------


def test_it_pins_the_canonical_bytes_of_a_small_tuple():
    doc = {name: canonical_layer(name, SMALL[name]) for name in LAYERS}

    assert canonical_json(doc) == SMALL_CANONICAL
    assert "é".encode() in SMALL_CANONICAL  # UTF-8, not a \u escape


def test_it_pins_the_sha256_of_a_small_tuple():
    independent = json.dumps(
        {
            "code": {"ref": "abc"},
            "model": {"provider": "p", "name": "m", "params": {"temperature": 1, "top_p": 0.5}},
            "prompts": {"system": "Héllo"},
            "tools": [
                {"name": "a", "input_schema": {}},
                {"name": "b", "description": "", "input_schema": {"type": "object"}},
            ],
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode("utf-8")

    assert independent == SMALL_CANONICAL
    assert hashlib.sha256(independent).hexdigest() == SMALL_SHA256
    assert fingerprint(SMALL) == f"sha256:{SMALL_SHA256}"
    assert reference_fingerprint(SMALL) == f"sha256:{SMALL_SHA256}"


def test_it_pins_the_per_layer_fingerprints():
    expected = {
        "code": b'{"ref":"abc"}',
        "model": b'{"name":"m","params":{"temperature":1,"top_p":0.5},"provider":"p"}',
        "prompts": '{"system":"Héllo"}'.encode(),
        "tools": b'[{"input_schema":{},"name":"a"},'
        b'{"description":"","input_schema":{"type":"object"},"name":"b"}]',
    }

    whole, per_layer = fingerprints(SMALL)

    assert whole == f"sha256:{SMALL_SHA256}"
    assert per_layer == {
        name: "sha256:" + hashlib.sha256(raw).hexdigest() for name, raw in expected.items()
    }
    assert per_layer["tools"] == layer_fingerprint("tools", SMALL["tools"])


def test_integral_floats_canonicalise_as_ints():
    value = {"t": 1.0, "u": -0.0, "v": 2.5, "w": [3.0, {"x": 1e20}], "y": 7}

    assert canonical_json(canonical_layer("model", value)) == (
        b'{"t":1,"u":0,"v":2.5,"w":[3,{"x":100000000000000000000}],"y":7}'
    )
    with_float = copy.deepcopy(SMALL)
    with_int = copy.deepcopy(SMALL)
    with_int["model"]["params"]["temperature"] = 1
    assert fingerprint(with_float) == fingerprint(with_int)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=-(2**53), max_value=2**53))
def test_any_integral_float_canonicalises_like_its_int(n):
    assert canonical_json(canonical_layer("model", {"p": float(n)})) == (
        canonical_json(canonical_layer("model", {"p": n}))
    )


def test_booleans_stay_booleans():
    assert canonical_json(canonical_layer("model", {"p": True, "q": False})) == (
        b'{"p":true,"q":false}'
    )
    one = copy.deepcopy(SMALL)
    one["model"]["params"]["stream"] = 1
    true = copy.deepcopy(SMALL)
    true["model"]["params"]["stream"] = True
    assert fingerprint(one) != fingerprint(true)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_it_refuses_non_finite_numbers(bad):
    layers = copy.deepcopy(SMALL)
    layers["model"]["params"]["temperature"] = bad

    with pytest.raises(ValueError, match="NaN and infinite"):
        fingerprint(layers)


def test_it_refuses_values_that_are_not_json():
    layers = copy.deepcopy(SMALL)
    layers["prompts"]["system"] = {"a", "b"}

    with pytest.raises(TypeError, match="not a JSON value: set"):
        fingerprint(layers)


def test_it_has_the_documented_format():
    whole, per_layer = fingerprints(SMALL)

    for value in (whole, *per_layer.values()):
        assert value.startswith("sha256:")
        assert len(value) == len("sha256:") + 64
        int(value.removeprefix("sha256:"), 16)
    assert list(per_layer) == ["code", "model", "prompts", "tools"]


def test_keys_outside_the_four_layers_do_not_count():
    assert fingerprint({**SMALL, "label": "v2", "notes": "hello"}) == fingerprint(SMALL)


# --- properties ------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
tools = st.lists(
    st.fixed_dictionaries(
        {
            "name": st.text(min_size=1, max_size=8),
            "description": st.text(max_size=12),
            "input_schema": st.fixed_dictionaries(
                {
                    "type": st.just("object"),
                    "properties": st.dictionaries(st.text(max_size=6), json_values, max_size=3),
                }
            ),
        },
        optional={"strict": st.booleans()},
    ),
    max_size=4,
    unique_by=lambda tool: tool["name"],
)
tuples = st.fixed_dictionaries(
    {
        "code": st.fixed_dictionaries(
            {"ref": st.text(min_size=1, max_size=12)}, optional={"image": json_values}
        ),
        "model": st.fixed_dictionaries(
            {
                "provider": st.text(max_size=8),
                "name": st.text(max_size=8),
                "params": st.dictionaries(st.text(max_size=6), json_values, max_size=4),
            }
        ),
        "prompts": st.dictionaries(
            st.text(min_size=1, max_size=8), st.text(max_size=20) | json_values, max_size=4
        ),
        "tools": tools,
    }
)


def permuted(value: Any, rng: random.Random) -> Any:
    """The same JSON with every object's keys in a new order (list order is kept)."""
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {key: permuted(item, rng) for key, item in items}
    if isinstance(value, list):
        return [permuted(item, rng) for item in value]
    return value


def leaf_paths(value: Any, path: tuple = ()) -> list[tuple]:
    if isinstance(value, dict):
        return [p for key, item in value.items() for p in leaf_paths(item, (*path, key))]
    if isinstance(value, list):
        return [p for index, item in enumerate(value) for p in leaf_paths(item, (*path, index))]
    return [path]


def other_value(value: Any) -> Any:
    """A value that is certainly different as JSON (so 1 → 1.0 would not do)."""
    if isinstance(value, bool):
        return not value
    if value is None:
        return 0
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        # A non-integral float is non-zero and below 2**52, so doubling it is finite
        # and different.
        return int(value) + 1 if value.is_integer() else value * 2
    return value + "x"


def with_leaf_changed(layers: dict[str, Any], path: tuple) -> dict[str, Any]:
    changed = copy.deepcopy(layers)
    parent = changed
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = other_value(parent[path[-1]])
    return changed


@settings(max_examples=200, deadline=None)
@given(tuples, st.randoms(use_true_random=False))
def test_key_order_and_tool_order_never_change_the_fingerprint(layers, rng):
    shuffled = permuted(layers, rng)
    rng.shuffle(shuffled["tools"])

    assert fingerprint(shuffled) == fingerprint(layers)
    assert fingerprints(shuffled) == fingerprints(layers)


@settings(max_examples=200, deadline=None)
@given(tuples, st.data())
def test_changing_any_single_leaf_changes_the_fingerprint(layers, data):
    path = data.draw(st.sampled_from(leaf_paths(layers)), label="path")

    changed = with_leaf_changed(layers, path)

    assert fingerprint(changed) != fingerprint(layers)


@settings(max_examples=200, deadline=None)
@given(tuples, st.data())
def test_per_layer_fingerprints_change_only_for_the_changed_layer(layers, data):
    path = data.draw(st.sampled_from(leaf_paths(layers)), label="path")

    _, before = fingerprints(layers)
    _, after = fingerprints(with_leaf_changed(layers, path))

    assert {name for name in LAYERS if before[name] != after[name]} == {path[0]}


@settings(max_examples=200, deadline=None)
@given(tuples)
def test_it_matches_an_independent_statement_of_the_canonical_form(layers):
    assert fingerprint(layers) == reference_fingerprint(layers)

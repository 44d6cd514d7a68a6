"""The change-risk diff (versions/diff.py). Pure unit tests: no database."""

from __future__ import annotations

import copy
import difflib
import json
import random
from types import SimpleNamespace
from typing import Any

import pytest

from versions.diff import diff_tuples, diff_versions

SEARCH = {
    "name": "search",
    "description": "Search the web",
    "input_schema": {
        "type": "object",
        "properties": {
            "query": {"type": "string", "description": "What to look for"},
            "limit": {"type": "integer"},
            "mode": {"type": "string", "enum": ["fast", "deep"]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "filters": {
                "type": "object",
                "properties": {"since": {"type": "string"}},
                "required": [],
            },
        },
        "required": ["query"],
    },
}
FETCH = {
    "name": "fetch",
    "description": "Fetch a URL",
    "input_schema": {"type": "object", "properties": {"url": {"type": "string"}}},
}
BASE: dict[str, Any] = {
    "code": {"ref": "git:aaaa1111"},
    "model": {
        "provider": "anthropic",
        "name": "claude-sonnet",
        "params": {"temperature": 0.2, "max_tokens": 1024},
    },
    "prompts": {
        "system": "You are a careful research assistant.\nCite sources.\nBe brief.",
        "style": "Answer in English.",
    },
    "tools": [SEARCH, FETCH],
}


def changed(edit) -> dict[str, Any]:
    """A deep copy of BASE after ``edit`` mutates it."""
    layers = copy.deepcopy(BASE)
    edit(layers)
    return layers


def schema(layers: dict[str, Any], tool: str = "search") -> dict[str, Any]:
    return next(t for t in layers["tools"] if t["name"] == tool)["input_schema"]


def kinds(result: dict[str, Any]) -> list[str]:
    return [reason["kind"] for reason in result["reasons"]]


# risk: (rainbow_required, breaking), as the change-risk rules derive them
VERDICTS = {
    "none": (False, False),
    "low": (False, False),
    "rainbow": (True, False),
    "breaking": (True, True),
}


def assert_verdict(
    result: dict[str, Any], risk: str, changed_layers: list[str] | None = None
) -> None:
    """The diff's risk, the two flags that go with it and, when given, its changed layers."""
    rainbow, breaking = VERDICTS[risk]
    assert result["risk"] == risk
    assert result["rainbow_required"] is rainbow
    assert result["breaking"] is breaking
    if changed_layers is not None:
        assert result["changed_layers"] == changed_layers


def only_tool_change(result: dict[str, Any]) -> dict[str, Any]:
    [modified] = result["layers"]["tools"]["modified"]
    [change] = modified["changes"]
    return change


# --- identical -----------------------------------------------------------------------


def test_it_reports_nothing_for_identical_tuples():
    result = diff_tuples(BASE, copy.deepcopy(BASE))

    assert_verdict(result, "none", [])
    assert result["reasons"] == []
    assert all(layer["changed"] is False for layer in result["layers"].values())
    assert result["layers"]["tools"] == {
        "changed": False,
        "added": [],
        "removed": [],
        "modified": [],
    }
    assert result["layers"]["prompts"]["parts"]["system"] == {
        "status": "unchanged",
        "similarity": 1.0,
        "unified_diff": "",
    }


def test_key_order_and_integral_floats_are_no_change():
    after = changed(lambda t: t["model"]["params"].update(max_tokens=1024.0))
    after["model"] = dict(reversed(list(after["model"].items())))

    result = diff_tuples(BASE, after)

    assert result["risk"] == "none"
    assert result["layers"]["model"]["changes"] == {"params": {}}


def test_true_is_not_the_same_value_as_one():
    before = changed(lambda t: t["model"]["params"].update(stream=1))
    after = changed(lambda t: t["model"]["params"].update(stream=True))

    result = diff_tuples(before, after)

    assert result["layers"]["model"]["changes"]["params"] == {
        "stream": {"before": 1, "after": True}
    }


# --- the change-risk rules, row by row -----------------------------------------------------------


def test_row_model_provider_changed_requires_rainbow():
    result = diff_tuples(BASE, changed(lambda t: t["model"].update(provider="openai")))

    assert_verdict(result, "rainbow", ["model"])
    [reason] = result["reasons"]
    assert reason["layer"] == "model"
    assert reason["kind"] == "model_changed"
    assert reason["rainbow"] is True
    assert reason["breaking"] is False
    assert "anthropic/claude-sonnet" in reason["message"]
    assert "openai/claude-sonnet" in reason["message"]
    assert result["layers"]["model"]["changes"] == {
        "provider": {"before": "anthropic", "after": "openai"},
        "params": {},
    }
    assert result["layers"]["model"]["before"] == BASE["model"]
    assert result["layers"]["model"]["after"]["provider"] == "openai"


def test_row_model_name_changed_requires_rainbow():
    result = diff_tuples(BASE, changed(lambda t: t["model"].update(name="claude-opus")))

    assert_verdict(result, "rainbow")
    assert kinds(result) == ["model_changed"]
    assert result["layers"]["model"]["changes"] == {
        "name": {"before": "claude-sonnet", "after": "claude-opus"},
        "params": {},
    }


def test_row_model_params_changed_requires_rainbow_and_lists_the_params():
    def edit(t):
        t["model"]["params"]["temperature"] = 0.7
        del t["model"]["params"]["max_tokens"]
        t["model"]["params"]["top_p"] = 0.9

    result = diff_tuples(BASE, changed(edit))

    assert_verdict(result, "rainbow", ["model"])
    [reason] = result["reasons"]
    assert reason["kind"] == "model_params_changed"
    assert reason["rainbow"] is True
    for param in ("temperature", "max_tokens", "top_p"):
        assert param in reason["message"]
    assert result["layers"]["model"]["changes"] == {
        "params": {
            "max_tokens": {"before": 1024, "after": None},
            "temperature": {"before": 0.2, "after": 0.7},
            "top_p": {"before": None, "after": 0.9},
        }
    }


def test_row_prompt_part_modified_requires_rainbow_with_similarity():
    after = changed(lambda t: t["prompts"].update(style="Answer in French."))

    result = diff_tuples(BASE, after)

    expected = round(
        difflib.SequenceMatcher(None, "Answer in English.", "Answer in French.").ratio(), 4
    )
    assert expected == 0.7429
    assert_verdict(result, "rainbow", ["prompts"])
    [reason] = result["reasons"]
    assert reason["kind"] == "prompt_changed"
    assert reason["rainbow"] is True
    assert "'style'" in reason["message"]
    assert "0.7429" in reason["message"]
    part = result["layers"]["prompts"]["parts"]["style"]
    assert part["status"] == "modified"
    assert part["similarity"] == 0.7429
    assert result["layers"]["prompts"]["parts"]["system"]["status"] == "unchanged"


def test_row_prompt_part_added_requires_rainbow():
    result = diff_tuples(BASE, changed(lambda t: t["prompts"].update(persona="Be kind.")))

    assert result["rainbow_required"] is True
    assert kinds(result) == ["prompt_changed"]
    assert "0.0000" in result["reasons"][0]["message"]
    assert result["layers"]["prompts"]["parts"]["persona"] == {
        "status": "added",
        "similarity": 0.0,
        "unified_diff": "--- before/persona\n+++ after/persona\n@@ -0,0 +1 @@\n+Be kind.",
    }


def test_row_prompt_part_removed_requires_rainbow():
    result = diff_tuples(BASE, changed(lambda t: t["prompts"].pop("style")))

    assert result["rainbow_required"] is True
    assert kinds(result) == ["prompt_changed"]
    assert result["layers"]["prompts"]["parts"]["style"] == {
        "status": "removed",
        "similarity": 0.0,
        "unified_diff": "--- before/style\n+++ after/style\n@@ -1 +0,0 @@\n-Answer in English.",
    }


def test_row_tool_removed_is_breaking():
    result = diff_tuples(BASE, changed(lambda t: t["tools"].remove(FETCH)))

    assert_verdict(result, "breaking", ["tools"])
    assert result["layers"]["tools"]["removed"] == ["fetch"]
    assert result["layers"]["tools"]["added"] == []
    [reason] = result["reasons"]
    assert reason == {
        "layer": "tools",
        "kind": "tool_removed",
        "breaking": True,
        "rainbow": True,
        "message": reason["message"],
    }
    assert "'fetch'" in reason["message"]


def test_row_required_parameter_added_is_breaking():
    def edit(t):
        schema(t)["properties"]["region"] = {"type": "string"}
        schema(t)["required"].append("region")

    result = diff_tuples(BASE, changed(edit))

    assert_verdict(result, "breaking")
    assert only_tool_change(result) == {
        "kind": "required_param_added",
        "path": "properties.region",
        "breaking": True,
        "message": "required parameter 'region' added",
    }
    assert result["layers"]["tools"]["modified"][0]["name"] == "search"
    assert result["layers"]["tools"]["modified"][0]["breaking"] is True
    assert result["reasons"][0]["message"] == "tool 'search': required parameter 'region' added"


def test_row_parameter_type_changed_is_breaking():
    result = diff_tuples(
        BASE, changed(lambda t: schema(t)["properties"]["limit"].update(type="string"))
    )

    assert_verdict(result, "breaking")
    change = only_tool_change(result)
    assert change["kind"] == "type_changed"
    assert change["path"] == "properties.limit.type"
    assert change["breaking"] is True
    assert "integer" in change["message"]
    assert "string" in change["message"]


def test_row_tool_added_requires_rainbow_but_is_not_breaking():
    new_tool = {"name": "calc", "description": "Arithmetic", "input_schema": {"type": "object"}}
    result = diff_tuples(BASE, changed(lambda t: t["tools"].append(new_tool)))

    assert_verdict(result, "rainbow", ["tools"])
    assert result["layers"]["tools"]["added"] == ["calc"]
    assert kinds(result) == ["tool_added"]
    assert result["reasons"][0]["breaking"] is False


def test_row_optional_parameter_added_requires_rainbow_but_is_not_breaking():
    result = diff_tuples(
        BASE, changed(lambda t: schema(t)["properties"].update(lang={"type": "string"}))
    )

    assert_verdict(result, "rainbow")
    assert only_tool_change(result) == {
        "kind": "optional_param_added",
        "path": "properties.lang",
        "breaking": False,
        "message": "optional parameter 'lang' added",
    }


def test_row_tool_description_changed_requires_rainbow_but_is_not_breaking():
    result = diff_tuples(
        BASE, changed(lambda t: t["tools"][0].update(description="Search the whole web"))
    )

    assert_verdict(result, "rainbow")
    assert only_tool_change(result) == {
        "kind": "description_changed",
        "path": "description",
        "breaking": False,
        "message": "tool description changed",
    }
    assert result["layers"]["tools"]["modified"][0]["breaking"] is False


def test_row_parameter_description_changed_requires_rainbow_but_is_not_breaking():
    result = diff_tuples(
        BASE,
        changed(lambda t: schema(t)["properties"]["query"].update(description="Search terms")),
    )

    assert_verdict(result, "rainbow")
    change = only_tool_change(result)
    assert change["kind"] == "description_changed"
    assert change["path"] == "properties.query.description"
    assert change["breaking"] is False


def test_row_code_ref_only_allows_a_single_stage_cutover():
    result = diff_tuples(BASE, changed(lambda t: t["code"].update(ref="git:bbbb2222")))

    assert_verdict(result, "low", ["code"])
    [reason] = result["reasons"]
    assert reason["layer"] == "code"
    assert reason["kind"] == "code_changed"
    assert reason["rainbow"] is False
    assert reason["breaking"] is False
    assert "single-stage cutover" in reason["message"]
    assert "git:aaaa1111" in reason["message"]
    assert "git:bbbb2222" in reason["message"]
    assert result["layers"]["code"]["before"] == {"ref": "git:aaaa1111"}
    assert result["layers"]["code"]["after"] == {"ref": "git:bbbb2222"}


def test_row_any_code_key_only_allows_a_single_stage_cutover():
    result = diff_tuples(BASE, changed(lambda t: t["code"].update(image="sha256:ff00")))

    assert_verdict(result, "low", ["code"])
    assert kinds(result) == ["code_changed"]


def test_code_with_another_layer_requires_rainbow():
    def edit(t):
        t["code"]["ref"] = "git:bbbb2222"
        t["prompts"]["style"] = "Answer tersely."

    result = diff_tuples(BASE, changed(edit))

    assert_verdict(result, "rainbow", ["code", "prompts"])
    assert [(r["kind"], r["rainbow"]) for r in result["reasons"]] == [
        ("code_changed", False),
        ("prompt_changed", True),
    ]


def test_changed_layers_and_reasons_follow_layer_order():
    def edit(t):
        t["tools"].remove(FETCH)
        t["prompts"]["style"] = "Answer tersely."
        t["model"]["name"] = "claude-opus"
        t["code"]["ref"] = "git:bbbb2222"

    result = diff_tuples(BASE, changed(edit))

    assert result["changed_layers"] == ["code", "model", "prompts", "tools"]
    assert [r["layer"] for r in result["reasons"]] == ["code", "model", "prompts", "tools"]
    assert result["risk"] == "breaking"
    json.dumps(result)  # the API returns it as is


def test_an_unknown_model_field_still_requires_rainbow():
    result = diff_tuples(BASE, changed(lambda t: t["model"].update(region="eu")))

    assert result["rainbow_required"] is True
    assert kinds(result) == ["model_changed"]
    assert result["layers"]["model"]["changes"]["region"] == {"before": None, "after": "eu"}


# --- tool schema changes -------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "kind", "path", "breaking"),
    [
        pytest.param(
            lambda s: s["required"].append("limit"),
            "param_now_required",
            "properties.limit",
            True,
            id="optional-becomes-required",
        ),
        pytest.param(
            lambda s: s.update(required=[]),
            "param_now_optional",
            "properties.query",
            False,
            id="required-becomes-optional",
        ),
        pytest.param(
            lambda s: s["properties"].pop("limit"),
            "param_removed",
            "properties.limit",
            True,
            id="optional-param-removed",
        ),
        pytest.param(
            lambda s: s["properties"]["query"].update(type=["string", "null"]),
            "type_widened",
            "properties.query.type",
            False,
            id="type-widened-to-nullable",
        ),
        pytest.param(
            lambda s: s["properties"]["limit"].update(type="number"),
            "type_widened",
            "properties.limit.type",
            False,
            id="integer-widened-to-number",
        ),
        pytest.param(
            lambda s: s["properties"]["limit"].pop("type"),
            "type_widened",
            "properties.limit.type",
            False,
            id="type-constraint-dropped",
        ),
        pytest.param(
            lambda s: s["properties"]["filters"]["properties"].update(since={"type": "integer"}),
            "type_changed",
            "properties.filters.properties.since.type",
            True,
            id="nested-object-type-changed",
        ),
        pytest.param(
            lambda s: s["properties"]["tags"]["items"].update(type="integer"),
            "type_changed",
            "properties.tags.items.type",
            True,
            id="array-items-type-changed",
        ),
        pytest.param(
            lambda s: s["properties"]["filters"]["required"].append("since"),
            "param_now_required",
            "properties.filters.properties.since",
            True,
            id="nested-optional-becomes-required",
        ),
        pytest.param(
            lambda s: s["properties"]["filters"]["properties"].update(until={"type": "string"}),
            "optional_param_added",
            "properties.filters.properties.until",
            False,
            id="nested-optional-param-added",
        ),
        pytest.param(
            lambda s: s["properties"]["mode"].update(enum=["fast"]),
            "enum_values_removed",
            "properties.mode.enum",
            True,
            id="enum-value-removed",
        ),
        pytest.param(
            lambda s: s["properties"]["mode"].update(enum=["fast", "deep", "auto"]),
            "enum_values_added",
            "properties.mode.enum",
            False,
            id="enum-value-added",
        ),
        pytest.param(
            lambda s: s["properties"]["query"].update(enum=["a", "b"]),
            "enum_introduced",
            "properties.query.enum",
            True,
            id="enum-introduced",
        ),
        pytest.param(
            lambda s: s["properties"]["mode"].pop("enum"),
            "enum_lifted",
            "properties.mode.enum",
            False,
            id="enum-lifted",
        ),
        pytest.param(
            lambda s: s["properties"]["query"].update(maxLength=200),
            "schema_changed",
            "properties.query.maxLength",
            False,
            id="other-keyword-on-a-param",
        ),
        pytest.param(
            lambda s: s.update(additionalProperties=False),
            "schema_changed",
            "additionalProperties",
            False,
            id="other-keyword-at-the-root",
        ),
        pytest.param(
            lambda s: s["properties"]["query"].update(type=["string"]),
            "schema_changed",
            "properties.query.type",
            False,
            id="type-as-a-one-element-list",
        ),
    ],
)
def test_schema_change_classification(edit, kind, path, breaking):
    result = diff_tuples(BASE, changed(lambda t: edit(schema(t))))

    change = only_tool_change(result)
    assert (change["kind"], change["path"], change["breaking"]) == (kind, path, breaking)
    assert_verdict(result, "breaking" if breaking else "rainbow")
    assert result["layers"]["tools"]["modified"][0]["breaking"] is breaking
    assert [(r["kind"], r["breaking"], r["rainbow"]) for r in result["reasons"]] == [
        (kind, breaking, True)
    ]


def test_type_narrowing_is_breaking_and_widening_is_not():
    nullable = changed(lambda t: schema(t)["properties"]["query"].update(type=["string", "null"]))

    widened = diff_tuples(BASE, nullable)
    narrowed = diff_tuples(nullable, BASE)

    assert only_tool_change(widened)["kind"] == "type_widened"
    assert widened["breaking"] is False
    assert only_tool_change(narrowed)["kind"] == "type_changed"
    assert narrowed["breaking"] is True
    assert "[null, string]" in only_tool_change(narrowed)["message"]


def test_type_lists_are_compared_as_sets():
    before = changed(lambda t: schema(t)["properties"]["query"].update(type=["string", "null"]))
    after = changed(lambda t: schema(t)["properties"]["query"].update(type=["null", "string"]))

    change = only_tool_change(diff_tuples(before, after))

    assert change["kind"] == "schema_changed"
    assert change["breaking"] is False


def test_enum_values_removed_and_added_together_report_both():
    result = diff_tuples(
        BASE, changed(lambda t: schema(t)["properties"]["mode"].update(enum=["fast", "auto"]))
    )

    [modified] = result["layers"]["tools"]["modified"]
    assert [(c["kind"], c["breaking"]) for c in modified["changes"]] == [
        ("enum_values_removed", True),
        ("enum_values_added", False),
    ]
    assert '"deep"' in modified["changes"][0]["message"]
    assert '"auto"' in modified["changes"][1]["message"]
    assert result["breaking"] is True


def test_a_new_required_name_without_a_property_is_a_required_param_added():
    result = diff_tuples(BASE, changed(lambda t: schema(t)["required"].append("session")))

    change = only_tool_change(result)
    assert change["kind"] == "required_param_added"
    assert change["breaking"] is True


def test_a_nested_required_param_added_is_breaking():
    def edit(t):
        filters = schema(t)["properties"]["filters"]
        filters["properties"]["until"] = {"type": "string"}
        filters["required"] = ["until"]

    change = only_tool_change(diff_tuples(BASE, changed(edit)))

    assert change == {
        "kind": "required_param_added",
        "path": "properties.filters.properties.until",
        "breaking": True,
        "message": "required parameter 'filters.until' added",
    }


def test_other_tool_level_keys_are_additive_tool_changes():
    result = diff_tuples(BASE, changed(lambda t: t["tools"][0].update(strict=True)))

    assert only_tool_change(result) == {
        "kind": "tool_changed",
        "path": "strict",
        "breaking": False,
        "message": "tool field 'strict' changed (unset → true)",
    }
    assert_verdict(result, "rainbow")


def test_a_tool_lists_every_change_and_is_breaking_if_any_is():
    def edit(t):
        t["tools"][0]["description"] = "Search the whole web"
        schema(t)["properties"].pop("tags")

    result = diff_tuples(BASE, changed(edit))

    [modified] = result["layers"]["tools"]["modified"]
    assert modified["name"] == "search"
    assert modified["breaking"] is True
    assert [(c["kind"], c["breaking"]) for c in modified["changes"]] == [
        ("description_changed", False),
        ("param_removed", True),
    ]
    assert result["risk"] == "breaking"


# --- tool order ----------------------------------------------------------------------


def test_tool_order_is_no_change():
    after = changed(lambda t: t["tools"].reverse())

    result = diff_tuples(BASE, after)

    assert result["risk"] == "none"
    assert result["layers"]["tools"]["changed"] is False


def test_tool_order_does_not_change_the_diff():
    def edit(t):
        t["tools"].append({"name": "calc", "description": "", "input_schema": {"type": "object"}})
        schema(t)["properties"]["limit"]["type"] = "string"
        t["tools"].remove(FETCH)

    after = changed(edit)
    shuffled = copy.deepcopy(after)
    random.Random(7).shuffle(shuffled["tools"])
    reversed_before = changed(lambda t: t["tools"].reverse())

    assert diff_tuples(reversed_before, shuffled) == diff_tuples(BASE, after)


# --- prompts -------------------------------------------------------------------------


def test_prompt_unified_diff_content():
    after = changed(
        lambda t: t["prompts"].update(
            system="You are a careful research assistant.\nCite sources.\nBe very brief."
        )
    )

    part = diff_tuples(BASE, after)["layers"]["prompts"]["parts"]["system"]

    assert part["unified_diff"] == (
        "--- before/system\n"
        "+++ after/system\n"
        "@@ -1,3 +1,3 @@\n"
        " You are a careful research assistant.\n"
        " Cite sources.\n"
        "-Be brief.\n"
        "+Be very brief."
    )
    before_text = BASE["prompts"]["system"]
    after_text = after["prompts"]["system"]
    assert part["similarity"] == round(
        difflib.SequenceMatcher(None, before_text, after_text).ratio(), 4
    )
    assert part["similarity"] == 0.9606  # 2 * 61 / (61 + 66)


def test_similarity_ratio_is_rounded_to_four_places():
    before = changed(lambda t: t["prompts"].update(style="abc"))
    after = changed(lambda t: t["prompts"].update(style="abd"))

    part = diff_tuples(before, after)["layers"]["prompts"]["parts"]["style"]

    assert part["similarity"] == 0.6667


def test_non_string_prompt_parts_are_diffed_as_sorted_pretty_json():
    before = changed(lambda t: t["prompts"].update(few_shot=[{"q": "hi", "a": "hello"}]))
    after = changed(lambda t: t["prompts"].update(few_shot=[{"q": "hi", "a": "hello!"}]))

    part = diff_tuples(before, after)["layers"]["prompts"]["parts"]["few_shot"]

    assert part["status"] == "modified"
    assert part["unified_diff"] == (
        "--- before/few_shot\n"
        "+++ after/few_shot\n"
        "@@ -1,6 +1,6 @@\n"
        " [\n"
        "   {\n"
        '-    "a": "hello",\n'
        '+    "a": "hello!",\n'
        '     "q": "hi"\n'
        "   }\n"
        " ]"
    )
    before_text = json.dumps([{"a": "hello", "q": "hi"}], indent=2, sort_keys=True)
    after_text = json.dumps([{"a": "hello!", "q": "hi"}], indent=2, sort_keys=True)
    assert part["similarity"] == round(
        difflib.SequenceMatcher(None, before_text, after_text).ratio(), 4
    )


def test_a_long_prompt_with_a_small_edit_scores_close_to_one():
    # difflib's default autojunk would score this near 0: in a text of more than 200
    # characters it treats every common letter as junk.
    rng = random.Random(3)
    words = ["the", "agent", "should", "cite", "sources", "and", "answer", "briefly"]
    text = " ".join(rng.choice(words) for _ in range(120))
    edited = text.replace("briefly", "concisely", 1)

    before = changed(lambda t: t["prompts"].update(system=text))
    after = changed(lambda t: t["prompts"].update(system=edited))
    part = diff_tuples(before, after)["layers"]["prompts"]["parts"]["system"]

    assert 200 < len(text) < 1000
    assert part["similarity"] == round(
        difflib.SequenceMatcher(None, text, edited, autojunk=False).ratio(), 4
    )
    assert 0.98 < part["similarity"] < 1.0


def test_a_very_long_prompt_is_compared_word_by_word():
    rng = random.Random(5)
    text = "\n".join(" ".join(f"w{rng.randrange(5000)}" for _ in range(12)) for _ in range(3000))
    edited = text.replace("w42 ", "w4242 ", 1) + "\nOne more line."
    unrelated = "\n".join(
        " ".join(f"v{rng.randrange(5000)}" for _ in range(12)) for _ in range(300)
    )

    near = diff_tuples(
        changed(lambda t: t["prompts"].update(system=text)),
        changed(lambda t: t["prompts"].update(system=edited)),
    )["layers"]["prompts"]["parts"]["system"]
    far = diff_tuples(
        changed(lambda t: t["prompts"].update(system=text)),
        changed(lambda t: t["prompts"].update(system=unrelated)),
    )["layers"]["prompts"]["parts"]["system"]

    assert len(text) > 100_000
    assert 0.99 < near["similarity"] < 1.0
    assert far["similarity"] < 0.1


def test_reasons_report_the_size_of_each_prompt_edit():
    def edit(t):
        t["prompts"]["style"] = "Answer in French."
        t["prompts"]["system"] += "\nNever guess."

    result = diff_tuples(BASE, changed(edit))

    messages = {r["message"].split("'")[1]: r["message"] for r in result["reasons"]}
    assert set(messages) == {"style", "system"}
    assert "similarity 0.7429" in messages["style"]
    assert "+1/-1 lines" in messages["style"]
    assert "+1/-0 lines" in messages["system"]


# --- diff_versions -------------------------------------------------------------------


def test_diff_versions_names_both_versions():
    before = SimpleNamespace(id=3, layers=BASE)
    after = SimpleNamespace(id=9, layers=changed(lambda t: t["model"].update(name="x")))

    result = diff_versions(before, after)

    assert result["before"] == 3
    assert result["after"] == 9
    assert result["risk"] == "rainbow"
    assert {k: v for k, v in result.items() if k not in ("before", "after")} == diff_tuples(
        before.layers, after.layers
    )

"""``dashboard.diffs``: two-column text diffs and the tuple laid out per layer."""

from __future__ import annotations

from dashboard.diffs import prompt_text, side_by_side


def kinds(rows) -> list[tuple]:
    return [(r.kind, r.left_no, r.left, r.right_no, r.right) for r in rows]


def test_equal_lines_pair_up_line_for_line():
    assert kinds(side_by_side("a\nb", "a\nb")) == [
        ("same", 1, "a", 1, "a"),
        ("same", 2, "b", 2, "b"),
    ]


def test_insertions_and_deletions_leave_the_other_side_empty():
    assert kinds(side_by_side("a\nb\nc", "a\nc\nd")) == [
        ("same", 1, "a", 1, "a"),
        ("removed", 2, "b", None, ""),
        ("same", 3, "c", 2, "c"),
        ("added", None, "", 3, "d"),
    ]


def test_a_replaced_run_pairs_in_order_and_pads_the_shorter_side():
    rows = side_by_side("keep\nold one\nold two\nend", "keep\nnew one\nend")
    assert kinds(rows) == [
        ("same", 1, "keep", 1, "keep"),
        ("changed", 2, "old one", 2, "new one"),
        ("removed", 3, "old two", None, ""),
        ("same", 4, "end", 3, "end"),
    ]
    assert [(r.left_mark, r.right_mark) for r in rows] == [
        ("", ""),
        ("~", "~"),
        ("-", ""),
        ("", ""),
    ]


def test_an_added_part_is_all_additions():
    rows = side_by_side("", "one\ntwo")
    assert [r.kind for r in rows] == ["added", "added"]
    assert [r.right_mark for r in rows] == ["+", "+"]


def test_structured_prompt_parts_are_shown_as_indented_json():
    assert prompt_text({"b": 1, "a": [1, 2]}) == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}'
    assert prompt_text("plain") == "plain"

"""domain.json_text: each way Python's parser fails on hostile JSON text, as one error type."""

from __future__ import annotations

import sys

import pytest

from studiolo.domain.json_text import (
    JSONTooDeep,
    JSONTooLarge,
    NotAJSONValue,
    NotJSON,
    NumberTooLong,
    deeper_than,
    read_json_text,
)


def test_reads_json_within_bounds() -> None:
    assert read_json_text('{"a": [1, {"b": null}]}', max_bytes=100, max_depth=3) == {"a": [1, {"b": None}]}


def test_size_is_checked_in_utf8_bytes() -> None:
    with pytest.raises(JSONTooLarge) as caught:
        read_json_text('"\u00e9\u00e9"', max_bytes=5)  # 4 characters, 6 bytes
    assert (caught.value.size, caught.value.limit) == (6, 5)


def test_syntax_error_keeps_the_parser_s_position() -> None:
    with pytest.raises(NotJSON) as caught:
        read_json_text('{"a": }')
    assert (caught.value.msg, caught.value.pos) == ("Expecting value", 6)


def test_depth_past_the_bound_or_the_parser() -> None:
    with pytest.raises(JSONTooDeep) as caught:
        read_json_text('[[{"a": 1}]]', max_depth=2)
    assert caught.value.limit == 2
    read_json_text('[[{"a": 1}]]', max_depth=3)
    with pytest.raises(JSONTooDeep):
        read_json_text("[" * 100_000 + "]" * 100_000)


def test_long_integer_and_constants() -> None:
    with pytest.raises(NumberTooLong):
        read_json_text("1" * (sys.get_int_max_str_digits() + 1))
    with pytest.raises(NotAJSONValue) as caught:
        read_json_text('{"a": NaN}')
    assert caught.value.name == "NaN"
    assert read_json_text("[Infinity]", allow_constants=True) == [float("inf")]


def test_deeper_than_counts_containers_only() -> None:
    assert not deeper_than([1, 2, 3], 1)
    assert deeper_than([{}], 1)
    assert not deeper_than({"a": {"b": 1}}, 2)
    assert deeper_than({"a": {"b": 1}}, 2, depth=2)

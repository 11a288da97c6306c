"""The bounds in front of llguidance and the byte-bounded grammar cache (no model, no server)."""

from __future__ import annotations

import pytest
from llguidance.gbnf_to_lark import gbnf_to_lark as llguidance_gbnf_to_lark

from studiolo.engine.constraint_limits import (
    InvalidConstraint,
    check_grammar,
    check_schema,
)
from studiolo.engine.gbnf import gbnf_to_lark
from studiolo.engine.grammar_cache import ENTRY_OVERHEAD, ByteBoundedCache


@pytest.mark.parametrize("grammar", [
    'root ::= "a" b\nb ::= [0-9]+ | c\nc ::= "x" root',
    "root ::= item+\nitem ::= ws word ws\nword ::= [a-z]+\nws ::= [ \\t]*",
    'root ::= ("yes" | "no") "!"{1,3}\n# a comment\nunused ::= "u"',
    'root ::= a-b\na-b ::= c\nc ::= "c" | "d" c',
])
def test_gbnf_conversion_matches_llguidance(grammar: str) -> None:
    assert gbnf_to_lark(grammar).split() == llguidance_gbnf_to_lark(grammar).split()


def test_gbnf_unknown_rule_is_refused() -> None:
    with pytest.raises(Exception, match="not found"):
        gbnf_to_lark('root ::= missing')


def test_ref_depth_counts_levels_behind_refs() -> None:
    chain = {"$defs": {f"d{i}": {"type": "array", "items": {"$ref": f"#/$defs/d{i + 1}"}} for i in range(120)}}
    chain["$defs"]["d120"] = {"type": "integer"}
    with pytest.raises(InvalidConstraint, match="max_json_depth"):
        check_schema({**chain, "$ref": "#/$defs/d0"})
    check_schema({"$defs": {"a": {"type": "array", "items": {"$ref": "#/$defs/a"}}}, "$ref": "#/$defs/a"})


def test_non_local_ref_is_refused() -> None:
    with pytest.raises(InvalidConstraint, match="local"):
        check_schema({"$ref": "other.json#/x"})


def test_grammar_rules_are_counted_in_both_syntaxes() -> None:
    with pytest.raises(InvalidConstraint, match="max_grammar_rules"):
        check_grammar("".join(f'r{i} ::= "a"\n' for i in range(1001)), "gbnf")
    with pytest.raises(InvalidConstraint, match="max_grammar_rules"):
        check_grammar("".join(f'r{i}: "a"\n' for i in range(1001)), "lark")
    check_grammar('root ::= "a" | "::=" \n', "gbnf")


def test_cache_evicts_by_bytes() -> None:
    cache = ByteBoundedCache(3 * (1000 + ENTRY_OVERHEAD))
    for key in "abc":
        cache.put(key, key, 1000)
    cache.get("a")  # now the most recently used
    cache.put("d", "d", 1000)
    assert cache.get("b") is None and cache.get("a") == "a"
    assert cache.bytes == 3 * (1000 + ENTRY_OVERHEAD)
    cache.put("huge", "huge", 10**9)  # larger than the whole budget: not kept
    assert cache.get("huge") is None and len(cache) == 3
    cache.discard_where(lambda key: key in ("a", "c"))
    assert cache.bytes == 1000 + ENTRY_OVERHEAD

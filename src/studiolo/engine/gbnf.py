"""GBNF (llama.cpp's grammar syntax) to Lark, in time linear in the grammar.

llguidance's converter (``llguidance.gbnf_to_lark``) parses linearly but then finds which rules
are terminals by sweeping over every rule until nothing changes: one sweep per link of a chain
of rules, each walking every rule's body. 500 rules in 1 MB took 14.7 s, 10,000 rules over 180 s,
all in Python. Here the same parser is used, terminals are found with a worklist (each rule is
looked at once per rule that names it), and llguidance's ``resolve`` is then left only the
linking and renaming, its sweep finding nothing left to do in one pass.

A rule is a terminal (a lexeme, upper-case in Lark) when every rule its body names is one; the
root never is.
"""

from __future__ import annotations

from collections import defaultdict

from llguidance.gbnf_to_lark import (
    ASTNode,
    GrammarParser,
    RuleNode,
    RuleRefNode,
    resolve,
)


def gbnf_to_lark(text: str) -> str:
    """The GBNF grammar as Lark text for llguidance; raises Exception subclasses on bad input, as
    llguidance's converter does."""
    rules = GrammarParser().parse(text)
    _mark_terminals(rules)
    resolve(rules)
    ordered = sorted(rules.values(), key=lambda rule: rule.order)
    return "%llguidance {}\n\n" + "\n\n".join(str(rule) for rule in ordered) + "\n"


def _mark_terminals(rules: dict[str, RuleNode]) -> None:
    names = {name: _referenced(rule.alternatives) for name, rule in rules.items()}
    waiting = {name: len(refs) for name, refs in names.items()}
    named_by: dict[str, list[str]] = defaultdict(list)
    for name, refs in names.items():
        for ref in refs:
            named_by[ref].append(name)
    ready = [name for name, count in waiting.items() if count == 0 and name != "root"]
    while ready:
        name = ready.pop()
        rules[name].rule_is_terminal = True
        for user in named_by[name]:
            waiting[user] -= 1
            if waiting[user] == 0 and user != "root":
                ready.append(user)


def _referenced(node: ASTNode) -> set[str]:
    """Names of the rules a rule's body refers to (unknown ones too: they keep it non-terminal)."""
    found, stack = set(), [node]
    while stack:
        node = stack.pop()
        if isinstance(node, RuleRefNode):
            found.add(node.name)
        stack.extend(node.children())
    return found

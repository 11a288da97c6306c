"""Tool calls in gpt-oss' Harmony format: the messages its template takes, and the grammar that
keeps its calls well formed (chat/tool_formats.py HARMONY dispatches here).

A Harmony call is a message of its own: ``<|channel|>commentary to=functions.NAME
<|constrain|>json<|message|>{...arguments...}<|call|>``, and ``<|call|>`` ends the model's turn.
So a reply holds at most one call (the format is not ``parallel``), after an optional analysis
message (its reasoning). chat/reasoning_parsers.py's HarmonySplitter finds the calls as it splits
the output; no ToolCallParser reads a Harmony answer.

The prompt: gpt-oss' template renders the tools as a TypeScript namespace, each assistant message's
first call as a ``functions.NAME`` message (its reasoning before it, as ``thinking``, while no final
answer followed), and each tool result as a message from ``functions.NAME``, the name taken from
the latest call. An assistant message with several calls (from another model, or a client) is
given to it as one message per call, each call followed by its result, so that every call and every
result reaches the model under its own name (``one_call_per_message``).

The grammar (llguidance Lark), for ``tools`` whose choice is not "none":

- ``auto``: the output is free until the opening ``<|channel|>commentary to=functions.`` (a lazy
  lexeme ends the text there); then the name must be an offered tool, the header may say
  `` <|constrain|>json`` (or `` json``), and after ``<|message|>`` the arguments must validate
  against that tool's schema, ending with ``<|call|>``. The header may also name the recipient
  first, as the template writes earlier calls: ``<|start|>assistant to=functions.NAME<|channel|>
  commentary json<|message|>`` (or, at the very start of the output, after the prompt's
  ``<|start|>assistant``, `` to=functions.NAME...``).
- ``required`` or a named tool: an optional analysis message first (``<|channel|>analysis
  <|message|>``, free text up to ``<|end|>``, then ``<|start|>assistant``; bounded by max_tokens only),
  then the call.

Harmony's markers are special tokens of a real gpt-oss and ordinary text for a model that merely
carries its template (the tests' SmolLM2): each marker is its text or, where the model has one
special token for it (``marker_tokens``), that token. A text lexeme cannot hold a special token,
so under ``auto`` a model with special markers writes its other messages as pieces of text between
marker tokens, and a channel token opens a call only when the text after it starts with
``commentary to=functions.``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from studiolo.domain.chat import Tools, ToolSpec
from studiolo.engine.json_schema import closed_objects

CHANNEL, MESSAGE, END, START = "<|channel|>", "<|message|>", "<|end|>", "<|start|>"
CALL, CONSTRAIN, RETURN = "<|call|>", "<|constrain|>", "<|return|>"
MARKERS = (CHANNEL, MESSAGE, END, START, CALL, CONSTRAIN, RETURN)  # may each be one special token
CALL_CHANNEL = "commentary to=functions."  # after the channel marker: a call of the request's tools
OPENING = CHANNEL + CALL_CHANNEL
ROLE_CALL = " to=functions."  # after the role: a call whose header names its recipient first
# the JSON as the template's ``tojson`` writes it, the spacing gpt-oss saw
# lenient: a keyword llguidance does not implement (propertyNames, ...) is ignored, as llama.cpp's
# grammars ignore it: agents (Claude Code) send such tool schemas, and the client checks the arguments
_JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": ", "lenient": True}


# --- the prompt ---------------------------------------------------------------------------------


def one_call_per_message(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rendered messages with each assistant message of several calls split into one message
    per call, each followed by its result (the template renders only an assistant message's first
    call, and names a result after the latest call). The first piece keeps the message's content
    and reasoning; the results keep their order otherwise."""
    results = {m.get("tool_call_id"): m for m in messages if m.get("role") == "tool"}
    placed: set[int] = set()
    out: list[dict[str, Any]] = []
    for message in messages:
        calls = message.get("tool_calls") or []
        if message.get("role") == "tool":
            if id(message) not in placed:
                out.append(message)
            continue
        if message.get("role") != "assistant" or len(calls) < 2:
            out.append(message)
            continue
        for index, call in enumerate(calls):
            out.append({**message, "tool_calls": [call]} if index == 0
                       else {"role": "assistant", "content": "", "tool_calls": [call]})
            result = results.get(call.get("id"))
            if result is not None and id(result) not in placed:
                out.append(result)
                placed.add(id(result))
    return out


# --- the grammar --------------------------------------------------------------------------------


def harmony_grammar(tools: Tools, marker_tokens: dict[str, int] | None = None) -> str:
    """The Lark grammar a Harmony output must follow for ``tools`` (module docstring)."""
    tokens = marker_tokens or {}
    specs = tools.specs
    if tools.choice not in ("auto", "required"):  # a named choice: that tool only
        specs = tuple(spec for spec in specs if spec.name == tools.choice)

    def marker(text: str) -> str:
        return f"({_lark(text)} | <[{tokens[text]}]>)" if text in tokens else _lark(text)

    lines = ["%llguidance {}", "TEXT: /(.|\\n)*/"]
    for index, spec in enumerate(specs):
        lines.append(f"args{index}: %json {json.dumps(_arguments_schema(spec), ensure_ascii=False)}")
    content_type = f'(" " {marker(CONSTRAIN)}? "json")? {marker(MESSAGE)}'
    for rule, tail in (("call", "tail"), ("rcall", "rtail")):  # after the channel's opening, the role's
        named = " | ".join(f"{_lark(spec.name)} {tail} args{index}" for index, spec in enumerate(specs))
        lines.append(f"{rule}: ({named}) {marker(CALL)}")
    lines += [f"tail: {content_type}", f'rtail: {marker(CHANNEL)} "commentary" {content_type}']
    opening = f"{marker(CHANNEL)} {_lark(CALL_CHANNEL)} call | {_lark(ROLE_CALL)} rcall"
    if tools.choice != "auto":
        analysis = f'{marker(CHANNEL)} "analysis" {marker(MESSAGE)} thought {marker(START)} "assistant"'
        ended = f"TEXT <[{tokens[END]}]> | " if END in tokens else ""
        lines += [f"start: ({analysis})? ({opening})", f"thought: {ended}thought_text",
                  f"thought_text[lazy]: TEXT {_lark(END)}"]
        return "\n".join(lines) + "\n"
    lines += [f"start: PROSE | head call | rhead rcall | {_lark(ROLE_CALL)} rcall" + _special_auto(tokens),
              # no text before a call may itself start as a call (PROSE): the call would go unchecked
              f"head[lazy]: PROSE {_lark(OPENING)}", f"rhead[lazy]: PROSE {_lark(START + 'assistant' + ROLE_CALL)}",
              f"PROSE: /(.|\\n)*/ & ~/{re.escape(ROLE_CALL)}(.|\\n)*/"]
    if CHANNEL in tokens:
        lines += _special_free(tokens)
    return "\n".join(lines) + "\n"


def _special_auto(tokens: dict[str, int]) -> str:
    """``auto`` on a model whose channel marker is a special token: messages made of text and marker
    tokens, then maybe a call opened by the channel token (or by the start token, the role's)."""
    if CHANNEL not in tokens:
        return ""
    role = f" | free? <[{tokens[START]}]> {_lark('assistant' + ROLE_CALL)} rcall" if START in tokens else ""
    return f" | free | free? <[{tokens[CHANNEL]}]> {_lark(CALL_CHANNEL)} call{role}"


def _special_free(tokens: dict[str, int]) -> list[str]:
    """Text and marker tokens with no call in them. Two pieces of text never follow each other (a
    text split in two could hide a call's opening): each comes after a marker token, and after the
    channel token it must not open a call's channel, after the start token not name a function
    recipient; the output's first text must not start as a call either."""
    tagged = [f"<[{tokens[CHANNEL]}]> NOT_CALL?"]
    tagged += [f"<[{tokens[m]}]> PIECE?" for m in (MESSAGE, END, CONSTRAIN, RETURN) if m in tokens]
    if START in tokens:
        tagged.append(f"<[{tokens[START]}]> NOT_ROLE_CALL?")
    return ["free: PROSE tagged* | tagged+", f"tagged: {' | '.join(tagged)}", "PIECE: /(.|\\n)+/",
            f"NOT_CALL: /(.|\\n)+/ & ~/{re.escape(CALL_CHANNEL)}(.|\\n)*/",
            f"NOT_ROLE_CALL: /(.|\\n)+/ & ~/{re.escape('assistant' + ROLE_CALL)}(.|\\n)*/"]


def _arguments_schema(spec: ToolSpec) -> dict[str, Any]:
    """The tool's parameters as the schema of its call's message (a resource of its own: its
    references resolve against it), the JSON spaced as the template writes it."""
    parameters = spec.parameters if spec.parameters is not None else {"type": "object", "properties": {}}
    return {**closed_objects(parameters), "x-guidance": _JSON_STYLE}


def _lark(text: str) -> str:
    return json.dumps(text)

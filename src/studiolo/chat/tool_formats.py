"""Tool-call formats per model family: how tools reach the prompt, how calls look in the output,
and the grammar that keeps a model's calls well formed.

The format is chosen from the chat template, as LM Studio does:

- Hermes/Qwen: the template knows ``<tool_call>``; a call is ``<tool_call>\\n{"name": ..., "arguments":
  {...}}\\n</tool_call>``, several in a row.
- Mistral: the template knows ``[TOOL_CALLS]``; the calls are one JSON array after it. Its templates
  require 9-character call ids, so other ids are shortened (consistently) for them.
- Llama 3.x: the template speaks ``<|start_header_id|>`` and takes ``tools``; a call is the whole reply,
  ``{"name": ..., "parameters": {...}}``, one at a time (the templates refuse several).
- Harmony (gpt-oss): the template speaks ``<|channel|>``; a call is a message to ``functions.NAME``
  in the commentary channel, one per reply, found by chat/reasoning_parsers.py's HarmonySplitter
  (chat/harmony_tools.py: its messages and its grammar).
- Generic, for every other template (LM Studio's default): the tools are described in the system
  prompt, a call is ``[TOOL_REQUEST]{"name": ..., "arguments": {...}}[END_TOOL_REQUEST]``; tool results
  go back as user messages and earlier calls are written out in that form.

Native templates get the tools and the messages' ``tool_calls`` (arguments as objects, as the
templates expect) and render them their own way.

The grammar (llguidance Lark) lets ``auto`` write free text, and constrains a call from the moment
its opening appears (a lazy lexeme ends the text there; an opening that is one special token of
the model, Qwen2.5's ``<tool_call>``, may also come as that token); ``required`` and a named tool
start with a call. Hermes/Qwen under ``auto`` also takes one call without the tags, a bare JSON
object or one in a ```json fence, as small Qwen models write it (docs/API.md, "Tool calling").
Each call's JSON must name one of the offered tools and give arguments that validate against its
schema. The JSON is written as the templates' ``tojson`` writes it (``", "`` and ``": "``), the
spacing the models saw in training.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

from studiolo.chat.harmony_tools import CALL as HARMONY_CALL
from studiolo.chat.harmony_tools import MARKERS as HARMONY_MARKERS
from studiolo.chat.harmony_tools import OPENING as HARMONY_OPENING
from studiolo.chat.harmony_tools import harmony_grammar
from studiolo.chat.tool_parser import FENCE_CLOSE, FENCE_OPEN, CallSyntax
from studiolo.domain.chat import ChatMessage, Tools, ToolSpec
from studiolo.engine.json_schema import closed_objects


@dataclass(frozen=True)
class ToolFormat:
    name: str
    syntax: CallSyntax
    native: bool  # the chat template renders tools, calls and results itself
    parallel: bool  # several calls fit in one reply
    call_prefix: str = ""  # between the opening and the JSON
    call_suffix: str = ""  # between the JSON and the closing
    between: str = ""  # between two calls
    # in "auto", a reply may also be one call without the markers (a bare JSON object, or one in a
    # ```json fence), the grammar keeping it a valid call: how Qwen2.5 answers without its tags
    untagged: bool = False
    # the texts that may each be one special token of the model (default: the opening and closing)
    special_markers: tuple[str, ...] = ()

    @property
    def markers(self) -> tuple[str, ...]:
        return self.special_markers or tuple(m for m in (self.syntax.open, self.syntax.close) if m)


HERMES = ToolFormat("hermes", CallSyntax("<tool_call>", "</tool_call>"), native=True, parallel=True,
                    call_prefix="\n", call_suffix="\n", between="\n", untagged=True)
MISTRAL = ToolFormat("mistral", CallSyntax("[TOOL_CALLS]", array=True), native=True, parallel=True, between=", ")
LLAMA3 = ToolFormat("llama3", CallSyntax("<|python_tag|>", arguments_key="parameters", bare_json=True, separator=";"),
                    native=True, parallel=False)
# gpt-oss (Harmony): a call is a message to ``functions.NAME`` in the commentary channel, found by
# chat/reasoning_parsers.py's HarmonySplitter, not by ToolCallParser; its grammar is
# chat/harmony_tools.py's. ``<|call|>`` ends the turn: one call per reply.
HARMONY = ToolFormat("harmony", CallSyntax(HARMONY_OPENING, HARMONY_CALL), native=True, parallel=False,
                     special_markers=HARMONY_MARKERS)
GENERIC = ToolFormat("generic", CallSyntax("[TOOL_REQUEST]", "[END_TOOL_REQUEST]"), native=False, parallel=True,
                     between="\n")


def format_for(template_source: str) -> ToolFormat:
    if "<|channel|>" in template_source and "<|start|>" in template_source:
        return HARMONY
    if "<tool_call>" in template_source:
        return HERMES
    if "[TOOL_CALLS]" in template_source:
        return MISTRAL
    if "<|start_header_id|>" in template_source and "tools" in template_source:
        return LLAMA3
    return GENERIC


# --- the prompt ------------------------------------------------------------------------------


def template_messages(fmt: ToolFormat, messages: list[ChatMessage], tools: Tools | None) -> tuple[list[dict], dict]:
    """The messages as the chat template takes them, and the extra template variables."""
    offered = tools.specs if tools is not None and tools.active else ()
    if fmt.native:
        rename = _short_id if fmt is MISTRAL else (lambda call_id: call_id)
        rendered = [_native_message(m, rename) for m in messages]
        # gpt-oss' template writes each tool's description as a comment and fails on a missing one
        described = fmt is HARMONY
        return rendered, ({"tools": [_tool_object(spec, described) for spec in offered]} if offered else {})
    rendered = [_generic_message(m, fmt) for m in messages]
    if offered and tools is not None:
        _add_system_text(rendered, generic_system_prompt(offered, parallel=several_calls(tools)))
    return rendered, {}


def several_calls(tools: Tools) -> bool:
    """Whether one reply may hold several calls: ``parallel_tool_calls``, unless ``tool_choice``
    names a tool, which asks for exactly one call of it (as OpenAI's named choice does); with
    parallel calls allowed, a small model told to call one function repeats that call."""
    return tools.parallel and tools.choice in ("auto", "required")


def output_syntax(fmt: ToolFormat, tools: Tools) -> CallSyntax:
    """How calls look in an output that follows ``tool_grammar(fmt, tools)``."""
    auto = tools.choice == "auto"
    return replace(fmt.syntax, forced=not auto, untagged=fmt.untagged and auto)


def _tool_object(spec: ToolSpec, described: bool = False) -> dict[str, Any]:
    """OpenAI's tool object; ``described``: with a description even when the tool has none ("")."""
    function: dict[str, Any] = {"name": spec.name}
    if spec.description or described:
        function["description"] = spec.description or ""
    function["parameters"] = spec.parameters if spec.parameters is not None else {"type": "object", "properties": {}}
    return {"type": "function", "function": function}


def _arguments_object(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except json.JSONDecodeError:
        return arguments  # checked at the API; kept as text if it ever gets here


def _native_message(message: ChatMessage, rename) -> dict[str, Any]:
    rendered: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        rendered["tool_calls"] = [
            {"id": rename(call.id), "type": "function",
             "function": {"name": call.name, "arguments": _arguments_object(call.arguments)}}
            for call in message.tool_calls
        ]
    if message.role == "tool":
        rendered["tool_call_id"] = rename(message.tool_call_id or "")
        if message.name:
            rendered["name"] = message.name
    return rendered


_ID_ALPHABET = string.ascii_letters + string.digits


def _short_id(call_id: str) -> str:
    """A 9-character alphanumeric id, as Mistral's templates demand; stable for a given id."""
    if len(call_id) == 9 and call_id.isalnum():
        return call_id
    digest = int.from_bytes(hashlib.sha256(call_id.encode()).digest()[:8], "big")
    return "".join(_ID_ALPHABET[(digest >> (6 * i)) % len(_ID_ALPHABET)] for i in range(9))


def _generic_message(message: ChatMessage, fmt: ToolFormat) -> dict[str, Any]:
    if message.role == "tool":
        name = f" {message.name}" if message.name else ""
        return {"role": "user", "content": f"Result of the tool call{name} (id {message.tool_call_id}):\n"
                                           f"{message.content or ''}"}
    content = message.content or ""
    if message.tool_calls:
        calls = fmt.between.join(call_text(fmt, call.name, call.arguments) for call in message.tool_calls)
        content = f"{content}\n{calls}" if content else calls
    return {"role": message.role, "content": content}


def call_text(fmt: ToolFormat, name: str, arguments: str) -> str:
    """A call, alone in a reply, as the format writes it in the output."""
    body = json.dumps({"name": name, fmt.syntax.arguments_key: _arguments_object(arguments)}, ensure_ascii=False)
    if fmt.syntax.bare_json:
        return body
    if fmt.syntax.array:
        return f"{fmt.syntax.open}[{body}]"
    return f"{fmt.syntax.open}{fmt.call_prefix}{body}{fmt.call_suffix}{fmt.syntax.close}"


def _add_system_text(messages: list[dict], text: str) -> None:
    if messages and messages[0]["role"] == "system":
        first = messages[0]["content"]
        messages[0] = {"role": "system", "content": f"{first}\n\n{text}" if first else text}
    else:
        messages.insert(0, {"role": "system", "content": text})


def generic_system_prompt(specs: tuple[ToolSpec, ...], *, parallel: bool) -> str:
    listing = "\n".join(json.dumps(_tool_object(spec)["function"], ensure_ascii=False) for spec in specs)
    example = call_text(GENERIC, "tool_name", '{"argument": "value"}')
    several = " You may make several calls, one after the other." if parallel else ""
    return (
        "You can call the following tools (functions) to help with the request. Each is described in JSON "
        f"Schema:\n{listing}\n\nTo call a tool, reply with a tool request in exactly this form:\n{example}\n"
        f"Write the arguments as JSON that follows the tool's schema.{several} The results will come back "
        "in the next message. Answer directly, without a tool request, when no tool is needed."
    )


# --- the grammar -----------------------------------------------------------------------------

# lenient: a keyword llguidance does not implement (propertyNames, ...) is ignored, as llama.cpp's
# grammars ignore it: agents (Claude Code) send such tool schemas, and the client checks the arguments
_JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": ", "lenient": True}


def call_schema(fmt: ToolFormat, specs: tuple[ToolSpec, ...]) -> dict[str, Any]:
    """A JSON schema for one call of any of ``specs``: its name, and arguments valid for that tool.

    Each tool's parameters are a schema resource of their own (a ``$id``), so that their references
    (``#``, ``#/properties/a``, ``#/$defs/x``) resolve against them, as they do when the schema is
    read alone, not against the call around them. A tool keeps its own ``$id`` (its references may
    name it) unless another tool has it too: two resources of one id would resolve to either.
    """
    ids = Counter(_own_id(spec.parameters) for spec in specs)
    options = []
    for index, spec in enumerate(specs):
        parameters = spec.parameters if spec.parameters is not None else {"type": "object", "properties": {}}
        own = _own_id(parameters)
        if own is None or ids[own] > 1:
            parameters = {**parameters, "$id": f"urn:studiolo:tool:{index}"}
        properties = {"name": {"const": spec.name}, fmt.syntax.arguments_key: parameters}
        if fmt is MISTRAL:  # its templates write each call's id after the arguments; models may too
            properties["id"] = {"type": "string", "pattern": "^[A-Za-z0-9]{9}$"}
        options.append({"type": "object", "properties": properties, "required": ["name", fmt.syntax.arguments_key]})
    schema: dict[str, Any] = options[0] if len(options) == 1 else {"anyOf": options}
    return {**closed_objects(schema), "x-guidance": _JSON_STYLE}


def _own_id(parameters: Any) -> str | None:
    identifier = parameters.get("$id") if isinstance(parameters, dict) else None
    return identifier if isinstance(identifier, str) else None


def tool_grammar(fmt: ToolFormat, tools: Tools, marker_tokens: dict[str, int] | None = None) -> str:
    """The Lark grammar the output must follow for ``tools`` (whose choice is not "none").

    ``marker_tokens`` maps the format's markers (its opening and closing) to the model's token for
    each, when the model has one special token for it (Qwen2.5's ``<tool_call>``, 151657). Either
    form is a marker then: the token, and the text spelled in ordinary tokens. Qwen2.5-Coder-0.5B
    writes the text (it gives the token a logprob of -24); a grammar of the text alone would not
    do either, since llguidance forces it by tokenizing it, which gives the token back (llama.cpp
    always parses user-defined tokens) and then refuses it as not being that text.
    """
    if fmt is HARMONY:
        return harmony_grammar(tools, marker_tokens)
    specs = tools.specs
    if tools.choice not in ("auto", "required"):  # a named choice: that tool only
        specs = tuple(spec for spec in specs if spec.name == tools.choice)
    several = several_calls(tools) and fmt.parallel
    syntax = fmt.syntax
    tokens = marker_tokens or {}
    lines = ["%llguidance {}", f"call: %json {json.dumps(call_schema(fmt, specs), ensure_ascii=False)}",
             "TEXT: /(.|\\n)*/"]
    if syntax.bare_json:  # Llama 3: a call is the whole reply; text must not start like one
        lines.append("start: call" if tools.choice != "auto" else "start: PROSE | call")
        lines.append("PROSE: /([^{ \\t\\n](.|\\n)*)?/")
        return "\n".join(lines) + "\n"
    lines.append(f"open: {_marker(syntax.open, tokens)}")
    if syntax.close:
        lines.append(f"close: {_marker(syntax.close, tokens)}")
    if syntax.array:
        calls = '"[" call (' + _lark_string(fmt.between) + ' call)* "]"' if several else '"[" call "]"'
    else:
        item = " ".join(p for p in (_lark_string(fmt.call_prefix), "call", _lark_string(fmt.call_suffix),
                                    "close" if syntax.close else "") if p)
        # After each call, some whitespace, then another call or the end: the line break models
        # write after a closing must not commit them to another call (it did, and they repeated it).
        calls = f"{item} (GAP? open {item})* GAP?" if several else item
        lines += [f"GAP: /{_GAP}/"] if several else []
    if tools.choice != "auto":
        lines.append(f"start: open {calls}")
    else:
        lines += _auto_start(fmt, calls, tokens.get(syntax.open))
    return "\n".join(lines) + "\n"


def _auto_start(fmt: ToolFormat, calls: str, open_token: int | None) -> list[str]:
    """``auto``: text, or calls after some text. The opening's text ends a lazy lexeme of text; the
    opening's special token (``open_token``) ends text by itself, since text cannot hold it. With
    ``untagged`` the reply may also be one bare or fenced call, and text must not start like one
    (nor hold the opening: a call there is a call, under the grammar)."""
    opening = _lark_string(fmt.syntax.open)
    if not fmt.untagged:
        special = f" | TEXT? <[{open_token}]> {calls}" if open_token is not None else ""
        return [f"start: TEXT | head {calls}{special}", f"head[lazy]: TEXT {opening}"]
    special = f" | PROSE? <[{open_token}]> {calls}" if open_token is not None else ""
    fence = f"{_lark_string(FENCE_OPEN + chr(10))} call {_lark_string(chr(10) + FENCE_CLOSE)}"
    like_a_call = f"~/[ \\t\\n]*(\\{{|{re.escape(FENCE_OPEN)})(.|\\n)*/"
    return [f"start: PROSE | head {calls}{special} | call | {fence}", f"head[lazy]: LEAD {opening}",
            f"LEAD: /(.|\\n)*/ & {like_a_call}",
            f"PROSE: /(.|\\n)+/ & {like_a_call} & ~/(.|\\n)*{re.escape(fmt.syntax.open)}(.|\\n)*/"]


def _marker(text: str, tokens: dict[str, int]) -> str:
    """A marker in the grammar: its text, or the model's special token for it."""
    return f"{_lark_string(text)} | <[{tokens[text]}]>" if text in tokens else _lark_string(text)


_GAP = "[ \\t\\r\\n]{1,4}"  # between and after calls; bounded, so it cannot run until max_tokens


def _lark_string(text: str) -> str:
    return json.dumps(text) if text else ""

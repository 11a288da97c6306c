"""Finding tool calls in a model's output as it streams, for every tool-call format.

One parser serves streaming and non-streaming answers alike: it is fed the output text piece by
piece and returns what each piece completed: plain text (the message's content), the start of a
call (its function name), and fragments of the call's arguments, the raw JSON text the model
writes. Joined, the fragments are exactly the arguments of the non-streamed answer.

Formats differ only in how calls are marked (``CallSyntax``): an opening and a closing text around
each call's JSON object (Hermes/Qwen ``<tool_call>``, LM Studio's ``[TOOL_REQUEST]``), an opening
text followed by a JSON array of calls (Mistral ``[TOOL_CALLS]``), or a JSON object as the whole
reply (Llama 3). Text that might be the start of an opening is held back until it is clear;
whitespace between and around calls is not content.

Output under a tool constraint always parses. Should a call be malformed anyway (no constraint
was active), its text is given back as content, as LM Studio does, unless its name was already
reported; then the call stays, with the arguments it got. Under the constraint (``constrained``),
a call cut short (``max_tokens``, a stop string) is never content: before its name is known it
is dropped, as is the start of an opening where only a call may come (at the start of a forced
choice's output, after a call). Nothing is held back for that: arguments still stream as written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class CallSyntax:
    open: str  # the text that starts calls
    close: str = ""  # the text that ends each call ("": none)
    arguments_key: str = "arguments"  # Llama 3 says "parameters"
    array: bool = False  # after ``open``, a JSON array of calls (Mistral)
    bare_json: bool = False  # a reply starting with "{" is a call without ``open`` (Llama 3)
    separator: str = ""  # between calls of a bare reply (Llama 3: ";")
    forced: bool = False  # the output starts with a call (tool_choice "required" or a named tool)
    # the reply may be one call without the markers, as small models write it when they forget
    # them: a bare JSON object, or one in a ```json fence (Hermes/Qwen under "auto": docs/API.md)
    untagged: bool = False


FENCE_OPEN, FENCE_CLOSE = "```json", "```"  # an untagged call's fence


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class CallStart:
    call: int
    name: str


@dataclass(frozen=True)
class CallArguments:
    call: int
    text: str


ParsedEvent = Text | CallStart | CallArguments


class _ObjectScanner:
    """Reads one JSON object character by character; picks out ``name`` and the arguments' text."""

    def __init__(self, arguments_key: str):
        self.arguments_key = arguments_key
        self.depth = 0
        self.in_string = self.escaped = False
        self.key: str | None = None  # the depth-1 key being read or whose value is being read
        self.reading_key = False
        self.expect_value = False  # after a depth-1 colon, before the value's first character
        self.raw = ""  # the current depth-1 string (a key or the name), as written
        self.in_arguments = False
        self.arguments_container = False  # the arguments are an object or array (not a scalar)
        self.name: str | None = None
        self.done = False

    def feed(self, char: str) -> tuple[str, bool]:
        """Take one character; return (the character if it belongs to the arguments, ok)."""
        if self.depth == 0:
            return "", self._outside_object(char)
        self._end_scalar_arguments(char)
        self._start_value(char)
        argument = char if self.in_arguments else ""
        if self.in_string:
            self._string_char(char)
            if not self.in_string and self.in_arguments and not self.arguments_container and self.depth == 1:
                self.in_arguments = False  # a string value ended
        else:
            self._structure_char(char)
        return argument, True

    def _outside_object(self, char: str) -> bool:
        """Before the object (or after it): whitespace, or its opening brace; anything else is not a call."""
        if char.isspace():
            return True
        if char != "{" or self.done:
            return False
        self.depth = 1
        return True

    def _end_scalar_arguments(self, char: str) -> None:
        """A number, true, false or null as the arguments ends at the first character past it."""
        if self.in_arguments and not self.arguments_container and not self.in_string and self.depth == 1 \
                and (char in ",}" or char.isspace()):
            self.in_arguments = False

    def _start_value(self, char: str) -> None:
        """The first character of a depth-1 value: the arguments begin there if its key is theirs."""
        if self.expect_value and not char.isspace():
            self.expect_value = False
            if self.key == self.arguments_key:
                self.in_arguments, self.arguments_container = True, char in "{["

    def _structure_char(self, char: str) -> None:
        """A character outside strings: quotes, brackets, and depth-1 colons and commas."""
        if char == '"':
            self.in_string = True
            if self.depth == 1 and not self.in_arguments:
                self.raw, self.reading_key = char, self.key is None
        elif char in "{[":
            self.depth += 1
        elif char in "}]":
            self.depth -= 1
            if self.in_arguments and self.depth == 1:
                self.in_arguments = False  # the arguments' object or array closed
            self.done = self.depth == 0
        elif self.depth == 1 and char == ":":
            self.expect_value = True
        elif self.depth == 1 and char == ",":
            self.key = None

    def _string_char(self, char: str) -> None:
        if self.depth == 1 and not self.in_arguments:
            self.raw += char
        if self.escaped:
            self.escaped = False
        elif char == "\\":
            self.escaped = True
        elif char == '"':
            self.in_string = False
            if self.depth == 1 and not self.in_arguments:
                value = json.loads(self.raw)
                if self.reading_key:
                    self.key, self.reading_key = value, False
                elif self.key == "name":
                    self.name = value


@dataclass
class ToolCallParser:
    syntax: CallSyntax
    constrained: bool = False  # the output follows the tool grammar (chat/tool_formats.py)
    calls: int = 0  # calls started so far
    _state: str = "text"  # text | open | body | between | close
    _pending: str = ""  # text held back (maybe the start of an opening, or whitespace)
    _raw: str = ""  # the current call's text, given back as content if it turns out malformed
    _scanner: _ObjectScanner | None = None
    _early_arguments: list[str] = field(default_factory=list)  # before the name was known
    _said_anything: bool = False  # content or a call has been reported
    _separated: bool = False  # a separator came after the last call: another must follow
    _after_call: bool = False  # no content since the last call: leading whitespace is not content
    _closing: str = ""  # what ends the current call: the syntax's closing, or an untagged call's fence

    def feed(self, text: str) -> list[ParsedEvent]:
        events: list[ParsedEvent] = []
        for char in text:
            self._step(char, events)
        return merged(events)

    def finish(self) -> list[ParsedEvent]:
        """The end of the output: held-back text that opened nothing is content after all, unless
        the grammar allowed only a call there; a call cut short before its name is content only
        without the grammar (then it may have been text all along)."""
        events: list[ParsedEvent] = []
        only_calls = self.constrained and (self.syntax.forced or self.calls > 0)
        if self._state == "text" and self._pending and not self._pending.isspace() and not only_calls:
            self._text(self._pending, events)
        elif self._state != "text" and (self._scanner is None or self._scanner.name is None) and not self.constrained:
            self._text(self._raw, events)
        self._pending = ""
        return merged(events)

    # --- states ------------------------------------------------------------------------

    def _step(self, char: str, events: list[ParsedEvent]) -> None:
        handler = {"text": self._in_text, "open": self._after_open, "body": self._in_body,
                   "between": self._between_calls, "close": self._in_close}[self._state]
        handler(char, events)

    def _in_text(self, char: str, events: list[ParsedEvent]) -> None:
        pending = self._pending + char
        syntax = self.syntax
        at_start = not self._said_anything and self.calls == 0
        bare = syntax.bare_json or syntax.untagged
        if bare and at_start and pending.isspace():
            self._pending = pending
            return
        if bare and at_start and pending.lstrip().startswith("{"):
            self._pending, self._closing = "", ""
            self._start_call(pending.lstrip(), events)
            return
        if syntax.untagged and at_start and self._fence(pending):
            return
        if pending.endswith(syntax.open) and syntax.open:
            # what came before the opening is whitespace (text goes out as soon as it is not):
            # not content, unless the call turns out malformed
            self._pending, self._raw, self._closing = "", pending, syntax.close
            self._state = "open"
            return
        keep = held_back(pending, (syntax.open,))
        emit = pending[: len(pending) - keep]
        if emit.strip():
            self._text(emit.lstrip() if self._after_call else emit, events)
            self._after_call = False
            self._pending = pending[len(emit):]
        else:
            self._pending = pending

    def _fence(self, pending: str) -> bool:
        """At the start of an untagged reply: hold back what may open a ```json fence; once it has,
        the call inside it ends with the closing fence. Whether ``pending`` was taken."""
        start = pending.lstrip()
        if start == FENCE_OPEN:
            self._pending, self._raw, self._closing = "", pending, FENCE_CLOSE
            self._state = "open"
            return True
        if FENCE_OPEN.startswith(start):
            self._pending = pending
            return True
        return False

    def _after_open(self, char: str, events: list[ParsedEvent]) -> None:
        if not self.syntax.array and not char.isspace():
            self._start_call(char, events)
            return
        self._raw += char
        if char == "[" and self.syntax.array:
            self._state, self._separated = "between", True
        elif not char.isspace():
            self._malformed(events)

    def _start_call(self, text: str, events: list[ParsedEvent]) -> None:
        """A call's JSON begins with ``text``; everything since its opening is kept in ``_raw``."""
        self._raw += text
        self._scanner = _ObjectScanner(self.syntax.arguments_key)
        self._early_arguments = []
        self._state = "body"
        for char in text:
            if self._state != "body":
                self._step(char, events)
            else:
                self._body_char(char, events)

    def _in_body(self, char: str, events: list[ParsedEvent]) -> None:
        self._raw += char
        self._body_char(char, events)

    def _body_char(self, char: str, events: list[ParsedEvent]) -> None:
        scanner = self._scanner
        assert scanner is not None, "a call's body is read only after _start_call made its scanner"
        had_name = scanner.name is not None
        argument, ok = scanner.feed(char)
        if not ok:
            self._malformed(events)
            return
        if scanner.name is not None and not had_name:
            events.append(CallStart(self.calls, scanner.name))
            self._said_anything = True
            self.calls += 1
            if self._early_arguments:
                events.append(CallArguments(self.calls - 1, "".join(self._early_arguments)))
        if argument:
            if scanner.name is None:
                self._early_arguments.append(argument)
            else:
                events.append(CallArguments(self.calls - 1, argument))
        if scanner.done:
            if scanner.name is None:
                self._malformed(events)
                return
            self._state = "between" if self.syntax.array else "close"
            self._pending = ""
            if not self._closing and not self.syntax.array:
                self._state = "between"

    def _between_calls(self, char: str, events: list[ParsedEvent]) -> None:
        """After a call of an array or a bare reply: a separator and the next call, or the end."""
        if char.isspace():
            return
        syntax = self.syntax
        separated, self._separated = self._separated, False
        if char == "{" and (syntax.array or separated):
            if self._scanner is not None and self._scanner.done:
                self._raw = ""  # the next call of the list; the first keeps its opening
            self._start_call(char, events)
        elif char == ("," if syntax.array else syntax.separator or None):
            self._separated = True
        elif char == "]" and syntax.array:
            self._state, self._after_call = "text", True
        elif syntax.array and self._scanner is None:  # "[TOOL_CALLS][" and then no call
            self._raw += char
            self._malformed(events)
        else:
            self._state, self._after_call = "text", True
            self._in_text(char, events)

    def _in_close(self, char: str, events: list[ParsedEvent]) -> None:
        close = self._closing
        pending = self._pending + char
        if not self._pending and char.isspace():
            return
        if close.startswith(pending):
            self._pending = "" if pending == close else pending
            if pending == close:
                self._state, self._after_call = "text", True
            return
        self._pending, self._state, self._after_call = "", "text", True  # no closing after all: text
        for c in pending:
            self._in_text(c, events)

    def _malformed(self, events: list[ParsedEvent]) -> None:
        if self._scanner is None or self._scanner.name is None:
            raw, self._raw = self._raw, ""
            self._state, self._pending, self._scanner = "text", "", None
            self._text(raw, events)
        else:
            self._state, self._pending = "text", ""

    def _text(self, text: str, events: list[ParsedEvent]) -> None:
        if text:
            events.append(Text(text))
            self._said_anything = True


def held_back(text: str, markers: tuple[str, ...], *, strip_whitespace: bool = True) -> int:
    """How many characters at the end of ``text`` must wait: the longest part of a marker that the
    next characters may complete, and (``strip_whitespace``) the whitespace before it, which is not
    content if the marker comes."""
    keep = 0
    for marker in markers:
        for length in range(min(len(marker) - 1, len(text)), keep, -1):
            if marker.startswith(text[-length:]):
                keep = length
                break
    if not strip_whitespace:
        return keep
    return len(text) - len(text[: len(text) - keep].rstrip())


def merged(events: list[Any], pieces: tuple[type, ...] = (Text, CallArguments)) -> list[Any]:
    """Adjacent pieces of the same kind (``pieces``: event classes with a ``text``) joined, so a fed
    chunk gives few events; argument pieces only of the same call."""
    out: list[Any] = []
    for event in events:
        last: Any = out[-1] if out else None
        if (type(event) is type(last) and type(event) in pieces
                and getattr(event, "call", None) == getattr(last, "call", None)):
            out[-1] = replace(last, text=last.text + event.text)
        else:
            out.append(event)
    return out

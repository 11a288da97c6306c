"""Splitting a reasoning model's output into its reasoning and its answer, as it streams.

Each splitter is fed the output text piece by piece (``feed(text) -> events``, ``finish() ->
events``, the contract of chat/tool_parser.py's ToolCallParser) and gives ``Reasoning`` events for
the reasoning and ``Text`` events for the answer; the Harmony splitter also gives the tool calls
it finds (``CallStart``, ``CallArguments``), since Harmony marks calls in its message headers.
Markers are parsed as text, not token ids (in Qwen2.5's vocabulary ``<think>`` is three tokens),
and text that may still become a marker is held back until it is clear, so that every chunking of
one output gives the same joined reasoning and answer.

- ``ThinkSplitter``: ``<think>…</think>`` (DeepSeek R1, Qwen3, QwQ, SmolLM3). It starts in one of
  three phases, read from the prompt: "reasoning" (the prompt opened ``<think>``: only ``</think>``
  will come), "undecided" (the output may open ``<think>``, after whitespace; if it starts with
  anything else, it is all answer) or "answer" (the prompt closed the reasoning: thinking off).
  Whitespace around the reasoning and at the start of the answer is not content; a ``<think>``
  the model writes although the prompt opened the reasoning is dropped. Once the
  reasoning has ended, a ``<think>`` in the answer (in a JSON string, say) is answer text.
  Without ``</think>`` (``max_tokens`` mid-reasoning) everything is reasoning and the answer empty.
- ``HarmonySplitter``: gpt-oss messages ``<|start|>assistant<|channel|>NAME[ to=RECIPIENT]
  [<|constrain|>TYPE]<|message|>CONTENT<|end|>`` (the recipient may also follow the role). The
  ``analysis`` channel is reasoning; a message to ``functions.NAME`` is a tool call whose content
  is its JSON arguments; ``final`` and ``commentary`` without a recipient (a preamble, meant for the
  user) are answer text. Messages end at ``<|end|>``, ``<|return|>`` or ``<|call|>`` (the last two
  are end-of-generation tokens, so they may be missing from the text); in a call's JSON arguments,
  a marker's text inside a string is the string's. Two messages of the same
  kind are joined with a blank line.
- ``PlainSplitter``: a model without reasoning: everything is answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from studiolo.chat.tool_parser import CallArguments, CallStart, Text, held_back, merged


@dataclass(frozen=True)
class Reasoning:
    text: str


SplitEvent = Reasoning | Text | CallStart | CallArguments

UNDECIDED, REASONING, ANSWER = "undecided", "reasoning", "answer"  # a splitter's phases


class PlainSplitter:
    """Output without reasoning: all of it is answer."""

    phase = ANSWER
    answer_offset: int | None = 0

    def feed(self, text: str) -> list[SplitEvent]:
        return [Text(text)] if text else []

    def finish(self) -> list[SplitEvent]:
        return []


class ThinkSplitter:
    def __init__(self, open_tag: str = "<think>", close_tag: str = "</think>", phase: str = UNDECIDED):
        self.open_tag, self.close_tag = open_tag, close_tag
        self.phase = phase  # undecided | reasoning | answer
        self._pending = ""  # held back: whitespace, or what may still become a tag
        self._reasoned = False  # reasoning text was given (leading whitespace is dropped before)
        self._answered = False  # answer text was given (likewise)
        self._fed = 0  # characters of output read so far
        # where the answer starts in the output (its leading whitespace included): None until known
        self.answer_offset: int | None = 0 if phase == ANSWER else None

    def feed(self, text: str) -> list[SplitEvent]:
        events: list[SplitEvent] = []
        index = 0
        while index < len(text) and self.phase != ANSWER:
            self._fed += 1
            if self.phase == UNDECIDED:
                self._undecided(text[index], events)
            else:
                self._reasoning(text[index], events)
            index += 1
        self._fed += len(text) - index
        if index < len(text):
            self._answer(text[index:], events)
        return merged_pieces(events)

    def finish(self) -> list[SplitEvent]:
        """The end of the output: what was held back is reasoning (the reasoning never closed) or
        answer (a start that never became ``<think>``)."""
        events: list[SplitEvent] = []
        pending, self._pending = self._pending, ""
        if self.phase == REASONING:
            self._reason(pending.rstrip(), events)
        elif self.phase == UNDECIDED:
            self.phase, self.answer_offset = ANSWER, self._fed - len(pending)
            self._answer(pending, events)
        return merged_pieces(events)

    def _undecided(self, char: str, events: list[SplitEvent]) -> None:
        self._pending += char
        lead = self._pending.lstrip()
        if lead == self.open_tag:
            self._pending, self.phase = "", REASONING
        elif not self.open_tag.startswith(lead):  # the model skipped the reasoning
            pending, self._pending, self.phase = self._pending, "", ANSWER
            self.answer_offset = self._fed - len(pending)
            self._answer(pending, events)

    def _reasoning(self, char: str, events: list[SplitEvent]) -> None:
        pending = self._pending + char
        if pending.endswith(self.close_tag):
            self._reason(pending[: -len(self.close_tag)].rstrip(), events)
            self._pending, self.phase, self.answer_offset = "", ANSWER, self._fed
            return
        if not self._reasoned and pending.lstrip() == self.open_tag:
            self._pending = ""  # the prompt opened the reasoning and the model opened it again
            return
        markers = (self.close_tag,) if self._reasoned else (self.close_tag, self.open_tag)
        keep = held_back(pending, markers)
        self._reason(pending[: len(pending) - keep], events)
        self._pending = pending[len(pending) - keep:]

    def _reason(self, text: str, events: list[SplitEvent]) -> None:
        if not self._reasoned:
            text = text.lstrip()
        if text:
            self._reasoned = True
            events.append(Reasoning(text))

    def _answer(self, text: str, events: list[SplitEvent]) -> None:
        if not self._answered:
            text = text.lstrip()
        if text:
            self._answered = True
            events.append(Text(text))


# --- Harmony ------------------------------------------------------------------------------------

HARMONY_START, HARMONY_MESSAGE = "<|start|>", "<|message|>"
HARMONY_ENDS = ("<|end|>", "<|return|>", "<|call|>")
_CHANNEL = re.compile(r"<\|channel\|>\s*([A-Za-z_][\w-]*)")
_RECIPIENT = re.compile(r"(?:^|\s)to=([^\s<]+)")
FUNCTIONS = "functions."  # the namespace of the request's tools in Harmony
PARAGRAPH = "\n\n"  # between two messages of the same kind


@dataclass(frozen=True)
class HarmonyHeader:
    channel: str | None
    recipient: str | None

    @property
    def tool(self) -> str | None:
        """The function this message calls, if it is a call of the request's tools."""
        if self.recipient and self.recipient.startswith(FUNCTIONS):
            return self.recipient[len(FUNCTIONS):]
        return None

    @property
    def kind(self) -> str:
        """reasoning, call, or answer: what the message's content is to the client."""
        if self.tool is not None:
            return "call"
        # the chain of thought, or a message to a built-in tool (python, browser) inside it
        if self.channel == "analysis" or self.recipient:
            return REASONING
        return ANSWER


def parse_header(text: str) -> HarmonyHeader:
    """``assistant<|channel|>commentary to=functions.f <|constrain|>json`` and its variants."""
    channel = _CHANNEL.search(text)
    recipient = _RECIPIENT.search(text.replace("<|", " <|"))
    return HarmonyHeader(channel.group(1) if channel else None, recipient.group(1) if recipient else None)


class HarmonySplitter:
    def __init__(self, header: str | None = None):
        """``header``: None when the output starts with a message's header (the prompt ended in
        ``<|start|>assistant``); else the header of the message the prompt opened, whose content the
        output continues (a prompt ending in ``<|channel|>final<|message|>``)."""
        self.calls = 0  # calls started so far
        self._header = ""  # the header being read
        self._pending = ""  # content held back: what may still become an end marker
        self._current: HarmonyHeader | None = None  # the message whose content is being read
        self._call = -1  # the call index of the current message, when it is a call
        self._given: dict[str, bool] = {}  # kinds that got content in an earlier message
        self._wrote = False  # the current message gave content
        self._any_message = False
        self._fed = 0  # characters of output read so far
        self._json = _JsonStrings()  # where a call's arguments are, so that markers in strings are text
        # where the first answer or call content starts in the output: None until known
        self.answer_offset: int | None = None
        if header is not None:
            self._open(parse_header(header), [])

    @property
    def phase(self) -> str:
        """undecided (in a header), reasoning, or answer (an answer or a call's arguments)."""
        if self._current is None:
            return UNDECIDED
        return REASONING if self._current.kind == REASONING else ANSWER

    def feed(self, text: str) -> list[SplitEvent]:
        events: list[SplitEvent] = []
        for char in text:
            self._fed += 1
            if self._current is None:
                self._in_header(char, events)
            else:
                self._in_content(char, events)
        return merged_pieces(events)

    def finish(self) -> list[SplitEvent]:
        """The end: a message cut short keeps what it had (and what was held back); a header cut
        short is dropped, unless the output never was Harmony (no message, no marker): then it is
        the answer, as a model that ignored the format wrote it."""
        events: list[SplitEvent] = []
        if self._current is not None:
            pending, self._pending = self._pending, ""
            self._content(pending, events)
        elif not self._any_message and self._header.strip() and "<|" not in self._header:
            self.answer_offset = 0
            events.append(Text(self._header.strip()))
        self._header = ""
        return merged_pieces(events)

    def _in_header(self, char: str, events: list[SplitEvent]) -> None:
        self._header += char
        if self._header.endswith(HARMONY_MESSAGE):
            header, self._header = self._header[: -len(HARMONY_MESSAGE)], ""
            self._open(parse_header(header), events)
        elif self._header.endswith(HARMONY_ENDS):  # an empty or broken header: start over
            self._header = ""

    def _open(self, header: HarmonyHeader, events: list[SplitEvent]) -> None:
        self._current, self._wrote, self._any_message = header, False, True
        self._json = _JsonStrings()
        if header.kind != REASONING and self.answer_offset is None:
            self.answer_offset = self._fed
        if header.tool is not None:
            self._call, self.calls = self.calls, self.calls + 1
            events.append(CallStart(self._call, header.tool))

    def _in_content(self, char: str, events: list[SplitEvent]) -> None:
        if self._json.in_string:  # inside a call's JSON string: a marker's text there is text
            self._content(char, events)
            return
        pending = self._pending + char
        ending = next((end for end in HARMONY_ENDS if pending.endswith(end)), None)
        if ending is not None:
            self._content(pending[: -len(ending)], events)
            self._pending, self._current = "", None
            return
        keep = held_back(pending, HARMONY_ENDS, strip_whitespace=False)
        self._content(pending[: len(pending) - keep], events)
        self._pending = pending[len(pending) - keep:]
        if self._json.in_string and self._pending:  # held back as a marker, but a string opened before it
            pending, self._pending = self._pending, ""
            self._content(pending, events)

    def _content(self, text: str, events: list[SplitEvent]) -> None:
        current = self._current
        if not text or current is None:
            return
        kind = current.kind
        if kind == "call":
            self._json.read(text)
            events.append(CallArguments(self._call, text))
            return
        if not self._wrote and self._given.get(kind):
            text = PARAGRAPH + text
        self._wrote = self._given[kind] = True
        events.append(Reasoning(text) if kind == REASONING else Text(text))


class _JsonStrings:
    """Whether a call's JSON arguments, read so far, stand inside a string: there, an end marker's
    text is the string's (a real gpt-oss writes markers as special tokens, never inside a string;
    a model that spells them as text may quote one)."""

    def __init__(self) -> None:
        self.in_string = False
        self._escaped = False

    def read(self, text: str) -> None:
        for char in text:
            if self._escaped:
                self._escaped = False
            elif self.in_string and char == "\\":
                self._escaped = True
            elif char == '"':
                self.in_string = not self.in_string


def merged_pieces(events: list[SplitEvent]) -> list[SplitEvent]:
    """Adjacent reasoning, text and argument pieces joined (tool_parser.merged)."""
    return merged(events, (Text, Reasoning, CallArguments))

"""One choice's generated tokens as the service's events, through a pipeline of stages.

A token goes through, in order:

1. ``TokenReader``: its bytes, and its ``TokenInfo`` when logprobs are asked for;
2. ``StopStrings``: text released once it cannot be part of a stop string; a stop string ends
   the output there, and ends the engine's sequence at once;
3. ``DeltaWriter``: the released text as ``TextDelta``s, or as tool calls and content when
   tools are offered, and as ``ReasoningDelta``s apart from them when the chat splits a reasoning
   model's output (service/chat_prompt.py ``ReasoningSplit``; chat/reasoning.py ReplyParser);
4. ``OutputLog``: the text kept for ``studiolo log stream`` readers of the model log, with its
   reasoning apart.

``ChoiceOutput`` runs the stages for each token and at the end; ``Generation`` (generation.py)
reads the engine's events, feeds it, and does the accounting when the choice ends.
"""

from __future__ import annotations

from studiolo.chat.reasoning import REASONING, UNDECIDED
from studiolo.chat.tool_parser import CallSyntax, ToolCallParser
from studiolo.engine.llama import LlamaModel
from studiolo.engine.sampling import TokenLogprob
from studiolo.engine.sequence import FinishEvent, TokenEvent
from studiolo.engine.stream import TokenStream
from studiolo.service.chat_prompt import ReasoningSplit
from studiolo.service.model_log import LogHub
from studiolo.service.text import TextAssembler
from studiolo.service.tool_calls import CallReader
from studiolo.service.types import Alternative, ReasoningDelta, TextDelta, TokenInfo, ToolCallDelta

Delta = TextDelta | ReasoningDelta | ToolCallDelta

_CAUSES = {"stop": "eos", "length": "max_tokens", "context": "context_length", "cancelled": "cancelled"}


def token_text(piece: bytes) -> str:
    """A token's text for logprobs; bytes that are not whole UTF-8 characters are spelled out."""
    try:
        return piece.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in piece)


def token_info(model: LlamaModel, token: int, piece: bytes, logprob: TokenLogprob | None) -> TokenInfo:
    special = model.is_special(token)
    if logprob is None:
        return TokenInfo(token, token_text(piece), piece, None, special=special)
    # alternatives are not part of the text: control tokens show their names (<|im_end|>)
    top = tuple(
        Alternative(alt.token, token_text(p := model.token_bytes(alt.token, special=True)), p, alt.logprob,
                    model.is_special(alt.token))
        for alt in logprob.top
    )
    return TokenInfo(token, token_text(piece), piece, logprob.logprob, top, special)


class TokenReader:
    """Stage 1: a generated token's bytes, and its ``TokenInfo`` when logprobs are on."""

    def __init__(self, model: LlamaModel, logprobs: bool, control_text: bool):
        self._model = model
        self._logprobs = logprobs
        # a call may open with a control token (Mistral's [TOOL_CALLS]): the parser reads its name
        self._control_text = control_text

    def read(self, event: TokenEvent) -> tuple[bytes, TokenInfo | None]:
        info = token_info(self._model, event.token, event.piece, event.logprob) if self._logprobs else None
        piece = self._model.token_bytes(event.token, special=True) if self._control_text else event.piece
        return piece, info


class StopStrings:
    """Stage 2: text held back until it cannot start a stop string; a stop string ends the output
    and cancels the engine's sequence, which frees it now rather than at max_tokens."""

    def __init__(self, stops: tuple[str, ...], stream: TokenStream):
        self._assembler = TextAssembler(stops)
        self._stream = stream
        self.consumed = 0  # tokens fed in: usage stops counting at a stop string

    @property
    def stopped(self) -> bool:
        return self._assembler.stopped

    @property
    def found(self) -> str | None:
        """The stop string that ended the output, if one did."""
        return self._assembler.stop_found

    def feed(self, piece: bytes, info: TokenInfo | None) -> tuple[str, list[TokenInfo]]:
        self.consumed += 1
        released = self._assembler.feed(piece, info)
        if self._assembler.stopped:
            self._stream.cancel()
        return released

    def finish(self) -> tuple[str, list[TokenInfo]]:
        return self._assembler.finish()


class DeltaWriter:
    """Stage 3: released text as events: text deltas; content and tool calls when tools are offered;
    reasoning apart from the answer when the chat splits it (``ReasoningSplit``), the answer then
    going through the tool-call parser (calls after the reasoning are calls). Counts the tokens
    whose text fell in the reasoning."""

    def __init__(self, index: int, syntax: CallSyntax | None, reasoning: ReasoningSplit | None = None):
        self._index = index
        tools = ToolCallParser(syntax, constrained=True) if syntax is not None else None
        self._reply = reasoning.parser(tools) if reasoning is not None else None
        parser = self._reply or tools
        self._calls = CallReader(index, parser) if parser is not None else None
        self.reasoning_tokens = 0
        self._undecided = 0  # tokens read since the output last was in the reasoning or the answer

    @property
    def made_calls(self) -> bool:
        return self._calls is not None and self._calls.count > 0

    def token(self, text: str, tokens: list[TokenInfo]) -> list[Delta]:
        """One token's released text: a reasoning token if the reasoning held it at its start or
        end; tokens read while it was not yet known (``<think>`` in pieces, a Harmony header) count
        as what came of them."""
        if self._reply is None:
            return self.feed(text, tokens)
        before = self._reply.phase
        deltas = self.feed(text, tokens)
        after = self._reply.phase
        if REASONING in (before, after):
            self.reasoning_tokens += 1 + self._undecided
            self._undecided = 0
        elif after == UNDECIDED:
            self._undecided += 1
        else:
            self._undecided = 0
        return deltas

    def feed(self, text: str, tokens: list[TokenInfo]) -> list[Delta]:
        if self._calls is not None:
            return self._calls.feed(text, tokens)
        return [TextDelta(self._index, text, tuple(tokens))] if text or tokens else []

    def finish(self, text: str, tokens: list[TokenInfo]) -> list[Delta]:
        deltas = self.feed(text, tokens)
        return deltas + self._calls.finish() if self._calls is not None else deltas

    @property
    def answer_offset(self) -> int | None:
        """Where the answer starts in the text fed (None: it never did); 0 without a split."""
        return self._reply.answer_offset if self._reply is not None else 0


class OutputLog:
    """Stage 4: the choice's text for the model log, kept only if someone read that log when it began;
    its reasoning apart, when the chat splits it."""

    def __init__(self, hub: LogHub | None):
        self._parts: list[str] | None = [] if hub is not None and hub.has_subscribers("model") else None
        self._reasoning: list[str] = []

    @property
    def wanted(self) -> bool:
        return self._parts is not None

    @property
    def text(self) -> str:
        return "".join(self._parts or ())

    @property
    def reasoning(self) -> str | None:
        """The reasoning as the client got it (None: there was none)."""
        return "".join(self._reasoning) if self._reasoning else None

    def add(self, text: str) -> None:
        if self._parts is not None:
            self._parts.append(text)

    def split(self, deltas: list[Delta]) -> list[Delta]:
        """Keeps the reasoning of ``deltas`` (the log shows it apart from the answer); gives them back."""
        if self._parts is not None:
            self._reasoning.extend(delta.text for delta in deltas if isinstance(delta, ReasoningDelta))
        return deltas


class ChoiceOutput:
    """One choice's tokens through the stages, in order (module docstring)."""

    def __init__(self, reader: TokenReader, stops: StopStrings, deltas: DeltaWriter, log: OutputLog):
        self._reader = reader
        self._stops = stops
        self._deltas = deltas
        self.log = log

    def token(self, event: TokenEvent) -> list[Delta]:
        if self._stops.stopped:
            return []  # generated before the cancel reached the engine
        text, tokens = self._stops.feed(*self._reader.read(event))
        self.log.add(text)
        return self.log.split(self._deltas.token(text, tokens))

    def finish(self) -> list[Delta]:
        """What the stages still hold, once the engine's sequence has ended."""
        text, tokens = self._stops.finish()
        self.log.add(text)
        return self.log.split(self._deltas.finish(text, tokens))

    @property
    def reasoning_tokens(self) -> int:
        return self._deltas.reasoning_tokens

    @property
    def answer_offset(self) -> int | None:
        return self._deltas.answer_offset

    @property
    def consumed(self) -> int:
        return self._stops.consumed

    @property
    def stop_string(self) -> str | None:
        return self._stops.found

    def completion_tokens(self, event: FinishEvent) -> int:
        """The tokens usage counts: up to the stop string, if one ended the output."""
        return self.consumed if self._stops.stopped else event.completion_tokens

    def cause(self, event: FinishEvent) -> str:
        """Why the choice ended, in full (``Finished.cause``)."""
        return "stop_string" if self._stops.stopped else _CAUSES.get(event.reason, "eos")

    def finish_reason(self, cause: str) -> str:
        """OpenAI's finish_reason for ``cause``."""
        if self._deltas.made_calls and cause == "eos":  # not a stop string: it may cut a call
            return "tool_calls"
        return "length" if cause in ("max_tokens", "context_length") else "stop"

"""The reasoning gate: one sequence's reasoning phase, its budget, and the constraint that waits
for the answer.

A reasoning model writes free text (its reasoning) before its answer. ``response_format``,
``guided_*`` and forced tool calls constrain the answer only, so the gate keeps the sequence's
constraint asleep while the output is reasoning, and wakes it at the first answer byte after the
close marker. It follows the phase from the tokens' bytes (with special tokens rendered, so that
Harmony's markers are text too), never from token ids: ``<think>`` is three tokens in Qwen2.5's
vocabulary and one in Qwen3's.

- Phases: "undecided" (the output may open the reasoning with the open marker, after whitespace;
  anything else makes it all answer), "reasoning", "answer".
- A constraint waiting (``ReasoningSpec.constraint_waits``): end-of-generation tokens are masked
  while the output is not the answer, so an answer always comes.
- Opening (decision): with a constraint waiting or a budget, an undecided output is opened by the
  gate itself (the open marker and a line break, appended as if sampled). Were the model free to
  choose between opening its reasoning and answering, its first token would have to satisfy two
  masks at once, and a token holding the start of both could not be checked; and a budget is a
  promise of bounded reasoning followed by an answer, which the parser then always sees whole.
  (The templates that let the output open ``<think>``, Qwen3's, expect their models to open it.)
- The straddling token (decision): a token sampled in the reasoning that holds the end of the
  close marker and, past it and its whitespace, the start of the answer (``>{"``) would put
  answer bytes past the matcher unchecked. The gate replaces it with the tokens of its own text up
  to the end of the marker and the whitespace after it (tokenized again); the model then writes
  its answer under the constraint. Whitespace after the marker in the same token, or in the cut,
  is not the answer's (the splitter in chat/reasoning_parsers.py drops it too) and is never fed
  to the matcher; from the next sampled token on, the constraint decides everything.
- Budget: once ``budget`` reasoning tokens are out (and the bytes are at a character boundary),
  the gate appends ``cut`` tokens (chat/reasoning.py budget_cut_text, tokenized by the service)
  as if sampled; the model then writes its answer. A budget of 0 closes at once (an undecided
  output gets the open marker, then the cut).
- Forced tokens (opening, cut, replacement) go through the same path as sampled ones: they are
  decoded, streamed, counted, and given logprob 0 where logprobs are asked.

Reasoning tokens (``FinishEvent.reasoning_tokens``) are every output token taken before the
answer began, the markers (and the gate's own tokens) included, unless the output never opened its
reasoning. The budget counts the same tokens: a cut output has ``budget + len(cut)`` of them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

UNDECIDED, REASONING, ANSWER = "undecided", "reasoning", "answer"
_WHITESPACE = b" \t\r\n"


@dataclass(frozen=True)
class ReasoningSpec:
    """How a reasoning model's output is shaped, and what the request asks of its reasoning
    (built by the service from the chat template's reasoning format and the rendered prompt)."""

    open: bytes  # the open marker (b"" where the output never opens it: Harmony)
    close: bytes  # the close marker: the answer starts after it (and its whitespace)
    phase: str = UNDECIDED  # where the output starts: undecided, reasoning or answer
    budget: int | None = None  # reasoning tokens allowed (None: no limit)
    cut: tuple[int, ...] = ()  # appended when the budget runs out, reasoning so far ending a line
    cut_mid_line: tuple[int, ...] = ()  # the same, reasoning so far ending inside a line
    open_tokens: tuple[int, ...] = ()  # the open marker and a line break, to open an undecided output
    constraint_waits: bool = False  # the request's constraint applies to the answer only


class ReasoningGate:
    """One sequence's reasoning phase. The engine asks ``forced_token`` before sampling, lets
    ``mask`` touch the logits while ``answering`` is false, passes the sampled token through
    ``checked`` and every taken token through ``take``."""

    def __init__(self, spec: ReasoningSpec, tokenize: Callable[[bytes], list[int]], end_tokens: np.ndarray):
        self.spec = spec
        self.phase = spec.phase
        self.reasoning_tokens = 0
        self._tokenize = tokenize  # text to tokens, special markers parsed (for a straddling token)
        self._end_tokens = end_tokens  # end-of-generation ids, masked while a constraint waits
        self._forced: deque[int] = deque()
        self._undecided_tokens = 0  # taken while undecided: reasoning if the output opens it
        self._seen = b""  # undecided: non-space bytes read; reasoning: the last bytes (a marker may span tokens)
        self._cut = False  # the budget's cut was queued
        if spec.phase == UNDECIDED and (spec.constraint_waits or spec.budget is not None) and spec.open_tokens:
            self._forced.extend(spec.open_tokens)
        elif spec.phase == REASONING:
            self._cut_if_spent()

    @property
    def answering(self) -> bool:
        """The output is in the answer and the gate appends nothing more."""
        return self.phase == ANSWER and not self._forced

    @property
    def waiting(self) -> bool:
        """The request's constraint waits for the answer: the next token is sampled without it
        (``mask`` instead), passes ``checked``, and is not fed to it. Forced tokens are never fed
        to it either (a cut's whitespace after the marker is not the answer's)."""
        return self.spec.constraint_waits and not self.answering

    def forced_token(self) -> int | None:
        """The token the gate appends next instead of sampling, if any."""
        return self._forced.popleft() if self._forced else None

    def mask(self, logits: np.ndarray) -> None:
        """Before sampling a token while the constraint waits: no end, so an answer comes."""
        logits[self._end_tokens] = -np.inf

    def checked(self, token: int, piece: bytes) -> int:
        """The token sampled while the constraint waits, or (a token straddling the close marker
        and the answer) the first token of its text up to the marker's end and the whitespace
        after it, the rest queued to follow."""
        if self.phase != REASONING:
            return token
        head = self._head_before_answer(piece)
        if head is None:
            return token
        replacement = self._tokenize(head)
        if not replacement:
            return token
        self._forced.extendleft(reversed(replacement[1:]))
        return replacement[0]

    def take(self, piece: bytes) -> None:
        """Advance past a token of the output (sampled or forced), its bytes with specials rendered."""
        if self.phase == ANSWER:
            return
        if self.phase == UNDECIDED:
            self._undecided_tokens += 1
            self._read_undecided(piece)
            return
        self.reasoning_tokens += 1
        self._read_reasoning(piece)
        if self.phase == REASONING:
            self._cut_if_spent()

    # --- reading the bytes ---------------------------------------------------------------

    def _read_undecided(self, piece: bytes) -> None:
        seen = self._seen + (piece.lstrip(_WHITESPACE) if not self._seen else piece)
        opener = self.spec.open
        if opener and seen.startswith(opener):
            self.phase, self._seen = REASONING, b""
            self.reasoning_tokens = self._undecided_tokens
            self._read_reasoning(seen[len(opener):])
            if self.phase == REASONING:
                self._cut_if_spent()
        elif seen and not (opener and opener.startswith(seen)):
            self.phase = ANSWER  # never opened: the output is all answer
        else:
            self._seen = seen

    def _read_reasoning(self, piece: bytes) -> None:
        close = self.spec.close
        window = self._seen + piece
        at = window.find(close)
        if at < 0:
            self._seen = window[-(len(close) + 3):]  # a marker's start, and a character's first bytes
            return
        self.phase, self._seen = ANSWER, b""

    def _head_before_answer(self, piece: bytes) -> bytes | None:
        """The piece's bytes up to the end of the close marker and the whitespace after it, if
        answer bytes follow them in the same piece (None: the piece does not straddle)."""
        close = self.spec.close
        window = self._seen + piece
        at = window.find(close)
        if at < 0:
            return None
        end = at + len(close)
        tail = window[end:]
        answer = len(tail) - len(tail.lstrip(_WHITESPACE))
        if answer == len(tail):
            return None
        head = window[len(self._seen):end + answer]  # the marker ends in this piece: never empty
        return head.lstrip(bytes(range(0x80, 0xC0)))  # a character begun by the token before stays cut

    def _cut_if_spent(self) -> None:
        budget = self.spec.budget
        if budget is None or self._cut or self.reasoning_tokens < budget or _mid_character(self._seen):
            return
        self._cut = True
        ends_line = not self._seen or self._seen.endswith(b"\n")
        self._forced.extend(self.spec.cut if ends_line else self.spec.cut_mid_line)


def _mid_character(tail: bytes) -> bool:
    """Whether ``tail`` ends inside a UTF-8 character (the cut waits for its last byte)."""
    for back in range(1, min(4, len(tail)) + 1):
        byte = tail[-back]
        if byte < 0x80:
            return False
        if byte >= 0xC0:  # a lead byte: how long its character is
            length = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return back < length
    return False

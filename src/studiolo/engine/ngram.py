"""Drafts without a draft model: continuations looked up by n-gram.

A sequence that repeats what it has seen (code edited in place, a quoted passage, JSON keys,
a list of names) can be drafted from its own tokens: find the last few tokens generated earlier
in the prompt or the output, and propose what followed them there (prompt lookup decoding). Given
a text the output is expected to resemble (OpenAI's Predicted Outputs), look the tail up in that
text instead, moving forward through it as the output does.

An ``NgramIndex`` records, for each n-gram of its tokens (n in ``NGRAM_SIZES``), where the tokens
that followed it start. An n-gram is recorded only once the token after it is there, so a list's
own last n tokens are never found as their own continuation.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

NGRAM_SIZES = (4, 3, 2)  # longest first: a longer match predicts better; a single token is too weak


class NgramIndex:
    def __init__(self, tokens: Sequence[int] = ()):
        self.tokens: list[int] = []
        self._ends: dict[int, dict[tuple[int, ...], list[int]]] = {n: {} for n in NGRAM_SIZES}
        self.extend(tokens)

    def __len__(self) -> int:
        return len(self.tokens)

    def extend(self, tokens: Sequence[int]) -> None:
        for token in tokens:
            self.tokens.append(token)
            end = len(self.tokens) - 1  # the n-grams ending just before this token now have a continuation
            for n, ends in self._ends.items():
                if end >= n:
                    ends.setdefault(tuple(self.tokens[end - n : end]), []).append(end)

    def find(self, tail: Sequence[int], *, at_or_after: int | None = None) -> int | None:
        """Where the continuation of ``tail``'s last tokens starts in this index, trying the longest
        n-gram first: the latest occurrence, or with ``at_or_after`` the first one from there on
        (else the first of all)."""
        for n in NGRAM_SIZES:
            if len(tail) < n:
                continue
            ends = self._ends[n].get(tuple(tail[len(tail) - n :]))
            if not ends:
                continue
            if at_or_after is None:
                return ends[-1]
            following = bisect_left(ends, at_or_after)
            return ends[following] if following < len(ends) else ends[0]
        return None

    def continuation(self, start: int, count: int) -> list[int]:
        return self.tokens[start : start + count]


class PromptLookup:
    """Drafts from the sequence's own prompt and output."""

    def __init__(self, prompt: Sequence[int]):
        self._index = NgramIndex(prompt)
        self._prompt_length = len(prompt)

    def propose(self, output: Sequence[int], count: int) -> list[int]:
        """Up to ``count`` tokens to follow the prompt and ``output`` (the tokens generated so far,
        extended only at its end between calls)."""
        self._index.extend(output[len(self._index) - self._prompt_length :])
        start = self._index.find(self._index.tokens)
        return [] if start is None else self._index.continuation(start, count)


class PredictionLookup:
    """Drafts from a predicted output. Where the output has kept to the prediction so far, the
    draft is what follows in it; after an edit, the output's tail is looked up in the prediction,
    preferring places after the last draft (the output moves forward through the prediction)."""

    def __init__(self, prediction: Sequence[int]):
        self._index = NgramIndex(prediction)
        self._start = 0  # where in the prediction the last draft started
        self._output_then = 0  # how long the output was when it was taken

    def propose(self, output: Sequence[int], count: int) -> list[int]:
        """Up to ``count`` tokens to follow ``output`` (the tokens generated so far)."""
        expected = self._start + len(output) - self._output_then  # if the output kept to the prediction
        if self._aligned(output, expected):
            start: int | None = expected
        else:
            start = self._index.find(output, at_or_after=self._start)
        if start is None:
            return []
        self._start, self._output_then = start, len(output)
        return self._index.continuation(start, count)

    def _aligned(self, output: Sequence[int], position: int) -> bool:
        """Whether the output's last tokens are the prediction's right before ``position``."""
        n = min(min(NGRAM_SIZES), len(output))
        if not n <= position <= len(self._index):
            return False
        return self._index.tokens[position - n : position] == list(output[len(output) - n :])

"""From token bytes to released text: UTF-8 across tokens, and stop strings.

Text is released as soon as it is safe: a character split over several tokens waits for
its last byte, and the tail of the text that could still grow into a stop string waits
until it either does (then output ends just before the stop string, which is never
shown) or cannot any more. Each released token travels with the text it produced, so
logprobs line up with content.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass

from studiolo.service.types import TokenInfo


def overlap_with_stop_prefix(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of ``text`` that begins some stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


@dataclass
class _HeldToken:
    info: TokenInfo | None
    start: int  # offsets of its text within the held text
    end: int


class TextAssembler:
    def __init__(self, stops: tuple[str, ...] = ()):
        self._stops = tuple(s for s in stops if s)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""
        self._held_tokens: list[_HeldToken] = []
        self.stopped = False  # a stop string was found; nothing more will be released
        self.stop_found: str | None = None  # which one (the first listed of those found earliest)

    def feed(self, piece: bytes, info: TokenInfo | None = None) -> tuple[str, list[TokenInfo]]:
        """Add one token's bytes; return the text (and tokens) now safe to release."""
        if not self._stops:  # nothing to hold back but an unfinished character
            return self._decoder.decode(piece), [info] if info is not None else []
        start = len(self._held)
        self._held += self._decoder.decode(piece)
        self._held_tokens.append(_HeldToken(info, start, len(self._held)))
        stop_at = self._find_stop()
        if stop_at is not None:
            self.stopped = True
            self.stop_found = next(stop for stop in self._stops if self._held.find(stop) == stop_at)
            return self._release(stop_at, include_partial=True)
        safe = len(self._held) - overlap_with_stop_prefix(self._held, self._stops)
        return self._release(safe, include_partial=False)

    def finish(self) -> tuple[str, list[TokenInfo]]:
        """Generation ended without a stop string: release everything held."""
        if self.stopped:
            return "", []
        self._held += self._decoder.decode(b"", final=True)
        if self._held_tokens:
            self._held_tokens[-1].end = len(self._held)
        return self._release(len(self._held), include_partial=True)

    def _find_stop(self) -> int | None:
        positions = [i for i in (self._held.find(stop) for stop in self._stops) if i >= 0]
        return min(positions) if positions else None

    def _release(self, upto: int, *, include_partial: bool) -> tuple[str, list[TokenInfo]]:
        """Release held text [0, upto) and the tokens it came from.

        A token whose text straddles ``upto`` goes out only when ``include_partial``
        (output is ending there); otherwise it waits for the rest of its text.
        """
        text = self._held[:upto]
        released: list[TokenInfo] = []
        keep: list[_HeldToken] = []
        for held in self._held_tokens:
            done = held.end <= upto if not include_partial else held.start < upto or held.end <= upto
            if done:
                if held.info is not None:
                    released.append(held.info)
            else:
                # a negative start: part of its text is already out, so a stop releases it
                keep.append(_HeldToken(held.info, held.start - upto, held.end - upto))
        self._held = self._held[upto:]
        self._held_tokens = [] if self.stopped else keep
        return text, released

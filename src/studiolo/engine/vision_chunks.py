"""A prompt with images as the engine sees it: text chunks, image chunks, and the token list that
keys the prefix cache (docs/ENGINE.md, "Vision").

In the prompt's token list an image stands as placeholder ids, one per embedding row: negative
int32 values (never a token id, never -1, llama.cpp's null token) drawn from the image's digest, so
that a follow-up turn with the same image has the same ids (the prefix cache reuses its KV) and
another image does not (each id is 31 bits of its own hash: a false match of a whole image is out
of reach).

A row of the prompt is not always at the KV position of its index: an M-RoPE image (Qwen2-VL and
later) takes ``n_pos`` positions for its ``n_tokens`` rows, all of its rows sitting at its first one
(each on its own grid point in the other sections), and the text after it goes on from ``pos +
n_pos``. ``row_position`` maps rows to positions through the prompt's images; without M-RoPE it is
the identity.
"""

from __future__ import annotations

import hashlib
import secrets
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import llama_cpp.mtmd_cpp as mtmd
import numpy as np


@dataclass(frozen=True)
class TextChunk:
    tokens: tuple[int, ...]


@dataclass(eq=False)
class ImageChunk:
    """An image (or, for projectors that slice images, one slice) ready to be encoded."""

    image_index: int  # which of the prompt's images it comes from
    digest: str  # the image's (DecodedImage.digest)
    n_tokens: int  # embedding rows
    n_pos: int  # positions it takes: n_tokens, but fewer with M-RoPE
    placeholders: tuple[int, ...] = field(repr=False)  # its ids in the prompt's token list
    non_causal: bool  # its rows attend to each other both ways: decoded whole, in one ubatch
    _handle: Any = field(repr=False)  # an owned mtmd_input_chunk (holds the preprocessed pixels)
    _free: weakref.finalize = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._free = weakref.finalize(self, mtmd.mtmd_input_chunk_free, self._handle)

    @property
    def handle(self) -> Any:
        if not self._free.alive:
            raise RuntimeError("the image chunk was released")
        return self._handle

    def release(self) -> None:
        """Free the preprocessed pixels now (an encoded chunk needs them no more)."""
        self._free()


PromptChunk = TextChunk | ImageChunk
Tokenize = Callable[[str], list[int]]  # text to token ids: no BOS added, special tokens parsed


def new_marker() -> str:
    """A marker for one request's images that no client can have written in advance."""
    return f"<__studiolo_image_{secrets.token_hex(12)}__>"


def placeholder_ids(digest: str, ordinal: int, n_tokens: int) -> tuple[int, ...]:
    """The ids an image chunk stands as in a prompt's token list: in [-2**31, -2], one per row, each
    from the image's digest and the chunk's ordinal among the prompt's chunks of that image."""
    raw = hashlib.shake_256(f"{digest}:{ordinal}".encode()).digest(4 * n_tokens)
    values = np.frombuffer(raw, dtype="<u4").astype(np.int64) % (2**31 - 1)
    return tuple(int(-2 - value) for value in values)


def prompt_tokens(chunks: Sequence[PromptChunk]) -> list[int]:
    """The prompt as one token list (text ids and placeholder ids), the prefix cache's key."""
    tokens: list[int] = []
    for chunk in chunks:
        tokens.extend(chunk.tokens if isinstance(chunk, TextChunk) else chunk.placeholders)
    return tokens


def resume_point(chunks: Sequence[PromptChunk], reused: int) -> int:
    """Where a prompt resumes when its first ``reused`` tokens are in the KV cache: there, or the start
    of the image that point falls inside. An image's rows are always decoded from its first row, in
    the same batches, cold or resumed: rows decoded in other batches round otherwise (the kernels
    round by batch shape), and a non-causal image must see itself whole."""
    start = 0
    for chunk in chunks:
        end = start + (len(chunk.tokens) if isinstance(chunk, TextChunk) else chunk.n_tokens)
        if reused < end:
            return reused if isinstance(chunk, TextChunk) else start
        start = end
    return reused


def append_text(chunks: list[PromptChunk], tokens: tuple[int, ...]) -> None:
    """Add text to the chunks, into the last one if it is text (as libmtmd joins adjacent text)."""
    if not tokens:
        return
    if chunks and isinstance(chunks[-1], TextChunk):
        chunks[-1] = TextChunk(chunks[-1].tokens + tokens)
    else:
        chunks.append(TextChunk(tokens))


@dataclass(frozen=True)
class PlacedImage:
    """An image chunk and where its rows start in the prompt's token list (GenerationRequest.images)."""

    start: int
    chunk: ImageChunk

    @property
    def end(self) -> int:
        return self.start + self.chunk.n_tokens


def row_position(images: Sequence[PlacedImage], row: int) -> int:
    """The KV position of the prompt's row ``row`` (or of a generated token's row, past the prompt):
    its index, less the rows that images before it have beyond their positions. A row inside an
    M-RoPE image is at the image's first position, like all of the image's rows: cutting the cache
    there drops the whole image (``resume_point`` never cuts there)."""
    shift = 0
    for image in images:  # in prompt order
        if row < image.end:
            if row > image.start and image.chunk.n_pos != image.chunk.n_tokens:
                return image.start - shift
            break
        shift += image.chunk.n_tokens - image.chunk.n_pos
    return row - shift


def placed_images(chunks: Sequence[PromptChunk]) -> tuple[PlacedImage, ...]:
    """The prompt's image chunks with their start in ``prompt_tokens(chunks)``."""
    placed, start = [], 0
    for chunk in chunks:
        if isinstance(chunk, ImageChunk):
            placed.append(PlacedImage(start, chunk))
            start += chunk.n_tokens
        else:
            start += len(chunk.tokens)
    return tuple(placed)

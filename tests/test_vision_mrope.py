"""M-RoPE vision models (Qwen2-VL, Qwen2.5-VL, Qwen3-VL): images placed on a grid of positions.

The model is Qwen2.5-Coder-0.5B rewritten as a ``qwen2vl`` model, with a Qwen2-VL projector of random
weights (tests/vision_projector.py, ``QWEN2VL_VISION``): the model sees nothing and what it says about
an image is nonsense, fixed for a seed and greedy decoding. These tests check the plumbing, never
sight: an M-RoPE image takes ``n_pos`` positions for its ``n_tokens`` rows (all at its first position
in the cache), the text after it goes on from there, and studiolo's path (its own chunks, batches,
positions, slots and prefix cache) gives llama.cpp's own multimodal path's logits and tokens
(``mtmd_tokenize`` + ``mtmd_helper_eval_chunks``). Through the server, end to end:
tests/test_vision_mrope_chat.py.
"""

from __future__ import annotations

import io
from types import SimpleNamespace

import llama_cpp as llama
import llama_cpp.mtmd_cpp as mtmd
import numpy as np
import pytest
from PIL import Image

from studiolo.engine.images import DecodedImage, decode_image
from studiolo.engine.llama import ContextParams, LlamaContext, LlamaModel
from studiolo.engine.prompt_cache import PromptCache, PromptCachePool
from studiolo.engine.slots import SlotPool
from studiolo.engine.vision import VisionContext
from studiolo.engine.vision_chunks import (
    ImageChunk,
    PlacedImage,
    TextChunk,
    new_marker,
    placed_images,
    prompt_tokens,
    resume_point,
    row_position,
)
from tests.libmtmd_reference import libmtmd_path
from tests.vision_projector import QWEN2VL_VISION, projector_file, text_model_file

VISION = QWEN2VL_VISION.key
GREEDY_TOKENS = 10
# small pictures keep the test fast: Qwen2-VL's images keep their size (rounded to 28 px), one row per
# 28 x 28 pixels: 150 x 100 is a 5 x 4 grid (20 rows, 5 positions), 112 x 84 a 4 x 3 one (12 rows, 4)
WIDE, SMALL = (150, 100), (112, 84)


def picture(seed: int, size: tuple[int, int]) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, "PNG")
    return out.getvalue()


def chat(*turns: str) -> str:
    roles = ["user", "assistant"] * len(turns)
    body = "".join(f"<|im_start|>{role}\n{text}<|im_end|>\n" for role, text in zip(roles, turns, strict=False))
    return body + "<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def qwen2vl():
    model = LlamaModel(text_model_file(QWEN2VL_VISION))
    vision = VisionContext(model, projector_file(QWEN2VL_VISION), n_threads=2)
    yield model, vision
    vision.close()  # before the model: the mtmd context points into its weights
    model.close()


@pytest.fixture(scope="module")
def pictures() -> tuple[DecodedImage, DecodedImage]:
    return decode_image(picture(1, WIDE)), decode_image(picture(2, SMALL))


def new_context(model: LlamaModel, n_batch: int = 512) -> LlamaContext:
    return LlamaContext(model, ContextParams(n_ctx=1024, n_batch=n_batch, n_seq_max=2, n_threads=2))


# --- rows and positions -----------------------------------------------------------------


def stand_in(start: int, n_tokens: int, n_pos: int) -> PlacedImage:
    return PlacedImage(start, SimpleNamespace(n_tokens=n_tokens, n_pos=n_pos))  # type: ignore[arg-type]


def test_rows_map_to_positions_through_the_prompt_s_images():
    images = [stand_in(3, 20, 5), stand_in(30, 12, 4)]  # text 0..2, image, text 23..29, image, text 42..
    assert [row_position(images, row) for row in (0, 2, 3)] == [0, 2, 3]
    assert {row_position(images, row) for row in range(3, 23)} == {3}  # every row at the image's first position
    assert row_position(images, 23) == 3 + 5  # the text after it: from pos + n_pos on
    assert row_position(images, 30) == 30 - 15 and row_position(images, 35) == 15
    assert row_position(images, 42) == 42 - 15 - 8 and row_position(images, 100) == 100 - 23
    normal = [stand_in(3, 64, 64), stand_in(80, 64, 64)]  # without M-RoPE: a row's position is its index
    assert all(row_position(normal, row) == row for row in range(200))


def test_the_qwen2vl_model_places_images_on_a_grid(qwen2vl, pictures):
    model, vision = qwen2vl
    assert vision.uses_mrope and vision.n_embd == 896
    marker = new_marker()
    chunks = vision.prepare(chat(f"Look: {marker} and {marker}"), list(pictures), marker)
    assert [type(chunk) for chunk in chunks] == [TextChunk, ImageChunk, TextChunk, ImageChunk, TextChunk]
    wide, small = chunks[1], chunks[3]
    assert isinstance(wide, ImageChunk) and isinstance(small, ImageChunk)
    assert (wide.n_tokens, wide.n_pos, small.n_tokens, small.n_pos) == (20, 5, 12, 4)
    # libmtmd frames Qwen's images with its vision tokens
    assert model.token_bytes(chunks[0].tokens[-1], special=True) == b"<|vision_start|>"
    assert model.token_bytes(chunks[2].tokens[0], special=True) == b"<|vision_end|>"
    rows = vision.encode(wide)
    assert rows.shape == (20, 896) and np.isfinite(rows).all()


# --- the same result as libmtmd's own path ------------------------------------------------


def greedy(ctx: LlamaContext, pos: int, logits: np.ndarray) -> list[int]:
    tokens = []
    for _ in range(GREEDY_TOKENS):
        tokens.append(int(np.argmax(logits)))
        ctx.batch.clear()
        ctx.batch.add([tokens[-1]], pos, 0, 0)
        assert ctx.decode() == 0
        pos += 1
        logits = ctx.logits(0).copy()
    return tokens


def feed(vision: VisionContext, ctx: LlamaContext, chunks, start: int, end: int) -> np.ndarray | None:
    """Decode the prompt's rows [start, end) as sequence 0, at the positions ``row_position`` gives
    them, in batches of at most the context's size (an image's rows, whole, by ``decode_embeddings``,
    which cuts them so too); the logits of the last text token."""
    images = placed_images(chunks)
    at, last = 0, None
    for chunk in chunks:
        size = len(chunk.tokens) if isinstance(chunk, TextChunk) else chunk.n_tokens
        low, high = max(start, at), min(end, at + size)
        if low < high and isinstance(chunk, TextChunk):
            for piece in range(low, high, ctx.n_batch):
                tokens = list(chunk.tokens[piece - at:min(high, piece + ctx.n_batch) - at])
                ctx.batch.clear()
                ctx.batch.add(tokens, row_position(images, piece), 0, len(tokens) - 1)
                assert ctx.decode() == 0
            last = ctx.logits(ctx.batch.size - 1).copy()
        elif low < high:
            assert (low, high) == (at, at + size), "an image is decoded whole"
            assert vision.decode_embeddings(ctx, 0, row_position(images, at), vision.encode(chunk), chunk) == 0
        at += size
    return last


def prefill(vision: VisionContext, ctx: LlamaContext, chunks, cuts: list[int]) -> np.ndarray | None:
    last = None
    for start, end in zip(cuts, cuts[1:], strict=False):
        last = feed(vision, ctx, chunks, start, end)
    return last


# the 20-row image in one batch, or cut in two (n_batch 16, as libmtmd's helper cuts it: its rows
# share a position, so the second batch starts at the position the first ended at)
@pytest.mark.parametrize(("n_images", "n_batch"), [(1, 512), (2, 512), (2, 16)],
                         ids=["one-image", "two-images", "two-images-cut-in-batches-of-16"])
def test_same_logits_and_greedy_tokens_as_libmtmd_s_helper(qwen2vl, pictures, n_images, n_batch):
    """Text before, between and after the images; each path in an empty cache, in the helper's cuts
    (each chunk from its start, in batches of the context's size)."""
    _, vision = qwen2vl
    marker = new_marker()
    text = (chat(f"{marker}\nWhat is in this image?", "A photo.", f"And here?\n{marker}\nCompare them.")
            if n_images == 2 else chat(f"Look at this: {marker}\nWhat is in it? Say it in French."))
    images = list(pictures[:n_images])
    chunks = vision.prepare(text, images, marker)
    rows = len(prompt_tokens(chunks))
    cuts = [0]
    for chunk in chunks:
        cuts.append(cuts[-1] + (len(chunk.tokens) if isinstance(chunk, TextChunk) else chunk.n_tokens))
    ctx = new_context(vision.model, n_batch)
    try:
        ours = prefill(vision, ctx, chunks, cuts)
        assert ours is not None
        positions = row_position(placed_images(chunks), rows)
        assert positions == rows - sum(c.n_tokens - c.n_pos for c in chunks if isinstance(c, ImageChunk))
        assert llama.llama_memory_seq_pos_max(llama.llama_get_memory(ctx.handle), 0) == positions - 1
        our_tokens = greedy(ctx, positions, ours)
        ctx.clear()
        theirs, their_end = libmtmd_path(vision, ctx, text.replace(marker, mtmd.mtmd_default_marker().decode()),
                                         images)
        assert their_end == positions  # fewer positions than rows: 15 (and 8) fewer here
        assert np.array_equal(ours, theirs)  # bit for bit
        assert our_tokens == greedy(ctx, their_end, theirs)
        assert len(set(our_tokens)) > 1  # a real continuation, not one token repeated
    finally:
        ctx.close()


def test_a_follow_up_turn_resumed_across_an_m_rope_image_gives_the_cold_prompt_s_logits(qwen2vl, pictures):
    """The first turn's cells kept up to its end (or cut inside the image: back to the image's start)
    are cut by position and the second turn prefilled from there: the logits of the same prompt
    prefilled cold in the same cuts, bit for bit."""
    _, vision = qwen2vl
    marker = new_marker()
    turn1 = vision.prepare(chat(f"{marker}\nWhat is this?"), [pictures[0]], marker)
    turn2 = vision.prepare(chat(f"{marker}\nWhat is this?", "A cat.", "Sure?"), [pictures[0]], marker)
    image_start, end1, end2 = len(turn2[0].tokens), len(prompt_tokens(turn1)), len(prompt_tokens(turn2))
    assert prompt_tokens(turn2)[:end1] == prompt_tokens(turn1)
    images = placed_images(turn2)
    ctx = new_context(vision.model)
    try:
        for kept, cold_cuts in [(end1, [0, end1 - 1, end1, end2 - 1, end2]),
                                (image_start + 7, [0, image_start, end2 - 1, end2])]:
            ctx.clear()
            cold = prefill(vision, ctx, turn2, cold_cuts)
            ctx.clear()
            prefill(vision, ctx, turn1, [0, image_start, end1 - 1, end1])
            resume = resume_point(turn2, kept)
            assert resume == (kept if kept == end1 else image_start)  # never inside an image
            assert ctx.remove_from(0, row_position(images, resume))
            assert np.array_equal(prefill(vision, ctx, turn2, [resume, end2 - 1, end2]), cold)
    finally:
        ctx.close()


def pos_max(ctx: LlamaContext, seq_id: int) -> int:
    return llama.llama_memory_seq_pos_max(llama.llama_get_memory(ctx.handle), seq_id)


def test_slots_cut_and_share_an_m_rope_prompt_s_cells_by_position(qwen2vl, pictures):
    """The slot pool cuts a slot back to a prompt's row, shares a busy slot's prefix and restores a
    cached one by KV position: after an M-RoPE image a row's position is 15 lower than its index here,
    so a cut at the row's index would leave stale cells behind."""
    model, vision = qwen2vl
    marker = new_marker()
    turn1 = vision.prepare(chat(f"{marker}\nWhat is this?"), [pictures[0]], marker)
    turn2 = vision.prepare(chat(f"{marker}\nWhat is this?", "A cat.", "Sure?"), [pictures[0]], marker)
    tokens1, tokens2 = prompt_tokens(turn1), prompt_tokens(turn2)
    end1, image_start = len(tokens1), len(turn1[0].tokens)
    images = placed_images(turn2)

    def positions(row: int) -> int:
        return row_position(images, row)

    answer = model.tokenize("The dog.", add_special=False)  # an answer the next turn does not repeat
    ctx = LlamaContext(model, ContextParams(n_ctx=2048, n_batch=512, n_seq_max=3, n_threads=2))
    pool = SlotPool(ctx, 3, n_swa=0, cache=PromptCache(256 * 2**20, PromptCachePool()))
    try:
        first, reused = pool.acquire(tokens1, positions=positions)
        assert (first.seq_id, reused) == (0, 0)
        prefill(vision, ctx, turn1, [0, end1])
        ctx.batch.clear()
        ctx.batch.add(answer, positions(end1), 0, len(answer))
        assert ctx.decode() == 0
        first.tokens = tokens1 + answer
        assert pos_max(ctx, 0) == positions(end1) + len(answer) - 1 == end1 - 15 + len(answer) - 1
        # a busy slot's prefix shared with another sequence: its cells up to the image and the first turn
        shared, reused = pool.acquire(tokens2, positions=positions)
        assert (shared.seq_id, reused) == (1, end1) and pos_max(ctx, 1) == positions(end1) - 1
        pool.release(first)
        pool.release(shared)
        # the first slot (the least recently used of two as good) taken again: cut back to the shared
        # prefix, its answer's cells dropped
        again, reused = pool.acquire(tokens2, positions=positions)
        assert (again.seq_id, reused) == (0, end1) and pos_max(ctx, 0) == positions(end1) - 1
        # resumed inside the image: back to its start, no cell of it kept
        assert pool.keep(again, resume_point(turn2, image_start + 7), positions) == image_start
        assert pos_max(ctx, again.seq_id) == image_start - 1
        pool.release(again)
        # the first turn saved to the RAM cache, restored into a slot and cut by position
        pool.forget_all()
        pool.cache.put(tokens1 + answer, _saved(vision, ctx, turn1, answer))
        restored, reused = pool.acquire(tokens2, positions=positions)
        assert reused == end1 and pos_max(ctx, restored.seq_id) == positions(end1) - 1
    finally:
        ctx.close()


def _saved(vision: VisionContext, ctx: LlamaContext, turn1, answer: list[int]) -> np.ndarray:
    """Sequence 0's state after the first turn and its answer (then the cache is emptied)."""
    end1 = len(prompt_tokens(turn1))
    prefill(vision, ctx, turn1, [0, end1])
    ctx.batch.clear()
    ctx.batch.add(answer, row_position(placed_images(turn1), end1), 0, len(answer))
    assert ctx.decode() == 0
    state = ctx.save_sequence(0)
    ctx.clear()
    return state

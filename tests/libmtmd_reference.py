"""llama.cpp's own multimodal path, run in the test process, to compare the server's image plumbing with.

``mtmd_tokenize`` (with its default marker) cuts the prompt, libmtmd's helper evaluates each chunk
(``mtmd_helper_eval_chunk_single``: positions as the projector wants them, M-RoPE's ``pos + n_pos``
past an image included), then greedy decoding. The chunks are evaluated in the cuts the server's
scheduler makes (a context of its size; each chunk whole, the prompt's last token in a decode of its
own, docs/ENGINE.md): rows computed in other cuts round otherwise, and a comparison would then judge
rounding, not plumbing.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import llama_cpp as llama
import llama_cpp.mtmd_cpp as mtmd
import numpy as np

from studiolo.engine.images import DecodedImage, decode_image
from studiolo.engine.llama import ContextParams, LlamaContext, LlamaModel
from studiolo.engine.vision import VisionContext


def bitmaps_of(images: list[DecodedImage]) -> list:
    """libmtmd's bitmaps over the images' RGB bytes (free each with ``mtmd_bitmap_free``)."""
    return [mtmd.mtmd_bitmap_init(image.width, image.height,
                                  ctypes.cast(ctypes.c_char_p(image.rgb), ctypes.POINTER(ctypes.c_uint8)))
            for image in images]


def libmtmd_path(vision: VisionContext, ctx: LlamaContext, text: str, images: list[DecodedImage],
                 seq_id: int = 0) -> tuple[np.ndarray, int]:
    """``mtmd_tokenize`` with its default marker, then ``mtmd_helper_eval_chunks`` (which moves past an
    image by its ``n_pos``) into ``seq_id``: the last logits and the next position."""
    bitmaps = bitmaps_of(images)
    chunks = mtmd.mtmd_input_chunks_init()
    try:
        data = text.encode()
        text_input = mtmd.mtmd_input_text(data, len(data), False, True)
        array = (mtmd.mtmd_bitmap_p_ctypes * len(bitmaps))(*bitmaps)
        assert mtmd.mtmd_tokenize(vision.handle, chunks, ctypes.byref(text_input), array, len(bitmaps)) == 0
        end = llama.llama_pos(0)
        assert mtmd.mtmd_helper_eval_chunks(vision.handle, ctx.handle, chunks, 0, seq_id, ctx.n_batch, True,
                                            ctypes.byref(end)) == 0
    finally:
        mtmd.mtmd_input_chunks_free(chunks)
        for bitmap in bitmaps:
            mtmd.mtmd_bitmap_free(bitmap)
    logits = np.ctypeslib.as_array(llama.llama_get_logits_ith(ctx.handle, -1), shape=(ctx.model.n_vocab,))
    return logits.copy(), end.value


@dataclass(frozen=True)
class LibmtmdRun:
    text: str  # the greedy continuation
    prompt_positions: int  # positions the prompt took (rows, or fewer past an M-RoPE image)
    logprobs: list[float]  # each generated token's log-probability


def libmtmd_greedy(model_file: Path, projector: Path, prompt: str, images: list[bytes], n_tokens: int,
                   n_ctx: int = 4 * 4096) -> LibmtmdRun:
    model = LlamaModel(model_file)
    vision = VisionContext(model, projector, n_threads=2)
    ctx = LlamaContext(model, ContextParams(n_ctx=n_ctx, n_batch=512, n_seq_max=4, n_threads=2))
    bitmaps = bitmaps_of([decode_image(data) for data in images])
    chunks = mtmd.mtmd_input_chunks_init()
    try:
        data = prompt.encode()
        text = mtmd.mtmd_input_text(data, len(data), model.add_bos, True)
        array = (mtmd.mtmd_bitmap_p_ctypes * len(bitmaps))(*bitmaps)
        assert mtmd.mtmd_tokenize(vision.handle, chunks, ctypes.byref(text), array, len(bitmaps)) == 0
        pos, n_chunks = 0, mtmd.mtmd_input_chunks_size(chunks)
        for i in range(n_chunks - 1):
            end = llama.llama_pos(pos)  # the helper adds a text chunk's length to it, sets an image's end
            assert mtmd.mtmd_helper_eval_chunk_single(vision.handle, ctx.handle, mtmd.mtmd_input_chunks_get(chunks, i),
                                                      pos, 0, 512, False, ctypes.byref(end)) == 0
            pos = end.value
        last = mtmd.mtmd_input_chunks_get(chunks, n_chunks - 1)  # text: the assistant's header
        count = ctypes.c_size_t(0)
        pointer = mtmd.mtmd_input_chunk_get_tokens_text(last, ctypes.byref(count))
        tail = [int(t) for t in pointer[: count.value]]
        ctx.batch.clear()
        ctx.batch.add(tail[:-1], pos, 0, len(tail) - 1)
        assert ctx.decode() == 0
        pos += len(tail) - 1
        prompt_positions, token, out, logprobs = pos + 1, tail[-1], b"", []
        for step in range(n_tokens + 1):
            if step:
                out += model.token_bytes(token)
            ctx.batch.clear()
            ctx.batch.add([token], pos, 0, 0)
            assert ctx.decode() == 0
            pos += 1
            logits = ctx.logits(0).astype(np.float64)
            token = int(np.argmax(logits))
            if step < n_tokens:
                logprobs.append(float(logits[token] - logits.max() - np.log(np.exp(logits - logits.max()).sum())))
            if model.is_eog(token):
                break
        return LibmtmdRun(out.decode(errors="replace"), prompt_positions, logprobs)
    finally:
        mtmd.mtmd_input_chunks_free(chunks)
        for bitmap in bitmaps:
            mtmd.mtmd_bitmap_free(bitmap)
        ctx.close()
        vision.close()
        model.close()

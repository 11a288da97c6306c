"""libmtmd for one loaded model: prompts with images cut into chunks, images encoded, their KV written.

A ``VisionContext`` owns the mtmd context of a text model and its projector (``mmproj-*.gguf``). The
engine uses it in three steps (docs/ENGINE.md, "Vision"):

1. ``prepare(text, images, marker)``: the rendered prompt, with ``marker`` where each image goes, in
   chunks: ``TextChunk`` (token ids) and ``ImageChunk`` (an image preprocessed by libmtmd: how many
   embedding rows it will take, how many positions, its digest and placeholder ids). Thread-safe.
2. ``encode(chunk)``: the projector's embeddings of an image chunk, ``n_tokens x n_embd`` floats
   (the vision encoder runs here: call it from the engine's compute thread).
3. ``decode_embeddings(ctx, seq_id, pos, embeddings, chunk)``: the embeddings into the KV cache,
   in embedding-only batches at the positions and with the attention mode the projector needs.

Markers are not libmtmd's: ``mtmd_tokenize`` would turn every ``<__media__>`` of the text into an
image slot, a user's too. The prompt is cut at a marker the caller picks per request
(``new_marker()``, unguessable) and the parts go to ``mtmd_tokenize_from_parts``, which reads the
text as text: a client writing any marker string gets those characters, never an image slot.

The chunks, their placeholder ids and the prefix-cache helpers are in ``vision_chunks.py``.
"""

from __future__ import annotations

import ctypes
import logging
import re
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import llama_cpp as llama
import llama_cpp.mtmd_cpp as mtmd
import numpy as np

from studiolo.domain.errors import InternalError, InvalidRequest
from studiolo.engine.images import DecodedImage
from studiolo.engine.llama import LlamaContext, LlamaModel, ModelClosed, ModelLoadError
from studiolo.engine.vision_batch import EmbeddingBatch
from studiolo.engine.vision_chunks import (
    ImageChunk,
    PromptChunk,
    TextChunk,
    Tokenize,
    append_text,
    placeholder_ids,
)

_mtmd_logger = logging.getLogger("studiolo.mtmd")
_LOG_LEVELS = {3: logging.WARNING, 4: logging.ERROR}  # ggml_log_level: WARN 3, ERROR 4, CONT 5
_last_level = [0]
# What libmtmd says it loads and allocates ("model size: 0.43 MiB", "CPU compute buffer size = 0.22
# MiB"): it has no C call for it. Several lines each when a projector has several encoders: summed.
_SIZES = re.compile(rb"(model size|compute buffer size)\s*[:=]\s*([0-9.]+) MiB")
_sizes = threading.local()  # .found: a dict while this thread loads a projector


@llama.llama_log_callback
def _forward_mtmd_log(level, text, user_data):  # noqa: ANN001 - ctypes signature
    """libmtmd and its helpers narrate every load and encode on stderr: keep warnings and errors, in our
    log, and the sizes a projector's load reports."""
    if level == 5:
        level = _last_level[0]
    _last_level[0] = level
    found = getattr(_sizes, "found", None)
    if found is not None and (size := _SIZES.search(text)):
        kind = "weights" if size.group(1) == b"model size" else "compute"
        found[kind] = found.get(kind, 0) + round(float(size.group(2)) * 2**20)
    python_level = _LOG_LEVELS.get(level)
    if python_level is not None:
        _mtmd_logger.log(python_level, text.decode("utf-8", errors="replace").rstrip())


mtmd.mtmd_helper_log_set(_forward_mtmd_log, ctypes.c_void_p(0))  # sets libmtmd's own log too


class ProjectorLoadError(ModelLoadError):
    """The vision projector could not be loaded, or does not fit its text model."""
    code = "projector_load_failed"


class ImageEncodeFailed(InternalError):
    code = "image_encode_failed"


class ImagePromptError(InvalidRequest):
    """libmtmd refused the prompt's images (a preprocessing error)."""
    code = "invalid_image"


class VisionContext:
    """libmtmd's context for a loaded text model and its projector; close it before the model."""

    def __init__(self, model: LlamaModel, projector: Path, n_threads: int, *, warmup: bool = True):
        model.require_open()
        if not projector.is_file():
            raise ProjectorLoadError(f"vision projector not found: {projector}")
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = False
        params.n_threads = n_threads
        params.print_timings = False
        params.warmup = warmup  # one encode of a blank image at load, so the first request's is not slower
        _sizes.found = {}
        try:
            handle = mtmd.mtmd_init_from_file(str(projector).encode(), model.handle, params)
            # bytes of the projector's "weights" and "compute" buffer, as libmtmd logged them (for the
            # memory guard; empty if it did not)
            self.memory_bytes: dict[str, int] = _sizes.found
        finally:
            _sizes.found = None
        if not handle:
            raise ProjectorLoadError(f"libmtmd could not load the projector {projector.name} for {model.path.name} "
                                     "(corrupt, of another embedding size, or an unsupported projector)")
        if not mtmd.mtmd_support_vision(handle):
            mtmd.mtmd_free(handle)
            raise ProjectorLoadError(f"{projector.name} is not a vision projector (audio only)")
        self.model = model
        self.projector = projector
        self._handle = handle
        self._lock = threading.Lock()  # close() waits for a prepare() of another thread
        self.n_embd: int = llama.llama_model_n_embd_inp(model.handle)
        self.uses_mrope = bool(mtmd.mtmd_decode_use_mrope(handle))
        self._batch: EmbeddingBatch | None = None

    @property
    def handle(self) -> Any:
        """The mtmd_context (for libmtmd's own helpers, which the tests compare with)."""
        return self._require_open()

    def close(self) -> None:
        """Free the mtmd context; it points into the model's weights, so this comes before model.close()."""
        with self._lock:
            if self._handle:
                mtmd.mtmd_free(self._handle)
                self._handle = None
            if self._batch is not None:
                self._batch.close()
                self._batch = None

    def _require_open(self) -> Any:
        if not self._handle:  # unloaded with its model while a request was getting ready
            raise ModelClosed("the model was unloaded; send the request again to load it")
        return self._handle

    # --- prompts --------------------------------------------------------------------

    def prepare(self, text: str, images: Sequence[DecodedImage], marker: str, *,
                add_special: bool = False, tokenize: Tokenize | None = None) -> list[PromptChunk]:
        """The prompt ``text`` in chunks, the i-th ``marker`` standing for ``images[i]``."""
        pieces = text.split(marker)
        if len(pieces) - 1 != len(images):
            raise ValueError(f"the prompt has {len(pieces) - 1} image markers for {len(images)} images")
        parts: list[str | DecodedImage] = []
        for index, piece in enumerate(pieces):
            if piece:
                parts.append(piece)
            if index < len(images):
                parts.append(images[index])
        return self.prepare_parts(parts, add_special=add_special, tokenize=tokenize)

    def prepare_parts(self, parts: Sequence[str | DecodedImage], *, add_special: bool = False,
                      tokenize: Tokenize | None = None) -> list[PromptChunk]:
        """Text parts (special tokens parsed, as the template's text is) and images, in order, in chunks.

        Without ``tokenize`` libmtmd tokenizes the text too. With it, text parts are the caller's to
        tokenize (the service's tokenizer works in pieces, bounded and cancellable; libmtmd's is one
        llama_tokenize call per part, which is what ``tokenize`` must give: no BOS, special tokens
        parsed) and libmtmd sees one image at a time: the same chunks either way (but for HunyuanVL,
        whose positions number the prompt's images: libmtmd must see them all at once there)."""
        if tokenize is None:
            return self._tokenize_parts(parts, add_special, 0, Counter())
        if add_special:
            raise ValueError("with a tokenize function, the caller's text carries BOS itself")
        chunks: list[PromptChunk] = []
        ordinals: Counter[str] = Counter()
        image_index = 0
        for part in parts:
            if isinstance(part, str):
                append_text(chunks, tuple(tokenize(part)))
                continue
            for chunk in self._tokenize_parts([part], False, image_index, ordinals):
                if isinstance(chunk, TextChunk):  # an image's own begin and end tokens (Gemma 3's)
                    append_text(chunks, chunk.tokens)
                else:
                    chunks.append(chunk)
            image_index += 1
        return chunks

    def _tokenize_parts(self, parts: Sequence[str | DecodedImage], add_special: bool, first_image: int,
                        ordinals: Counter[str]) -> list[PromptChunk]:
        keep: list[Any] = []  # the C structs and buffers, alive until libmtmd has read them
        bitmaps: list[Any] = []
        pointers = []
        with self._lock:
            handle = self._require_open()
            chunks = mtmd.mtmd_input_chunks_init()
            try:
                for part in parts:
                    if isinstance(part, str):
                        pointers.append(ctypes.pointer(_text_part(part, keep)))
                    else:
                        bitmaps.append(_bitmap(part, first_image + len(bitmaps)))
                        pointers.append(ctypes.pointer(mtmd.mtmd_input_part(None, bitmaps[-1])))
                array = (ctypes.POINTER(mtmd.mtmd_input_part) * len(pointers))(*pointers)
                status = mtmd.mtmd_tokenize_from_parts(handle, chunks, array, len(pointers), add_special)
                if status != 0:
                    raise ImagePromptError(f"libmtmd could not preprocess the prompt's images (status {status})")
                return self._read_chunks(chunks, ordinals)
            finally:
                for bitmap in bitmaps:
                    mtmd.mtmd_bitmap_free(bitmap)
                mtmd.mtmd_input_chunks_free(chunks)

    def _read_chunks(self, chunks: Any, ordinals: Counter[str]) -> list[PromptChunk]:
        result: list[PromptChunk] = []
        for i in range(mtmd.mtmd_input_chunks_size(chunks)):
            chunk = mtmd.mtmd_input_chunks_get(chunks, i)
            kind = mtmd.mtmd_input_chunk_get_type(chunk)
            if kind == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                count = ctypes.c_size_t(0)
                tokens = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(count))
                result.append(TextChunk(tuple(tokens[: count.value])))
            elif kind == mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                result.append(self._image_chunk(chunk, ordinals))
            else:
                raise ImagePromptError(f"libmtmd made a chunk of type {kind}, not text or image")
        return result

    def _image_chunk(self, chunk: Any, ordinals: Counter[str]) -> ImageChunk:
        index, digest = mtmd.mtmd_input_chunk_get_id(chunk).decode().split(":", 1)
        n_tokens = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
        placeholders = placeholder_ids(digest, ordinals[digest], n_tokens)
        ordinals[digest] += 1
        return ImageChunk(
            image_index=int(index), digest=digest, n_tokens=n_tokens,
            n_pos=mtmd.mtmd_input_chunk_get_n_pos(chunk), placeholders=placeholders,
            non_causal=bool(mtmd.mtmd_decode_use_non_causal(self._handle, chunk)),
            _handle=mtmd.mtmd_input_chunk_copy(chunk),
        )

    # --- encoding and KV ------------------------------------------------------------

    def encode(self, chunk: ImageChunk) -> np.ndarray:
        """The image's embeddings (a copy), ``chunk.n_tokens x n_embd`` float32. Not thread-safe: the
        engine's compute thread runs it, between two steps."""
        handle = self._require_open()
        if mtmd.mtmd_encode_chunk(handle, chunk.handle) != 0:
            raise ImageEncodeFailed(f"libmtmd could not encode image {chunk.image_index}")
        pointer = mtmd.mtmd_get_output_embd(handle)
        return np.ctypeslib.as_array(pointer, shape=(chunk.n_tokens, self.n_embd)).copy()

    def decode_embeddings(self, ctx: LlamaContext, seq_id: int, pos: int, embeddings: np.ndarray,
                          chunk: ImageChunk, *, first_row: int = 0, n_rows: int | None = None,
                          logits_last: bool = False) -> int:
        """Write rows ``first_row..`` of an image's embeddings into the KV cache as ``seq_id``; the
        image's first row sits at position ``pos``. Returns llama_decode's status (0: done).

        Embedding-only batches of at most the context's batch size, as libmtmd's helper cuts them; a
        non-causal image (Gemma 3's) goes whole into one batch, with causal attention off for it."""
        n_rows = chunk.n_tokens - first_row if n_rows is None else n_rows
        if chunk.non_causal and (first_row != 0 or n_rows != chunk.n_tokens):
            raise ValueError("a non-causal image is decoded whole")
        if chunk.non_causal and chunk.n_tokens > ctx.n_batch:
            raise ValueError(f"a non-causal image of {chunk.n_tokens} rows needs a batch that large "
                             f"(the context's is {ctx.n_batch})")
        positions = self._positions(chunk, pos, first_row, n_rows)
        batch = self._embedding_batch(ctx)
        if chunk.non_causal:
            llama.llama_set_causal_attn(ctx.handle, False)
        try:
            for start in range(0, n_rows, ctx.n_batch):
                stop = min(start + ctx.n_batch, n_rows)
                rows = slice(first_row + start, first_row + stop)
                batch.fill(embeddings[rows], positions[:, start:stop], seq_id,
                           logits_last=logits_last and stop == n_rows)
                status = llama.llama_decode(ctx.handle, batch.raw)
                if status != 0:
                    return int(status)
        finally:
            if chunk.non_causal:
                llama.llama_set_causal_attn(ctx.handle, True)
        return 0

    def _positions(self, chunk: ImageChunk, pos: int, first_row: int, n_rows: int) -> np.ndarray:
        """Rows' positions, one row per position section (1, or 4 for M-RoPE's t, y, x, z)."""
        if not self.uses_mrope:
            return np.arange(pos + first_row, pos + first_row + n_rows, dtype=np.int32)[None, :]
        # M-RoPE (Qwen2-VL and later): libmtmd places each row on the image's grid: t is ``pos`` for
        # every row, y and x its row and column added to it (tests/test_vision_mrope.py)
        image_tokens = mtmd.mtmd_input_chunk_get_tokens_image(chunk.handle)
        sections = np.empty((4, n_rows), dtype=np.int32)
        for i in range(n_rows):
            at = mtmd.mtmd_image_tokens_get_decoder_pos(image_tokens, pos, first_row + i)
            sections[:, i] = (at.t, at.y, at.x, at.z)
        return sections

    def _embedding_batch(self, ctx: LlamaContext) -> EmbeddingBatch:
        if self._batch is None or self._batch.capacity < ctx.n_batch:
            if self._batch is not None:
                self._batch.close()
            self._batch = EmbeddingBatch(ctx.n_batch, self.n_embd, 4 if self.uses_mrope else 1)
        return self._batch


def _text_part(text: str, keep: list[Any]) -> Any:
    data = text.encode("utf-8")
    text_struct = mtmd.mtmd_input_text(data, len(data), False, True)
    part = mtmd.mtmd_input_part(ctypes.pointer(text_struct), None)
    keep.extend((data, text_struct, part))
    return part


def _bitmap(image: DecodedImage, index: int) -> Any:
    """An mtmd bitmap (libmtmd copies the pixels) whose id says which image it is and its digest."""
    pixels = ctypes.cast(ctypes.c_char_p(image.rgb), ctypes.POINTER(ctypes.c_uint8))
    bitmap = mtmd.mtmd_bitmap_init(image.width, image.height, pixels)
    if not bitmap:
        raise ImagePromptError(f"libmtmd refused image {index} ({image.width} x {image.height})")
    mtmd.mtmd_bitmap_set_id(bitmap, f"{index}:{image.digest}".encode())
    return bitmap

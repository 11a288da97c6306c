"""Thin wrappers over llama-cpp-python's low-level (ctypes) API.

Everything that touches ctypes lives here, so the rest of the engine reads as plain
Python. A ``LlamaModel`` holds the weights and vocabulary (immutable, safe to read from
any thread); a ``LlamaContext`` holds the KV cache and must only be used by the engine's
worker thread.
"""

from __future__ import annotations

import ctypes
import logging
import re
import threading
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp as llama
import numpy as np

from studiolo.domain.errors import InternalError, Unavailable

_backend_lock = threading.Lock()
_backend_ready = False


class ModelLoadError(InternalError):
    """The GGUF could not be loaded (missing, truncated, corrupt or unsupported)."""
    code, param = "model_load_failed", "model"


def _init_backend() -> None:
    global _backend_ready
    with _backend_lock:
        if not _backend_ready:
            llama.llama_backend_init()
            _backend_ready = True


# ggml_log_level: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (continues the last line)
_LLAMA_LOG_LEVELS = {3: logging.WARNING, 4: logging.ERROR}
_llama_logger = logging.getLogger("studiolo.llama")
_last_llama_level = [0]
# What llama.cpp says it allocated while a context is created ("CPU KV buffer size = 45.00 MiB",
# "CPU compute buffer size = ...", "CPU  output buffer size = ..."): the C API has no call for it.
_BUFFER_SIZE = re.compile(rb"\b(KV|RS|compute|output) buffer size =\s*([0-9.]+) MiB")
_buffer_sizes = threading.local()  # .sizes: a dict while this thread creates a context


@llama.llama_log_callback
def _forward_llama_log(level, text, user_data):  # noqa: ANN001 - ctypes signature
    """llama.cpp narrates every load on stderr; keep its warnings and errors, in our log, and the
    sizes of the buffers a context allocates."""
    if level == 5:
        level = _last_llama_level[0]
    _last_llama_level[0] = level
    sizes = getattr(_buffer_sizes, "sizes", None)
    if sizes is not None and (found := _BUFFER_SIZE.search(text)):
        kind = found.group(1).decode().lower()
        sizes[kind] = sizes.get(kind, 0) + round(float(found.group(2)) * 2**20)
    python_level = _LLAMA_LOG_LEVELS.get(level)
    if python_level is not None:
        _llama_logger.log(python_level, text.decode("utf-8", errors="replace").rstrip())


llama.llama_log_set(_forward_llama_log, ctypes.c_void_p(0))


def bert_normalized(text: str) -> str:
    """Text as an uncased BERT tokenizer normalizes it before WordPiece: decomposed (NFD), accents
    (combining marks) removed, lower case. llama.cpp lowercases and drops accents itself, but its
    decomposition misses Hangul syllables, which BERT splits into jamo: '서울' was 2 tokens instead
    of 6, and the vector far off (cosine 0.61 with sentence-transformers'); normalized first, the
    two tokenizers agree."""
    decomposed = unicodedata.normalize("NFD", text)
    return "".join(char for char in decomposed if unicodedata.category(char) != "Mn").lower()


# a bytes object (33 bytes and its text), an int key, and a slot of the dict (about 2 x 3 words)
PIECE_ENTRY_BYTES = 33 + 28 + 48


class ModelClosed(Unavailable):
    """The model was closed (unloaded) while a request was still getting ready to use it."""
    code, param = "model_unloaded", "model"


def _progress_callback(on_progress: Callable[[float], None]) -> Any:
    """llama.cpp's progress callback around ``on_progress``. Returning false would abort the load, and
    an exception raised in a ctypes callback is printed and makes it return false: none gets out."""

    failed = False  # after a failure, no more calls (and one line in the log, not hundreds)

    @llama.llama_progress_callback
    def progress(fraction, user_data):  # noqa: ANN001 - ctypes signature
        nonlocal failed
        if not failed:
            try:
                on_progress(float(fraction))
            except BaseException:  # noqa: BLE001 - never across into C; the load goes on
                failed = True
                _llama_logger.exception("a load progress callback failed; the load goes on without it")
        return True

    return progress


class LlamaModel:
    """Weights and vocabulary of one GGUF file."""

    def __init__(self, path: Path, on_progress: Callable[[float], None] | None = None):
        """Load ``path``; ``on_progress`` (called on this thread) gets llama.cpp's fractions 0..1 as
        the tensors load."""
        _init_backend()
        if not path.is_file():
            raise ModelLoadError(f"model file not found: {path}")
        params = llama.llama_model_default_params()
        # a local: the C callback object lives until the load returns, and no longer
        callback = _progress_callback(on_progress) if on_progress is not None else None
        if callback is not None:
            params.progress_callback = callback
        handle = llama.llama_model_load_from_file(str(path).encode(), params)
        del callback
        if not handle:
            raise ModelLoadError(f"llama.cpp could not load {path.name} (corrupt, truncated or unsupported GGUF)")
        self.path = path
        self._handle = handle
        self._vocab = llama.llama_model_get_vocab(handle)
        self.n_vocab: int = llama.llama_vocab_n_tokens(self._vocab)
        self.n_ctx_train: int = llama.llama_model_n_ctx_train(handle)
        self.n_swa: int = llama.llama_model_n_swa(handle)
        self.n_embd_out: int = llama.llama_model_n_embd_out(handle)  # a pooled embedding's size
        self.has_encoder: bool = bool(llama.llama_model_has_encoder(handle))
        self.wordpiece: bool = self.meta("tokenizer.ggml.model") == "bert"  # an uncased BERT vocabulary
        self.add_bos: bool = bool(llama.llama_vocab_get_add_bos(self._vocab))
        self.bos_id: int = llama.llama_vocab_bos(self._vocab)
        self.eos_id: int = llama.llama_vocab_eos(self._vocab)
        self.sep_id: int = llama.llama_vocab_sep(self._vocab)
        self.add_eos: bool = bool(llama.llama_vocab_get_add_eos(self._vocab))
        self.add_sep: bool = bool(llama.llama_vocab_get_add_sep(self._vocab))
        self.n_cls_out: int = llama.llama_model_n_cls_out(handle)  # scores per sequence with rank pooling
        self.vocab_type: int = llama.llama_vocab_type(self._vocab)
        self.size_bytes: int = llama.llama_model_size(handle)  # its weights
        # whether the KV cache can drop a sequence's last cells (recurrent and hybrid models keep a
        # state instead): speculative decoding needs to, to take back rejected drafts
        self.can_truncate: bool = not (llama.llama_model_is_recurrent(handle) or llama.llama_model_is_hybrid(handle))
        self._pieces: dict[bool, dict[int, bytes]] = {False: {}, True: {}}
        self.pieces_bytes = 0  # what _pieces holds, roughly: bounded by the vocabulary, reported as a figure
        # held by other threads that read the vocabulary at length (llguidance's tokenizer
        # build, grammar compiles) or load adapters onto the model, so that close() waits for them
        self.vocabulary_lock = threading.RLock()
        self._adapters: dict[Path, LoraAdapter] = {}

    @property
    def handle(self):
        return self._handle

    def require_open(self) -> None:
        if not self._handle:
            raise ModelClosed("the model was unloaded; send the request again to load it")

    def close(self) -> None:
        with self.vocabulary_lock:
            if self._handle:
                llama.llama_model_free(self._handle)
                self._handle = None

    def loaded_adapter(self, path: Path) -> LoraAdapter | None:
        return self._adapters.get(path)

    def load_adapter(self, path: Path) -> LoraAdapter:
        """The LoRA adapter in ``path``, loaded onto this model once (llama.cpp frees it with the model)."""
        with self.vocabulary_lock:
            self.require_open()
            adapter = self._adapters.get(path)
            if adapter is None:
                handle = llama.llama_adapter_lora_init(self._handle, str(path).encode())
                if not handle:
                    raise ModelLoadError(
                        f"llama.cpp could not load the LoRA adapter {path.name} onto {self.path.name} "
                        "(another architecture or tensor shapes, or a corrupt file)"
                    )
                adapter = self._adapters[path] = LoraAdapter(path, handle)
            return adapter

    # --- metadata -------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        size = 1 << 16
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama.llama_model_meta_val_str(self._handle, key.encode(), buf, size)
            if n < 0:
                return None
            if n < size:
                return buf.value.decode("utf-8", errors="replace")
            size = n + 1

    def chat_template(self, name: str | None = None) -> str | None:
        """The GGUF's chat template, or its template called ``name`` (``tokenizer.chat_template.<name>``:
        a reranker's "rerank" prompt)."""
        raw = llama.llama_model_chat_template(self._handle, name.encode() if name is not None else None)
        return raw.decode("utf-8", errors="replace") if raw else None

    def architecture(self) -> str:
        return self.meta("general.architecture") or "unknown"

    # --- vocabulary -----------------------------------------------------------------

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool = True) -> list[int]:
        if self.wordpiece and not parse_special:  # plain text: no special-token markup to keep
            text = bert_normalized(text)
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buf = (llama.llama_token * capacity)()
        n = llama.llama_tokenize(self._vocab, data, len(data), buf, capacity, add_special, parse_special)
        if n < 0:  # buffer too small: -n is the size needed
            capacity = -n
            buf = (llama.llama_token * capacity)()
            n = llama.llama_tokenize(self._vocab, data, len(data), buf, capacity, add_special, parse_special)
        return list(buf[:n])

    def token_bytes(self, token: int, special: bool = False) -> bytes:
        """The token's text as UTF-8 bytes (possibly part of a character).

        Control tokens (``<|im_end|>``, ``<bos>``) render empty unless ``special``.
        """
        cache = self._pieces[special]
        piece = cache.get(token)
        if piece is None:
            buf = ctypes.create_string_buffer(64)
            n = llama.llama_token_to_piece(self._vocab, token, buf, 64, 0, special)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = llama.llama_token_to_piece(self._vocab, token, buf, -n, 0, special)
            piece = cache[token] = buf.raw[:n]
            self.pieces_bytes += PIECE_ENTRY_BYTES + len(piece)
        return piece

    def token_text_special(self, token: int) -> str:
        """The token's text with control tokens rendered, for templates' bos/eos strings."""
        if not self.is_valid_token(token):  # a model without BOS or EOS reports -1
            return ""
        buf = ctypes.create_string_buffer(128)
        n = llama.llama_token_to_piece(self._vocab, token, buf, 128, 0, True)
        return buf.raw[: max(n, 0)].decode("utf-8", errors="replace")

    def token_text(self, token: int) -> bytes:
        """The token's text as the vocabulary stores it (not rendered, not cached)."""
        return llama.llama_vocab_get_text(self._vocab, token) or b""

    def is_eog(self, token: int) -> bool:
        return bool(llama.llama_vocab_is_eog(self._vocab, token))

    def is_special(self, token: int) -> bool:
        """A control token (BOS, end of turn, ...), whose text is not part of the output."""
        return bool(llama.llama_vocab_is_control(self._vocab, token)) or self.is_eog(token)

    def is_valid_token(self, token: int) -> bool:
        return 0 <= token < self.n_vocab


@dataclass(eq=False)  # compared by identity: it names the weights a KV cell was computed with
class LoraAdapter:
    """A LoRA adapter loaded onto a model; a context applies it to the batches it decodes."""

    path: Path
    handle: Any  # llama_adapter_lora * (llama_cpp's ctypes carry no types)
    scale: float = 1.0


@dataclass
class ContextParams:
    n_ctx: int
    n_batch: int
    n_seq_max: int
    n_threads: int
    embeddings: bool = False  # pooled embeddings per sequence (the model's pooling), not logits
    rank_pooling: bool = False  # pool by rank (a reranker's head) whatever the GGUF says


class LlamaContext:
    """A llama.cpp context with one unified KV cache shared by all sequences.

    Unified means a KV cell can belong to several sequences at once: copying a prefix
    from one sequence to another (``copy_prefix``) tags the same cells with the second
    sequence id instead of copying data, which is what makes prefix reuse cheap.
    """

    def __init__(self, model: LlamaModel, params: ContextParams):
        cparams = llama.llama_context_default_params()
        cparams.n_ctx = params.n_ctx
        cparams.n_batch = params.n_batch
        cparams.n_ubatch = params.n_batch
        cparams.n_seq_max = params.n_seq_max
        cparams.n_threads = params.n_threads
        cparams.n_threads_batch = params.n_threads
        cparams.kv_unified = True
        # Keep every position in sliding-window layers too, so a cached prefix can be
        # resumed from any point (Gemma 3 would otherwise forget all but the window).
        cparams.swa_full = True
        cparams.no_perf = True
        cparams.embeddings = params.embeddings
        if params.rank_pooling:
            cparams.pooling_type = llama.LLAMA_POOLING_TYPE_RANK
        _buffer_sizes.sizes = {}
        try:
            handle = llama.llama_init_from_model(model.handle, cparams)
            # bytes per kind ("kv", "rs" for recurrent state, "compute", "output") as llama.cpp logged
            # them at creation; empty if it did not
            self.buffer_bytes: dict[str, int] = _buffer_sizes.sizes
        finally:
            _buffer_sizes.sizes = None
        if not handle:
            raise ModelLoadError(f"llama.cpp could not create a context of {params.n_ctx} tokens")
        self.model = model
        self._logits_row = ctypes.c_float * model.n_vocab  # one row of logits, viewed zero-copy
        self._handle = handle
        self._memory = llama.llama_get_memory(handle)
        self.n_ctx: int = llama.llama_n_ctx(handle)
        self.n_batch = params.n_batch
        self.embeddings = params.embeddings
        # the pooling llama.cpp applies (the GGUF's own): RANK gives n_cls_out scores per sequence
        self.pooling_type: int = llama.llama_pooling_type(handle)
        self.n_threads = params.n_threads
        self.batch = Batch(params.n_batch)
        self._adapter: LoraAdapter | None = None

    def set_threads(self, n_threads: int) -> None:
        """Compute the next batches with ``n_threads`` threads (the results do not depend on it)."""
        if n_threads != self.n_threads:
            llama.llama_set_n_threads(self._handle, n_threads, n_threads)
            self.n_threads = n_threads

    def use_adapter(self, adapter: LoraAdapter | None) -> None:
        """Decode the next batches with ``adapter`` applied (None: the bare model)."""
        if adapter is self._adapter:
            return
        if adapter is None:
            status = llama.llama_set_adapters_lora(self._handle, None, 0, None)
        else:
            handles = (llama.llama_adapter_lora_p_ctypes * 1)(adapter.handle)
            scales = (ctypes.c_float * 1)(adapter.scale)
            status = llama.llama_set_adapters_lora(self._handle, handles, 1, scales)
        if status != 0:
            raise RuntimeError(f"llama_set_adapters_lora returned {status}")
        self._adapter = adapter

    def close(self) -> None:
        if self._handle:
            self.batch.close()
            llama.llama_free(self._handle)
            self._handle = None

    def decode(self) -> int:
        """Run the model over the current batch; 0 on success (llama_decode's codes otherwise)."""
        return llama.llama_decode(self._handle, self.batch.raw)

    def encode(self) -> int:
        """Run an encoder over the current batch (encoder-only models such as T5's encoder)."""
        return llama.llama_encode(self._handle, self.batch.raw)

    @property
    def ranks(self) -> bool:
        """Whether the context pools by rank: a reranker's scores, not embeddings."""
        return self.pooling_type == llama.LLAMA_POOLING_TYPE_RANK

    def sequence_embedding(self, seq_id: int) -> np.ndarray:
        """The pooled output of a sequence in the last batch (a copy): its embedding, or with rank
        pooling its ``n_cls_out`` scores."""
        pointer = llama.llama_get_embeddings_seq(self._handle, seq_id)
        if not pointer:
            raise RuntimeError(f"no pooled embedding for sequence {seq_id} (the model has no pooling)")
        size = self.model.n_cls_out if self.ranks else self.model.n_embd_out
        return np.ctypeslib.as_array(pointer, shape=(size,)).copy()

    def logits(self, batch_index: int) -> np.ndarray:
        """A zero-copy float32 view of the logits computed for one batch position."""
        pointer = llama.llama_get_logits_ith(self._handle, batch_index)
        if not pointer:
            raise IndexError(f"batch position {batch_index} has no logits")
        # a row type made once: np.ctypeslib.as_array builds one per call, a cost on every token
        row = self._logits_row.from_address(ctypes.addressof(pointer.contents))
        return np.frombuffer(memoryview(row), dtype=np.float32)

    @property
    def handle(self):
        return self._handle

    @property
    def has_memory(self) -> bool:
        """Whether the context keeps a KV cache (BERT-like embedding models have none)."""
        return bool(self._memory)

    # --- KV cache -------------------------------------------------------------------

    def remove_from(self, seq_id: int, position: int) -> bool:
        """Drop the sequence's cells from ``position`` on (all of them for 0).

        False when the cache cannot cut a sequence part-way (recurrent and hybrid models
        keep a state, not cells); then nothing was removed.
        """
        return bool(llama.llama_memory_seq_rm(self._memory, seq_id, position, -1))

    def copy_prefix(self, source: int, target: int, length: int) -> None:
        """Make ``target`` share ``source``'s cells for positions [0, length)."""
        llama.llama_memory_seq_rm(self._memory, target, -1, -1)
        llama.llama_memory_seq_cp(self._memory, source, target, 0, length)

    def save_sequence(self, seq_id: int) -> np.ndarray:
        """The sequence's KV state as bytes (for the RAM prompt cache)."""
        size = llama.llama_state_seq_get_size(self._handle, seq_id)
        state = np.empty(size, dtype=np.uint8)  # not zero-filled: it is written whole
        buffer = state.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
        written = llama.llama_state_seq_get_data(self._handle, buffer, size, seq_id)
        return state[:written]

    def load_sequence(self, seq_id: int, state: np.ndarray) -> bool:
        """Put a saved state back as ``seq_id`` (which must hold nothing); False if it does not fit."""
        pointer = state.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))
        return llama.llama_state_seq_set_data(self._handle, pointer, state.nbytes, seq_id) == state.nbytes

    def min_position(self, seq_id: int) -> int:
        """The smallest position still cached for the sequence (-1 when it has none)."""
        return llama.llama_memory_seq_pos_min(self._memory, seq_id)

    def clear(self) -> None:
        if self._memory:  # BERT-like models keep no KV cache: llama.cpp gives them no memory
            llama.llama_memory_clear(self._memory, True)


class Batch:
    """A reusable llama_batch with numpy views over its token, position and flag arrays."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.raw = llama.llama_batch_init(capacity, 0, 1)
        self._tokens = np.ctypeslib.as_array(self.raw.token, shape=(capacity,))
        self._positions = np.ctypeslib.as_array(self.raw.pos, shape=(capacity,))
        self._n_seq_id = np.ctypeslib.as_array(self.raw.n_seq_id, shape=(capacity,))
        self._logits = np.ctypeslib.as_array(self.raw.logits, shape=(capacity,))
        self._n_seq_id[:] = 1
        self._seq_ids = self.raw.seq_id
        self.size = 0

    def clear(self) -> None:
        self.size = 0
        self.raw.n_tokens = 0

    def add(self, tokens: list[int], start: int, seq_id: int, logits_from: int) -> int:
        """Append tokens at positions start..; ask for logits from index ``logits_from`` of them.

        Returns the batch index of the first appended token.
        """
        first = self.size
        end = first + len(tokens)
        self._tokens[first:end] = tokens
        self._positions[first:end] = np.arange(start, start + len(tokens), dtype=np.int32)
        self._logits[first:end] = 0
        self._logits[first + logits_from : end] = 1
        seq_ids = self._seq_ids
        for i in range(first, end):
            seq_ids[i][0] = seq_id
        self.size = end
        self.raw.n_tokens = end
        return first

    def close(self) -> None:
        if self.raw is not None:
            llama.llama_batch_free(self.raw)
            self.raw = None

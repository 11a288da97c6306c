"""A reranker "model" for the tests: the MiniLM GGUF with rank pooling and a small random scoring head.

No reranker can be had offline, so this is a copy of all-MiniLM-L6-v2's GGUF with
``bert.pooling_type`` rank (4) and a classification head llama.cpp's BERT graph reads for rank
pooling: ``cls.weight`` / ``cls.bias`` (384 x 384, then tanh) and ``cls.output.weight`` /
``cls.output.bias`` (384 -> 1), random numbers from a fixed seed. Its tokenizer keys are the ones
``studiolo convert`` writes for a cross-encoder (EOS is [SEP] and is added, SEP alone is not), so a
pair is ``[CLS] query [SEP] document [SEP]``.

``UNKEYED_KEY`` is the same file without ``bert.pooling_type``, as llama.cpp's converter leaves BERT
and XLM-RoBERTa cross-encoders (llama-server needs ``--pooling rank`` for them): its head makes it a
reranker all the same.

It checks the plumbing (one score per pair, order, ``top_n``, batching, the lists), not relevance:
the head was never trained, so its scores say nothing about the documents.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import gguf
import numpy as np

from studiolo.models.defaults import MINILM, target_path
from tests.gguf_rewrite import cached_test_model, rewrite_gguf

RERANKER_KEY = "studiolo-test/minilm-reranker"
UNKEYED_KEY = "studiolo-test/minilm-reranker-no-pooling-key"
SEED = 26
HIDDEN = 384
_SKIPPED = ("bert.pooling_type", "general.name", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.add_eos_token",
            "tokenizer.ggml.add_sep_token")


def scoring_head(seed: int = SEED) -> dict[str, np.ndarray]:
    """The random head, in numpy (row-major) shapes: small weights, so tanh stays in its live range."""
    rng = np.random.default_rng(seed)
    return {
        "cls.weight": (rng.standard_normal((HIDDEN, HIDDEN)) * 0.1).astype(np.float32),
        "cls.bias": (rng.standard_normal(HIDDEN) * 0.1).astype(np.float32),
        "cls.output.weight": (rng.standard_normal((1, HIDDEN)) * 0.5).astype(np.float32),
        "cls.output.bias": np.array([0.25], dtype=np.float32),
    }


def write_reranker(source: Path, dest: Path) -> Path:
    reader = gguf.GGUFReader(source)
    sep_id = int(reader.fields["tokenizer.ggml.seperator_token_id"].contents())

    def keys(writer: gguf.GGUFWriter) -> None:
        writer.add_name("MiniLM reranker (test: random head)")
        writer.add_pooling_type(gguf.PoolingType.RANK)
        writer.add_eos_token_id(sep_id)
        writer.add_add_eos_token(True)
        writer.add_add_sep_token(False)

    rewrite_gguf(reader, gguf.GGUFWriter(dest, "bert"), skip=_SKIPPED, add=keys, extra_tensors=scoring_head())
    return dest


def reranker_file() -> Path:
    """The reranker's GGUF, written the first time it is asked for."""
    source = target_path(MINILM)
    if not source.exists():
        raise FileNotFoundError(f"{source} is missing; run `make setup`")
    digest = hashlib.sha256(f"{MINILM.sha256}\nrank head seed {SEED} v1".encode()).hexdigest()[:16]
    return cached_test_model(f"minilm-reranker-{digest}.gguf", lambda path: write_reranker(source, path))


def unkeyed_reranker_file() -> Path:
    """The reranker without a pooling type in its GGUF, written the first time it is asked for."""
    source = reranker_file()

    def write(dest: Path) -> None:
        rewrite_gguf(gguf.GGUFReader(source), gguf.GGUFWriter(dest, "bert"), skip=("bert.pooling_type",))

    return cached_test_model(f"{source.stem}-no-pooling-key.gguf", write)


def link_reranker(home: Path) -> Path:
    """Link the reranker into the test home ``home`` under ``RERANKER_KEY``, and its copy without a
    pooling type under ``UNKEYED_KEY``."""
    for key, path in ((RERANKER_KEY, reranker_file()), (UNKEYED_KEY, unkeyed_reranker_file())):
        link = home / "models" / key / f"{key.split('/')[-1]}.gguf"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path)
    return home


def templated_reranker_file(template: str) -> Path:
    """The reranker with a ``rerank`` prompt (``tokenizer.chat_template.rerank``, as Qwen3-Reranker's GGUF
    has one), written the first time it is asked for."""
    source = reranker_file()
    digest = hashlib.sha256(f"{source.name}\n{template}".encode()).hexdigest()[:16]

    def write(dest: Path) -> None:
        reader = gguf.GGUFReader(source)
        rewrite_gguf(reader, gguf.GGUFWriter(dest, "bert"),
                     add=lambda writer: writer.add_string("tokenizer.chat_template.rerank", template))

    return cached_test_model(f"minilm-reranker-template-{digest}.gguf", write)

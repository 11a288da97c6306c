"""Tokenizing long text: in pieces, so that it takes time in proportion to the text and can stop.

llama.cpp's ``llama_tokenize`` with special-token parsing first cuts the text at every special
token: for each special token of the vocabulary and for each fragment cut so far, it searches the
text from the fragment to the end of the *whole* text. Its time is the number of special tokens,
times the fragments, times the text's length: a chat of 10,000 messages (20,000 turn markers)
took 6 s to tokenize, 100,000 messages more than 300 s.

Here the text is cut first, just before special tokens, into chunks of a few markers each, and
each chunk is tokenized on its own. llama.cpp tokenizes the fragments between special tokens
independently anyway, so the tokens are the same; special tokens that strip the whitespace to
their left (``LSTRIP``) are never cut before, as that whitespace would be in the previous chunk.
Between chunks the work checks ``should_stop`` (the client left) and that the model is still open
(it is read under the model's vocabulary lock, which ``close`` waits for).
"""

from __future__ import annotations

import itertools
import re
import weakref
from collections.abc import Callable

import llama_cpp as llama

from studiolo.engine.llama import LlamaModel

MARKERS_PER_CHUNK = 8  # special tokens per llama_tokenize call: bounds its quadratic pass
CHUNK_CHARS = 65_536  # text without markers is cut into calls of about this size (at a marker only)
_SPLITTABLE = llama.LLAMA_TOKEN_ATTR_CONTROL | llama.LLAMA_TOKEN_ATTR_USER_DEFINED

_marker_patterns: weakref.WeakKeyDictionary[LlamaModel, re.Pattern[str] | None] = weakref.WeakKeyDictionary()


class TokenizingStopped(Exception):
    """``should_stop`` said so between two chunks."""


def tokenize_long(model: LlamaModel, text: str, *, add_special: bool,
                  should_stop: Callable[[], bool] = lambda: False) -> list[int]:
    """``model.tokenize(text, add_special=..., parse_special=True)``, in time linear in the text."""
    tokens: list[int] = []
    for index, chunk in enumerate(_chunks(text, _markers(model))):
        if should_stop():
            raise TokenizingStopped()
        with model.vocabulary_lock:  # close() waits for this call
            model.require_open()
            tokens.extend(model.tokenize(chunk, add_special=add_special and index == 0, parse_special=True))
    return tokens


def _chunks(text: str, markers: re.Pattern[str] | None) -> list[str]:
    """``text`` cut just before every MARKERS_PER_CHUNK-th special token (never elsewhere)."""
    if markers is None:
        return [text]
    cuts, in_chunk = [0], 0
    for match in markers.finditer(text):
        in_chunk += 1
        if (in_chunk > MARKERS_PER_CHUNK or match.start() - cuts[-1] >= CHUNK_CHARS) and match.start() > cuts[-1]:
            cuts.append(match.start())
            in_chunk = 1
    cuts.append(len(text))
    return [text[start:end] for start, end in itertools.pairwise(cuts) if end > start] or [text]


def _markers(model: LlamaModel) -> re.Pattern[str] | None:
    """A pattern matching the texts of the vocabulary's special tokens that may be cut before."""
    if model in _marker_patterns:
        return _marker_patterns[model]
    with model.vocabulary_lock:
        model.require_open()
        texts = [model.token_text_special(token) for token in range(model.n_vocab) if _splittable(model, token)]
    pattern = _trie_pattern(sorted({text for text in texts if len(text) > 1}))
    _marker_patterns[model] = pattern
    return pattern


def _splittable(model: LlamaModel, token: int) -> bool:
    attributes = llama.llama_vocab_get_attr(model._vocab, token)
    return bool(attributes & _SPLITTABLE) and not attributes & llama.LLAMA_TOKEN_ATTR_LSTRIP


def _trie_pattern(texts: list[str]) -> re.Pattern[str] | None:
    """One regex for many literals, factored by common prefixes so that a position costs the length
    of a marker, not the number of markers (Gemma 3 has thousands); the longest match wins."""
    if not texts:
        return None
    trie: dict = {}
    for text in texts:
        node = trie
        for char in text:
            node = node.setdefault(char, {})
        node[""] = {}
    return re.compile(_node_regex(trie))


def _node_regex(node: dict) -> str:
    branches = [re.escape(char) + _node_regex(child) for char, child in node.items() if char]
    ends_here = "" in node
    if not branches:
        return ""
    body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
    return f"(?:{body})?" if ends_here else body

"""A vocabulary of the 256 single bytes and an end token, for checking a grammar before any
model is loaded: any text starts with some byte, so a grammar no byte can start matches nothing."""

from __future__ import annotations

import functools

from llguidance import LLTokenizer, TokenizerWrapper


class _ByteVocabulary:
    """256 one-byte tokens and an end token, as llguidance's TokenizerWrapper reads a vocabulary."""

    eos_token_id = 256
    bos_token_id = None
    tokens = (*(bytes([value]) for value in range(256)), b"<end>")
    special_token_ids = (256,)

    def __call__(self, data: bytes) -> list[int]:
        return list(data)


@functools.cache
def byte_tokenizer() -> LLTokenizer:
    return LLTokenizer(TokenizerWrapper(_ByteVocabulary()))

"""Work on a model's tokenizer and template without generating: llama-server's ``/tokenize``,
``/detokenize`` and ``/apply-template``, and Anthropic's ``count_tokens``.

A request may leave out the model, as llama-server (one model per server) lets it: then the one model
loaded is meant, and naming none with several or no model loaded is a 400 naming ``model``. A named
model loads just in time as for generation. Chat prompts come from the generation service's own
prompt building (``GenerationService.chat_prompt_of``), so a count or a rendered template is exactly
what a generation for the same request would prefill.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace

from studiolo.config import RequestLimits
from studiolo.domain.errors import InvalidRequest
from studiolo.models.instance import Instance
from studiolo.models.manager import ModelManager
from studiolo.service.chat_prompt import Prompt
from studiolo.service.generation import GenerationService
from studiolo.service.types import ChatRequest


@dataclass(frozen=True)
class TokenPiece:
    id: int
    piece: bytes  # the token's text as UTF-8 bytes: possibly part of a character


class TokenTools:
    def __init__(self, manager: ModelManager, generation: GenerationService, limits: RequestLimits):
        self.manager = manager
        self.generation = generation
        self.limits = limits

    def model_name(self, name: str | None) -> str:
        """``name``, or the id of the one model loaded when a request names none."""
        if name:
            return name
        loaded = self.manager.loaded()
        if len(loaded) == 1:
            return loaded[0].id
        state = "no model is loaded" if not loaded else f"{len(loaded)} models are loaded"
        raise InvalidRequest(f"'model' is required: {state} (GET /v1/models lists what can be named)", "model")

    async def tokenize(self, name: str | None, content: str, *, add_special: bool,
                       parse_special: bool) -> list[TokenPiece]:
        if len(content) > self.limits.max_prompt_chars:
            raise InvalidRequest(f"'content' has {len(content):,} characters, more than the server's limit of "
                                 f"{self.limits.max_prompt_chars:,} (setting limits.max_prompt_chars)", "content")
        instance = await self._instance(name)
        model = instance.model

        def pieces() -> list[TokenPiece]:
            ids = model.tokenize(content, add_special=add_special, parse_special=parse_special)
            return [TokenPiece(token, model.token_bytes(token, special=True)) for token in ids]

        return await asyncio.to_thread(pieces)

    async def detokenize(self, name: str | None, tokens: list[int]) -> str:
        """The tokens' text, special tokens written out (as llama-server's ``/detokenize``)."""
        if len(tokens) > self.limits.max_prompt_chars:
            raise InvalidRequest(f"'tokens' has {len(tokens):,} entries, more than the server's limit of "
                                 f"{self.limits.max_prompt_chars:,} (setting limits.max_prompt_chars)", "tokens")
        instance = await self._instance(name)
        model = instance.model
        for index, token in enumerate(tokens):
            if not 0 <= token < model.n_vocab:
                raise InvalidRequest(f"token {token} is not in the model's vocabulary (0 to {model.n_vocab - 1})",
                                     f"tokens[{index}]")
        data = await asyncio.to_thread(lambda: b"".join(model.token_bytes(t, special=True) for t in tokens))
        return data.decode("utf-8", errors="replace")

    async def chat_prompt(self, request: ChatRequest) -> Prompt:
        """The prompt a chat completion of ``request`` would prefill: its text (images shown as
        ``<image N: ...>``) and tokens."""
        request = replace(request, model=self.model_name(request.model))
        return await self.generation.chat_prompt_of(request)

    async def count_chat_tokens(self, request: ChatRequest) -> int:
        return len((await self.chat_prompt(request)).tokens)

    async def _instance(self, name: str | None) -> Instance:
        return (await self.manager.get(self.model_name(name))).instance

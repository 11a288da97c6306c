"""What a benchmark talks to: a server over HTTP (SSE streaming), or studiolo's engine in-process.

Both give the same ``Timing`` for a generation, so every figure is measured the same way
whether or not HTTP is in the path.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import httpx

from studiolo.engine.engine import Engine
from studiolo.engine.llama import LlamaModel
from studiolo.engine.sampling import SamplingParams
from studiolo.engine.sequence import GenerationRequest, TokenEvent


@dataclass
class Timing:
    sent: float
    first: float  # first token received
    last: float  # last token received
    tokens: int  # tokens generated
    text: str

    @property
    def ttft(self) -> float:
        return self.first - self.sent

    @property
    def decode_rate(self) -> float:
        """Tokens per second after the first token."""
        return (self.tokens - 1) / (self.last - self.first) if self.tokens > 1 and self.last > self.first else 0.0


class HTTPTarget:
    """A server's ``/v1/completions``, streamed; greedy, with end-of-generation tokens banned."""

    def __init__(self, name: str, base_url: str, model: str, banned_tokens: list[int]):
        self.name = name
        self.base_url = base_url
        self.model = model
        self._bias = {str(token): -100 for token in banned_tokens}
        # A connection per request: llama-server's HTTP library closes kept-alive connections after
        # a few requests, racing the client's reuse; loopback connects cost every server the same.
        self._client = httpx.AsyncClient(
            base_url=base_url, timeout=httpx.Timeout(600.0), limits=httpx.Limits(max_keepalive_connections=0)
        )

    async def generate(self, prompt: str, max_tokens: int) -> Timing:
        body = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0,
            "top_k": 1,
            "repeat_penalty": 1.0,
            "logit_bias": self._bias,
            "stream": True,
        }
        sent = time.perf_counter()
        first = last = 0.0
        pieces: list[str] = []
        async with self._client.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code != 200:
                raise RuntimeError(f"{self.name}: HTTP {response.status_code}: {(await response.aread())[:300]!r}")
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                choices = chunk.get("choices") or []
                if choices and choices[0].get("text"):
                    last = time.perf_counter()
                    first = first or last
                    pieces.append(choices[0]["text"])
        return Timing(sent, first, last, max_tokens, "".join(pieces))

    async def close(self) -> None:
        await self._client.aclose()


class EngineTarget:
    """studiolo's engine with no HTTP: tokenize, submit, read the token stream."""

    name = "studiolo (in-process)"

    def __init__(self, engine: Engine, model: LlamaModel, banned_tokens: list[int]):
        self.engine = engine
        self.model = model
        self._sampling = SamplingParams(
            temperature=0, top_k=1, repeat_penalty=1.0, logit_bias={t: -100.0 for t in banned_tokens}
        )

    async def generate(self, prompt: str, max_tokens: int) -> Timing:
        sent = time.perf_counter()
        tokens = self.model.tokenize(prompt, add_special=True)
        stream = self.engine.submit(GenerationRequest(tokens, self._sampling, max_tokens=max_tokens))
        first = last = 0.0
        pieces: list[bytes] = []
        count = 0
        async for event in stream:
            if isinstance(event, TokenEvent):
                last = time.perf_counter()
                first = first or last
                pieces.append(event.piece)
                count += 1
        return Timing(sent, first, last, count, b"".join(pieces).decode("utf-8", errors="replace"))

    async def close(self) -> None:
        pass

"""What a benchmark talks to: a server over HTTP (SSE streaming), or studiolo's engine in-process.

Both give the same ``Timing`` for a generation, so every figure is measured the same way
whether or not HTTP is in the path.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from dataclasses import dataclass

import httpx

from bench.config import GREEDY
from studiolo.domain.sampling import SamplingParams
from studiolo.engine.engine import Engine
from studiolo.engine.llama import LlamaModel
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
    """A server's ``/v1/completions``, streamed; greedy unless told otherwise (``SAMPLED``), with
    end-of-generation tokens banned.

    The client is lean on purpose: on a 2-core machine whose cores the server's compute threads
    keep busy, every bit of client CPU per token slows the server it measures. So it speaks
    HTTP/1.1 over a bare asyncio stream, one connection per request (llama-server's HTTP library
    closes kept-alive connections after a few requests, racing a client's reuse), stamps the time
    of each read and parses the SSE events only for their text.
    """

    def __init__(self, name: str, base_url: str, model: str, banned_tokens: list[int]):
        self.name = name
        url = httpx.URL(base_url)
        self._host, self._port = url.host, url.port
        self.model = model
        self._bias = {str(token): -100 for token in banned_tokens}

    async def generate(self, prompt: str, max_tokens: int, extra: dict | None = None) -> Timing:
        """One streamed completion; ``extra`` adds fields to the request (a JSON schema, sampling
        settings, say)."""
        timing, _ = await self.stream("/v1/completions", {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            **GREEDY,
            "logit_bias": self._bias,
            "stream": True,
            **(extra or {}),
        }, _SSEReader)
        return Timing(timing.sent, timing.first, timing.last, max_tokens, timing.text)

    async def stream(self, path: str, payload: dict, parser: type[_SSEReader]) -> tuple[Timing, _SSEReader]:
        """POST ``payload`` to ``path`` and read its event stream with ``parser`` (an ``_SSEReader``
        kind, made once the head says whether the body is chunked); the timing counts text events."""
        body = json.dumps(payload).encode()
        head = (f"POST {path} HTTP/1.1\r\nHost: {self._host}:{self._port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n").encode()
        sent = time.perf_counter()
        reader, writer = await asyncio.open_connection(self._host, self._port)
        try:
            writer.write(head + body)
            status, chunked, rest = await _read_head(reader)
            if status != 200:
                raise RuntimeError(f"{self.name}: HTTP {status}: {(rest + await reader.read())[:300]!r}")
            events = parser(chunked)
            first = last = 0.0
            pieces: list[str] = []
            data = rest
            while True:
                texts = events.feed(data)
                if texts:
                    last = time.perf_counter()
                    first = first or last
                    pieces += texts
                data = await reader.read(65536)
                if not data:
                    break
        finally:
            writer.close()
        return Timing(sent, first, last, len(pieces), "".join(pieces)), events

    async def close(self) -> None:
        pass


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, bool, bytes]:
    """The status code, whether the body is chunked, and the body bytes read along with the head."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        data = await reader.read(65536)
        if not data:
            raise RuntimeError("connection closed before the response head")
        buffer += data
    head, rest = buffer.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    chunked = any(l.lower().replace(" ", "") == "transfer-encoding:chunked" for l in lines[1:])
    return status, chunked, rest


class _SSEReader:
    """Turns response body bytes (chunked or not) into the texts of the completion events in them."""

    def __init__(self, chunked: bool):
        self._chunked = chunked
        self._raw = b""  # chunked framing not yet undone
        self._body = b""  # event stream not yet split into events

    def feed(self, data: bytes) -> list[str]:
        if self._chunked:
            self._raw += data
            data = self._dechunk()
        self._body += data
        *events, self._body = self._body.replace(b"\r\n", b"\n").split(b"\n\n")
        return [text for text in map(self._text, events) if text]

    def _text(self, event: bytes) -> str | None:
        """The text an event carries (a completion chunk's); other readers override this."""
        if event.startswith(b"data: {"):
            choices = json.loads(event[6:]).get("choices") or []
            if choices:
                return choices[0].get("text")
        return None

    def _dechunk(self) -> bytes:
        out = []
        while True:
            line_end = self._raw.find(b"\r\n")
            if line_end < 0:
                break
            size = int(self._raw[:line_end].split(b";")[0], 16)
            end = line_end + 2 + size
            if len(self._raw) < end + 2:
                break
            out.append(self._raw[line_end + 2 : end])
            self._raw = self._raw[end + 2 :]
        return b"".join(out)


class EngineTarget:
    """studiolo's engine with no HTTP: tokenize, submit, read the token stream."""

    name = "studiolo (in-process)"

    def __init__(self, engine: Engine, model: LlamaModel, banned_tokens: list[int]):
        self.engine = engine
        self.model = model
        self._sampling = SamplingParams(**GREEDY, logit_bias={t: -100.0 for t in banned_tokens})

    async def generate(self, prompt: str, max_tokens: int, extra: dict | None = None) -> Timing:
        """As HTTPTarget's; ``extra`` may hold sampling settings only (SamplingParams' fields)."""
        sampling = dataclasses.replace(self._sampling, **(extra or {}))
        sent = time.perf_counter()
        tokens = self.model.tokenize(prompt, add_special=True)
        stream = self.engine.submit(GenerationRequest(tokens, sampling, max_tokens=max_tokens))
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

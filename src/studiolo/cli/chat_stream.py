"""One answer of ``studiolo chat``, streamed from the server's ``POST /api/v0/chat/completions``.

LM Studio's v0 twin of ``/v1/chat/completions`` is used because its last chunk carries the
server's own measurements (``stats``: tokens per second, time to first token, stop reason), which
``--stats`` shows as ``lms chat`` does; ``stream_options.include_usage`` adds the token counts.
LM Studio serves the same route, so the command also talks to LM Studio.

Stopping an answer is closing its stream: the server notices the disconnect and cancels the
generation at its next step (docs/API.md, "Cancellation").
"""

from __future__ import annotations

import json
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from studiolo.cli.client import LOAD_TIMEOUT_SECONDS, ServerError, error_message, one_line
from studiolo.cli.log_cmd import read_events

CHAT_PATH = "/api/v0/chat/completions"
# a first message may load the model (JIT) before its first token: as long as `studiolo load` waits
STREAM_TIMEOUT = httpx.Timeout(LOAD_TIMEOUT_SECONDS, connect=10.0)
# the server's setting --reasoning-output may name the field either way (docs/API.md, "Reasoning")
REASONING_FIELDS = ("reasoning_content", "reasoning")
USER_STOPPED = "userStopped"  # LM Studio's stop reason for an answer the user cut off


@dataclass
class Answer:
    """What one request produced: the text as it came, and the server's figures once it ended."""

    content: str = ""
    reasoning: str = ""
    stats: dict[str, Any] = field(default_factory=dict)  # LM Studio's v0 stats, from the last chunk
    usage: dict[str, Any] = field(default_factory=dict)
    stopped: bool = False  # cut off by the user (Ctrl+C)

    @property
    def stop_reason(self) -> str | None:
        return USER_STOPPED if self.stopped else self.stats.get("stop_reason")


@dataclass(frozen=True)
class Piece:
    """A bit of streamed text: ``kind`` is "reasoning" or "content"."""

    kind: str
    text: str


def request_body(model: str, messages: list[dict[str, str]], *, ttl: int | None,
                 thinking: bool | None) -> dict[str, Any]:
    """The body of one chat request. ``thinking`` None leaves the model's default; True or False
    is told to templates that read ``enable_thinking`` (Qwen3 and its kin), as ``lms chat`` does."""
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": True,
                            "stream_options": {"include_usage": True}}
    if ttl is not None:
        body["ttl"] = ttl
    if thinking is not None:
        body["chat_template_kwargs"] = {"enable_thinking": thinking}
    return body


def stream_answer(http: httpx.Client, body: dict[str, Any], answer: Answer) -> Generator[Piece, None, None]:
    """The answer's text as it streams, piece by piece; ``answer`` gathers it and, at the end, the
    stats. ServerError for a refusal, an error mid-stream or a lost connection."""
    try:
        with http.stream("POST", CHAT_PATH, json=body, timeout=STREAM_TIMEOUT) as response:
            if response.status_code >= 400:
                response.read()
                raise ServerError(error_message(response))
            for data in read_events(response):
                if data.strip() == "[DONE]":
                    return
                yield from _pieces(_chunk(data), answer)
    except httpx.ConnectError as error:
        raise ServerError(f"No server answers at {http.base_url}; start one with `studiolo server start`.") from error
    except httpx.TimeoutException as error:
        raise ServerError(f"The server at {http.base_url} sent nothing for {LOAD_TIMEOUT_SECONDS:.0f} s.") from error
    except httpx.HTTPError as error:
        raise ServerError(f"Lost the connection to the server: {one_line(str(error))}") from error


def _chunk(data: str) -> dict[str, Any]:
    try:
        chunk = json.loads(data)
    except ValueError as error:
        raise ServerError(f"The server sent something that is not JSON: {one_line(data)[:200]}") from error
    if not isinstance(chunk, dict):
        raise ServerError(f"The server sent something that is not a chunk: {one_line(data)[:200]}")
    failure = chunk.get("error")
    if failure is not None:  # an engine failure mid-stream (docs/API.md, "Streaming")
        message = failure.get("message") if isinstance(failure, dict) else failure
        raise ServerError(one_line(str(message)))
    return chunk


def _pieces(chunk: dict[str, Any], answer: Answer) -> Iterator[Piece]:
    """The text of one chunk, recording its stats and usage on ``answer`` on the way."""
    if isinstance(chunk.get("usage"), dict):
        answer.usage = chunk["usage"]
    if isinstance(chunk.get("stats"), dict):
        answer.stats = chunk["stats"]
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta") or {}
        for name in REASONING_FIELDS:
            if isinstance(delta.get(name), str) and delta[name]:
                answer.reasoning += delta[name]
                yield Piece("reasoning", delta[name])
        if isinstance(delta.get("content"), str) and delta["content"]:
            answer.content += delta["content"]
            yield Piece("content", delta["content"])

"""Response bodies of the OpenAI-compatible endpoints, field for field as OpenAI publishes them.

Builders take domain events (``TextDelta``, ``Finished``, ``Usage``) and return dicts ready
for JSON; BladeLLM's additions ride along (``error_info``, and ``id``/``is_special`` in logprobs).
The chunk builders keep the little state streaming needs (text offsets).
"""

from __future__ import annotations

import codecs
import json
from typing import Any

from studiolo.api.sse import DATA_FIELD, EVENT_END
from studiolo.service.generation import Generation
from studiolo.service.types import TokenInfo, ToolCallDelta, Usage


def usage_body(usage: Usage, accepted_predicted: int = 0, rejected_predicted: int = 0) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": usage.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": accepted_predicted,
            "rejected_prediction_tokens": rejected_predicted,
        },
    }


def generation_usage(generation: Generation) -> dict[str, Any]:
    """A generation's usage. The prediction counts are its drafts, whatever drafted them (a
    prediction, a draft model, the n-gram lookup): accepted ones appeared in the output, the rest
    (rejected, or never verified) did not; 0 and 0 when nothing drafted."""
    drafts = generation.drafts
    if drafts is None:
        return usage_body(generation.usage)
    return usage_body(generation.usage, drafts.accepted, drafts.rejected + drafts.ignored)


def _header(generation: Generation, object_name: str) -> dict[str, Any]:
    return {
        "id": generation.id,
        "object": object_name,
        "created": generation.created,
        "model": generation.model,
        "system_fingerprint": generation.model,
    }


# --- chat -----------------------------------------------------------------------------


def chat_token_logprob(token: TokenInfo) -> dict[str, Any]:
    """OpenAI's fields (token, logprob, bytes, top_logprobs) plus BladeLLM's (id, is_special)."""
    return {
        "id": token.id,
        "token": token.text,
        "logprob": token.logprob,
        "is_special": token.special,
        "bytes": list(token.bytes),
        "top_logprobs": [
            {"id": alt.id, "token": alt.text, "logprob": alt.logprob, "is_special": alt.special,
             "bytes": list(alt.bytes)}
            for alt in token.top
        ],
    }


def chat_logprobs(tokens: list[TokenInfo] | tuple[TokenInfo, ...]) -> dict[str, Any]:
    return {"content": [chat_token_logprob(t) for t in tokens], "refusal": None}


def tool_calls_body(deltas: list[ToolCallDelta]) -> list[dict[str, Any]]:
    """A choice's streamed call pieces joined into OpenAI's ``message.tool_calls``."""
    calls: dict[int, dict[str, Any]] = {}
    for delta in deltas:
        if delta.name is not None:
            calls[delta.call] = {"id": delta.id, "type": "function", "function": {"name": delta.name, "arguments": ""}}
        calls[delta.call]["function"]["arguments"] += delta.arguments
    return [calls[index] for index in sorted(calls)]


def _message(text: str, calls: list[ToolCallDelta], reasoning: str | None, reasoning_field: str) -> dict[str, Any]:
    content = text or (None if calls else "")
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None, "annotations": []}
    if reasoning:  # a reasoning model's, split from the answer (never with reasoning_field "content")
        message[reasoning_field] = reasoning
    if calls:
        message["tool_calls"] = tool_calls_body(calls)
    return message


def chat_completion(
    generation: Generation,
    texts: dict[int, str],
    tokens: dict[int, list[TokenInfo]],
    finish_reasons: dict[int, str],
    with_logprobs: bool,
    calls: dict[int, list[ToolCallDelta]] | None = None,
    reasoning: dict[int, str] | None = None,
    reasoning_field: str = "reasoning_content",
) -> dict[str, Any]:
    """``reasoning``: each choice's reasoning, sent under ``reasoning_field`` (the server's setting)."""
    calls, reasoning = calls or {}, reasoning or {}
    choices = [
        {
            "index": index,
            "message": _message(texts[index], calls.get(index, []), reasoning.get(index), reasoning_field),
            "logprobs": chat_logprobs(tokens[index]) if with_logprobs else None,
            "finish_reason": finish_reasons[index],
        }
        for index in sorted(texts)
    ]
    return {**_header(generation, "chat.completion"), "choices": choices, "usage": generation_usage(generation),
            "error_info": None}


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class _Chunks:
    """Streamed chunks as ready SSE events (api/sse.py's data events, framed here by hand).

    Every chunk repeats the same header (id, object, created, model, fingerprint) and, when usage
    was asked, ends with ``"usage": null``: that text is encoded once per stream, so a token's
    chunk costs one small ``json.dumps`` of its text.
    """

    object_name = ""

    def __init__(self, generation: Generation, *, include_usage: bool):
        self._generation = generation
        header = _json(_header(generation, self.object_name))
        self._prefix = DATA_FIELD + header[:-1] + ',"choices":'
        # BladeLLM's error_info rides on every chunk, null unless the stream failed
        self._suffix = (',"usage":null' if include_usage else "") + ',"error_info":null}' + EVENT_END

    def _event(self, choices_json: str, extras: dict[str, Any] | None = None) -> str:
        if extras:  # LM Studio's v0 stats ride on a choice's last chunk
            return self._prefix + choices_json + "," + _json(extras)[1:-1] + self._suffix
        return self._prefix + choices_json + self._suffix

    def usage(self) -> str:
        usage = _json(generation_usage(self._generation))
        return self._prefix + '[],"usage":' + usage + ',"error_info":null}' + EVENT_END


class ChatChunks(_Chunks):
    """``chat.completion.chunk`` events for one streamed generation."""

    object_name = "chat.completion.chunk"

    def __init__(self, generation: Generation, *, with_logprobs: bool, include_usage: bool,
                 reasoning_field: str = "reasoning_content"):
        super().__init__(generation, include_usage=include_usage)
        self._with_logprobs = with_logprobs
        self._reasoning_key = _json(reasoning_field)

    def role(self, index: int) -> str:
        delta = {"role": "assistant", "content": "", "refusal": None}
        return self._event(_json([{"index": index, "delta": delta, "logprobs": None, "finish_reason": None}]))

    def content(self, index: int, text: str, tokens: tuple[TokenInfo, ...]) -> str:
        logprobs = _json(chat_logprobs(tokens)) if self._with_logprobs else "null"
        return self._event(
            f'[{{"index":{index},"delta":{{"content":{_json(text)}}},"logprobs":{logprobs},"finish_reason":null}}]'
        )

    def reasoning(self, index: int, text: str) -> str:
        """A piece of the reasoning, in its own field of the delta (DeepSeek's and LM Studio's shape)."""
        return self._event(
            f'[{{"index":{index},"delta":{{{self._reasoning_key}:{_json(text)}}},"logprobs":null,"finish_reason":null}}]'
        )

    def tool_call(self, delta: ToolCallDelta) -> str:
        """A call's id, type and name first (arguments empty), then pieces of its arguments."""
        piece: dict[str, Any] = {"index": delta.call}
        if delta.name is not None:
            piece.update(id=delta.id, type="function", function={"name": delta.name, "arguments": delta.arguments})
        else:
            piece["function"] = {"arguments": delta.arguments}
        choice = {"index": delta.index, "delta": {"tool_calls": [piece]}, "logprobs": None, "finish_reason": None}
        return self._event(_json([choice]))

    def finish(self, index: int, reason: str, extras: dict[str, Any] | None = None) -> str:
        return self._event(_json([{"index": index, "delta": {}, "logprobs": None, "finish_reason": reason}]), extras)


# --- completions ----------------------------------------------------------------------


class CompletionLogprobs:
    """OpenAI's legacy logprobs shape; ``text_offset`` counts characters from the start of the text.

    Offsets come from decoding the tokens' bytes in order, so a character split over two tokens
    counts once (both tokens start where it starts).
    """

    def __init__(self):
        self.offset = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def render(self, tokens: list[TokenInfo] | tuple[TokenInfo, ...]) -> dict[str, Any]:
        """The legacy lists, and BladeLLM's per-token ``content`` (the chat shape) beside them."""
        body: dict[str, Any] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for token in tokens:
            body["tokens"].append(token.text)
            body["token_logprobs"].append(token.logprob)
            top = {alt.text: alt.logprob for alt in token.top}
            body["top_logprobs"].append(top if token.logprob is not None else None)
            body["text_offset"].append(self.offset)
            self.offset += len(self._decoder.decode(token.bytes))
        body["content"] = [chat_token_logprob(token) for token in tokens]
        return body


def completion(
    generation: Generation,
    texts: dict[int, str],
    logprobs: dict[int, dict[str, Any]] | None,
    finish_reasons: dict[int, str],
) -> dict[str, Any]:
    choices = [
        {
            "text": texts[index],
            "index": index,
            "logprobs": logprobs[index] if logprobs is not None else None,
            "finish_reason": finish_reasons[index],
        }
        for index in sorted(texts)
    ]
    return {**_header(generation, "text_completion"), "choices": choices, "usage": generation_usage(generation),
            "error_info": None}


class CompletionChunks(_Chunks):
    """``text_completion`` events for one streamed generation."""

    object_name = "text_completion"

    def __init__(self, generation: Generation, *, with_logprobs: bool, include_usage: bool):
        super().__init__(generation, include_usage=include_usage)
        self._logprobs: dict[int, CompletionLogprobs] | None = {} if with_logprobs else None

    def text(self, index: int, text: str, tokens: tuple[TokenInfo, ...]) -> str:
        logprobs = "null"
        if self._logprobs is not None:
            logprobs = _json(self._logprobs.setdefault(index, CompletionLogprobs()).render(tokens))
        return self._event(f'[{{"text":{_json(text)},"index":{index},"logprobs":{logprobs},"finish_reason":null}}]')

    def finish(self, index: int, reason: str, extras: dict[str, Any] | None = None) -> str:
        return self._event(_json([{"text": "", "index": index, "logprobs": None, "finish_reason": reason}]), extras)

"""Bounds on what a request may make the server do, checked before any model loads, and the one way
large work runs: in a worker thread that stops when the client goes.

A chat's messages (a stored conversation's included) and their text, completions' prompts and
their text, a Predicted Output's text (tokenized like a prompt, and counted with it), and the
sequences a request asks for (prompts x ``n``) are each bounded by a setting of ``RequestLimits``;
a request past one is a 400 naming its field and the limit. Rendering and tokenizing what passes
still take time in proportion to it, so they run off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from studiolo.chat.templates import RenderStopped
from studiolo.config import RequestLimits
from studiolo.domain.chat import ChatMessage
from studiolo.domain.errors import InvalidRequest
from studiolo.engine.long_text import TokenizingStopped
from studiolo.service.types import ChatRequest, CompletionRequest

T = TypeVar("T")
log = logging.getLogger(__name__)


class WorkStopped(Exception):
    """Work in a worker thread stopped because the request awaiting it was cancelled."""


async def off_loop(work: Callable[[Callable[[], bool]], T]) -> T:
    """``work(stop)`` in a worker thread. Cancelling the awaiting task (the client left) sets ``stop``,
    which the work checks between its steps (template pieces, tokenizer chunks) and ends on: a thread
    cannot be cancelled from outside, and would otherwise run on for nobody."""
    stopped = threading.Event()

    def run() -> T:
        try:
            return work(stopped.is_set)
        except (RenderStopped, TokenizingStopped):
            log.info("stopped preparing a prompt: its client left")
            raise WorkStopped() from None

    try:
        return await asyncio.to_thread(run)
    except asyncio.CancelledError:
        stopped.set()
        raise


def check_chat_bounds(request: ChatRequest, limits: RequestLimits) -> None:
    """Refuse a chat whose prompt would be too large to render, before any model loads: the messages
    (a stored conversation's included) and their text, and the choices it asks for."""
    field = request.prompt_field
    if len(request.messages) > limits.max_messages:
        raise InvalidRequest(f"the conversation has {len(request.messages)} messages, more than the server's limit "
                             f"of {limits.max_messages} (setting limits.max_messages)", field)
    chars = len(request.resume_response or "") + sum(_message_chars(message) for message in request.messages)
    if chars > limits.max_prompt_chars:
        raise InvalidRequest(f"the conversation's text is {chars} characters, more than the server's limit of "
                             f"{limits.max_prompt_chars} (setting limits.max_prompt_chars)", field)
    _check_prediction(chars, request.options.prediction, limits)
    _check_sequences(request.options.n, 1, limits, "n")
    _check_image_count(request.messages, limits)


def _check_image_count(messages: list[ChatMessage], limits: RequestLimits) -> None:
    """At most ``max_images`` images in a conversation: the first one past the limit is blamed."""
    images = [image for message in messages for image in message.images]
    if len(images) > limits.max_images:
        raise InvalidRequest(f"the request has {len(images)} images, more than the server's limit of "
                             f"{limits.max_images} (setting limits.max_images)", images[limits.max_images].param,
                             code="too_many_images")


def _message_chars(message: ChatMessage) -> int:
    return len(message.content or "") + sum(len(call.arguments) + len(call.name) for call in message.tool_calls)


def check_completion_bounds(request: CompletionRequest, limits: RequestLimits) -> None:
    """Refuse prompts too many or too long before any model loads; a token id counts as a character."""
    _check_sequences(request.options.n, len(request.prompts), limits, "n" if len(request.prompts) == 1 else "prompt")
    chars = sum(len(prompt) for prompt in request.prompts)
    if chars > limits.max_prompt_chars:
        raise InvalidRequest(f"the prompts are {chars} characters (or token ids), more than the server's limit of "
                             f"{limits.max_prompt_chars} (setting limits.max_prompt_chars)", "prompt")
    _check_prediction(chars, request.options.prediction, limits)


def _check_prediction(prompt_chars: int, prediction: str | None, limits: RequestLimits) -> None:
    """The prediction is tokenized as the prompt is, in time proportional to its length: it counts
    against the same limit, and is blamed when it is what goes past."""
    chars = prompt_chars + len(prediction or "")
    if chars > limits.max_prompt_chars:
        raise InvalidRequest(f"the prompt and the prediction are {chars} characters together, more than the "
                             f"server's limit of {limits.max_prompt_chars} (setting limits.max_prompt_chars)",
                             "prediction")


def _check_sequences(n: int, prompts: int, limits: RequestLimits, field: str) -> None:
    if n > limits.max_n:
        raise InvalidRequest(f"'n' is {n}, more than the server's limit of {limits.max_n} choices per prompt "
                             "(setting limits.max_n)", "n")
    if n * prompts > limits.max_sequences:
        asked = f"{prompts} prompts x n={n}" if prompts > 1 else f"n={n}"
        raise InvalidRequest(f"the request asks for {n * prompts} sequences ({asked}), more than the server's "
                             f"limit of {limits.max_sequences} (setting limits.max_sequences)", field)

"""Chats with images: the images decoded within limits, the template rendered with a marker where each
image goes, and the text cut there into libmtmd's chunks (docs/ENGINE.md "Vision", docs/API.md "Images").

An image part of a message is a marker in the message's text, as llama-server makes it: the message's
text parts are joined with a newline between them, and nothing is added around an image's marker.
Each image gets a marker of its own (random per request: no client can write one), so the rendered
text says where each image sits even if a template moves or drops a message; they are then made one
marker for ``VisionContext.prepare``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from studiolo.config import RequestLimits
from studiolo.domain.chat import ChatMessage, ImageInput
from studiolo.domain.errors import InvalidRequest
from studiolo.engine.engine import Engine
from studiolo.engine.images import DecodedImage, ImageLimits, decode_image
from studiolo.engine.long_text import TokenizingStopped, tokenize_long
from studiolo.engine.vision import VisionContext
from studiolo.engine.vision_chunks import (
    ImageChunk,
    PlacedImage,
    PromptChunk,
    TextChunk,
    new_marker,
    placed_images,
    prompt_tokens,
)
from studiolo.engine.vision_steps import ImagesUnsupported
from studiolo.models.instance import Instance
from studiolo.service.types import ChatRequest, GenerationOptions


@dataclass(frozen=True)
class ImagePrompt:
    tokens: list[int]  # image rows as their placeholder ids
    text: str  # the rendered prompt, each image shown as ``<image 1: 640x480 JPEG, 64 tokens>`` (the log's)
    images: tuple[PlacedImage, ...]


def request_images(messages: list[ChatMessage]) -> list[ImageInput]:
    return [image for message in messages for image in message.images]


def image_prompt(loaded: Instance, request: ChatRequest, limits: RequestLimits,
                 render: Callable[[ChatRequest], str], stop: Callable[[], bool]) -> ImagePrompt:
    """The chat's prompt with its images (``render`` formats a chat with the model's template)."""
    inputs = request_images(request.messages)
    vision = loaded.engine.vision if isinstance(loaded.engine, Engine) else None
    if vision is None:
        raise ImagesUnsupported(f"Model does not support images. Please use a model that does ('{loaded.id}' "
                                "has no vision projector).", inputs[0].param)
    image_limits = ImageLimits(max_bytes=limits.max_image_mib * 2**20, max_pixels=limits.max_image_pixels,
                               max_images=limits.max_images)
    decoded = []
    for image in inputs:
        if stop():
            raise TokenizingStopped()
        decoded.append(decode_image(image.data, image_limits, image.param))
    base = new_marker()[:-2]  # "<__studiolo_image_HEX" + "_3__>" for the fourth image
    text = render(replace(request, messages=_with_markers(request.messages, base)))
    order = _image_order(text, base, inputs)
    marker = new_marker()
    text = re.sub(re.escape(base) + r"_[0-9]+__>", lambda _: marker, text)
    images = [decoded[i] for i in order]
    params = [inputs[i].param for i in order]
    chunks = _prepare(vision, loaded, text, images, marker, stop)
    _check_batches(chunks, params, loaded.engine.context.n_batch)
    return ImagePrompt(prompt_tokens(chunks), _shown(text, marker, images, chunks), placed_images(chunks))


def _with_markers(messages: list[ChatMessage], base: str) -> list[ChatMessage]:
    """Messages whose content is their parts joined, each image as its own marker."""
    marked, count = [], 0
    for message in messages:
        if not message.parts:
            marked.append(message)
            continue
        text, after_image = "", False
        for part in message.parts:
            if isinstance(part, str):
                text += ("\n" if text and not after_image else "") + part
                after_image = False
            else:
                text += f"{base}_{count}__>"
                count, after_image = count + 1, True
        marked.append(replace(message, content=text, parts=()))
    return marked


def _image_order(text: str, base: str, inputs: list[ImageInput]) -> list[int]:
    """Which image each marker of the rendered text stands for, in the text's order; each exactly once."""
    order = [int(found) for found in re.findall(re.escape(base) + r"_([0-9]+)__>", text)]
    for index, image in enumerate(inputs):
        if order.count(index) != 1:
            raise InvalidRequest(f"the model's chat template placed this image {order.count(index)} times in the "
                                 "prompt (it takes an image once, in a message it renders)", image.param)
    return order


def _prepare(vision: VisionContext, loaded: Instance, text: str, images: list[DecodedImage], marker: str,
             stop: Callable[[], bool]) -> list[PromptChunk]:
    """The prompt's chunks; text tokenized as text prompts are (bounded, cancellable), BOS as the tokenizer adds it."""
    model = loaded.model
    chunks = vision.prepare(text, images, marker,
                            tokenize=lambda part: tokenize_long(model, part, add_special=False, should_stop=stop))
    if model.add_bos:  # the template's own BOS text was taken off: the tokenizer adds it (chat_prompt.py)
        first = chunks[0] if chunks and isinstance(chunks[0], TextChunk) else TextChunk(())
        chunks[: 1 if first.tokens else 0] = [TextChunk((model.bos_id, *first.tokens))]
    return chunks


def _check_batches(chunks: list[PromptChunk], params: list[str], n_batch: int) -> None:
    """A non-causal image (Gemma 3's) is decoded in one batch: it must fit the model's."""
    for chunk in chunks:
        if isinstance(chunk, ImageChunk) and chunk.non_causal and chunk.n_tokens > n_batch:
            raise InvalidRequest(f"this image takes {chunk.n_tokens} rows, which must be decoded in one batch, "
                                 f"and the model's batch is {n_batch}: load it with a larger eval_batch_size",
                                 params[chunk.image_index])


def _shown(text: str, marker: str, images: list[DecodedImage], chunks: list[PromptChunk]) -> str:
    """The prompt as the model log shows it: each image where it sits, with its size and rows."""
    rows = [0] * len(images)
    for chunk in chunks:
        if isinstance(chunk, ImageChunk):
            rows[chunk.image_index] += chunk.n_tokens
    pieces = text.split(marker)
    shown = [pieces[0]]
    for index, (image, piece) in enumerate(zip(images, pieces[1:], strict=True)):
        shown.append(f"<image {index + 1}: {image.width}x{image.height} {image.format}, {rows[index]} tokens>{piece}")
    return "".join(shown)



def check_image_options(options: GenerationOptions) -> GenerationOptions:
    """What a prompt with images cannot do: score its prompt (an image row has no token to score)."""
    if options.echo and options.logprobs is not None:
        raise InvalidRequest("'echo' with 'logprobs' scores the prompt's tokens, and a prompt with images has "
                             "rows that are not tokens", "echo")
    return options

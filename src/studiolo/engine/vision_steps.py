"""The engine loop's image path: where a sequence's prompt meets its images (docs/ENGINE.md, "Vision").

A request with images carries them as ``PlacedImage``s (``GenerationRequest.images``): each image's
rows stand in the prompt as placeholder ids from ``start`` to ``end``. The scheduler's token chunks
stop at an image; a sequence whose ``n_past`` sits at an image's start gets it encoded and its rows
written in a decode of their own (``decode_next_image``, one image per step). Placeholders never go
where a token id is read: not into a token batch, the penalty window, drafts or prompt scoring.
``n_past`` counts rows; an M-RoPE image takes fewer KV positions than rows, so what goes to llama.cpp
is ``seq.position(row)`` (vision_chunks.row_position).
"""

from __future__ import annotations

from collections.abc import Iterator

from studiolo.domain.errors import InvalidRequest
from studiolo.engine.llama import LlamaContext
from studiolo.engine.sequence import GenerationRequest, Sequence
from studiolo.engine.vision import ImageEncodeFailed, VisionContext
from studiolo.engine.vision_chunks import PlacedImage


class ImagesUnsupported(InvalidRequest):
    """A request with images to a model that cannot take them (no projector, or one the engine does not drive)."""
    code, param = "images_unsupported", "messages"


def image_at(seq: Sequence) -> PlacedImage | None:
    """The image whose first row is the sequence's next prompt position, if one is."""
    return next((image for image in seq.request.images if image.start == seq.n_past), None)


def text_remaining(seq: Sequence) -> int:
    """Prompt tokens from ``n_past`` up to the next image (or the prompt's end): what a token chunk may take."""
    following = (image.start for image in seq.request.images if image.start >= seq.n_past)
    return min(following, default=len(seq.prompt)) - seq.n_past


def resume_outside_images(images: tuple[PlacedImage, ...], reused: int) -> int:
    """A cached prefix that ends inside an image goes back to the image's start: an image's rows are
    always decoded from its first, in the same batches, cold or resumed (vision_chunks.resume_point)."""
    return next((image.start for image in images if image.start < reused < image.end), reused)


def penalty_window(prompt: list[int], last_n: int) -> list[int]:
    """The prompt's last ``last_n`` token ids for the repetition penalties, placeholder ids skipped (as
    llama-server's sampler skips its image tokens): a negative id would index the logits from the end."""
    window: list[int] = []
    for token in reversed(prompt):  # only as far back as the window reaches
        if len(window) == last_n:
            break
        if token >= 0:
            window.append(token)
    return window[::-1]


def text_tokens(request: GenerationRequest) -> Iterator[int]:
    """The prompt's token ids outside its images (the ones to check against the vocabulary)."""
    at = 0
    for image in request.images:
        yield from request.prompt[at:image.start]
        at = image.end
    yield from request.prompt[at:]


def check_images(request: GenerationRequest, vision: VisionContext | None, n_batch: int) -> None:
    """Refuse a request whose images this engine cannot decode; each image's placeholders must be
    where the request says (a service bug otherwise)."""
    if not request.images:
        return
    if vision is None:
        raise ImagesUnsupported("Model does not support images. Please use a model that does.")
    for image in request.images:
        if tuple(request.prompt[image.start:image.end]) != image.chunk.placeholders:
            raise ValueError(f"image {image.chunk.image_index} is not at {image.start} in the prompt")
        if image.chunk.non_causal and image.chunk.n_tokens > n_batch:
            raise InvalidRequest(f"an image of {image.chunk.n_tokens} rows must be decoded in one batch, and "
                                 f"the model's batch is {n_batch}: load it with a larger eval_batch_size",
                                 "messages")
    if request.speculation is not None:  # a draft model has no projector; n-grams would propose placeholders
        raise ValueError("speculative decoding is off for prompts with images")
    if request.prompt_logprobs:
        raise InvalidRequest("prompt log-probabilities cannot be computed for a prompt with images", "logprobs")


def decode_next_image(vision: VisionContext, context: LlamaContext, seq: Sequence) -> str | None:
    """Encode the image at the sequence's ``n_past`` and write its rows into its KV cells; the sequence
    advances past it. Returns an error message if that failed (the sequence's cells are then unknown)."""
    image = image_at(seq)
    assert image is not None, "the scheduler picks a sequence that sits at an image"
    slot = seq.admitted_slot
    try:
        rows = vision.encode(image.chunk)
    except ImageEncodeFailed as exc:
        return str(exc)
    status = vision.decode_embeddings(context, slot.seq_id, seq.position(image.start), rows, image.chunk)
    if status != 0:
        return f"llama_decode failed with status {status} on image {image.chunk.image_index}"
    seq.n_past = image.end
    slot.tokens.extend(image.chunk.placeholders)
    return None

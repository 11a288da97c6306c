"""How the scheduler plans steps around a prompt's images (engine/vision_steps.py), without a model.

An image here is a stand-in with the fields the scheduler reads (its rows and placeholder ids): the
real chunks, their encoding and decoding are tests/test_vision_engine.py's and test_vision_chat.py's.
"""

from __future__ import annotations

from types import SimpleNamespace

from studiolo.engine.scheduler import Scheduler
from studiolo.engine.sequence import GenerationRequest, Sequence, SequenceState
from studiolo.engine.vision_chunks import PlacedImage
from studiolo.engine.vision_steps import penalty_window, resume_outside_images, text_remaining, text_tokens

ROWS = 64


def image_at(start: int, seed: int = 0) -> PlacedImage:
    chunk = SimpleNamespace(n_tokens=ROWS, placeholders=tuple(-2 - seed * ROWS - i for i in range(ROWS)),
                            non_causal=False, image_index=seed)
    return PlacedImage(start, chunk)  # type: ignore[arg-type]


def prompt_with(images: list[PlacedImage], length: int) -> list[int]:
    prompt = list(range(10, 10 + length))
    for image in images:
        prompt[image.start:image.end] = image.chunk.placeholders
    return prompt


def running(scheduler: Scheduler, request: GenerationRequest, state: SequenceState, n_past: int) -> Sequence:
    seq = Sequence(request, sink=None)
    seq.state, seq.n_past = state, n_past
    if state is SequenceState.DECODING:
        seq.pending = 7
    scheduler.running.append(seq)
    return seq


def test_a_token_chunk_stops_at_an_image_and_the_image_gets_a_step():
    images = (image_at(5), image_at(5 + ROWS + 10, seed=1))
    request = GenerationRequest(prompt_with(list(images), 5 + ROWS + 10 + ROWS + 20), images=images)
    scheduler = Scheduler(slots=None, batch_size=512)  # type: ignore[arg-type]  # plan never reads slots
    seq = running(scheduler, request, SequenceState.PREFILLING, 0)
    chunks = scheduler.plan()
    assert [(c.start, len(c.tokens)) for c in chunks] == [(0, 5)] and scheduler.image is None
    seq.n_past = 5  # at the first image: no token chunk, the image's decode
    assert scheduler.plan() == [] and scheduler.image is seq
    seq.n_past = 5 + ROWS  # the text between the images, and no further
    chunks = scheduler.plan()
    assert [(c.start, len(c.tokens)) for c in chunks] == [(5 + ROWS, 10)] and scheduler.image is None
    assert all(t >= 0 for t in chunks[0].tokens)
    seq.n_past = 5 + ROWS + 10 + ROWS  # the last text: its last token still in a step of its own
    chunks = scheduler.plan()
    assert [(c.start, len(c.tokens), c.logits_from) for c in chunks] == [(seq.n_past, 19, 19)]


def test_others_go_on_while_an_image_is_decoded_and_its_rows_count_against_the_batch():
    scheduler = Scheduler(slots=None, batch_size=100)  # type: ignore[arg-type]
    images = (image_at(3),)
    with_image = running(scheduler, GenerationRequest(prompt_with(list(images), 3 + ROWS + 4), images=images),
                         SequenceState.PREFILLING, 3)
    streaming = running(scheduler, GenerationRequest(list(range(10, 30))), SequenceState.DECODING, 20)
    prefilling = running(scheduler, GenerationRequest(list(range(10, 210))), SequenceState.PREFILLING, 0)
    second_image = running(scheduler, GenerationRequest(prompt_with(list(images), 3 + ROWS + 4), images=images),
                           SequenceState.PREFILLING, 3)
    chunks = scheduler.plan()
    assert scheduler.image is with_image  # one image a step: the first waiting
    # the decoding sequence's token, then what is left of the batch after the image's rows
    assert [(c.seq, len(c.tokens)) for c in chunks] == [(streaming, 1), (prefilling, 100 - 1 - ROWS)]
    assert second_image not in [c.seq for c in chunks]


def test_a_cached_prefix_never_ends_inside_an_image():
    images = (image_at(5), image_at(100, seed=1))
    assert resume_outside_images(images, 5) == 5  # up to the image: resumed there, the image decoded whole
    assert resume_outside_images(images, 6) == 5
    assert resume_outside_images(images, 5 + ROWS - 1) == 5
    assert resume_outside_images(images, 5 + ROWS) == 5 + ROWS  # the whole image was cached
    assert resume_outside_images(images, 130) == 100
    assert resume_outside_images((), 42) == 42


def test_placeholders_stay_out_of_the_penalty_window_and_the_vocabulary_check():
    images = (image_at(2),)
    prompt = prompt_with(list(images), 2 + ROWS + 3)
    assert penalty_window(prompt, 4) == [11, 76, 77, 78]  # the last 4 token ids, the image's rows skipped
    assert penalty_window(prompt, 64) == [10, 11, 76, 77, 78]
    assert penalty_window([1, 2, 3], 2) == [2, 3]
    request = GenerationRequest(prompt, images=images)
    assert list(text_tokens(request)) == [10, 11, 76, 77, 78]
    seq = Sequence(request, sink=None)
    assert text_remaining(seq) == 2
    seq.n_past = 2 + ROWS
    assert text_remaining(seq) == 3

"""The engine's image path (engine/vision.py, engine/images.py) against libmtmd's own.

The projectors here have random weights (tests/vision_projector.py): the model sees nothing and its
words about an image are nonsense. What these tests show is the plumbing: for the same image, prompt
and greedy decoding, studiolo's path (``prepare`` -> ``encode`` -> ``decode_embeddings``, text chunks
in its own batches) leaves the same logits, bit for bit, and the same tokens as llama.cpp's
``mtmd_tokenize`` + ``mtmd_helper_eval_chunks``; images are known by their pixels; limits hold; and a
client's text cannot make an image slot.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import llama_cpp.mtmd_cpp as mtmd
import numpy as np
import pytest
from PIL import Image

from studiolo.engine.images import (
    DecodedImage,
    ImageLimits,
    ImageTooLarge,
    NotAnImage,
    UnsupportedImageFormat,
    decode_image,
)
from studiolo.engine.llama import ContextParams, LlamaContext, LlamaModel, ModelClosed
from studiolo.engine.prompt_cache import common_prefix_length
from studiolo.engine.vision import ProjectorLoadError, VisionContext
from studiolo.engine.vision_chunks import ImageChunk, TextChunk, new_marker, prompt_tokens, resume_point
from studiolo.models.catalog import Catalog
from studiolo.models.defaults import target_path
from studiolo.models.gguf_info import read_model_info
from tests.libmtmd_reference import libmtmd_path
from tests.vision_projector import (
    GEMMA_VISION,
    IMAGE_TOKENS,
    QWEN_VISION,
    SMOLLM_VISION,
    VisionModel,
    link_vision_models,
    projector_file,
)

TEST_IMAGE = Path(__file__).parent / "fixtures" / "test-1.jpeg"  # llama.cpp's tools/mtmd/test-1.jpeg
GREEDY_TOKENS = 12


def chat(*turns: str, gemma: bool = False) -> str:
    """A prompt of user turns and answers ending with the assistant's header: ChatML (SmolLM2's
    template), or Gemma's turns (Gemma 3 270M is a base model, without a template)."""
    if gemma:
        roles = ["user", "model"] * len(turns)
        body = "".join(f"<start_of_turn>{role}\n{text}<end_of_turn>\n"
                       for role, text in zip(roles, turns, strict=False))
        return body + "<start_of_turn>model\n"
    roles = ["user", "assistant"] * len(turns)
    body = "".join(f"<|im_start|>{role}\n{text}<|im_end|>\n" for role, text in zip(roles, turns, strict=False))
    return body + "<|im_start|>assistant\n"


def pillow_image(seed: int, size: tuple[int, int] = (150, 100), fmt: str = "PNG", mode: str = "RGB") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], len(mode)), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, mode).save(out, fmt)
    return out.getvalue()


@pytest.fixture(scope="module")
def loaded():
    """(model, vision context) of a vision model, loaded once per module."""
    opened: dict[str, tuple[LlamaModel, VisionContext]] = {}

    def load(vision_model: VisionModel) -> tuple[LlamaModel, VisionContext]:
        if vision_model.key not in opened:
            model = LlamaModel(target_path(vision_model.source))
            opened[vision_model.key] = (model, VisionContext(model, projector_file(vision_model), n_threads=1))
        return opened[vision_model.key]

    yield load
    for model, vision in opened.values():
        vision.close()  # before the model: the mtmd context points into its weights
        model.close()


@pytest.fixture
def smollm(loaded):
    return loaded(SMOLLM_VISION)


@pytest.fixture(scope="module")
def photo() -> DecodedImage:
    return decode_image(TEST_IMAGE.read_bytes())


def new_context(model: LlamaModel, n_batch: int) -> LlamaContext:
    return LlamaContext(model, ContextParams(n_ctx=1024, n_batch=n_batch, n_seq_max=2, n_threads=1))


# --- the projector ------------------------------------------------------------------


@pytest.mark.parametrize("vision_model", [SMOLLM_VISION, QWEN_VISION, GEMMA_VISION],
                         ids=["smollm2", "qwen0.5b", "gemma3"])
def test_the_random_projector_loads_in_libmtmd_and_encodes_rows_of_the_model_s_width(vision_model, photo):
    path = projector_file(vision_model)
    assert path.stat().st_size < 1_000_000
    model = LlamaModel(target_path(vision_model.source))
    try:
        vision = VisionContext(model, path, n_threads=1)
        try:
            assert vision.n_embd == vision_model.n_embd and not vision.uses_mrope
            # as libmtmd reports them: the weights about the file's size (in MiB to two places)
            assert abs(vision.memory_bytes["weights"] - path.stat().st_size) < 0.1 * 2**20
            assert 0 < vision.memory_bytes["compute"] < 64 * 2**20
            marker = new_marker()
            chunks = vision.prepare(f"Look: {marker} now", [photo], marker)
            image = next(chunk for chunk in chunks if isinstance(chunk, ImageChunk))
            non_causal = vision_model.projector_type == "gemma3"
            assert (image.n_tokens, image.n_pos, image.non_causal) == (IMAGE_TOKENS, IMAGE_TOKENS, non_causal)
            rows = vision.encode(image)
            assert rows.shape == (IMAGE_TOKENS, vision_model.n_embd) and np.isfinite(rows).all()
            assert np.array_equal(rows, vision.encode(image))  # fixed weights, fixed output
        finally:
            vision.close()
    finally:
        model.close()


def test_a_vision_model_is_a_text_model_with_its_projector_beside_it(tmp_path):
    home = link_vision_models(tmp_path)
    entries = {entry.key: entry for entry in Catalog(home / "models").entries()}
    assert sorted(entries) == sorted(model.key for model in (SMOLLM_VISION, QWEN_VISION, GEMMA_VISION))
    for vision_model in (SMOLLM_VISION, QWEN_VISION, GEMMA_VISION):
        entry = entries[vision_model.key]  # the model, never its projector
        assert entry.path.name == target_path(vision_model.source).name
        assert (entry.path.parent / vision_model.projector_name).is_file()
        assert read_model_info(entry.path).has_vision
    assert not read_model_info(target_path(SMOLLM_VISION.source)).has_vision  # the real model's own folder


def test_a_projector_of_another_width_or_no_projector_is_refused(tmp_path):
    model = LlamaModel(target_path(SMOLLM_VISION.source))
    try:
        with pytest.raises(ProjectorLoadError, match="could not load the projector") as caught:
            VisionContext(model, projector_file(QWEN_VISION), n_threads=1)  # 896 wide, SmolLM2 reads 576
        assert caught.value.code == "projector_load_failed"
        with pytest.raises(ProjectorLoadError, match="not found"):
            VisionContext(model, tmp_path / "mmproj-missing.gguf", n_threads=1)
        (tmp_path / "mmproj-broken.gguf").write_bytes(b"GGUF" + bytes(100))
        with pytest.raises(ProjectorLoadError):
            VisionContext(model, tmp_path / "mmproj-broken.gguf", n_threads=1)
    finally:
        model.close()


# --- the same result as libmtmd's own path ------------------------------------------


def greedy(ctx: LlamaContext, seq_id: int, pos: int, logits: np.ndarray) -> list[int]:
    tokens = []
    for _ in range(GREEDY_TOKENS):
        tokens.append(int(np.argmax(logits)))
        ctx.batch.clear()
        ctx.batch.add([tokens[-1]], pos, seq_id, 0)
        assert ctx.decode() == 0
        pos += 1
        logits = ctx.logits(0).copy()
    return tokens


def studiolo_path(vision: VisionContext, ctx: LlamaContext, chunks, seq_id: int) -> tuple[np.ndarray, int]:
    """The prompt's chunks through our own calls, each text chunk in batches of the context's size."""
    pos, last = 0, None
    for chunk in chunks:
        if isinstance(chunk, TextChunk):
            for start in range(0, len(chunk.tokens), ctx.n_batch):
                piece = list(chunk.tokens[start:start + ctx.n_batch])
                ctx.batch.clear()
                ctx.batch.add(piece, pos, seq_id, len(piece) - 1)
                assert ctx.decode() == 0
                pos += len(piece)
            last = ctx.logits(ctx.batch.size - 1).copy()
        else:
            rows = vision.encode(chunk)
            assert vision.decode_embeddings(ctx, seq_id, pos, rows, chunk) == 0
            pos += chunk.n_pos
    assert last is not None, "a prompt ends with text (the assistant's header)"
    return last, pos


# SmolLM2's LLaVA projector is causal, and takes its image in one batch or cut in two (as libmtmd's
# helper cuts it); Gemma 3's is not causal: its image is decoded whole, with causal attention off
@pytest.mark.parametrize(("vision_model", "n_batch"), [(SMOLLM_VISION, 512), (SMOLLM_VISION, 40), (GEMMA_VISION, 512)],
                         ids=["smollm2-image-in-one-batch", "smollm2-image-in-two-batches", "gemma3-non-causal"])
def test_same_logits_and_greedy_tokens_as_libmtmd_s_helper(loaded, photo, vision_model, n_batch):
    model, vision = loaded(vision_model)
    gemma = vision_model is GEMMA_VISION
    drawing = decode_image(pillow_image(seed=3))
    marker = new_marker()
    text = chat(f"{marker}\nWhat is in this image?", "A photo.", f"And here?\n{marker}\nCompare them.", gemma=gemma)
    chunks = vision.prepare(text, [photo, drawing], marker)
    assert [type(chunk) for chunk in chunks] == [TextChunk, ImageChunk, TextChunk, ImageChunk, TextChunk]
    assert all(chunk.non_causal == gemma for chunk in chunks if isinstance(chunk, ImageChunk))
    if gemma:  # its images come framed by their own tokens
        assert model.token_bytes(chunks[0].tokens[-1], special=True) == b"<start_of_image>"
        assert model.token_bytes(chunks[2].tokens[0], special=True) == b"<end_of_image>"
    ctx = new_context(model, n_batch)
    try:
        # each path in an empty cache: another sequence's cells in the unified cache change the
        # attention's summation order, and so the last bits of the logits (text-only prompts too)
        ours, our_end = studiolo_path(vision, ctx, chunks, seq_id=0)
        our_tokens = greedy(ctx, 0, our_end, ours)
        ctx.clear()
        theirs, their_end = libmtmd_path(vision, ctx, text.replace(marker, mtmd.mtmd_default_marker().decode()),
                                         [photo, drawing], seq_id=0)
        assert our_end == their_end == len(prompt_tokens(chunks))
        assert np.array_equal(ours, theirs)  # bit for bit
        assert our_tokens == greedy(ctx, 0, their_end, theirs)
        assert len(set(our_tokens)) > 1  # a real continuation, not one token repeated
    finally:
        ctx.close()


# --- images as the prefix cache knows them ------------------------------------------


def test_placeholders_follow_the_pixels_not_the_file(smollm, photo):
    _, vision = smollm
    same_as_png = io.BytesIO()
    Image.frombytes("RGB", (photo.width, photo.height), photo.rgb).save(same_as_png, "PNG")
    again = decode_image(same_as_png.getvalue())
    other = decode_image(pillow_image(seed=4))
    marker = new_marker()

    def image_ids(image: DecodedImage) -> tuple[int, ...]:
        chunk = next(c for c in vision.prepare(f"x{marker}y", [image], marker) if isinstance(c, ImageChunk))
        return chunk.placeholders

    first = image_ids(photo)
    assert len(first) == IMAGE_TOKENS and all(-2**31 <= i <= -2 for i in first)
    assert again.digest == photo.digest and image_ids(again) == first
    assert image_ids(other) != first and not set(image_ids(other)) & set(first)


def test_a_follow_up_turn_starts_with_the_first_turn_s_tokens(smollm, photo):
    _, vision = smollm
    marker = new_marker()
    turn1 = prompt_tokens(vision.prepare(chat(f"{marker}\nWhat is this?"), [photo], marker))
    turn2 = prompt_tokens(vision.prepare(chat(f"{marker}\nWhat is this?", "A cat.", "Sure?"), [photo], marker))
    other = decode_image(pillow_image(seed=5))
    with_other = prompt_tokens(vision.prepare(chat(f"{marker}\nWhat is this?", "A cat.", "Sure?"), [other], marker))
    # the chat's text ends its turn where the next one starts: everything before the answer is shared
    assert turn2[: len(turn1) - 3] == turn1[:-3]
    shared = next(i for i, (a, b) in enumerate(zip(turn2, with_other, strict=True)) if a != b)
    assert turn2[shared] < 0  # the prompts part at the first row of the image, not later


def feed(vision: VisionContext, ctx: LlamaContext, chunks, start: int, end: int) -> np.ndarray | None:
    """Decode the prompt's tokens [start, end) as sequence 0 (an image's rows by ``decode_embeddings``);
    the logits of the last text token decoded."""
    at, last = 0, None
    for chunk in chunks:
        size = len(chunk.tokens) if isinstance(chunk, TextChunk) else chunk.n_tokens
        low, high = max(start, at), min(end, at + size)
        if low < high and isinstance(chunk, TextChunk):
            ctx.batch.clear()
            ctx.batch.add(list(chunk.tokens[low - at:high - at]), low, 0, high - low - 1)
            assert ctx.decode() == 0
            last = ctx.logits(ctx.batch.size - 1).copy()
        elif low < high:
            rows = vision.encode(chunk)
            assert vision.decode_embeddings(ctx, 0, at, rows, chunk, first_row=low - at, n_rows=high - low) == 0
        at += size
    return last


def prefill(vision: VisionContext, ctx: LlamaContext, chunks, cuts: list[int]) -> np.ndarray | None:
    """The prompt's tokens from ``cuts[0]`` on, in decodes cut at ``cuts`` (whose last two are the
    prompt's last token: the scheduler gives it a decode of its own)."""
    last = None
    for start, end in zip(cuts, cuts[1:], strict=False):
        last = feed(vision, ctx, chunks, start, end)
    return last


@pytest.mark.parametrize("vision_model", [SMOLLM_VISION, GEMMA_VISION], ids=["smollm2", "gemma3-non-causal"])
def test_a_follow_up_turn_resumed_from_the_image_s_kv_gives_the_cold_prompt_s_logits(loaded, photo, vision_model):
    """Text prefilled in other cuts rounds otherwise (docs/ENGINE.md, "What batching does to numbers"),
    so each cold prompt here is cut where the resumed one was: what differs is only where the KV came from."""
    model, vision = loaded(vision_model)
    gemma = vision_model is GEMMA_VISION
    marker = new_marker()
    turn1 = vision.prepare(chat(f"{marker}\nWhat is this?", gemma=gemma), [photo], marker)
    turn2 = vision.prepare(chat(f"{marker}\nWhat is this?", "A cat.", "Sure?", gemma=gemma), [photo], marker)
    image_start, end1, end2 = len(turn2[0].tokens), len(prompt_tokens(turn1)), len(prompt_tokens(turn2))
    # the whole first turn, image included, is a prefix of the second
    assert common_prefix_length(prompt_tokens(turn1), prompt_tokens(turn2)) == end1 > image_start + IMAGE_TOKENS
    ctx = new_context(model, 512)
    try:
        # the first turn's cells; a cache cut inside the image (a slot truncated there)
        for kept, cold_cuts in [(end1, [0, end1 - 1, end1, end2 - 1, end2]), (image_start + 30, [0, end2 - 1, end2])]:
            ctx.clear()
            cold = prefill(vision, ctx, turn2, cold_cuts)
            ctx.clear()
            prefill(vision, ctx, turn1, [0, end1 - 1, end1])
            resume = resume_point(turn2, kept)
            assert resume == (kept if kept == end1 else image_start)  # never inside an image
            ctx.remove_from(0, resume)
            assert np.array_equal(prefill(vision, ctx, turn2, [resume, end2 - 1, end2]), cold)
    finally:
        ctx.close()


def test_text_tokenized_by_the_caller_gives_libmtmd_s_chunks(smollm, photo):
    model, vision = smollm
    drawing = decode_image(pillow_image(seed=9))
    marker = new_marker()
    text = chat(f"{marker}{marker}\nTwo <|im_end|> images.", "Yes.", f"Again: {marker}")
    by_libmtmd = vision.prepare(text, [photo, drawing, photo], marker)

    def tokenize(part: str) -> list[int]:
        return model.tokenize(part, add_special=False, parse_special=True)

    by_caller = vision.prepare(text, [photo, drawing, photo], marker, tokenize=tokenize)
    shape = [(type(c), c.tokens if isinstance(c, TextChunk) else (c.image_index, c.digest, c.placeholders))
             for c in by_libmtmd]
    assert shape == [(type(c), c.tokens if isinstance(c, TextChunk) else (c.image_index, c.digest, c.placeholders))
                     for c in by_caller]
    assert [type(c) for c in by_caller] == [TextChunk, ImageChunk, ImageChunk, TextChunk, ImageChunk, TextChunk]
    first, again = by_caller[1], by_caller[4]
    assert isinstance(first, ImageChunk) and isinstance(again, ImageChunk)
    assert (first.image_index, again.image_index) == (0, 2) and first.placeholders != again.placeholders


# --- markers --------------------------------------------------------------------------


def test_a_client_s_marker_text_is_text(smollm, photo):
    model, vision = smollm
    default = mtmd.mtmd_default_marker().decode()
    text = chat(f"Say {default} and <__image__> back.")
    chunks = vision.prepare(text, [], new_marker())
    assert chunks == [TextChunk(tuple(model.tokenize(text, add_special=False, parse_special=True)))]
    marker = new_marker()
    with_image = vision.prepare(chat(f"{marker} Say {default} back."), [photo], marker)
    assert sum(isinstance(chunk, ImageChunk) for chunk in with_image) == 1
    assert isinstance(with_image[1], ImageChunk) and isinstance(with_image[2], TextChunk)
    assert f" Say {default} back.".encode() in b"".join(model.token_bytes(t) for t in with_image[2].tokens)
    with pytest.raises(ValueError, match="2 image markers for 1 images"):
        vision.prepare(f"{marker}{marker}", [photo], marker)


def test_libmtmd_says_nothing_on_stderr(capfd, photo):
    """libmtmd narrates every load and encode on stderr unless given a log callback: studiolo's keeps
    its warnings and errors for the server log (logger ``studiolo.mtmd``)."""
    model = LlamaModel(target_path(SMOLLM_VISION.source))
    capfd.readouterr()
    vision = VisionContext(model, projector_file(SMOLLM_VISION), n_threads=1)
    try:
        marker = new_marker()
        image = next(c for c in vision.prepare(f"a{marker}b", [photo], marker) if isinstance(c, ImageChunk))
        vision.encode(image)
    finally:
        vision.close()
        model.close()
    assert capfd.readouterr().err == ""


def test_a_closed_vision_context_refuses_work():
    model = LlamaModel(target_path(SMOLLM_VISION.source))
    vision = VisionContext(model, projector_file(SMOLLM_VISION), n_threads=1, warmup=False)
    vision.close()
    vision.close()  # twice is harmless
    with pytest.raises(ModelClosed, match="unloaded") as caught:  # a 503 for a request getting ready meanwhile
        vision.prepare("text", [], new_marker())
    assert caught.value.code == "model_unloaded"
    model.close()


# --- image limits ---------------------------------------------------------------------


def test_images_are_decoded_to_rgb(photo):
    assert (photo.width, photo.height, photo.format, len(photo.rgb)) == (640, 488, "JPEG", 640 * 488 * 3)
    transparent = decode_image(pillow_image(seed=6, size=(4, 4), mode="RGBA"))
    assert transparent.format == "PNG" and len(transparent.rgb) == 4 * 4 * 3
    clear = io.BytesIO()
    Image.new("RGBA", (2, 2), (0, 0, 0, 0)).save(clear, "PNG")
    assert decode_image(clear.getvalue()).rgb == b"\xff" * 12  # transparent is white, not black
    sideways = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to show
    Image.new("RGB", (30, 20)).save(sideways, "JPEG", exif=exif)
    assert (decode_image(sideways.getvalue()).width, decode_image(sideways.getvalue()).height) == (20, 30)
    gif = io.BytesIO()
    Image.new("P", (5, 5)).save(gif, "GIF")
    assert decode_image(gif.getvalue()).format == "GIF"
    camera = io.BytesIO()  # a JPEG with a second picture, as cameras write them (Pillow says MPO)
    Image.new("RGB", (8, 8)).save(camera, "MPO", save_all=True, append_images=[Image.new("RGB", (4, 4))])
    assert (decode_image(camera.getvalue()).format, decode_image(camera.getvalue()).width) == ("JPEG", 8)


def test_bytes_that_are_not_an_image_are_refused():
    for data in [b"", b"hello, world", b"%PDF-1.7\n" + bytes(200)]:
        with pytest.raises(NotAnImage) as caught:
            decode_image(data, param="messages[0].content[1].image_url")
        assert (caught.value.kind, caught.value.code) == ("invalid", "invalid_image")
        assert caught.value.param == "messages[0].content[1].image_url"


def test_a_truncated_image_is_refused():
    with pytest.raises(NotAnImage, match="broken or truncated"):
        decode_image(TEST_IMAGE.read_bytes()[:4000])


def test_formats_outside_the_list_are_refused():
    tiff = io.BytesIO()
    Image.new("RGB", (8, 8)).save(tiff, "TIFF")
    with pytest.raises(UnsupportedImageFormat, match="TIFF images are not supported") as caught:
        decode_image(tiff.getvalue(), param="input[0].image_url")
    assert (caught.value.code, caught.value.param) == ("unsupported_image_format", "input[0].image_url")
    with pytest.raises(UnsupportedImageFormat):
        decode_image(pillow_image(seed=7), ImageLimits(formats=frozenset({"JPEG"})))


def test_too_many_bytes_are_refused_before_parsing():
    data = TEST_IMAGE.read_bytes()
    with pytest.raises(ImageTooLarge, match="the limit is 1,000") as caught:
        decode_image(data, ImageLimits(max_bytes=1000))
    assert caught.value.code == "image_too_large" and caught.value.kind == "invalid"


def png_claiming(width: int, height: int) -> bytes:
    """A PNG of a few bytes whose header claims ``width`` x ``height`` pixels: a pixel bomb's shape."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) \
        + chunk(b"IEND", b"")


def test_pixel_bombs_are_refused_from_their_header():
    with pytest.raises(ImageTooLarge, match="pixels"):
        decode_image(png_claiming(100_000, 100_000))  # 10 Gpx: past Pillow's own backstop too
    with pytest.raises(ImageTooLarge, match="9000 x 9000 pixels"):
        decode_image(png_claiming(9000, 9000))  # past the default 8K limit, under Pillow's
    with pytest.raises(ImageTooLarge, match="the limit is 1,000 pixels"):
        decode_image(pillow_image(seed=8, size=(40, 40)), ImageLimits(max_pixels=1000))

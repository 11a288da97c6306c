"""Images through /v1/chat/completions, end to end with the openai client.

The vision model is SmolLM2 with a projector of random weights (tests/vision_projector.py): the model
sees nothing, and what it says about an image is nonsense, fixed for a seed and greedy decoding. These
tests check the plumbing, never sight: the server's greedy tokens are llama.cpp's own multimodal path's
(libmtmd's ``mtmd_helper_eval_chunks`` run in this process on the same image and prompt), images are
counted, cached and kept apart, and every bad image is a 400 naming its field.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
from pathlib import Path

import httpx
import llama_cpp.mtmd_cpp as mtmd
import numpy as np
import openai
import pytest
from PIL import Image

from studiolo.models.defaults import target_path
from tests.batching import assert_same_or_parted_at_a_near_tie
from tests.conftest import SMOLLM, PromptLog, RunningServer, free_port, home_with_models
from tests.libmtmd_reference import libmtmd_greedy
from tests.vision_projector import (
    GEMMA_VISION,
    IMAGE_TOKENS,
    SMOLLM_VISION,
    link_vision_models,
    projector_file,
)

VISION = SMOLLM_VISION.key
TEST_IMAGE = Path(__file__).parent / "fixtures" / "test-1.jpeg"  # llama.cpp's tools/mtmd/test-1.jpeg
MAX_TOKENS = 10
LIMITS = {"max_images": 3, "max_image_mib": 1, "max_image_pixels": 1_000_000}


def data_url(data: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


def drawing(seed: int, size: tuple[int, int] = (150, 100), fmt: str = "PNG") -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, fmt)
    return out.getvalue()


PHOTO = data_url(TEST_IMAGE.read_bytes(), "image/jpeg")
DRAWING = data_url(drawing(1))
OTHER = data_url(drawing(2))


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url, "detail": "low"}}


def user(*parts: str | dict) -> dict:
    return {"role": "user", "content": [p if isinstance(p, dict) else {"type": "text", "text": p} for p in parts]}


@pytest.fixture(scope="module")
def vision_server(tmp_path_factory, default_models):
    home = home_with_models(tmp_path_factory.mktemp("vision-home"), {SMOLLM: default_models[SMOLLM]})
    link_vision_models(home, (SMOLLM_VISION, GEMMA_VISION))
    (home / "settings.json").write_text(json.dumps({"limits": LIMITS}))
    running = RunningServer(home, free_port(), [])
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(vision_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{vision_server.base_url}/v1", api_key="x", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def http(vision_server):
    with httpx.Client(base_url=vision_server.base_url, timeout=120) as session:
        yield session


def ask(client: openai.OpenAI, messages: list[dict], **extra):
    extra = {"model": VISION, "max_tokens": MAX_TOKENS, "temperature": 0, "seed": 1, **extra}
    return client.chat.completions.create(messages=messages, **extra)


# --- the same tokens as libmtmd's own path --------------------------------------------


# SmolLM2's LLaVA projector is causal; Gemma 3's is not: its image is decoded whole with causal attention off
@pytest.mark.parametrize("vision_model", [SMOLLM_VISION, GEMMA_VISION], ids=["smollm2", "gemma3-non-causal"])
def test_greedy_output_is_libmtmd_s_for_the_same_image_and_prompt(vision_server, client, vision_model):
    log = PromptLog(vision_server.base_url)
    try:
        for _ in range(100):  # subscribed once a probe's prompt shows up (a completion: no chat prefix cached)
            client.completions.create(model=vision_model.key, prompt="ping", max_tokens=1)
            log.wait_for(1, seconds=0.1)
            if log.prompts:
                break
        seen = len(log.prompts)
        # plain greedy decoding: no repetition penalty (LM Studio's default is 1.1)
        # an answered turn about the image, then a question: Gemma 3 270M, a base model, answers only
        # line breaks right after a random image
        messages = [user(image_part(PHOTO), "What is in this image?"), {"role": "assistant", "content": "A photo."},
                    user("Write a story about a cat.")]
        reply = ask(client, messages, model=vision_model.key, extra_body={"repeat_penalty": 1})
        log.wait_for(seen + 1)
        shown = log.prompts[seen]
    finally:
        log.close()
    # the log shows where the image sits in the prompt; llama.cpp's marker goes there for libmtmd
    images = re.findall(r"<image 1: 640x488 JPEG, 64 tokens>", shown)  # noqa: RUF039 - a literal
    assert len(images) == 1 and shown.index(images[0]) < shown.index("What is in this image?")
    prompt = shown.replace(images[0], mtmd.mtmd_default_marker().decode())
    run = libmtmd_greedy(target_path(vision_model.source), projector_file(vision_model), prompt,
                         [TEST_IMAGE.read_bytes()], MAX_TOKENS)  # both models train on more than 4096
    text, positions = run.text, run.prompt_positions
    assert reply.choices[0].message.content == text and len(set(text.split())) > 3
    assert reply.usage.prompt_tokens == positions  # the image's 64 rows count as prompt tokens


def test_streamed_equals_whole_and_api_v0_shares_the_route(client, http):
    messages = [user(image_part(DRAWING), "Describe it.")]
    whole = ask(client, messages)
    stream = ask(client, messages, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    v0 = http.post("/api/v0/chat/completions", json={"model": VISION, "messages": messages, "max_tokens": MAX_TOKENS,
                                                      "temperature": 0, "seed": 1})
    assert v0.status_code == 200, v0.text
    assert v0.json()["choices"][0]["message"]["content"] == text


def test_two_images_in_one_message_and_across_messages(client):
    alone = ask(client, [user("Compare the two pictures.")]).usage.prompt_tokens
    both = ask(client, [user(image_part(PHOTO), image_part(DRAWING), "Compare the two pictures.")])
    assert both.usage.prompt_tokens == alone + 2 * IMAGE_TOKENS
    across = ask(client, [user(image_part(PHOTO), "First."), {"role": "assistant", "content": "Seen."},
                          user(image_part(DRAWING), "Compare the two pictures.")])
    assert across.usage.prompt_tokens > alone + 2 * IMAGE_TOKENS
    assert across.choices[0].message.content  # something came out


def test_a_follow_up_turn_reuses_the_image_s_kv_and_another_image_does_not(client):
    first = [user("Look:", image_part(OTHER), "What is it?")]
    turn1 = ask(client, first)
    answer = {"role": "assistant", "content": turn1.choices[0].message.content}
    turn2 = ask(client, [*first, answer, user("Are you sure?")])
    cached = turn2.usage.prompt_tokens_details.cached_tokens
    assert cached >= turn1.usage.prompt_tokens - 3  # the whole first turn, image included, less its end
    text_before_image = turn1.usage.prompt_tokens - IMAGE_TOKENS
    swapped = ask(client, [user("Look:", image_part(DRAWING), "What is it?"), answer, user("Are you sure?")])
    # the prompts part at the image's first row: nothing of it, nor after it, is reused
    assert swapped.usage.prompt_tokens == turn2.usage.prompt_tokens
    assert swapped.usage.prompt_tokens_details.cached_tokens < text_before_image


def test_an_image_request_and_a_text_request_at_once_do_not_mix(vision_server):
    async def run() -> None:
        async_client = openai.AsyncOpenAI(base_url=f"{vision_server.base_url}/v1", api_key="x", max_retries=0,
                                          timeout=120)

        async def steps(messages: list[dict]) -> list:
            reply = await async_client.chat.completions.create(
                model=VISION, messages=messages, max_tokens=MAX_TOKENS, temperature=0, seed=1, logprobs=True,
                top_logprobs=5)
            return [(t.token, {a.token: a.logprob for a in t.top_logprobs}) for t in reply.choices[0].logprobs.content]

        with_image = [user(image_part(PHOTO), "Tell me a story about it.")]
        text_only = [user("Name three colours.")]
        solo_image, solo_text = await steps(with_image), await steps(text_only)
        together = await asyncio.gather(steps(with_image), steps(text_only))
        assert_same_or_parted_at_a_near_tie("image", solo_image, together[0])
        assert_same_or_parted_at_a_near_tie("text", solo_text, together[1])
        assert solo_image != solo_text
        await async_client.close()

    asyncio.run(run())


# --- every bad image is a 400 naming its field ----------------------------------------


def error_of(http: httpx.Client, body: dict, path: str = "/v1/chat/completions") -> dict:
    response = http.post(path, json=body)
    assert response.status_code == 400, response.text
    return response.json()["error"]


TIFF = io.BytesIO()
Image.new("RGB", (8, 8)).save(TIFF, "TIFF")
LARGE_PIXELS = io.BytesIO()
Image.new("RGB", (1100, 1000)).save(LARGE_PIXELS, "PNG")  # 1.1 Mpx in a few kB


@pytest.mark.parametrize(("url", "code"), [
    ("data:image/png;base64,%%%notbase64", "invalid_base64"),
    ("data:image/png;base64,iVBORw0KGgo=", "invalid_image"),  # a PNG's signature, then nothing
    (data_url(b"just some text, not a picture"), "invalid_image"),
    (data_url(TIFF.getvalue(), "image/tiff"), "unsupported_image_format"),
    (data_url(drawing(3, (700, 700))), "image_too_large"),  # 1.4 MB of noise: over 1 MiB
    (data_url(LARGE_PIXELS.getvalue()), "image_too_large"),  # over 1,000,000 pixels
    ("https://example.com/cat.png", "image_url_unsupported"),  # never fetched
    ("data:image/png,rawbytes", "invalid_image_url"),
], ids=["broken-base64", "truncated", "not-an-image", "tiff", "too-many-bytes", "too-many-pixels", "remote-url",
        "not-base64"])
def test_a_bad_image_is_a_400_naming_its_field(http, url, code):
    body = {"model": VISION, "messages": [{"role": "system", "content": "Be brief."},
                                          user("Look:", image_part(url))]}
    error = error_of(http, body)
    assert (error["code"], error["param"]) == (code, "messages[1].content[1].image_url")
    assert error_of(http, body, "/api/v0/chat/completions")["param"] == "messages[1].content[1].image_url"


def test_an_image_to_a_model_without_a_projector(http):
    error = error_of(http, {"model": SMOLLM, "messages": [user("Look:", image_part(DRAWING))]})
    assert (error["code"], error["param"]) == ("images_unsupported", "messages[0].content[1].image_url")
    assert "does not support images" in error["message"]


def test_more_images_than_the_limit(http):
    messages = [user(image_part(DRAWING), image_part(OTHER)), user(image_part(PHOTO), "and", image_part(DRAWING))]
    error = error_of(http, {"model": VISION, "messages": messages})
    assert (error["code"], error["param"]) == ("too_many_images", "messages[1].content[2].image_url")
    assert "limits.max_images" in error["message"]


def test_more_image_rows_than_the_context(http, client):
    loaded = http.post("/api/v1/models/load", json={"model": VISION, "context_length": 100,
                                                     "identifier": "tiny-vision"})
    assert loaded.status_code == 200, loaded.text
    try:
        body = {"model": "tiny-vision", "messages": [user(image_part(PHOTO), image_part(DRAWING), "Both?")]}
        error = error_of(http, body)
        assert (error["code"], error["param"]) == ("context_length_exceeded", "messages")
        assert f"({2 * IMAGE_TOKENS} of them for its images)" in error["message"]
        # one image fits: the server is fine and answers it
        one = client.chat.completions.create(model="tiny-vision", messages=[user(image_part(PHOTO), "One?")],
                                             max_tokens=2, temperature=0)
        assert one.usage.prompt_tokens > IMAGE_TOKENS
    finally:
        http.post("/api/v1/models/unload", json={"instance_id": "tiny-vision"})


def test_a_non_causal_image_larger_than_the_batch(http):
    """Gemma 3's image rows see each other both ways: they are decoded in one batch, which must hold them."""
    loaded = http.post("/api/v1/models/load", json={"model": GEMMA_VISION.key, "eval_batch_size": 32,
                                                     "identifier": "small-batch-gemma"})
    assert loaded.status_code == 200, loaded.text
    try:
        error = error_of(http, {"model": "small-batch-gemma", "messages": [user("Hi"), user(image_part(PHOTO))]})
        assert error["param"] == "messages[1].content[0].image_url" and "eval_batch_size" in error["message"]
    finally:
        http.post("/api/v1/models/unload", json={"instance_id": "small-batch-gemma"})


def test_echo_with_logprobs_cannot_score_an_image(http):
    body = {"model": VISION, "messages": [user(image_part(DRAWING), "Hi")], "echo": True, "logprobs": True,
            "max_tokens": 1}
    assert error_of(http, body)["param"] == "echo"


# --- model lists ----------------------------------------------------------------------


def test_the_projector_counts_in_the_instance_s_memory(http, client):
    ask(client, [user("Hi")], max_tokens=1)  # loaded
    instance = next(i for i in http.get("/studiolo/memory").json()["instances"] if i["model_key"] == VISION)
    projector = projector_file(SMOLLM_VISION).stat().st_size
    assert projector * 0.9 < instance["vision_projector_bytes"] < projector + 64 * 2**20
    assert instance["weights_bytes"] > target_path(SMOLLM_VISION.source).stat().st_size + projector * 0.9


def test_model_lists_say_which_models_see(http):
    v0 = {m["id"]: m for m in http.get("/api/v0/models").json()["data"]}
    assert v0[VISION]["type"] == "vlm" and v0[SMOLLM]["type"] == "llm"
    v1 = {m["key"]: m for m in http.get("/api/v1/models").json()["models"]}
    assert v1[VISION]["capabilities"]["vision"] is True and v1[SMOLLM]["capabilities"]["vision"] is False

"""M-RoPE vision models end to end: /v1/chat/completions and /v1/responses with the openai client.

The model is Qwen2.5-Coder-0.5B rewritten as a ``qwen2vl`` model, with a Qwen2-VL projector of random
weights (tests/vision_projector.py, ``QWEN2VL_VISION``): the model sees nothing and what it says about
an image is nonsense, fixed for a seed and greedy decoding. These tests check the plumbing, never
sight: the server's greedy tokens and log-probabilities are llama.cpp's own multimodal path's, a
follow-up turn reuses an image's KV and answers as a cold instance does, image and text requests
batched together equal their solo runs, and a stored conversation resumes from its saved cells. The
engine's side (positions, slots, bit-for-bit logits): tests/test_vision_mrope.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re

import httpx
import llama_cpp.mtmd_cpp as mtmd
import numpy as np
import openai
import pytest

from tests.batching import assert_same_or_parted_at_a_near_tie
from tests.conftest import PromptLog, RunningServer, free_port
from tests.libmtmd_reference import libmtmd_greedy
from tests.test_vision_mrope import GREEDY_TOKENS, SMALL, VISION, WIDE, picture
from tests.vision_projector import QWEN2VL_VISION, link_vision_models, projector_file, text_model_file


def data_url(data: bytes) -> str:
    return f"data:image/png;base64,{base64.b64encode(data).decode()}"


PHOTO_WIDE, PHOTO_SMALL = data_url(picture(1, WIDE)), data_url(picture(2, SMALL))
OTHER_WIDE = data_url(picture(3, WIDE))


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def user(*parts: str | dict) -> dict:
    return {"role": "user", "content": [p if isinstance(p, dict) else {"type": "text", "text": p} for p in parts]}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = link_vision_models(tmp_path_factory.mktemp("mrope-home"), (QWEN2VL_VISION,))
    (home / "settings.json").write_text(json.dumps({"limits": {"max_images": 3}}))
    running = RunningServer(home, free_port(), [])
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0, timeout=120)


def ask(client: openai.OpenAI, messages: list[dict], **extra):
    extra = {"model": VISION, "max_tokens": GREEDY_TOKENS, "temperature": 0, "seed": 1,
             "extra_body": {"repeat_penalty": 1}, **extra}
    return client.chat.completions.create(messages=messages, **extra)


def test_greedy_output_is_libmtmd_s_for_two_images_with_text_between_and_after(server, client):
    log = PromptLog(server.base_url)
    try:
        for _ in range(100):  # subscribed once a probe's prompt shows up
            client.completions.create(model=VISION, prompt="ping", max_tokens=1)
            log.wait_for(1, seconds=0.1)
            if log.prompts:
                break
        seen = len(log.prompts)
        messages = [user(image_part(PHOTO_WIDE), "What is in this image?"),
                    {"role": "assistant", "content": "A photo."},
                    user("And this one?", image_part(PHOTO_SMALL), "Write a story about both.")]
        reply = ask(client, messages, logprobs=True)
        log.wait_for(seen + 1)
        shown = log.prompts[seen]
    finally:
        log.close()
    images = re.findall(r"<image \d: \d+x\d+ PNG, \d+ tokens>", shown)
    assert images == ["<image 1: 150x100 PNG, 20 tokens>", "<image 2: 112x84 PNG, 12 tokens>"]
    prompt = shown
    for image in images:
        prompt = prompt.replace(image, mtmd.mtmd_default_marker().decode())
    run = libmtmd_greedy(text_model_file(QWEN2VL_VISION), projector_file(QWEN2VL_VISION), prompt,
                         [picture(1, WIDE), picture(2, SMALL)], GREEDY_TOKENS)
    text, logprobs = run.text, run.logprobs
    assert reply.choices[0].message.content == text and len(set(text.split())) > 3
    # the same logits, not only the same argmax: greedy tokens alone would survive text placed a few
    # positions off (after each image at its row count instead of pos + n_pos, say)
    served = [t.logprob for t in reply.choices[0].logprobs.content]
    assert np.allclose(served, logprobs, rtol=0, atol=1e-4), (served, logprobs)
    alone = ask(client, [user("What is in this image?"), {"role": "assistant", "content": "A photo."},
                         user("And this one?", "Write a story about both.")], max_tokens=1)
    # usage counts rows (20 + 12, and the vision tokens framing each image), not positions
    assert reply.usage.prompt_tokens == alone.usage.prompt_tokens + 20 + 12 + 2 * 2


def test_a_follow_up_turn_reuses_the_image_s_kv_and_equals_the_cold_turn(server, client):
    first = [user("Look:", image_part(OTHER_WIDE), "What is it?")]
    turn1 = ask(client, first)
    answer = {"role": "assistant", "content": turn1.choices[0].message.content}
    second = [*first, answer, user("Are you sure? Say it in French.")]
    warm = ask(client, second, logprobs=True, top_logprobs=5)
    assert warm.usage.prompt_tokens_details.cached_tokens >= turn1.usage.prompt_tokens - 3  # the image included
    with httpx.Client(base_url=server.base_url, timeout=120) as http:  # an instance of its own: nothing cached
        loaded = http.post("/api/v1/models/load", json={"model": VISION, "identifier": "cold-qwen2vl"})
        assert loaded.status_code == 200, loaded.text
        try:
            cold = ask(client, second, model="cold-qwen2vl", logprobs=True, top_logprobs=5)
        finally:
            http.post("/api/v1/models/unload", json={"instance_id": "cold-qwen2vl"})
    assert cold.usage.prompt_tokens_details.cached_tokens == 0
    assert cold.usage.prompt_tokens == warm.usage.prompt_tokens
    # the warm prompt's text after the cache is prefilled in other cuts than the cold one's, which may
    # round the last bits otherwise (docs/ENGINE.md, "What batching does to numbers")
    assert_same_or_parted_at_a_near_tie("follow-up", steps(cold), steps(warm))
    assert cold.choices[0].message.content == warm.choices[0].message.content  # no near tie in these tokens


def steps(reply) -> list:
    return [(t.token, {a.token: a.logprob for a in t.top_logprobs}) for t in reply.choices[0].logprobs.content]


def test_image_requests_and_a_text_request_at_once_do_not_mix(server):
    async def run() -> None:
        async_client = openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0,
                                          timeout=120)

        async def ask_steps(messages: list[dict]) -> list:
            reply = await async_client.chat.completions.create(
                model=VISION, messages=messages, max_tokens=GREEDY_TOKENS, temperature=0, seed=1, logprobs=True,
                top_logprobs=5)
            return steps(reply)

        wide = [user(image_part(PHOTO_WIDE), "Tell me a story about it.")]
        small = [user("Two pictures:", image_part(PHOTO_SMALL), image_part(OTHER_WIDE), "Which is bigger?")]
        text_only = [user("Name three colours.")]
        solo = [await ask_steps(messages) for messages in (wide, small, text_only)]
        together = await asyncio.gather(*(ask_steps(messages) for messages in (wide, small, text_only)))
        for label, alone, batched in zip(("wide", "two-images", "text"), solo, together, strict=True):
            assert_same_or_parted_at_a_near_tie(label, alone, batched)
        assert solo[0] != solo[2]
        await async_client.close()

    asyncio.run(run())


def test_a_stored_conversation_resumes_from_its_saved_m_rope_cells_after_a_restart(tmp_path):
    """A stored response keeps its KV state; after a restart its follow-up turn gets those cells back
    (M-RoPE image included, cut by position) and answers as the same history sent whole does."""
    home = link_vision_models(tmp_path, (QWEN2VL_VISION,))
    look = [{"role": "user", "content": [{"type": "input_text", "text": "Look:"},
                                         {"type": "input_image", "image_url": PHOTO_WIDE},
                                         {"type": "input_text", "text": "What is it?"}]}]
    options = {"model": VISION, "max_output_tokens": GREEDY_TOKENS, "temperature": 0, "extra_body": {"seed": 1}}
    running = RunningServer(home, free_port(), [])
    try:
        first = openai.OpenAI(base_url=f"{running.base_url}/v1", api_key="x", max_retries=0,
                              timeout=120).responses.create(input=look, **options)
    finally:
        running.stop()
    running = RunningServer(home, free_port(), [])
    try:
        client = openai.OpenAI(base_url=f"{running.base_url}/v1", api_key="x", max_retries=0, timeout=120)
        second = client.responses.create(input="Are you sure?", previous_response_id=first.id, **options)
        assert second.usage.input_tokens_details.cached_tokens >= first.usage.input_tokens - 3
        history = [user("Look:", image_part(PHOTO_WIDE), "What is it?"),
                   {"role": "assistant", "content": first.output_text}, user("Are you sure?")]
        whole = client.chat.completions.create(model=VISION, messages=history, max_tokens=GREEDY_TOKENS,
                                               temperature=0, seed=1)
        assert whole.usage.prompt_tokens == second.usage.input_tokens
        assert second.output_text == whole.choices[0].message.content
    finally:
        running.stop()

"""Images over Anthropic's Messages API with the ``anthropic`` SDK: ``image`` blocks (base64 and URL
sources) go through the vision prompt path chat completions use.

The vision model is SmolLM2 with a projector of random weights (tests/vision_projector.py): the model
sees nothing, so these tests check the plumbing (the same prompt, tokens and greedy answer as a chat
completion with the same image, count_tokens counting the image's tokens, bad images named by
field), never sight.
"""

from __future__ import annotations

import base64
import io

import anthropic
import numpy as np
import openai
import pytest
from PIL import Image

from tests.conftest import SMOLLM, RunningServer, free_port, home_with_models
from tests.vision_projector import IMAGE_TOKENS, SMOLLM_VISION, link_vision_models

VISION = SMOLLM_VISION.key
GREEDY = {"temperature": 0, "repeat_penalty": 1.0}


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (100, 150, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, "PNG")
    return out.getvalue()


DRAWING = base64.b64encode(png(1)).decode()
IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": DRAWING}}


@pytest.fixture(scope="module")
def server(tmp_path_factory, default_models):
    home = home_with_models(tmp_path_factory.mktemp("anthropic-vision-home"), {SMOLLM: default_models[SMOLLM]})
    link_vision_models(home, (SMOLLM_VISION,))
    running = RunningServer(home, free_port(), [])
    yield running
    running.stop()


@pytest.fixture(scope="module")
def claude(server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key="not-needed", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="not-needed", max_retries=0, timeout=300)


def test_an_image_is_the_chat_completions_image(claude, client):
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is in this picture?"}, IMAGE]}]
    message = claude.messages.create(model=VISION, max_tokens=10, messages=messages, extra_body=GREEDY)
    as_url = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{DRAWING}"}}
    expected = client.chat.completions.create(
        model=VISION, max_tokens=10, temperature=0, extra_body={"repeat_penalty": 1.0}, messages=[{
            "role": "user", "content": [{"type": "text", "text": "What is in this picture?"}, as_url]}])
    assert message.content[0].text == expected.choices[0].message.content
    counted = claude.messages.count_tokens(model=VISION, messages=messages).input_tokens
    usage = message.usage
    assert counted == usage.input_tokens + usage.cache_read_input_tokens == expected.usage.prompt_tokens
    text_only = claude.messages.count_tokens(model=VISION, messages=[
        {"role": "user", "content": [{"type": "text", "text": "What is in this picture?"}]}]).input_tokens
    assert counted >= text_only + IMAGE_TOKENS  # the image's embeddings, and the markers around them


@pytest.mark.parametrize(("source", "field", "phrase"), [
    ({"type": "base64", "media_type": "image/png", "data": "%%%"}, "source.data", "base64 data is broken"),
    ({"type": "base64", "media_type": "image/png", "data": base64.b64encode(b"not a picture").decode()},
     "source.data", ""),
    ({"type": "url", "url": "https://example.com/cat.png"}, "source.url", ""),
], ids=["broken-base64", "not-an-image", "remote-url"])
def test_a_bad_image_is_a_400_naming_its_source(claude, source, field, phrase):
    messages = [{"role": "user", "content": [{"type": "text", "text": "Look:"}, {"type": "image", "source": source}]}]
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.create(model=VISION, max_tokens=5, messages=messages)
    error = caught.value.body["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith(f"messages.0.content.1.{field}: ") and phrase in error["message"]


def test_an_image_to_a_model_without_a_projector(claude):
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.create(model=SMOLLM, max_tokens=5, messages=[{"role": "user", "content": [IMAGE]}])
    assert caught.value.body["error"]["message"].startswith("messages.0.content.0.source.data: ")

"""Images attached on the chat page, for a model with a vision projector: the attach button shows
only for such a model, the image goes to /api/v1/chat as LM Studio's image item with the message,
reaches the model's prompt, is stored with the turn and shown again after a reload. The model is
SmolLM2 with a projector of random weights (tests/vision_projector.py): plumbing, never sight."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest

from tests.conftest import SMOLLM, RunningServer, free_port, home_with_models
from tests.page_browser import ChatPage, browser  # noqa: F401 - the fixture
from tests.reasoning_wire import prompts_sent
from tests.vision_projector import SMOLLM_VISION, link_vision_models

VISION = SMOLLM_VISION.key
TEST_IMAGE = Path(__file__).parent / "fixtures" / "test-1.jpeg"  # llama.cpp's tools/mtmd/test-1.jpeg


@pytest.fixture(scope="module")
def vision_server(tmp_path_factory, default_models):
    home = home_with_models(tmp_path_factory.mktemp("page-vision-home"), {SMOLLM: default_models[SMOLLM]})
    link_vision_models(home, (SMOLLM_VISION,))
    running = RunningServer(home, free_port(), [])
    yield running
    running.stop()


def test_an_attached_image_is_sent_stored_and_shown_again(browser, vision_server):  # noqa: F811
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    chat = ChatPage(context.new_page(), vision_server.base_url).open()
    chat.pick_model(SMOLLM)
    assert chat.page.locator(".attach-input").count() == 0  # a model without a projector takes no image
    chat.pick_model(VISION)
    chat.settings(temperature="0", max_output_tokens="4")
    chat.page.set_input_files(".attach-input", str(TEST_IMAGE))
    chat.page.wait_for_selector(".composer .images img")
    with prompts_sent(vision_server.base_url) as prompts:
        chat.send("What is in this picture?")
        response_id = chat.stored_answer(0)
    assert "<image 1:" in prompts[0] and "What is in this picture?" in prompts[0]
    items = httpx.get(f"{vision_server.base_url}/v1/responses/{response_id}/input_items?order=asc").json()["data"]
    [url] = [part["image_url"] for item in items for part in item["content"] if part["type"] == "input_image"]
    assert base64.b64decode(url.split(",", 1)[1]) == TEST_IMAGE.read_bytes()
    assert chat.page.locator(".composer .images img").count() == 0  # sent: the composer is empty again
    chat.page.reload()
    shown = chat.page.locator(".message.user .images img")
    shown.wait_for()
    assert shown.get_attribute("src") == url
    assert chat.page.evaluate("document.querySelector('.message.user .images img').naturalWidth") > 0
    chat.shot("image")
    context.close()
    assert chat.problems == []

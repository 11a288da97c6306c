"""The chat page on a server with no chat model (only an embedding model): it says so in words and
how to get one, rather than showing an empty picker."""

from __future__ import annotations

import pytest

from tests.conftest import MINILM, RunningServer, free_port, home_with_models
from tests.page_browser import ChatPage, browser  # noqa: F401 - the fixture


@pytest.fixture(scope="module")
def embedding_only_server(tmp_path_factory, default_models):
    home = home_with_models(tmp_path_factory.mktemp("page-empty-home"), {MINILM: default_models[MINILM]})
    running = RunningServer(home, free_port(), [])
    yield running
    running.stop()


def test_a_server_without_a_chat_model_says_how_to_get_one(browser, embedding_only_server):  # noqa: F811
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    chat = ChatPage(context.new_page(), embedding_only_server.base_url).open(models=False)
    banner = chat.page.locator(".error-banner")
    banner.wait_for()
    assert "no chat model" in banner.inner_text() and "studiolo get" in banner.inner_text()
    assert chat.page.locator(".model-picker option").all_inner_texts() == ["Pick a model"]
    assert chat.page.locator(".composer .send").is_disabled()
    chat.shot("no-model")
    context.close()
    assert chat.problems == []

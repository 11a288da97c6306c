"""The chat page with --require-auth: the page itself loads without a token, asks for one when the
API refuses it, says so in words when the token is wrong, and once given a good one (kept in the
browser's localStorage) lists the models, chats, and is not asked again after a reload."""

from __future__ import annotations

import pytest

from tests.conftest import RunningServer, free_port, home_with_models
from tests.page_browser import SMOLLM, ChatPage, browser  # noqa: F401 - the fixture
from tests.test_auth_server import BAD_TOKEN, cli_token


class AuthServer(RunningServer):
    ready_path = "/health"


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory, chat_models):
    home = home_with_models(tmp_path_factory.mktemp("page-auth-home"), chat_models)
    running = AuthServer(home, free_port(), ["--require-auth"])
    yield running
    running.stop()


def test_the_page_asks_for_a_token_and_then_chats(browser, auth_server):  # noqa: F811
    token = cli_token(auth_server.home, "page", "inference")
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    chat = ChatPage(context.new_page(), auth_server.base_url).open(models=False)
    dialog = chat.page.locator(".token-dialog")
    dialog.wait_for()
    assert "needs an API token" in dialog.inner_text()
    chat.shot("token-prompt")

    chat.page.fill(".token-input", BAD_TOKEN)
    chat.page.click(".token-dialog .primary")
    chat.page.wait_for_selector(".token-dialog")  # refused again: asked again, in words
    assert "needs an API token" in dialog.inner_text()

    chat.page.fill(".token-input", token)
    chat.page.click(".token-dialog .primary")
    chat.page.wait_for_selector(".model-picker optgroup option", state="attached")
    assert chat.page.evaluate("localStorage.getItem('studiolo.token')") == token
    chat.pick_model(SMOLLM)
    chat.settings(temperature="0", max_output_tokens="4")
    chat.send("Hello")
    response_id = chat.stored_answer(0)

    chat.page.reload()  # the token stays in this browser: the conversation is read back with it
    chat.page.wait_for_selector(f".message.assistant[data-response-id='{response_id}']")
    assert chat.page.locator(".token-dialog").count() == 0
    chat.shot("token-accepted")
    context.close()
    assert chat.problems == []

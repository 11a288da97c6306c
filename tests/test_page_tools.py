"""MCP tool calls on the chat page: an MCP server given in the conversation's settings goes to
/api/v1/chat as LM Studio's ephemeral integration, the server runs the calls the model makes, and
the page shows each call (tool, arguments, result) apart from the answer, folded, streamed and again
after a reload (from the stored function_call items), and a call that fails as failed. Qwen2.5-Coder-0.5B
greedy, which calls get_weather each round until the server stops offering tools (tests/test_qwen_tools.py):
here after one round (the ``mcp_max_rounds`` limit)."""

from __future__ import annotations

import pytest
from mcp import MCPError

from studiolo.models.defaults import QWEN05, target_path
from tests.conftest import QWEN, RunningServer, free_port, home_with_models
from tests.mcp_server import McpServer
from tests.page_browser import ChatPage, browser  # noqa: F401 - the fixture

PARIS = "What is the weather like in Paris today?"
ROUNDS = 1  # the settings' mcp_max_rounds: rounds that may call; the one after answers


@pytest.fixture(scope="module")
def qwen_server(tmp_path_factory):
    home = home_with_models(tmp_path_factory.mktemp("page-tools-home"), {QWEN: target_path(QWEN05)})
    # per-request servers for /api/v1/chat's integrations; one round of calls: what is shown is the same
    (home / "settings.json").write_text('{"allow_per_request_mcp": true, "limits": {"mcp_max_rounds": 1}}')
    running = RunningServer(home, free_port(), [])
    yield running
    running.stop()


@pytest.fixture
def mcp():
    server = McpServer()
    yield server
    server.close()


def test_tool_calls_are_shown_apart_streamed_and_read_back(browser, qwen_server, mcp):  # noqa: F811
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    chat = ChatPage(context.new_page(), qwen_server.base_url).open()
    chat.pick_model(QWEN)
    chat.settings(temperature="0", repeat_penalty="1", max_output_tokens="60", mcp_servers=f"weather {mcp.url}")
    chat.send(PARIS)
    chat.stored_answer(0)
    assert mcp.calls == [("get_weather", {"city": "Paris"})] * ROUNDS
    for reading in ("streamed", "reloaded"):
        calls = chat.answer(0).locator("details.tool-call")
        assert calls.count() == ROUNDS, reading
        assert calls.first.get_attribute("open") is None, reading  # folded
        assert calls.first.locator("summary").inner_text() == "Called get_weather on weather", reading
        assert calls.first.locator("pre").all_text_contents() == ['{"city":"Paris"}', "18 C, light rain"], reading
        chat.page.reload()
        chat.page.wait_for_selector(".message.assistant[data-response-id^=resp_]")
    calls.first.locator("summary").click()
    chat.shot("tool-calls")
    context.close()
    assert chat.problems == []


class _FailingServer(McpServer):
    """Its tool call fails with a JSON-RPC error."""

    async def _call_tool(self, ctx, params):
        self.calls.append((params.name, params.arguments or {}))
        raise MCPError(code=-32001, message="the weather service is down")


def test_a_failed_call_is_shown_failed_with_its_reason(browser, qwen_server):  # noqa: F811
    failing = _FailingServer()
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    try:
        chat = ChatPage(context.new_page(), qwen_server.base_url).open()
        chat.pick_model(QWEN)
        chat.settings(temperature="0", repeat_penalty="1", max_output_tokens="60",
                      mcp_servers=f"weather {failing.url}")
        chat.send(PARIS)
        chat.stored_answer(0)
        call = chat.answer(0).locator("details.tool-call").first
        assert call.locator("summary").inner_text() == "Failed calling get_weather on weather"
        assert "the weather service is down" in call.locator("pre").all_text_contents()[1]
        assert chat.problems == []
    finally:
        context.close()
        failing.close()

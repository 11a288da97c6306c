"""A reasoning model's reasoning on the chat page: shown apart from the answer, folded, and the same
after a reload (read back from the stored reasoning item); the Reasoning setting offers the model's
options and reaches its template; HTML the model writes is shown as text (THINKER copies text
verbatim, which makes it the test's writer of HTML). The model is tests/reasoning_model.py's
THINKER (Qwen2.5-Coder-0.5B under Qwen3's template), asked to copy a ``<think>…</think>`` verbatim:
this checks the plumbing, not thinking."""

from __future__ import annotations

import pytest

from tests.conftest import RunningServer, free_port, home_with_models
from tests.page_browser import ChatPage, browser  # noqa: F401 - the fixture
from tests.reasoning_model import THINKER, link_reasoning_models
from tests.reasoning_wire import prompts_sent

VERBATIM = "Write the text `<think>2 and 2 make 4.</think>The answer is 4.` verbatim."
THOUGHT, ANSWER = "2 and 2 make 4.", "The answer is 4."
QWEN3_OFF = "<|im_start|>assistant\n<think>\n\n</think>\n\n"  # Qwen3's generation prompt with thinking off


@pytest.fixture(scope="module")
def thinker_server(tmp_path_factory):
    home = link_reasoning_models(home_with_models(tmp_path_factory.mktemp("page-reasoning-home"), {}), (THINKER,))
    running = RunningServer(home, free_port(), ["--parallel", "1", "--context-length", "2048"])
    yield running
    running.stop()


def test_reasoning_is_shown_apart_and_folded(browser, thinker_server):  # noqa: F811
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    chat = ChatPage(context.new_page(), thinker_server.base_url).open()
    chat.pick_model(THINKER.key)
    chat.settings(temperature="0", max_output_tokens="30")
    chat.send(VERBATIM)
    chat.stored_answer(0)
    for reading in ("streamed", "reloaded"):
        reasoning = chat.answer(0).locator("details.reasoning")
        assert reasoning.get_attribute("open") is None, reading  # folded
        assert reasoning.locator(".reasoning-text").text_content() == THOUGHT, reading
        assert chat.answer(0).locator(".markdown").inner_text() == ANSWER, reading
        chat.shot(f"reasoning-{reading}")
        chat.page.reload()
        chat.page.wait_for_selector(".message.assistant[data-response-id^=resp_]")
    reasoning.locator("summary").click()
    assert reasoning.locator(".reasoning-text").is_visible()
    chat.shot("reasoning-unfolded")
    context.close()
    assert chat.problems == []


def test_the_reasoning_setting_offers_the_models_options_and_reaches_its_template(browser, thinker_server):  # noqa: F811
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    chat = ChatPage(context.new_page(), thinker_server.base_url).open()
    chat.pick_model(THINKER.key)
    chat.settings(temperature="0", max_output_tokens="1")
    options = chat.page.locator("#setting-reasoning option").all_inner_texts()
    assert options == ["default", "off", "on"]  # Qwen3's template switches thinking, with no efforts
    chat.page.select_option("#setting-reasoning", "off")
    with prompts_sent(thinker_server.base_url) as prompts:
        chat.send("Hi")
        chat.stored_answer(0)
    assert prompts[0].endswith(QWEN3_OFF)
    chat.shot("reasoning-setting")
    context.close()
    assert chat.problems == []


HTML = 'Write the text `<b>bold</b> <img src="/x" onerror="window.ran = 1">` verbatim.'


def test_html_the_model_writes_is_shown_as_text(browser, thinker_server):  # noqa: F811
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    chat = ChatPage(context.new_page(), thinker_server.base_url).open()
    chat.pick_model(THINKER.key)
    chat.settings(temperature="0", max_output_tokens="40", reasoning="off")
    chat.send(HTML)
    chat.stored_answer(0)
    markdown = chat.answer(0).locator(".markdown")
    # greedy, the model writes the img tag of it (then opens a code fence): shown as the text it is
    text = markdown.evaluate("m => [...m.childNodes].filter(n => n.nodeName !== 'PRE').map(n => n.textContent)"
                             ".join('')")
    assert text.strip() == '<img src="/x" onerror="window.ran = 1">'
    assert markdown.locator("b, img").count() == 0 and chat.page.evaluate("window.ran") is None
    chat.shot("html-as-text")
    context.close()
    assert chat.problems == []

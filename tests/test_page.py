"""The chat page (GET /) in a real browser against the real server with SmolLM2, greedy
(temperature 0 in the page's settings) so answers are exact: an answer streamed and rendered, stop,
a reload that reads the conversation back from the server's store and continues it, a system prompt
seen in the exact prompt (the model log), an error shown in words, another model picked, edit and
regenerate, delete, a phone-width window and the dark theme. Screenshots of each state go to
build/page-screenshots/."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import GEMMA, loaded_instances
from tests.page_browser import SMOLLM, ChatPage, browser  # noqa: F401 - the fixture

QUESTION = "What is the capital of France?"


@pytest.fixture
def chat(browser, server):  # noqa: F811 - the fixture imported above
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    page = ChatPage(context.new_page(), server.base_url)
    yield page
    context.close()
    assert page.problems == []


def greedy(chat: ChatPage, max_tokens: int = 24, **settings: str) -> None:
    chat.pick_model(SMOLLM)
    chat.settings(temperature="0", max_output_tokens=str(max_tokens), **settings)


STOP_WORDS = {"eosFound": "end of answer", "maxPredictedTokensReached": "token limit"}


def reference(http: httpx.Client, text: str, max_tokens: int = 24) -> dict:
    """The same turn asked over /api/v1/chat directly, not stored."""
    body = {"model": SMOLLM, "input": text, "temperature": 0, "max_output_tokens": max_tokens, "store": False}
    answer = http.post("/api/v1/chat", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()


def stored_text(http: httpx.Client, response_id: str) -> dict:
    stored = http.get(f"/v1/responses/{response_id}").json()
    return {"text": stored["output"][-1]["content"][0]["text"], "previous": stored["previous_response_id"]}


def test_the_page_is_served_with_its_policy(http):
    page = http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert '<script type="module" src="/static/page.js">' in page.text


def test_an_answer_streams_in_and_is_rendered_as_markdown(chat, http):
    chat.open()
    greedy(chat)
    # every length the answer's text had on screen: more than a couple means it came in pieces
    chat.page.evaluate("""() => { window.lengths = new Set();
        new MutationObserver(() => { const m = document.querySelector('.message.assistant .markdown');
          if (m) window.lengths.add(m.textContent.length); })
        .observe(document.body, {subtree: true, childList: true, characterData: true}); }""")
    chat.send(QUESTION)
    response_id = chat.stored_answer(0)
    expected = reference(http, QUESTION)
    text = expected["output"][-1]["content"]
    assert stored_text(http, response_id) == {"text": text, "previous": None}
    assert chat.answer(0).locator(".markdown").inner_text().strip() == text.strip()
    assert chat.page.evaluate("window.lengths.size") >= 3
    foot = chat.answer(0).locator(".answer-foot").inner_text()
    stats = expected["stats"]
    assert SMOLLM in foot and "tok/s" in foot and "s to first token" in foot
    assert f"{stats['total_output_tokens']} tokens" in foot
    assert f"stop: {STOP_WORDS[stats['stop_reason']]}" in foot
    assert chat.page.locator(".conversations li").count() == 1
    assert chat.page.locator(".conversations li .pick").inner_text() == QUESTION
    chat.shot("answer")


def test_code_is_highlighted_and_copied(chat, http):
    chat.page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    chat.open()
    greedy(chat, max_tokens=60)
    chat.send("Write a Python function that adds two numbers, in a code block.")
    response_id = chat.stored_answer(0)
    code = chat.answer(0).locator("pre code.hljs")
    assert code.count() == 1 and code.locator("span.hljs-keyword").count() >= 1
    chat.shot("code")
    chat.answer(0).locator(".copy-code").click()
    assert chat.page.evaluate("navigator.clipboard.readText()") == code.text_content()
    chat.answer(0).locator(".answer-foot .copy").click()  # the whole answer, as the model wrote it
    assert chat.page.evaluate("navigator.clipboard.readText()") == stored_text(http, response_id)["text"]


def test_stop_cancels_the_generation_on_the_server(chat, http):
    chat.open()
    greedy(chat, max_tokens=1500)
    chat.send("Count from 1 to 1000, one number per line.")
    chat.until("() => document.querySelector('.message.assistant .markdown')?.textContent.length > 20")
    chat.page.keyboard.press("Escape")
    chat.idle()
    foot = chat.answer(0).locator(".answer-foot").inner_text()
    assert "stop: stopped" in foot and "not stored" in foot
    deadline = time.monotonic() + 10
    while loaded_instances(http)[SMOLLM]["status"]["running_requests"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert loaded_instances(http)[SMOLLM]["status"]["running_requests"] == 0
    chat.shot("stopped")
    chat.settings(max_output_tokens="4")  # the next turn starts afresh: the stopped one was not stored
    chat.send("Hello")
    assert stored_text(http, chat.stored_answer(1))["previous"] is None


def test_a_reload_reads_the_conversation_back_and_it_goes_on(chat, http, prompt_log):
    chat.open()
    greedy(chat, max_tokens=8)
    chat.send("Hi, my name is Ada.")
    first = chat.stored_answer(0)
    first_text = chat.answer(0).locator(".markdown").inner_text()
    chat.page.reload()
    chat.page.wait_for_selector(".message.assistant[data-response-id^=resp_]")
    assert chat.page.locator(".user-text").inner_text() == "Hi, my name is Ada."
    assert chat.answer(0).locator(".markdown").inner_text() == first_text
    assert chat.answer(0).get_attribute("data-response-id") == first
    chat.settings()  # the conversation's settings came back with it
    assert chat.page.input_value("#setting-temperature") == "0"
    chat.send("What is my name?")
    second = chat.stored_answer(1)
    assert stored_text(http, second)["previous"] == first
    prompt = prompt_log.prompts[-1]
    assert prompt.index("Hi, my name is Ada.") < prompt.index("What is my name?")
    chat.shot("reloaded")


def test_the_system_prompt_reaches_the_model(chat, prompt_log):
    chat.open()
    greedy(chat, max_tokens=4, system_prompt="You are a pirate named Zork.")
    chat.send("Hello")
    chat.stored_answer(0)
    assert prompt_log.prompts[-1].startswith(
        "<|im_start|>system\nYou are a pirate named Zork.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n")
    chat.shot("settings")


def test_an_error_is_shown_in_words(chat):
    chat.open()
    greedy(chat, preset="no-such-preset")
    chat.send("Hello")
    error = chat.answer(0).locator(".answer-error")
    error.wait_for()
    assert "no-such-preset" in error.inner_text()
    chat.idle()
    chat.shot("error")


def test_edit_and_regenerate_branch_the_stored_conversation(chat, http, prompt_log):
    chat.open()
    greedy(chat, max_tokens=6)
    chat.send("Say one word.")
    first = chat.stored_answer(0)
    chat.send("Say two words.")
    chat.stored_answer(1)
    chat.page.locator(".message.user .edit-button").nth(1).click()
    chat.page.fill(".message.user .edit", "Say three words.")
    chat.page.click(".edit-actions .primary")
    chat.idle()
    edited = chat.stored_answer(1)
    assert stored_text(http, edited)["previous"] == first
    assert "Say three words." in prompt_log.prompts[-1] and "Say two words." not in prompt_log.prompts[-1]
    chat.page.click(".regenerate")
    chat.idle()
    regenerated = chat.stored_answer(1)
    assert regenerated != edited and stored_text(http, regenerated) == stored_text(http, edited)
    assert chat.page.locator(".message.user").count() == 2


def test_a_deleted_conversation_leaves_the_sidebar_and_the_store(chat, http):
    chat.open()
    greedy(chat, max_tokens=4)
    chat.send("Hello")
    response_id = chat.stored_answer(0)
    chat.page.click(".conversations li .delete")
    chat.page.wait_for_selector(".conversations li", state="detached")
    assert http.get(f"/v1/responses/{response_id}").status_code == 404
    chat.page.reload()
    chat.shot("deleted")
    chat.page.wait_for_selector(".empty", timeout=5000)
    assert chat.page.locator(".conversations li").count() == 0


def test_phone_width_and_dark_theme(browser, server):  # noqa: F811
    context = browser.new_context(viewport={"width": 390, "height": 780}, color_scheme="dark")
    chat = ChatPage(context.new_page(), server.base_url).open()
    greedy(chat, max_tokens=12)
    chat.page.click(".settings .close")
    chat.send(QUESTION)
    chat.stored_answer(0)
    background = chat.page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(22, 24, 29)"
    assert chat.page.locator(".sidebar").bounding_box()["x"] < 0  # folded away
    assert chat.page.evaluate("document.documentElement.scrollWidth") <= 390
    chat.shot("phone-dark")
    chat.page.click(".topbar .menu")
    chat.until("() => document.querySelector('.sidebar').getBoundingClientRect().x >= 0")
    chat.shot("phone-dark-sidebar")
    chat.page.click(".scrim", position={"x": 370, "y": 400})  # a tap beside the sidebar folds it again
    chat.until("() => document.querySelector('.sidebar').getBoundingClientRect().x < 0")
    chat.settings()
    assert chat.page.evaluate("document.documentElement.scrollWidth") <= 390
    chat.shot("phone-dark-settings")
    context.close()
    assert chat.problems == []


def test_another_model_answers_in_the_same_conversation(chat, http):
    chat.open()
    greedy(chat, max_tokens=6)
    chat.send("Hello")
    chat.stored_answer(0)
    chat.pick_model(GEMMA)
    chat.send("And hello again")
    second = chat.stored_answer(1)
    assert chat.answer(0).get_attribute("data-model") == SMOLLM
    assert chat.answer(1).get_attribute("data-model") == GEMMA
    assert http.get(f"/v1/responses/{second}").json()["model"] == GEMMA
    chat.shot("switched-model")

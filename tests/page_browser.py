"""The chat page in a real browser for tests/test_page*.py: Debian's Chromium driven by Playwright
(Playwright's own browser builds cannot be downloaded here), one page per test with its own
localStorage, and the page's console watched: an uncaught error fails the test."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "build" / "page-screenshots"
SMOLLM = "huggingfacetb/smollm2-135m-instruct"
WAIT_MS = 90_000  # a first answer may load its model first, on a busy machine


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        pytest.fail("Chromium is missing: `apt-get install -y chromium` (`make test` installs it)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


class ChatPage:
    """One browser page on the server's chat page, and what a person does with it."""

    def __init__(self, page, base_url: str):
        self.page = page
        self.base_url = base_url
        self.problems: list[str] = []  # uncaught errors and console errors
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        page.on("console", self._console)
        page.set_default_timeout(WAIT_MS)

    def _console(self, message) -> None:
        # the browser logs every 4xx the page gets; the page shows those itself (the tests check how)
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.problems.append(message.text)

    def until(self, script: str, seconds: float = WAIT_MS / 1000) -> None:
        """Until ``script`` (a function's source) is true in the page. Polled from here: the page's
        Content-Security-Policy refuses Playwright's wait_for_function, which evaluates strings."""
        deadline = time.monotonic() + seconds
        while not self.page.evaluate(script):
            if time.monotonic() > deadline:
                raise AssertionError(f"not true in {seconds} s: {script}")
            time.sleep(0.05)

    def open(self, *, models: bool = True) -> ChatPage:
        self.page.goto(self.base_url + "/")
        if models:
            self.page.wait_for_selector(".model-picker optgroup option", state="attached")
        return self

    def pick_model(self, key: str) -> None:
        self.page.select_option(".model-picker", key)

    def settings(self, **values: str) -> None:
        if not self.page.is_visible(".settings"):
            self.page.click(".settings-button")
        for key, value in values.items():
            field = self.page.locator(f"#setting-{key}")
            if field.evaluate("element => element.tagName") == "SELECT":
                field.select_option(value)
            else:
                field.fill(value)

    def send(self, text: str) -> None:
        self.page.fill(".prompt", text)
        self.page.press(".prompt", "Enter")

    def answer(self, index: int):
        return self.page.locator(".message.assistant").nth(index)

    def stored_answer(self, index: int) -> str:
        """The index-th answer, once stored: its response id."""
        self.page.wait_for_selector(f".turn:nth-child({index + 1}) .message.assistant[data-response-id^=resp_]")
        return self.answer(index).get_attribute("data-response-id")

    def idle(self) -> None:
        """Until the page is not streaming (its Send button is back)."""
        self.page.wait_for_selector(".composer .send")

    def shot(self, name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))

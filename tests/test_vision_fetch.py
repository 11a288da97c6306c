"""Remote image URLs, fetched only from the hosts a server allows (--allow-image-urls), tested against an
image server on loopback. The vision model is SmolLM2 with a random projector (tests/vision_projector.py):
plumbing, not sight. Without the flag a remote URL is refused (tests/test_vision_chat.py)."""

from __future__ import annotations

import base64
import http.server
import json
import threading

import httpx
import openai
import pytest

from tests.conftest import RunningServer, free_port
from tests.test_vision_chat import LIMITS, drawing, image_part, user
from tests.vision_projector import SMOLLM_VISION, link_vision_models

VISION = SMOLLM_VISION.key
PICTURE = drawing(5)
BIG = drawing(6, (700, 700))  # 1.4 MB of noise: over the test home's 1 MiB


class ImageHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/picture.png")
            self.end_headers()
            return
        body = {"/picture.png": PICTURE, "/big.png": BIG}.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # quiet
        pass


@pytest.fixture(scope="module")
def image_host():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ImageHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def closed_port() -> int:
    return free_port()  # nothing listens there


@pytest.fixture(scope="module")
def fetching_server(tmp_path_factory, image_host, closed_port):
    home = link_vision_models(tmp_path_factory.mktemp("fetch-home"), (SMOLLM_VISION,))
    (home / "settings.json").write_text(json.dumps({"limits": LIMITS}))
    running = RunningServer(home, free_port(), ["--allow-image-urls", f"{image_host}, 127.0.0.1:{closed_port}"])
    yield running
    running.stop()


@pytest.fixture(scope="module")
def session(fetching_server):
    with httpx.Client(base_url=fetching_server.base_url, timeout=120) as session:
        yield session


def test_an_allowed_url_gives_what_the_same_bytes_inline_give(fetching_server, image_host):
    client = openai.OpenAI(base_url=f"{fetching_server.base_url}/v1", api_key="x", max_retries=0, timeout=120)

    def ask(url: str):
        return client.chat.completions.create(model=VISION, messages=[user(image_part(url), "What is it?")],
                                              max_tokens=8, temperature=0, seed=1)

    inline = ask("data:image/png;base64," + base64.b64encode(PICTURE).decode())
    fetched = ask(f"http://{image_host}/picture.png")
    assert fetched.choices[0].message.content == inline.choices[0].message.content
    assert fetched.usage.prompt_tokens == inline.usage.prompt_tokens
    # the same pixels: the second request reuses the first's image in the KV cache
    assert fetched.usage.prompt_tokens_details.cached_tokens == fetched.usage.prompt_tokens - 1


@pytest.mark.parametrize(("url", "code"), [
    ("http://localhost:{port}/picture.png", "image_url_not_allowed"),  # names are compared, as listed
    ("http://127.0.0.1:1/picture.png", "image_url_not_allowed"),
    ("http://user:secret@{host}/picture.png", "invalid_image_url"),
    ("http://{host}/redirect", "image_fetch_failed"),  # never followed
    ("http://{host}/missing.png", "image_fetch_failed"),
    ("http://127.0.0.1:{closed}/picture.png", "image_fetch_failed"),  # allowed, nothing listening
    ("http://{host}/big.png", "image_too_large"),
], ids=["other-name", "other-port", "credentials", "redirect", "404", "unreachable", "too-large"])
def test_a_url_the_server_will_not_or_cannot_fetch_is_a_400_naming_it(session, image_host, closed_port, url, code):
    url = url.format(host=image_host, port=image_host.split(":")[1], closed=closed_port)
    body = {"model": VISION, "messages": [user("See", image_part(url))]}
    response = session.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, "messages[0].content[1].image_url")

"""LM Studio's JavaScript SDK (@lmstudio/sdk, pinned in tests/sdk_js/package.json, installed by
`make sdk-js`, part of `make test`) against a real server: tests/sdk_js/run.mjs runs each step through
the SDK and prints what it got; these tests check it, exactly where greedy output allows, against the
same requests over REST.

The vision model is SmolLM2 with a projector of random weights (tests/vision_projector.py): the image
step checks the plumbing (the SDK's upload, the file in the chat, the image reaching the model: the
same tokens as the same image over /v1/chat/completions), not sight. Node missing, or the SDK not
installed, fails the tests with what to do; nothing is skipped.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from studiolo import __version__
from studiolo.models.defaults import QWEN05, target_path
from tests.conftest import MINILM, QWEN, SMOLLM, RunningServer, free_port, home_with_models
from tests.vision_projector import SMOLLM_VISION, link_vision_models

SDK_JS = Path(__file__).parent / "sdk_js"
TEST_IMAGE = Path(__file__).parent / "fixtures" / "test-1.jpeg"
VISION = SMOLLM_VISION.key
PROMPT = [{"role": "user", "content": "Name three colors."}]
GREEDY = {"temperature": 0, "max_tokens": 12}
STEPS = ["version", "listDownloaded", "model", "listLoaded", "respond", "respondStream", "complete", "cancel",
         "embed", "act", "image", "unload"]


def run_sdk(base_url: str, steps: list[str], **config) -> dict:
    """Runs tests/sdk_js/run.mjs with ``steps``; its results by step."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: LM Studio's JavaScript SDK needs Node.js 18 or later")
    if not (SDK_JS / "node_modules" / "@lmstudio" / "sdk").is_dir():
        pytest.fail("@lmstudio/sdk is not installed in tests/sdk_js: run `make sdk-js` "
                    "(npm ci --prefix tests/sdk_js)")
    config = {"baseUrl": base_url.replace("http://", "ws://"), "steps": steps, **config}
    done = subprocess.run([node, "run.mjs", json.dumps(config)], cwd=SDK_JS, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def ok(results: dict, step: str):
    assert "ok" in results[step], f"{step} failed: {results[step].get('error')}"
    return results[step]["ok"]


@pytest.fixture(scope="module")
def server(tmp_path_factory, default_models):
    models = {SMOLLM: default_models[SMOLLM], MINILM: default_models[MINILM], QWEN: target_path(QWEN05)}
    home = home_with_models(tmp_path_factory.mktemp("sdk-js"), models)
    link_vision_models(home, (SMOLLM_VISION,))
    running = RunningServer(home, free_port(), [])
    yield running
    running.stop()


@pytest.fixture(scope="module")
def results(server) -> dict:
    return run_sdk(server.base_url, STEPS, llm=SMOLLM, toolModel=QWEN, embedding=MINILM, vision=VISION,
                   image=str(TEST_IMAGE))


@pytest.fixture(scope="module")
def http(server, results):  # after the SDK's run: the REST requests compare with what it got
    with httpx.Client(base_url=server.base_url, timeout=300) as session:
        yield session


def chat(http: httpx.Client, model: str, messages: list[dict], **extra) -> dict:
    answer = http.post("/v1/chat/completions", json={"model": model, "messages": messages, **GREEDY, **extra})
    assert answer.status_code == 200, answer.text
    return answer.json()


def stop_reason(finish_reason: str) -> str:
    return {"length": "maxPredictedTokensReached", "stop": "eosFound"}[finish_reason]


def test_connects_and_reads_the_version(results):
    assert ok(results, "version") == {"version": __version__, "build": 0}


def test_lists_downloaded_and_loaded_models(results):
    downloaded = {model["modelKey"]: model["type"] for model in ok(results, "listDownloaded")}
    assert downloaded == {SMOLLM: "llm", QWEN: "llm", VISION: "llm", MINILM: "embedding"}
    model = ok(results, "model")
    assert model["modelKey"] == SMOLLM
    assert model["identifier"] in ok(results, "listLoaded")["llm"]


def test_the_model_s_context_length_is_that_of_a_jit_load(results, http):
    chat(http, SMOLLM, PROMPT, max_tokens=1)  # loads it as the SDK's llm.model(key) did: JIT, defaults
    listed = {m["id"]: m for m in http.get("/api/v0/models").json()["data"]}
    assert ok(results, "model")["contextLength"] == listed[SMOLLM]["loaded_context_length"]


def test_respond_is_the_chat_completion_of_the_same_request(results, http):
    reply = chat(http, SMOLLM, PROMPT)
    respond = ok(results, "respond")
    assert respond["content"] == reply["choices"][0]["message"]["content"]
    assert respond["stopReason"] == stop_reason(reply["choices"][0]["finish_reason"])
    assert respond["predictedTokensCount"] == reply["usage"]["completion_tokens"]
    assert respond["promptTokensCount"] == reply["usage"]["prompt_tokens"]


def test_streamed_fragments_join_to_the_reply(results):
    streamed = ok(results, "respondStream")
    assert len(streamed["fragments"]) > 1
    assert "".join(streamed["fragments"]) == streamed["content"] == ok(results, "respond")["content"]


def test_complete_is_the_completion_of_the_same_prompt(results, http):
    answer = http.post("/v1/completions", json={"model": SMOLLM, "prompt": "The capital of France is", **GREEDY})
    assert answer.status_code == 200, answer.text
    choice = answer.json()["choices"][0]
    complete = ok(results, "complete")
    assert complete["content"] == choice["text"]
    assert complete["stopReason"] == stop_reason(choice["finish_reason"])


def test_cancel_stops_the_prediction_early(results):
    cancelled = ok(results, "cancel")
    assert cancelled["stopReason"] == "userStopped"
    assert cancelled["fragments"] < 50 and cancelled["predictedTokensCount"] < 50  # of 400 allowed


def test_act_runs_the_tool_the_model_calls(results):
    act = ok(results, "act")
    assert act["calls"] == [[2, 3]]
    assert act["rounds"] == 2
    assert [message["role"] for message in act["messages"]] == ["assistant", "tool", "assistant"]


def test_embeddings_are_those_of_v1_embeddings(results, http):
    embedded = ok(results, "embed")
    rest = http.post("/v1/embeddings", json={"model": MINILM, "input": "The quick brown fox."}).json()
    assert embedded["one"] == rest["data"][0]["embedding"]
    # the JavaScript SDK sends a list's calls all at once: the engine embeds them in one batch, equal to
    # each alone to float tolerance
    both = http.post("/v1/embeddings", json={"model": MINILM, "input": ["The quick brown fox.", "A lazy dog."]})
    assert len(embedded["many"]) == 2
    for mine, theirs in zip(embedded["many"], both.json()["data"], strict=True):
        assert mine == pytest.approx(theirs["embedding"], abs=1e-5)
    tokens = http.post("/tokenize", json={"model": MINILM, "content": "The quick brown fox.", "add_special": True,
                                          "parse_special": False}).json()["tokens"]
    assert embedded["tokens"] == tokens
    assert embedded["count"] == len(tokens) == rest["usage"]["prompt_tokens"]


def test_an_image_in_the_chat_reaches_the_vision_model(results, http):
    image = ok(results, "image")
    assert image["file"] == {"name": TEST_IMAGE.name, "type": "image", "sizeBytes": TEST_IMAGE.stat().st_size}
    # the SDK puts a message's images before its text
    url = "data:image/jpeg;base64," + base64.b64encode(TEST_IMAGE.read_bytes()).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What is in this image?"}]
    reply = chat(http, VISION, [{"role": "user", "content": content}], max_tokens=6)
    assert image["content"] == reply["choices"][0]["message"]["content"]
    assert image["promptTokensCount"] == reply["usage"]["prompt_tokens"]  # the image's rows counted


def test_unload(results):
    assert ok(results, "unload") == []  # auto-evict kept one model at a time: the one unloaded


# -- with auth on: the SDK's apiToken


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    class AuthServer(RunningServer):
        ready_path = "/health"

    home = tmp_path_factory.mktemp("sdk-js-auth")
    running = AuthServer(home, free_port(), ["--require-auth"])
    yield running
    running.stop()


def make_token(server: RunningServer, *permissions: str) -> str:
    env = {**os.environ, "STUDIOLO_HOME": str(server.home)}
    env.pop("STUDIOLO_API_TOKEN", None)
    args = ["token", "create", "--name", "sdk-js"] + [f"--permission={p}" for p in permissions]
    made = subprocess.run([sys.executable, "-m", "studiolo", *args], env=env, capture_output=True, text=True,
                          timeout=120)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


def test_api_token_connects_and_a_wrong_one_is_refused(auth_server):
    token = make_token(auth_server, "inference")
    good = run_sdk(auth_server.base_url, ["version", "listLoaded"], apiToken=token)
    assert ok(good, "version")["version"] == __version__
    assert ok(good, "listLoaded") == {"llm": [], "embedding": []}
    identifier, passkey = token.split(":")
    wrong = identifier + ":" + ("A" if passkey[0] != "A" else "B") + passkey[1:]
    refused = run_sdk(auth_server.base_url, ["version"], apiToken=wrong)
    assert "version" in refused and "error" in refused["version"]
    assert "API token" in refused["version"]["error"]
    guest = run_sdk(auth_server.base_url, ["version"])  # no token: the SDK's guest pair is refused
    assert "apiToken" in guest["version"]["error"]

"""Unloading a model under running generations: the clients get 503 model_unloaded (as a request
that arrives after the unload does), streamed or not, and the server serves the next request."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.conftest import SMOLLM, RunningServer, free_port, home_with_models

LONG = {"model": SMOLLM, "prompt": "A very long story:", "max_tokens": 3000, "ignore_eos": True, "temperature": 0}


@pytest.fixture(scope="module")
def http(tmp_path_factory, chat_models):
    home = home_with_models(tmp_path_factory.mktemp("unload-home"), chat_models)
    running = RunningServer(home, free_port(), [])
    with httpx.Client(base_url=running.base_url, timeout=120) as session:
        yield session
    running.stop()


def _unload_soon(http: httpx.Client) -> threading.Thread:
    def unload():
        time.sleep(1.0)  # the generation is under way by then (about 100 tokens a second)
        assert http.post("/api/v1/models/unload", json={"instance_id": SMOLLM}).status_code == 200

    thread = threading.Thread(target=unload)
    thread.start()
    return thread


def test_a_whole_response_is_a_503_model_unloaded(http):
    assert http.post("/api/v1/models/load", json={"model": SMOLLM}).status_code == 200
    unloading = _unload_soon(http)
    response = http.post("/v1/completions", json=LONG)
    unloading.join()
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "model_unloaded" and error["param"] == "model"


def test_a_stream_ends_with_a_model_unloaded_error(http):
    assert http.post("/api/v1/models/load", json={"model": SMOLLM}).status_code == 200
    unloading = _unload_soon(http)
    with http.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as response:
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    unloading.join()
    assert json.loads(events[0])["choices"][0]["text"] is not None  # text came before the unload
    assert json.loads(events[-1])["error"]["code"] == "model_unloaded"
    body = {"model": SMOLLM, "prompt": "Hi", "max_tokens": 2}
    assert http.post("/v1/completions", json=body).status_code == 200  # loaded again, just in time

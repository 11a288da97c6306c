"""No internals in what clients read: a model that fails to load is named by its catalog key, never by its
path under the server's home folder; a model-not-found message does not list the catalog; any other
path under STUDIOLO_HOME that an error names is shown relative to it. The server's log keeps the paths.

The home holds a truncated copy of SmolLM2 (its header and metadata read, its tensors cut short) and a
model whose settings file does not parse."""

from __future__ import annotations

import json

import httpx
import pytest

from studiolo.api.private import without_paths
from tests.conftest import SMOLLM, RunningServer, free_port, home_with_models

BROKEN = "test/broken"
TRUNCATED_BYTES = 3_000_000


@pytest.fixture(scope="module")
def broken_home(tmp_path_factory, chat_models):
    home = home_with_models(tmp_path_factory.mktemp("privacy-home"), chat_models)
    truncated = home / "models" / BROKEN / "broken-Q8_0.gguf"
    truncated.parent.mkdir(parents=True)
    with chat_models[SMOLLM].open("rb") as source:
        truncated.write_bytes(source.read(TRUNCATED_BYTES))
    settings = home / "model-settings" / f"{SMOLLM}.json"
    settings.parent.mkdir(parents=True)
    settings.write_text("{not json")
    return home


@pytest.fixture(scope="module")
def server(broken_home):
    running = RunningServer(broken_home, free_port(), [])
    yield running
    running.stop()


def _private(text: str, home) -> bool:
    """Whether ``text`` shows no absolute path of the server's: neither its home folder nor the real one."""
    return str(home) not in text and str(home.resolve()) not in text and "/tmp/" not in text


def _chat(server, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    return httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=60)


def test_a_corrupt_models_load_error_names_its_key_not_its_path(server, broken_home):
    first = _chat(server, BROKEN)
    assert first.status_code == 500, first.text
    error = first.json()["error"]
    assert error["code"] == "model_load_failed" and error["param"] == "model"
    assert error["message"].startswith(f"cannot load '{BROKEN}': truncated GGUF file ({TRUNCATED_BYTES} bytes")
    assert _private(first.text, broken_home)
    again = httpx.post(f"{server.base_url}/api/v1/models/load", json={"model": BROKEN}, timeout=60)
    assert again.status_code == 500 and "failed to load before" in again.json()["error"]["message"]
    assert _private(again.text, broken_home)
    assert str(broken_home / "models" / BROKEN / "broken-Q8_0.gguf") in server.log()  # the log keeps it


def test_a_model_not_found_does_not_list_the_catalog(server, broken_home):
    response = _chat(server, "llama-70b")
    assert response.status_code == 404
    message = response.json()["error"]["message"]
    assert message == "model 'llama-70b' not found on this server; GET /v1/models lists the models it has"
    v1 = httpx.post(f"{server.base_url}/api/v1/chat", json={"model": "llama-70b", "input": "Hi"}, timeout=60)
    assert v1.status_code == 404 and SMOLLM not in v1.text and BROKEN not in v1.text


def test_a_settings_file_that_does_not_parse_is_named_inside_the_home(server, broken_home):
    response = _chat(server, SMOLLM)
    assert response.status_code == 500, response.text
    message = response.json()["error"]["message"]
    assert f"model-settings/{SMOLLM}.json" in message and _private(message, broken_home)


def test_paths_become_relative_to_the_home_or_the_users_home(monkeypatch, tmp_path):
    monkeypatch.setenv("STUDIOLO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert without_paths(f"cannot read {tmp_path}/home/studiolo.db: locked") == "cannot read studiolo.db: locked"
    assert without_paths(f"the disk holding {tmp_path}/home is full") == \
        "the disk holding the server's home folder is full"
    assert without_paths(f"{tmp_path}/other/x.gguf and {tmp_path}x") == f"~/other/x.gguf and {tmp_path}x"
    assert without_paths("no path: 3/4 of it") == "no path: 3/4 of it"
    assert without_paths(f"model 'acme{tmp_path}' is not {tmp_path}_b") == f"model 'acme{tmp_path}' is not {tmp_path}_b"
    assert json.dumps(without_paths("/"))  # nothing to do, nothing broken

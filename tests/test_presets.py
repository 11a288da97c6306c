"""Presets and per-model defaults, end to end on SmolLM2: precedence request > preset > model defaults >
server defaults on every generation endpoint, an unknown preset as a 400 naming ``preset``, a preset's
system prompt in the exact prompt, a preset exported from LM Studio imported with `studiolo preset import`,
and a model's settings file at a JIT load and under `studiolo load`'s flags."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import GREEDY, SMOLLM, RunningServer, free_port, home_with_models, loaded_instances, unload_all

PIRATE = "You are a pirate. Answer in one short sentence."
HI = [{"role": "user", "content": "Hi! Tell me about cats."}]

# As LM Studio 0.3 exports a preset (~/.lmstudio/config-presets/*.preset.json): KV fields, switchable
# samplers as {checked, value}, and keys studiolo does not apply (CPU threads) among them.
LMSTUDIO_PRESET = {
    "identifier": "@local:pirate-terse",
    "name": "Pirate Terse",
    "changed": True,
    "operation": {"fields": [
        {"key": "llm.prediction.systemPrompt", "value": PIRATE},
        {"key": "llm.prediction.temperature", "value": 0},
        {"key": "llm.prediction.topKSampling", "value": 40},
        {"key": "llm.prediction.topPSampling", "value": {"checked": True, "value": 0.9}},
        {"key": "llm.prediction.repeatPenalty", "value": {"checked": False, "value": 1.1}},
        {"key": "llm.prediction.maxPredictedTokens", "value": {"checked": True, "value": 6}},
        {"key": "llm.prediction.llama.cpuThreads", "value": 4},
    ]},
    "load": {"fields": [{"key": "llm.load.contextLength", "value": 2048}]},
}
SHORT_PRESET = {"identifier": "@local:short", "name": "short", "operation": {"fields": [
    {"key": "llm.prediction.maxPredictedTokens", "value": {"checked": True, "value": 4}}]}}


def studiolo(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "STUDIOLO_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "studiolo", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def import_preset(home: Path, tmp_path: Path, document: dict) -> subprocess.CompletedProcess:
    exported = tmp_path / f"{document['name']}.preset.json"
    exported.write_text(json.dumps(document, indent=2))
    result = studiolo(home, "preset", "import", str(exported))
    assert result.returncode == 0, result.stderr
    return result


def model_settings(home: Path, document: dict | None) -> None:
    """Write (or with None remove) SmolLM2's settings file."""
    path = home / "model-settings" / f"{SMOLLM}.json"
    if document is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))


@pytest.fixture(scope="module")
def home(tmp_path_factory, chat_models) -> Path:
    return home_with_models(tmp_path_factory.mktemp("presets-home"), chat_models)


@pytest.fixture(scope="module")
def presets_server(home, tmp_path_factory) -> RunningServer:
    import_preset(home, tmp_path_factory.mktemp("exported"), LMSTUDIO_PRESET)
    import_preset(home, tmp_path_factory.mktemp("exported"), SHORT_PRESET)
    running = RunningServer(home, free_port(), [])
    yield running
    running.stop()


@pytest.fixture
def http(presets_server) -> httpx.Client:
    model_settings(presets_server.home, None)
    with httpx.Client(base_url=presets_server.base_url, timeout=120) as session:
        yield session
    model_settings(presets_server.home, None)


def chat(http: httpx.Client, path: str = "/v1/chat/completions", **body) -> dict:
    response = http.post(path, json={"model": SMOLLM, "messages": HI, **body})
    assert response.status_code == 200, response.text
    return response.json()


def reply(answer: dict) -> str:
    return answer["choices"][0]["message"]["content"]


# --- the CLI --------------------------------------------------------------------------------------------


def test_an_lmstudio_export_imports_as_it_is_and_is_listed_and_shown(presets_server, tmp_path):
    home = presets_server.home
    result = import_preset(home, tmp_path, LMSTUDIO_PRESET)
    assert "Imported preset 'Pirate Terse'" in result.stdout
    assert "llm.prediction.llama.cpuThreads" in result.stdout  # said not to be applied
    stored = home / "presets" / "Pirate Terse.preset.json"
    assert json.loads(stored.read_text()) == LMSTUDIO_PRESET  # the file as LM Studio wrote it
    listed = json.loads(studiolo(home, "preset", "ls", "--json").stdout)
    assert {p["name"] for p in listed} == {"Pirate Terse", "short"}
    shown = json.loads(studiolo(home, "preset", "show", "@local:pirate-terse", "--json").stdout)
    assert shown["settings"] == {"system_prompt": PIRATE, "temperature": 0.0, "top_k": 40, "top_p": 0.9,
                                 "repeat_penalty": 1.0, "max_tokens": 6, "context_length": 2048}
    table = studiolo(home, "preset", "show", "pirate terse")
    assert table.returncode == 0 and PIRATE in table.stdout
    missing = studiolo(home, "preset", "show", "nope")
    assert missing.returncode == 1 and "No preset named 'nope'" in missing.stderr


def test_a_file_that_is_not_a_preset_is_refused(presets_server, tmp_path):
    bad = tmp_path / "bad.preset.json"
    bad.write_text(json.dumps({"name": "bad", "operation": {"fields": [
        {"key": "llm.prediction.temperature", "value": "hot"}]}}))
    result = studiolo(presets_server.home, "preset", "import", str(bad))
    assert result.returncode == 1 and "llm.prediction.temperature" in result.stderr
    assert not (presets_server.home / "presets" / "bad.preset.json").exists()


# --- a preset on a request ------------------------------------------------------------------------------


def test_the_imported_preset_works_its_system_prompt_in_the_exact_prompt(http):
    answer = chat(http, preset="Pirate Terse", echo=True)
    prompt = (f"<|im_start|>system\n{PIRATE}<|im_end|>\n<|im_start|>user\nHi! Tell me about cats.<|im_end|>\n"
              "<|im_start|>assistant\n")
    assert reply(answer).startswith(prompt)
    assert answer["usage"]["completion_tokens"] == 6  # the preset's max tokens
    # the same as a request giving the preset's settings itself: greedy, so exact
    messages = [{"role": "system", "content": PIRATE}, *HI]
    expected = chat(http, messages=messages, max_tokens=6, **GREEDY)
    assert reply(answer) == prompt + reply(expected)
    by_identifier = chat(http, preset="@local:pirate-terse")
    assert reply(by_identifier) == reply(expected)


def test_a_request_system_message_is_kept_and_the_presets_is_not_added(http):
    messages = [{"role": "system", "content": "You are a cat."}, *HI]
    prompt = reply(chat(http, preset="Pirate Terse", messages=messages, echo=True, max_tokens=1))
    assert prompt.startswith("<|im_start|>system\nYou are a cat.<|im_end|>\n") and PIRATE not in prompt


def test_request_fields_win_over_the_preset(http):
    answer = chat(http, preset="Pirate Terse", max_tokens=3)
    assert answer["usage"]["completion_tokens"] == 3
    messages = [{"role": "system", "content": PIRATE}, *HI]
    sampled = chat(http, preset="Pirate Terse", temperature=0.8, seed=7, max_tokens=6)
    expected = chat(http, messages=messages, temperature=0.8, seed=7, max_tokens=6, top_p=0.9, top_k=40,
                    repeat_penalty=1.0)
    assert reply(sampled) == reply(expected)  # the request's temperature, the preset's other samplers


ENDPOINTS = {  # path -> (body without preset, where the output token count is)
    "/v1/chat/completions": ({"messages": HI}, ("usage", "completion_tokens")),
    "/api/v0/chat/completions": ({"messages": HI}, ("usage", "completion_tokens")),
    "/v1/completions": ({"prompt": "Cats are"}, ("usage", "completion_tokens")),
    "/api/v0/completions": ({"prompt": "Cats are"}, ("usage", "completion_tokens")),
    "/v1/responses": ({"input": "Tell me about cats.", "store": False}, ("usage", "output_tokens")),
    "/api/v1/chat": ({"input": "Tell me about cats.", "store": False}, ("stats", "total_output_tokens")),
}


@pytest.mark.parametrize("path", ENDPOINTS)
def test_every_endpoint_takes_a_preset(http, path):
    body, (part, field) = ENDPOINTS[path]
    response = http.post(path, json={"model": SMOLLM, "preset": "short", "temperature": 0, **body})
    assert response.status_code == 200, response.text
    assert response.json()[part][field] == 4


@pytest.mark.parametrize("path", ENDPOINTS)
def test_an_unknown_preset_is_a_400_naming_preset(http, path):
    body, _ = ENDPOINTS[path]
    response = http.post(path, json={"model": SMOLLM, "preset": "no-such-preset", **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "preset" and "no-such-preset" in error["message"]


def test_a_presets_structured_output_and_stop_strings_apply(http, home, tmp_path):
    schema = {"type": "object", "properties": {"animal": {"type": "string", "maxLength": 12}},
              "required": ["animal"], "additionalProperties": False}
    import_preset(home, tmp_path, {"name": "json-animal", "operation": {"fields": [
        {"key": "llm.prediction.structured", "value": {"type": "json", "jsonSchema": schema}},
        {"key": "llm.prediction.stopStrings", "value": ["\n\n"]}]}})
    answer = chat(http, preset="json-animal", max_tokens=40, **GREEDY)
    assert set(json.loads(reply(answer))) == {"animal"}
    # the request's own structured output wins over the preset's
    plain = chat(http, preset="json-animal", response_format={"type": "text"}, max_tokens=5, **GREEDY)
    assert plain["usage"]["completion_tokens"] == 5


def test_a_preset_file_that_cannot_be_read_is_a_400_naming_preset(http, home):
    (home / "presets" / "broken.preset.json").write_text("{not json")
    response = http.post("/v1/chat/completions", json={"model": SMOLLM, "messages": HI, "preset": "broken"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "preset"
    assert chat(http, preset="short")["usage"]["completion_tokens"] == 4  # the others are still found
    (home / "presets" / "broken.preset.json").unlink()


# --- per-model defaults -----------------------------------------------------------------------------------


def test_precedence_request_over_preset_over_model_defaults_over_server_defaults(http, home):
    model_settings(home, {"operation": {"fields": [
        {"key": "llm.prediction.temperature", "value": 0},
        {"key": "llm.prediction.repeatPenalty", "value": {"checked": False, "value": 1.1}},
        {"key": "llm.prediction.maxPredictedTokens", "value": {"checked": True, "value": 9}}]}})
    greedy9 = chat(http, max_tokens=9, **GREEDY)
    model_defaults = chat(http)  # the model's defaults: greedy, 9 tokens
    assert model_defaults["usage"]["completion_tokens"] == 9 and reply(model_defaults) == reply(greedy9)
    with_preset = chat(http, preset="short")  # the preset's max tokens over the model's; its greedy stays
    assert with_preset["usage"]["completion_tokens"] == 4 and reply(greedy9).startswith(reply(with_preset))
    assert chat(http, preset="short", max_tokens=2)["usage"]["completion_tokens"] == 2  # the request's
    # without the model's file, what neither sets is the server's default (LM Studio's samplers)
    model_settings(home, None)
    served = chat(http, preset="short", seed=11)
    expected = chat(http, max_tokens=4, seed=11, temperature=0.8, top_p=0.95, top_k=40, min_p=0.05,
                    repeat_penalty=1.1)
    assert served["usage"]["completion_tokens"] == 4 and reply(served) == reply(expected)


def test_a_models_default_preset_applies_when_the_request_names_none(http, home):
    model_settings(home, {"preset": "short"})
    assert chat(http, **GREEDY)["usage"]["completion_tokens"] == 4
    assert chat(http, preset="Pirate Terse")["usage"]["completion_tokens"] == 6


def test_model_load_defaults_apply_at_a_jit_load_and_load_flags_override_them(http, presets_server):
    model_settings(presets_server.home, {"load": {"fields": [
        {"key": "llm.load.contextLength", "value": 2048},
        {"key": "llm.load.numParallelSessions", "value": 2},
        {"key": "studiolo.load.ttl", "value": 900},
        {"key": "llm.prediction.speculativeDecoding.draftModel", "value": "ngram"}]}})
    unload_all(http)
    chat(http, max_tokens=1, **GREEDY)  # a JIT load
    (instance,) = loaded_instances(http).values()
    assert instance["config"]["context_length"] == 2048 and instance["config"]["parallel"] == 2
    assert instance["status"]["ttl_seconds"] == 900 and instance["config"]["draft_model"] == "ngram"
    unload_all(http)
    chat(http, max_tokens=1, ttl=300, **GREEDY)  # the request's ttl over the file's
    assert [i["status"]["ttl_seconds"] for i in loaded_instances(http).values()] == [300]
    unload_all(http)
    result = studiolo(presets_server.home, "load", SMOLLM, "--context-length", "1024", "--port",
                      str(presets_server.port))
    assert result.returncode == 0, result.stderr
    (instance,) = loaded_instances(http).values()
    assert instance["config"]["context_length"] == 1024  # the flag
    assert instance["config"]["parallel"] == 2 and instance["status"]["ttl_seconds"] == 900  # the file
    shown = studiolo(presets_server.home, "preset", "model", SMOLLM)
    assert "draft model" in shown.stdout and "ngram" in shown.stdout
    unload_all(http)


def test_a_presets_context_length_applies_when_its_request_loads_the_model(http):
    unload_all(http)
    chat(http, preset="Pirate Terse", max_tokens=1)
    assert [i["config"]["context_length"] for i in loaded_instances(http).values()] == [2048]
    unload_all(http)


"""`studiolo ls`, `ps`, `load`, `unload`: helpers and argument checks in-process, then the
commands run as a user runs them against a real server (one of this module's own, so that
loading and unloading here cannot disturb the shared server other tests use)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest
from rich.console import Console
from typer.testing import CliRunner

from studiolo.cli.client import ServerError, StudioloClient, error_message, is_local
from studiolo.cli.main import app
from studiolo.cli.models_cmd import (
    filter_models,
    format_duration,
    human_size,
    instances_of,
    instances_table,
    load_request,
    loaded_line,
    models_summary,
    models_table,
)
from tests.conftest import GEMMA, SMOLLM, RunningServer, free_port, home_with_models

# ---- in-process: helpers and argument checks ----

GEMMA_ENTRY = {
    "type": "llm", "publisher": "google", "key": "google/gemma-3-270m", "display_name": "Gemma 3 270M",
    "architecture": "gemma3", "quantization": {"name": "Q4_K_M", "bits_per_weight": 7.5},
    "size_bytes": 253_114_432, "params_string": "270M", "max_context_length": 32768, "format": "gguf",
    "capabilities": {"vision": False, "trained_for_tool_use": False},
    "loaded_instances": [
        {
            "id": "my-gemma",
            "config": {"context_length": 512, "eval_batch_size": 512, "parallel": 2},
            "status": {"jit_loaded": False, "ttl_seconds": 3600, "ttl_remaining_seconds": 3598.4,
                       "running_requests": 1, "queued_requests": 0, "loaded_at": "2025-01-01T00:00:00Z"},
        }
    ],
}
EMBEDDING_ENTRY = {
    "type": "embedding", "publisher": "local", "key": "local/minilm", "display_name": "MiniLM",
    "quantization": {"name": "F16", "bits_per_weight": 16}, "size_bytes": 45_000_000, "params_string": "22M",
    "max_context_length": 512, "format": "gguf", "loaded_instances": [],
}


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(None, "—"), (3598.4, "59m 58s"), (3600, "1h 0m 0s"), (7, "7s"), (0, "0s"), (-3, "0s"), (60, "1m 0s"),
     (90061, "25h 1m 1s"), (True, "—"), ("12", "—")],
)
def test_durations_read_like_a_clock(seconds, shown):
    assert format_duration(seconds) == shown


def test_sizes_are_in_decimal_units():
    assert human_size(253_114_432) == "253.1 MB"
    assert human_size(None) == "—"


def test_filters_by_type():
    models = [GEMMA_ENTRY, EMBEDDING_ENTRY]
    assert filter_models(models, llm=True, embedding=False) == [GEMMA_ENTRY]
    assert filter_models(models, llm=False, embedding=True) == [EMBEDDING_ENTRY]
    assert filter_models(models, llm=False, embedding=False) == models


def test_instances_are_flattened_with_their_model_key():
    assert instances_of([GEMMA_ENTRY, EMBEDDING_ENTRY]) == [
        {
            "identifier": "my-gemma",
            "model_key": "google/gemma-3-270m",
            "config": GEMMA_ENTRY["loaded_instances"][0]["config"],
            "status": GEMMA_ENTRY["loaded_instances"][0]["status"],
        }
    ]


def test_load_request_leaves_out_what_the_user_did_not_give():
    assert load_request("smol", ttl=None, context_length=None, parallel=None, identifier=None) == {"model": "smol"}
    full = load_request("smol", ttl=60, context_length=1024, parallel=2, identifier="s")
    assert full == {"model": "smol", "ttl": 60, "context_length": 1024, "parallel": 2, "identifier": "s"}


def test_loaded_line():
    answer = {"type": "llm", "instance_id": "google/gemma-3-270m", "load_time_seconds": 0.4234, "status": "loaded"}
    assert loaded_line("google/gemma-3-270m", answer) == "Loaded google/gemma-3-270m as google/gemma-3-270m in 0.42 s"


def rendered(renderable) -> str:
    console = Console(width=250, record=True, file=open(os.devnull, "w"))
    console.print(renderable)
    return console.export_text()


def test_models_table_shows_what_lms_ls_shows():
    text = rendered(models_table("LLM", [GEMMA_ENTRY]))
    row = next(line for line in text.splitlines() if "google/gemma-3-270m" in line)
    for shown in ("270M", "gemma3", "Q4_K_M", "253.1 MB", "32768", "my-gemma"):
        assert shown in row
    assert models_summary([GEMMA_ENTRY, EMBEDDING_ENTRY]) == "You have 2 models, taking up 298.1 MB of disk space."


def test_instances_table_shows_ttl_left_and_requests():
    text = rendered(instances_table(instances_of([GEMMA_ENTRY])))
    row = next(line for line in text.splitlines() if "my-gemma" in line)
    cells = [part.strip() for part in row.split("│")[1:-1]]
    assert cells == ["my-gemma", "google/gemma-3-270m", "512", "2", "59m 58s", "1", "0", "—", "no"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"error": {"type": "invalid_request", "message": "model 'x' not found", "code": "model_not_found"}},
         "model 'x' not found"),
        ({"error": {"message": "line one\n  line two", "type": "invalid_request_error", "param": None, "code": None}},
         "line one line two"),
        ({"error": "plain words"}, "plain words"),
        ({"detail": "Not Found"}, "HTTP 404 Not Found"),
    ],
)
def test_error_bodies_become_one_line(body, message):
    assert error_message(httpx.Response(404, json=body)) == message


def test_an_error_body_that_is_not_json():
    assert error_message(httpx.Response(502, text="<html>bad gateway</html>")) == "HTTP 502 Bad Gateway"


def test_client_raises_the_servers_message():
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": {"type": "invalid_request", "message": "'model' is required"}})

    http = httpx.Client(base_url="http://test", transport=httpx.MockTransport(refuse))
    with StudioloClient("http://test", http) as server, pytest.raises(ServerError, match="^'model' is required$"):
        server.load_model({})


def test_client_refuses_an_answer_without_a_models_list():
    http = httpx.Client(base_url="http://test", transport=httpx.MockTransport(lambda r: httpx.Response(200, json={})))
    with StudioloClient("http://test", http) as server, pytest.raises(ServerError, match="without a models list"):
        server.list_models()


def test_which_hosts_are_local():
    assert all(is_local(host) for host in ("127.0.0.1", "localhost", "::1", "0.0.0.0", "::", "127.0.0.2"))
    assert not any(is_local(host) for host in ("192.168.1.5", "example.com", "10.0.0.1"))


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.mark.parametrize("args", [["unload"], ["unload", "some-id", "--all"], ["ls", "--llm", "--embedding"]])
def test_argument_mistakes_are_one_line_and_start_no_server(args, tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIOLO_HOME", str(tmp_path))
    result = invoke(*args, "--port", str(free_port()))
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: ")
    assert result.stdout == ""
    assert not (tmp_path / "server.json").exists() and not (tmp_path / "logs").exists()


def test_load_options_are_checked_before_any_request(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIOLO_HOME", str(tmp_path))
    for option in (["--parallel", "0"], ["--ttl", "0"], ["--context-length", "8"]):
        assert invoke("load", "smol", *option, "--port", str(free_port())).exit_code == 2
    assert not (tmp_path / "logs").exists()


def test_a_remote_host_is_never_started(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIOLO_HOME", str(tmp_path))
    result = invoke("ps", "--host", "192.0.2.1", "--port", "9")  # TEST-NET-1: nothing answers there
    assert result.exit_code == 1
    assert result.stderr == "error: No server answers at http://192.0.2.1:9.\n"
    assert not (tmp_path / "logs").exists()


# ---- end to end: the commands in a subprocess, against a real server ----


def studiolo(home, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "STUDIOLO_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "studiolo", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def own_server(tmp_path_factory, chat_models):
    home = home_with_models(tmp_path_factory.mktemp("models-cli-home"), chat_models)
    running = RunningServer(home, free_port(), [])
    yield running
    running.stop()


def run(server: RunningServer, *args: str) -> subprocess.CompletedProcess:
    return studiolo(server.home, *args, "--port", str(server.port))


def ps_json(server: RunningServer) -> list[dict]:
    result = run(server, "ps", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def nothing_loaded(own_server):
    run(own_server, "unload", "--all")
    yield own_server
    run(own_server, "unload", "--all")


def test_ls_json_is_the_servers_models_list(nothing_loaded):
    result = run(nothing_loaded, "ls", "--json")
    assert result.returncode == 0, result.stderr
    models = json.loads(result.stdout)
    assert models == httpx.get(f"{nothing_loaded.base_url}/api/v1/models").json()["models"]
    assert {model["key"] for model in models} == {SMOLLM, GEMMA}
    assert all(model["type"] == "llm" and model["format"] == "gguf" for model in models)
    assert json.loads(run(nothing_loaded, "ls", "--embedding", "--json").stdout) == []
    assert len(json.loads(run(nothing_loaded, "ls", "--llm", "--json").stdout)) == 2


def test_ls_table_lists_each_model_on_one_line(nothing_loaded):
    result = run(nothing_loaded, "ls")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("You have 2 models, taking up ")
    gemma_row = next(line for line in result.stdout.splitlines() if GEMMA in line)
    assert "gemma3" in gemma_row and "Q4_K_M" in gemma_row and "MB" in gemma_row
    assert "No models found" in run(nothing_loaded, "ls", "--embedding").stdout


def test_load_with_options_then_ps_then_unload(nothing_loaded):
    loaded = run(
        nothing_loaded, "load", GEMMA, "--ttl", "3600", "--context-length", "512", "--parallel", "2",
        "--identifier", "my-gemma", "-y",
    )
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.startswith(f"Loaded {GEMMA} as my-gemma in ") and loaded.stdout.endswith(" s\n")

    [instance] = ps_json(nothing_loaded)
    assert instance["identifier"] == "my-gemma" and instance["model_key"] == GEMMA
    assert instance["config"]["context_length"] == 512 and instance["config"]["parallel"] == 2
    status = instance["status"]
    assert status["jit_loaded"] is False and status["ttl_seconds"] == 3600
    assert 3500 < status["ttl_remaining_seconds"] <= 3600
    assert status["running_requests"] == 0 and status["queued_requests"] == 0

    table = run(nothing_loaded, "ps").stdout
    row = next(line for line in table.splitlines() if "my-gemma" in line)
    assert GEMMA in row and "512" in row and ("59m" in row or "1h 0m" in row) and row.rstrip(" │").endswith("no")
    gemma_row = next(line for line in run(nothing_loaded, "ls").stdout.splitlines() if GEMMA in line)
    assert "my-gemma" in gemma_row

    unloaded = run(nothing_loaded, "unload", "my-gemma")
    assert unloaded.returncode == 0 and unloaded.stdout == "Unloaded my-gemma\n", unloaded.stderr
    assert ps_json(nothing_loaded) == []
    assert run(nothing_loaded, "ps").stdout == "No models are loaded. Load one with `studiolo load <model>`.\n"


def test_ps_marks_a_jit_loaded_model(nothing_loaded):
    body = {"model": SMOLLM, "prompt": "Hi", "max_tokens": 1}
    assert httpx.post(f"{nothing_loaded.base_url}/v1/completions", json=body, timeout=120).status_code == 200
    [instance] = ps_json(nothing_loaded)
    assert instance["model_key"] == SMOLLM and instance["status"]["jit_loaded"] is True


def test_unload_all(nothing_loaded):
    for model in (SMOLLM, GEMMA):
        assert run(nothing_loaded, "load", model).returncode == 0
    assert {instance["model_key"] for instance in ps_json(nothing_loaded)} == {SMOLLM, GEMMA}
    result = run(nothing_loaded, "unload", "--all")
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == sorted([f"Unloaded {SMOLLM}", f"Unloaded {GEMMA}"])
    assert ps_json(nothing_loaded) == []
    assert run(nothing_loaded, "unload", "--all").stdout == "No models are loaded.\n"


def test_a_loaded_model_whose_file_left_the_catalog_is_still_listed(nothing_loaded):
    assert run(nothing_loaded, "load", GEMMA, "--identifier", "g").returncode == 0
    publisher = nothing_loaded.home / "models" / "google"
    publisher.rename(nothing_loaded.home / "google-moved")  # as a move or a delete leaves it
    try:
        [instance] = ps_json(nothing_loaded)
        assert instance["identifier"] == "g" and instance["model_key"] == GEMMA
        v0 = {m["id"]: m for m in httpx.get(f"{nothing_loaded.base_url}/api/v0/models").json()["data"]}
        assert v0["g"]["state"] == "loaded" and v0["g"]["arch"] == "gemma3"
        result = run(nothing_loaded, "unload", "--all")
        assert result.returncode == 0 and result.stdout == "Unloaded g\n", result.stderr
        assert ps_json(nothing_loaded) == []
    finally:
        (nothing_loaded.home / "google-moved").rename(publisher)


@pytest.mark.parametrize(
    ("args", "said"),
    [(["load", "no-such-model"], "not found"), (["unload", "no-such-instance"], "no-such-instance")],
)
def test_server_refusals_are_one_line(nothing_loaded, args, said):
    result = run(nothing_loaded, *args)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("error: ") and said in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_a_local_server_is_started_when_none_answers(tmp_path, default_models):
    """`ps` on a free port starts a server there; names that match two models are refused by it."""
    home = home_with_models(tmp_path, {SMOLLM: default_models[SMOLLM]})
    twin = home / "models" / "beta" / "smollm2-135m-instruct" / default_models[SMOLLM].name
    twin.parent.mkdir(parents=True)
    twin.symlink_to(default_models[SMOLLM])
    port = free_port()
    try:
        started = studiolo(home, "ps", "--port", str(port))
        assert started.returncode == 0, started.stderr
        assert started.stdout == "No models are loaded. Load one with `studiolo load <model>`.\n"
        assert "starting one in the background" in started.stderr and f"running on port {port}" in started.stderr
        assert json.loads(studiolo(home, "server", "status", "--json").stdout) == {"running": True, "port": port}

        # without --port, the commands find the running server's port
        assert json.loads(studiolo(home, "ps", "--json").stdout) == []
        ambiguous = studiolo(home, "load", "smollm2-135m-instruct")
        assert ambiguous.returncode == 1 and "several models" in ambiguous.stderr, ambiguous.stderr

        # one server per home: another port is not started behind the user's back
        other_port = free_port()
        elsewhere = studiolo(home, "ps", "--port", str(other_port))
        assert elsewhere.returncode == 1 and f"runs on port {port}" in elsewhere.stderr
        assert len(elsewhere.stderr.splitlines()) == 1
    finally:
        stopped = studiolo(home, "server", "stop")
    assert stopped.returncode == 0, stopped.stderr

"""Shared fixtures: the default models, and a real server on a free port.

End-to-end tests talk to ``studiolo server start --foreground`` in a subprocess, with its own
STUDIOLO_HOME whose models folder links to the default models `make setup` placed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from studiolo.config import models_dir
from studiolo.models.defaults import GEMMA3, QWEN05, SMOLLM2, target_path
from studiolo.models.defaults import MINILM as MINILM_MODEL

SMOLLM = SMOLLM2.key  # the default chat model: ChatML template, exact under batching
GEMMA = GEMMA3.key  # base model without a chat template, 262k vocabulary
QWEN = QWEN05.key  # an instruct model with native tool calls: not among the default_models below
MINILM = MINILM_MODEL.key  # the embedding model: all-MiniLM-L6-v2 converted to GGUF by `make setup`

SERVER_START_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def default_models() -> dict[str, Path]:
    """Every default model's file; homes built from ``chat_models`` leave the embedding model out."""
    paths = {SMOLLM: target_path(SMOLLM2), GEMMA: target_path(GEMMA3), MINILM: target_path(MINILM_MODEL)}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        pytest.fail(f"default models missing ({', '.join(missing)}); run `make setup`")
    return paths


@pytest.fixture(scope="session")
def chat_models(default_models) -> dict[str, Path]:
    return {key: path for key, path in default_models.items() if key != MINILM}


def home_with_models(home: Path, models: dict[str, Path]) -> Path:
    """Make ``home`` a STUDIOLO_HOME whose models are links to the real default models."""
    real_models = models_dir()
    for path in models.values():
        link = home / "models" / path.relative_to(real_models)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path)
    return home


@pytest.fixture(scope="session")
def studiolo_home(tmp_path_factory, default_models) -> Path:
    return home_with_models(tmp_path_factory.mktemp("studiolo-home"), default_models)


class RunningServer:
    # what answers 200 once the app serves: a model route, so the routers are up (with auth on: /health)
    ready_path = "/v1/models"

    def __init__(self, home: Path, port: int, extra_args: list[str]):
        self.home = home
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "STUDIOLO_HOME": str(home)}
        self.log_path = home / f"server-{port}.log"
        command = [sys.executable, "-m", "studiolo", "server", "start", "--foreground", "--port", str(port)]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(command + extra_args, env=env, stdout=log, stderr=subprocess.STDOUT)
        self._wait_until_up()

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.base_url}{self.ready_path}", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)  # a server is up ~1.6 s after its start: each start waits half a poll for nothing
        self.stop()
        raise RuntimeError(f"server did not answer in time:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="session")
def server(studiolo_home) -> RunningServer:
    running = RunningServer(studiolo_home, free_port(), [])
    yield running
    running.stop()


@pytest.fixture(scope="session")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="not-needed", max_retries=0, timeout=120)


@pytest.fixture
def async_client(server) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="not-needed", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def http(server) -> httpx.Client:
    with httpx.Client(base_url=server.base_url, timeout=120) as session:
        yield session


def hang_up(response: httpx.Response | None) -> None:
    """End a streamed response that another thread is reading, so that the server sees the client go.

    Closing the client from here leaves the socket open while the reading thread waits on it, and a
    server with such a stream open (a log stream, which sends only when there is news) holds its
    shutdown for its whole grace period (5 s) before it exits. Shutting the socket down ends both."""
    stream = response.extensions.get("network_stream") if response is not None else None
    sock = stream.get_extra_info("socket") if stream is not None else None
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed


class PromptLog:
    """The prompts the server formats, read from its model log (/studiolo/log/stream)."""

    def __init__(self, base_url: str):
        self.prompts: list[str] = []
        self._client = httpx.Client(base_url=base_url, timeout=None)
        self._response: httpx.Response | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            with self._client.stream("GET", "/studiolo/log/stream") as response:
                self._response = response
                for line in response.iter_lines():
                    event = json.loads(line[6:]) if line.startswith("data: ") else {}
                    if event.get("type") == "input":
                        self.prompts.append(event["prompt"])
        except httpx.HTTPError:
            pass  # closed

    def wait_for(self, count: int, seconds: float = 10) -> None:
        deadline = time.monotonic() + seconds
        while len(self.prompts) < count and time.monotonic() < deadline:
            time.sleep(0.02)

    def close(self) -> None:
        hang_up(self._response)
        self._client.close()


@pytest.fixture
def prompt_log(server, client):
    log = PromptLog(server.base_url)
    for _ in range(100):  # subscribed once a probe's prompt shows up
        client.responses.create(model=SMOLLM, input="ping", max_output_tokens=1, temperature=0)
        log.wait_for(1, seconds=0.1)
        if log.prompts:
            break
    yield log
    log.close()


def loaded_instances(http: httpx.Client) -> dict[str, dict]:
    """instance id -> its v1 instance object, with the model key added."""
    found = {}
    for model in http.get("/api/v1/models").json()["models"]:
        for instance in model["loaded_instances"]:
            found[instance["id"]] = {**instance, "key": model["key"]}
    return found


def unload_all(http: httpx.Client) -> None:
    """Unload every instance: the next request loads its model afresh, with empty caches."""
    for instance_id in loaded_instances(http):
        assert http.post("/api/v1/models/unload", json={"instance_id": instance_id}).status_code == 200


GREEDY = {"temperature": 0, "repeat_penalty": 1.0}  # plain argmax: deterministic and exact
NO_PENALTY = {"repeat_penalty": 1.0}  # for the openai client's extra_body (temperature goes as an argument)


@pytest.fixture(scope="session")
def smollm_vocab(default_models) -> dict[str, int]:
    """SmolLM2's token strings to ids, read from its GGUF (GPT-2 style: 'Ġ' is a space)."""
    from gguf import GGUFReader

    reader = GGUFReader(default_models[SMOLLM])
    field = reader.fields["tokenizer.ggml.tokens"]
    tokens = [bytes(field.parts[i]).decode("utf-8") for i in field.data]
    return {token: index for index, token in enumerate(tokens)}


def smollm_token_id(vocab: dict[str, int], text: str) -> int:
    return vocab[text.replace(" ", "Ġ")]

"""Helpers of the reasoning tests on the stateful APIs (/v1/responses and /api/v1/chat): a server
with the reasoning models, and the prompts it sends its models, read from its model log."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.conftest import SMOLLM, RunningServer, free_port, home_with_models
from tests.reasoning_model import link_reasoning_models

SERVER_ARGS = ["--parallel", "1", "--context-length", "2048"]


def reasoning_home(tmp_path_factory, default_models) -> Path:
    home = home_with_models(tmp_path_factory.mktemp("reasoning-home"), {SMOLLM: default_models[SMOLLM]})
    return link_reasoning_models(home)


def start_server(home: Path) -> RunningServer:
    return RunningServer(home, free_port(), SERVER_ARGS)


@contextmanager
def prompts_sent(base_url: str) -> Iterator[list[str]]:
    """The prompts the server formats while the block runs (its model log's ``input`` events), up
    to the first finished output: one request's prompt."""
    prompts: list[str] = []
    subscribed = threading.Event()

    def read() -> None:
        with httpx.stream("GET", f"{base_url}/studiolo/log/stream", params={"source": "model"},
                          timeout=60) as response:
            subscribed.set()
            for line in response.iter_lines():
                if line.startswith("data:"):
                    event = json.loads(line[5:])
                    if event.get("type") == "input":
                        prompts.append(event["prompt"])
                    elif event.get("type") == "output":
                        return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert subscribed.wait(30)
    yield prompts
    reader.join(60)
    assert not reader.is_alive(), "the request's output was never logged"

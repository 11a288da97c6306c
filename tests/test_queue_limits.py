"""A model's bounded queue, against a real server decoding one sequence at a time (--parallel 1) whose
queue holds one waiting sequence (limits.max_queued_per_model = 1) for at most QUEUE_TIMEOUT seconds.

A "holder" keeps the one slot busy with a long streamed completion until the test lets it go; what
arrives meanwhile either waits (one sequence) or is refused at once with a 429 and Retry-After, in
the family's error shape. A request that waits past the deadline is refused (503) and leaves the
queue. The openai client's own retry (max_retries) gets through once the queue moves.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.conftest import SMOLLM, RunningServer, free_port, home_with_models, loaded_instances

QUEUE_TIMEOUT = 6  # seconds: long enough for a burst to be answered on a busy machine, short for the test
HOLD = {"model": SMOLLM, "prompt": "A very long story:", "max_tokens": 3000, "ignore_eos": True,
        "temperature": 0, "stream": True}
SMALL_LIMITS = {"max_tools": 2, "max_stop_strings": 2, "max_stop_chars": 10, "max_n": 2, "max_messages": 3,
                "max_images": 1}
SHORT = {"model": SMOLLM, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "temperature": 0}


@pytest.fixture(scope="module")
def server(tmp_path_factory, chat_models):
    home = home_with_models(tmp_path_factory.mktemp("queue-home"), chat_models)
    limits = {"max_queued_per_model": 1, "queue_timeout_seconds": QUEUE_TIMEOUT, **SMALL_LIMITS}
    (home / "settings.json").write_text(json.dumps({"limits": limits}))
    running = RunningServer(home, free_port(), ["--parallel", "1"])
    yield running
    running.stop()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.base_url, timeout=120) as session:
        assert session.post("/api/v1/models/load", json={"model": SMOLLM}).status_code == 200
        yield session


class Holder:
    """A streamed generation that holds the model's only slot until ``release``."""

    def __init__(self, base_url: str):
        self._release = threading.Event()
        self._started = threading.Event()
        self.tokens = 0
        self._thread = threading.Thread(target=self._run, args=(base_url,), daemon=True)
        self._thread.start()
        assert self._started.wait(60), "the holder's stream never started"

    def _run(self, base_url: str) -> None:
        with httpx.Client(base_url=base_url, timeout=120) as session:
            with session.stream("POST", "/v1/completions", json=HOLD) as response:
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        self.tokens += 1
                        self._started.set()
                    if self._release.is_set():
                        return  # closing the stream cancels the generation: the slot frees

    def release(self) -> None:
        self._release.set()
        self._thread.join(30)

    @staticmethod
    def wait_until_idle(http: httpx.Client) -> None:
        """Until the model runs and queues nothing (the holder's cancel reached the engine)."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status = loaded_instances(http)[SMOLLM]["status"]
            if status["running_requests"] == status["queued_requests"] == 0:
                return
            time.sleep(0.05)
        raise AssertionError("the model never became idle")


def _chat(base_url: str, body: dict | None = None, path: str = "/v1/chat/completions") -> httpx.Response:
    with httpx.Client(base_url=base_url, timeout=120) as session:
        return session.post(path, json=body or SHORT)


def _assert_queue_full(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["retry-after"] == "1"
    error = response.json()["error"]
    assert error["code"] == "queue_full" and error["param"] == "model" and error["type"] == "rate_limit_error"
    assert "limits.max_queued_per_model" in error["message"]


def test_a_burst_past_the_queue_gets_exactly_its_overflow_refused_with_429(server, http):
    holder = Holder(server.base_url)
    try:
        with ThreadPoolExecutor(4) as pool:
            burst = [pool.submit(_chat, server.base_url) for _ in range(4)]
            deadline = time.monotonic() + 30
            while sum(f.done() for f in burst) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            answered = [f for f in burst if f.done()]
            assert len(answered) == 3  # one waits in the queue, the three past it are answered at once
            for refused in answered:
                _assert_queue_full(refused.result())
            holder.release()
            waited = [f.result() for f in burst if f not in answered]
    finally:
        holder.release()
    assert len(waited) == 1 and waited[0].status_code == 200, waited[0].text
    assert waited[0].json()["choices"][0]["finish_reason"] == "length"  # max_tokens=3: the whole answer
    assert holder.tokens > 1


def test_a_full_queue_refuses_streams_and_lm_studio_v1_in_their_own_shapes(server, http):
    holder = Holder(server.base_url)
    try:
        with ThreadPoolExecutor(1) as pool:
            queued = pool.submit(_chat, server.base_url)
            time.sleep(0.5)  # it waits for the slot (nothing answers it while the holder runs)
            assert not queued.done()
            with httpx.Client(base_url=server.base_url, timeout=60) as session:
                with session.stream("POST", "/v1/chat/completions", json={**SHORT, "stream": True}) as streamed:
                    streamed.read()
                _assert_queue_full(streamed)  # before the stream starts: a status, not an event
                v1 = session.post("/api/v1/chat", json={"model": SMOLLM, "input": "Hi", "max_output_tokens": 3,
                                                        "store": False})
            holder.release()
            assert queued.result().status_code == 200
    finally:
        holder.release()
    assert v1.status_code == 429 and v1.headers["retry-after"] == "1", v1.text
    error = v1.json()["error"]
    assert error["type"] == "server_busy" and error["code"] == "queue_full" and "error_info" not in v1.json()


def test_a_request_of_n_choices_takes_n_places_in_the_queue(server, http):
    holder = Holder(server.base_url)
    try:
        two = _chat(server.base_url, {**SHORT, "n": 2})  # two sequences would wait: past a queue of one
    finally:
        holder.release()
    _assert_queue_full(two)
    Holder.wait_until_idle(http)
    idle = _chat(server.base_url, {**SHORT, "n": 2})  # an idle model takes a request whole
    assert idle.status_code == 200 and len(idle.json()["choices"]) == 2


def test_a_request_waiting_past_its_deadline_is_refused_and_leaves_the_queue(server, http):
    holder = Holder(server.base_url)
    try:
        started = time.monotonic()
        late = _chat(server.base_url)  # waits for the slot the holder keeps
        waited = time.monotonic() - started
        assert late.status_code == 503, late.text
        assert late.headers["retry-after"] == "1"
        error = late.json()["error"]
        assert error["code"] == "queue_timeout" and "limits.queue_timeout_seconds" in error["message"]
        assert QUEUE_TIMEOUT - 0.5 <= waited < QUEUE_TIMEOUT + 30
        with ThreadPoolExecutor(1) as pool:  # it left the queue: the next one waits instead of a 429
            next_one = pool.submit(_chat, server.base_url)
            time.sleep(0.5)
            assert not next_one.done()
            holder.release()
            assert next_one.result().status_code == 200
    finally:
        holder.release()


def test_a_stream_waiting_past_its_deadline_ends_with_a_queue_timeout_event(server, http):
    holder = Holder(server.base_url)
    try:
        with httpx.Client(base_url=server.base_url, timeout=60) as session:
            with session.stream("POST", "/v1/chat/completions", json={**SHORT, "stream": True}) as streamed:
                events = [line[6:] for line in streamed.iter_lines() if line.startswith("data: ")]
    finally:
        holder.release()
    assert streamed.status_code == 200  # its headers went before it waited: the error is its last event
    assert json.loads(events[-1])["error"]["code"] == "queue_timeout"


def test_the_openai_clients_own_retry_gets_through_once_the_queue_moves(server, http):
    statuses: list[int] = []
    transport = httpx.Client(event_hooks={"response": [lambda response: statuses.append(response.status_code)]})
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=10, timeout=60,
                           http_client=transport)
    holder = Holder(server.base_url)
    try:
        with ThreadPoolExecutor(2) as pool:
            queued = pool.submit(_chat, server.base_url)
            time.sleep(0.5)
            retried = pool.submit(client.chat.completions.create, model=SMOLLM, max_tokens=3, temperature=0,
                                  messages=[{"role": "user", "content": "Hi"}])
            deadline = time.monotonic() + 30
            while 429 not in statuses and time.monotonic() < deadline:
                time.sleep(0.05)
            assert statuses and statuses[0] == 429  # the queue was full: refused, to be retried
            holder.release()
            completion = retried.result()
            assert queued.result().status_code == 200
    finally:
        holder.release()
    assert statuses[-1] == 200 and completion.choices[0].finish_reason == "length"


# --- limits of a request (settings.json's "limits"), each a 400 naming the field and the setting -----

def tool(name: str) -> dict:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {}}}}


TOOLS = [tool("f"), tool("g"), tool("h")]
PIXEL = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGA"
         "hKmMIQAAAABJRU5ErkJggg==")


@pytest.mark.parametrize(("path", "extra", "param", "setting"), [
    ("/v1/chat/completions", {"tools": TOOLS}, "tools", "max_tools"),
    ("/v1/chat/completions", {"stop": ["a", "b", "c"]}, "stop", "max_stop_strings"),
    ("/v1/chat/completions", {"stop_sequences": ["a", "b", "c"]}, "stop_sequences", "max_stop_strings"),
    ("/v1/chat/completions", {"stop": ["a", "x" * 11]}, "stop[1]", "max_stop_chars"),
    ("/v1/chat/completions", {"stop": "x" * 11}, "stop", "max_stop_chars"),
    ("/v1/chat/completions", {"n": 3}, "n", "max_n"),
    ("/v1/completions", {"n": 3, "prompt": "Hi", "messages": None}, "n", "max_n"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}] * 4}, "messages", "max_messages"),
    ("/v1/responses", {"input": "Hi", "messages": None, "tools": [{"type": "function", "name": f"f{i}",
                                                                     "parameters": {}} for i in range(3)]},
     "tools", "max_tools"),
])
def test_a_request_past_a_limit_is_a_400_naming_the_field_and_the_setting(http, path, extra, param, setting):
    body = {key: value for key, value in {**SHORT, **extra}.items() if value is not None}
    response = http.post(path, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and f"limits.{setting}" in error["message"]


def test_images_past_the_limit_are_a_400_naming_the_first_one_past_it(http):
    parts = [{"type": "text", "text": "What is this?"}] + [{"type": "image_url", "image_url": {"url": PIXEL}}] * 2
    response = http.post("/v1/chat/completions", json={**SHORT, "messages": [{"role": "user", "content": parts}]})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "messages[0].content[2].image_url" and "limits.max_images" in error["message"]


def test_requests_within_the_limits_are_served(http):
    body = {**SHORT, "n": 2, "stop": ["a" * 10, "b"], "tools": TOOLS[:2], "tool_choice": "none"}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert len(response.json()["choices"]) == 2

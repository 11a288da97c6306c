"""`studiolo log stream`: the log hub, the SSE route, and the command against a real server."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import logging.config
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable

import httpx
import pytest
import uvicorn
import uvicorn.config

from studiolo.api.app import create_app
from studiolo.api.server import log as log_routes
from studiolo.cli.log_cmd import human_console, render_event
from studiolo.service.model_log import (
    LogHub,
    LogHubHandler,
    install_server_log_handler,
    model_input_event,
    model_output_event,
    remove_server_log_handler,
)
from tests.conftest import free_port

ISO_UTC_MILLIS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
CHATML_PROMPT = "<|im_start|>system\n[bold]Be brief.[/bold] :smile:\t<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"


async def next_event(subscription, timeout: float = 5.0) -> dict:
    async with asyncio.timeout(timeout):
        return await subscription.get()


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


# --- the hub ---------------------------------------------------------------------------------


def test_each_subscriber_of_a_source_gets_each_event_stamped():
    async def scenario():
        hub = LogHub()
        async with hub.subscribe("model") as first, hub.subscribe("model") as second:
            async with hub.subscribe("server") as server:
                assert hub.subscriber_count("model") == 2 and hub.subscriber_count("server") == 1
                hub.publish("model", model_input_event("req-1", "some/model", CHATML_PROMPT, 21))
                hub.publish("server", {"type": "log", "level": "INFO", "logger": "x", "message": "hello"})
                got = [await next_event(first), await next_event(second), await next_event(server)]
        assert hub.subscriber_count("model") == hub.subscriber_count("server") == 0
        return got

    first, second, server = asyncio.run(scenario())
    assert first == second
    assert ISO_UTC_MILLIS.match(first.pop("timestamp"))
    assert first == {
        "type": "input",
        "request_id": "req-1",
        "model": "some/model",
        "prompt": CHATML_PROMPT,
        "prompt_tokens": 21,
        "source": "model",
    }
    # the model event went only to the model subscribers
    assert server["type"] == "log" and server["source"] == "server" and server["message"] == "hello"


def test_a_slow_subscriber_loses_the_oldest_events_and_is_told_how_many():
    async def scenario():
        hub = LogHub(max_pending=3)
        async with hub.subscribe("model") as slow:
            for number in range(10):
                hub.publish("model", {"type": "n", "number": number})
            caught_up = [await next_event(slow) for _ in range(4)]
            hub.publish("model", {"type": "n", "number": 10})
            caught_up.append(await next_event(slow))
        return caught_up

    dropped, *events = asyncio.run(scenario())
    assert dropped["type"] == "dropped" and dropped["count"] == 7 and dropped["source"] == "model"
    assert ISO_UTC_MILLIS.match(dropped["timestamp"])
    # the newest survive, in order, and the notice is not repeated once caught up
    assert [event["number"] for event in events] == [7, 8, 9, 10]


def test_events_published_from_other_threads_arrive_in_order():
    async def scenario():
        hub = LogHub()
        async with hub.subscribe("server") as subscription:

            def publish_all():
                for number in range(200):
                    hub.publish("server", {"type": "n", "number": number})

            publisher = threading.Thread(target=publish_all)
            publisher.start()
            received = [(await next_event(subscription))["number"] for _ in range(200)]
            publisher.join()
        return received

    assert asyncio.run(scenario()) == list(range(200))


def test_publishing_never_raises_and_builds_nothing_without_subscribers(monkeypatch):
    hub = LogHub()
    stamped = []
    monkeypatch.setattr(LogHub, "stamp", staticmethod(lambda source, event: stamped.append(event) or event))
    hub.publish("model", {"type": "input"})
    assert stamped == []  # nobody listens: not even a timestamp is made
    hub.publish("runtime", {"type": "input"})  # unknown source: ignored

    async def scenario():
        async with hub.subscribe("model") as subscription:
            hub.publish("model", None)  # not an event: ignored, the stream goes on
            hub.publish("model", {"type": "after"})
            return await next_event(subscription)

    monkeypatch.undo()
    assert asyncio.run(scenario())["type"] == "after"


def test_subscribing_to_an_unknown_source_is_refused():
    async def scenario():
        async with LogHub().subscribe("runtime"):
            pass

    with pytest.raises(ValueError, match="unknown log source 'runtime'"):
        asyncio.run(scenario())


def test_output_event_carries_the_choice_and_its_stats():
    event = model_output_event("req-2", "some/model", 1, "Hello!", 3, "eos", 42.5, 0.125)
    assert event == {
        "type": "output",
        "request_id": "req-2",
        "model": "some/model",
        "index": 1,
        "text": "Hello!",
        "completion_tokens": 3,
        "stop_reason": "eos",
        "tokens_per_second": 42.5,
        "time_to_first_token": 0.125,
    }


@pytest.fixture
def uvicorn_logging():
    """uvicorn's own logging config applied, as the server runs, and undone afterwards."""
    names = ("uvicorn", "uvicorn.error", "uvicorn.access")
    loggers = [logging.getLogger(name) for name in names]
    saved = [(logger, logger.handlers[:], logger.propagate, logger.level) for logger in loggers]
    logging.config.dictConfig(uvicorn.config.LOGGING_CONFIG)
    yield
    for logger, handlers, propagate, level in saved:
        logger.handlers[:] = handlers
        logger.propagate, logger.level = propagate, level


def test_server_log_records_are_published_once_each(uvicorn_logging):
    async def scenario():
        hub = LogHub()
        handler = install_server_log_handler(hub)
        try:
            async with hub.subscribe("server") as subscription:
                logging.getLogger("uvicorn.error").info("Started server process [%d]", 42)
                access = '%s - "%s %s HTTP/%s" %d'
                logging.getLogger("uvicorn.access").info(access, "127.0.0.1:5000", "GET", "/v1/models", "1.1", 200)
                try:
                    raise RuntimeError("engine broke")
                except RuntimeError:
                    logging.getLogger("studiolo.engine").exception("step failed")
                events = [await next_event(subscription) for _ in range(3)]
                with pytest.raises(TimeoutError):  # no second copy of any record
                    await next_event(subscription, timeout=0.3)
        finally:
            remove_server_log_handler(handler)
        return handler, events

    handler, events = asyncio.run(scenario())
    assert [logger.name for logger in handler.loggers] == []  # removed everywhere
    for name in ("root", "uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger() if name == "root" else logging.getLogger(name)
        assert not any(isinstance(h, LogHubHandler) for h in logger.handlers)
    started, access, failure = events
    assert {k: started[k] for k in ("type", "level", "logger", "message")} == {
        "type": "log",
        "level": "INFO",
        "logger": "uvicorn.error",
        "message": "Started server process [42]",
    }
    assert access["logger"] == "uvicorn.access"
    assert access["message"] == '127.0.0.1:5000 - "GET /v1/models HTTP/1.1" 200'
    assert failure["level"] == "ERROR" and failure["message"] == "step failed"
    assert "RuntimeError: engine broke" in failure["exception"]


def test_the_handler_goes_where_records_would_not_already_reach_it(uvicorn_logging):
    handler = install_server_log_handler(LogHub())
    try:
        # uvicorn.error propagates to "uvicorn"; "uvicorn" and uvicorn.access stop at themselves
        assert [logger.name for logger in handler.loggers] == ["root", "uvicorn", "uvicorn.access"]
    finally:
        remove_server_log_handler(handler)


# --- the route, on an app built in this process ------------------------------------------------


class InProcessServer:
    """The app served by uvicorn on a thread of this process, so tests can reach its hub."""

    def __init__(self, app, graceful_shutdown_seconds: float | None = None):
        self.app = app
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_config=None,
            lifespan="on",
            timeout_graceful_shutdown=graceful_shutdown_seconds,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> InProcessServer:
        self.thread.start()
        wait_until(lambda: self.server.started)
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


@pytest.fixture
def app_server(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIOLO_HOME", str(tmp_path))
    with InProcessServer(create_app()) as running:
        yield running


def data_events(lines, count: int) -> list[dict]:
    events = []
    for line in lines:
        if line.startswith("data: "):
            events.append(json.loads(line[len("data: ") :]))
            if len(events) == count:
                return events
    raise AssertionError(f"the stream ended after {len(events)} of {count} events")


def test_model_events_stream_as_sse_and_the_subscription_ends_with_the_client(app_server):
    hub = app_server.app.state.log_hub
    with httpx.Client(base_url=app_server.base_url, timeout=10) as http:
        with http.stream("GET", "/studiolo/log/stream") as response:  # source defaults to model
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            wait_until(lambda: hub.subscriber_count("model") == 1)
            hub.publish("server", {"type": "log", "level": "INFO", "logger": "x", "message": "not for this stream"})
            hub.publish("model", model_input_event("req-7", "some/model", CHATML_PROMPT, 21))
            hub.publish("model", model_output_event("req-7", "some/model", 0, "Hi [there]", 4, "eos", 30.0, 0.2))
            prompt, output = data_events(response.iter_lines(), 2)
        # leaving the block closed the connection mid-stream: the server must let go
        wait_until(lambda: hub.subscriber_count("model") == 0)
    assert prompt["type"] == "input" and prompt["prompt"] == CHATML_PROMPT and prompt["source"] == "model"
    assert output["type"] == "output" and output["text"] == "Hi [there]" and output["stop_reason"] == "eos"


def test_a_quiet_stream_sends_keep_alive_comments(app_server, monkeypatch):
    monkeypatch.setattr(log_routes, "KEEPALIVE_SECONDS", 0.2)
    with httpx.Client(base_url=app_server.base_url, timeout=10) as http:
        with http.stream("GET", "/studiolo/log/stream", params={"source": "server"}) as response:
            lines = response.iter_lines()
            assert [next(lines), next(lines), next(lines)] == [": keep-alive", "", ": keep-alive"]
    wait_until(lambda: app_server.app.state.log_hub.subscriber_count("server") == 0)


def test_an_unknown_source_is_a_400_naming_it(app_server):
    response = httpx.get(f"{app_server.base_url}/studiolo/log/stream", params={"source": "runtime"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "source" and error["type"] == "invalid_request_error"
    assert "'runtime'" in error["message"] and "'model'" in error["message"]


# --- the command's human output ---------------------------------------------------------------


def rendered(event: dict) -> list[str]:
    buffer = io.StringIO()
    render_event(human_console(buffer), LogHub.stamp(event.pop("source", "model"), event))
    return buffer.getvalue().splitlines()


def test_prompts_and_outputs_are_printed_exactly():
    prompt = CHATML_PROMPT + "<|im_start|>assistant\x1b[31m\n"
    header, *body = rendered(model_input_event("chatcmpl-1", "some/model", prompt, 21))
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} input chatcmpl-1 some/model \(21 prompt tokens\)", header)
    # markup, emoji codes, tabs and special tokens as they are; an escape sequence spelled out
    assert "\n".join(body) + "\n" == prompt.replace("\x1b", "\\x1b")

    output = model_output_event("chatcmpl-1", "some/model", 0, "[b]Hi[/b]\n:)", 4, "eos", 12.5, 0.25)
    header, *body, stats = rendered(output)
    assert header.endswith(" output chatcmpl-1 some/model choice 0")
    assert body == ["[b]Hi[/b]", ":)"]
    assert stats == "4 tokens, 12.5 tok/s, first token 0.250 s, stop: eos"


def test_server_lines_read_time_level_logger_message():
    event = {"source": "server", "type": "log", "level": "WARNING", "logger": "studiolo.x", "message": "[disk] full"}
    (line,) = rendered(event)
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} WARNING studiolo\.x: \[disk\] full", line)
    (line,) = rendered({"type": "dropped", "count": 3})
    assert line.endswith(" 3 events dropped: this stream was read too slowly")


# --- the command against the real server ---------------------------------------------------------


class LineReader:
    """Collects a process's output lines on a thread, so tests can wait for one with a timeout."""

    def __init__(self, stream):
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))

    def wait_for(self, wanted: Callable[[str], bool], timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            self.lines.append(line)
            if wanted(line):
                return line
        return None


def start_log_stream(home, *args: str) -> subprocess.Popen:
    env = {**os.environ, "STUDIOLO_HOME": str(home)}
    command = [sys.executable, "-m", "studiolo", "log", "stream", *args]
    # As from a terminal: SIGINT at its default, even when this test run inherited it ignored (a
    # background job's), since Python only turns SIGINT into KeyboardInterrupt when it starts default.
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def probe_until_streaming(http, reader: LineReader, timeout: float = 60.0) -> None:
    """Make requests until one shows up in the stream: from then on the command is subscribed."""
    sent: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sent.append(uuid.uuid4().hex)
        assert http.get(f"/v1/models?probe={sent[-1]}").status_code == 200
        if reader.wait_for(lambda line: any(marker in line for marker in sent), timeout=0.5):
            return
    raise AssertionError(f"no request appeared in the log stream; it printed {reader.lines}")


def stop_quietly(process: subprocess.Popen) -> tuple[int, str]:
    process.send_signal(signal.SIGINT)  # what Ctrl+C sends
    try:
        return process.wait(timeout=15), process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()


def test_json_server_log_shows_each_request_once(server, http):
    # no --port: the command finds the running server's port in STUDIOLO_HOME/server.json
    process = start_log_stream(server.home, "--source", "server", "--json")
    try:
        reader = LineReader(process.stdout)
        probe_until_streaming(http, reader)
        marker, fence = uuid.uuid4().hex, uuid.uuid4().hex
        http.get(f"/v1/models?probe={marker}")
        http.get(f"/v1/models?probe={fence}")
        assert reader.wait_for(lambda line: fence in line, timeout=30), reader.lines
        returncode, stderr = stop_quietly(process)
    finally:
        if process.poll() is None:
            process.kill()
    assert (returncode, stderr) == (0, "")
    (event,) = [json.loads(line) for line in reader.lines if marker in line]
    assert ISO_UTC_MILLIS.match(event.pop("timestamp"))
    message = event.pop("message")
    assert event == {"type": "log", "level": "INFO", "logger": "uvicorn.access", "source": "server"}
    assert f'"GET /v1/models?probe={marker} HTTP/1.1" 200' in message


def test_human_server_log_lines(server, http):
    process = start_log_stream(server.home, "-s", "server", "--host", "127.0.0.1", "--port", str(server.port))
    try:
        reader = LineReader(process.stdout)
        probe_until_streaming(http, reader)
        marker = uuid.uuid4().hex
        http.get(f"/v1/models?probe={marker}")
        line = reader.wait_for(lambda line: marker in line, timeout=30)
        returncode, stderr = stop_quietly(process)
    finally:
        if process.poll() is None:
            process.kill()
    assert (returncode, stderr) == (0, "")
    pattern = rf'\d\d:\d\d:\d\d\.\d{{3}} INFO uvicorn\.access: \S+ - "GET /v1/models\?probe={marker} HTTP/1\.1" 200'
    assert line is not None and re.fullmatch(pattern, line), line


def test_without_a_server_it_fails_with_one_clear_line(tmp_path):
    port = free_port()
    env = {**os.environ, "STUDIOLO_HOME": str(tmp_path)}
    command = [sys.executable, "-m", "studiolo", "log", "stream", "--port", str(port)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stdout == ""
    expected = f"No server answers at http://127.0.0.1:{port}; start one with `studiolo server start`."
    assert result.stderr.splitlines() == [expected]
    assert not (tmp_path / "server.json").exists()  # it did not start one


def test_the_command_says_so_when_the_server_stops(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIOLO_HOME", str(tmp_path))
    # the stream never ends by itself: stopping cancels it once the grace period is over
    with InProcessServer(create_app(), graceful_shutdown_seconds=0.5) as running:
        process = start_log_stream(tmp_path, "--port", str(running.port))
        try:
            wait_until(lambda: running.app.state.log_hub.subscriber_count("model") == 1, timeout=60)
        except AssertionError:
            process.kill()
            raise
    try:
        returncode = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert returncode == 1 and process.stdout.read() == ""
    expected = f"The server at http://127.0.0.1:{running.port} closed the log stream."
    assert process.stderr.read().splitlines() == [expected]

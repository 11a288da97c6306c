"""`studiolo chat` as a person runs it, in a pseudo-terminal (pexpect), against a real server of this
module's own with SmolLM2 and Gemma 3 (its pieces in-process: tests/test_cli_chat_parts.py).

Each model's settings file makes its answers greedy and short (24 tokens). The server's model log
(/studiolo/log/stream) says exactly what each request's prompt was and what the model wrote: every
answer the chat prints is compared with the text the model wrote, and every prompt with the one
`/apply-template` renders for the conversation as the chat showed it. (Answers are not compared with
a second request's: a prompt the cache holds computed in another batch shape may round to another
greedy token, docs/API.md "Reproducibility".)
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pexpect
import pytest

from studiolo.cli.chat_view import WAITING, looks_like_markdown
from tests.conftest import (
    GEMMA,
    SMOLLM,
    RunningServer,
    free_port,
    hang_up,
    home_with_models,
    loaded_instances,
    unload_all,
)
from tests.reasoning_model import OPENER, THINKER, link_reasoning_models

MAX_TOKENS = 24
PROMPT = "› "
ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[=>]")


def write_model_settings(home: Path, key: str, max_tokens: int) -> None:
    """Greedy answers (temperature 0, no repeat penalty) of at most ``max_tokens``, for every request."""
    path = home / "model-settings" / f"{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"operation": {"fields": [
        {"key": "llm.prediction.temperature", "value": 0},
        {"key": "llm.prediction.repeatPenalty", "value": {"checked": False, "value": 1.1}},
        {"key": "llm.prediction.maxPredictedTokens", "value": {"checked": True, "value": max_tokens}},
    ]}}))


class ChatServer(RunningServer):
    """The module's server: auth on, a token of every permission for the test's own calls and an
    `inference` token, all a chat needs, for the chat."""

    ready_path = "/health"  # the model routes want a token here
    admin_token = chat_token = ""


def make_token(home: Path, *permissions: str) -> str:
    env = {**os.environ, "STUDIOLO_HOME": str(home)}
    args = ["token", "create", "--name", "-".join(permissions)] + [f"--permission={p}" for p in permissions]
    made = subprocess.run([sys.executable, "-m", "studiolo", *args], env=env, capture_output=True, text=True,
                          timeout=60)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory, chat_models) -> Iterator[ChatServer]:
    home = link_reasoning_models(home_with_models(tmp_path_factory.mktemp("chat-home"), chat_models), (OPENER, THINKER))
    for key in (SMOLLM, GEMMA, OPENER.key, THINKER.key):
        write_model_settings(home, key, MAX_TOKENS)
    running = ChatServer(home, free_port(), ["--require-auth"])
    running.admin_token = make_token(home, "inference", "models", "admin")
    running.chat_token = make_token(home, "inference")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def api(chat_server) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {chat_server.admin_token}"}
    with httpx.Client(base_url=chat_server.base_url, timeout=120, headers=headers) as session:
        yield session


PROBE = "ping (chat test probe)"


class ModelLog:
    """The model log's input and output events (/studiolo/log/stream), read as they come; the
    probes that tell it is subscribed are left out (their outputs may come after their answers)."""

    def __init__(self, base_url: str, token: str):
        self.events: list[dict] = []
        self._probes: set[str] = set()
        self._client = httpx.Client(base_url=base_url, timeout=None, headers={"Authorization": f"Bearer {token}"})
        self._response: httpx.Response | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            with self._client.stream("GET", "/studiolo/log/stream") as response:
                self._response = response
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        self._keep(json.loads(line[6:]))
        except httpx.HTTPError:
            pass  # closed

    def _keep(self, event: dict) -> None:
        if event.get("type") == "input" and PROBE in event.get("prompt", ""):
            self._probes.add(event["request_id"])
        if event.get("request_id") not in self._probes:
            self.events.append(event)

    def subscribed(self) -> bool:
        return bool(self._probes)

    def of_type(self, kind: str) -> list[dict]:
        return [event for event in self.events if event.get("type") == kind]

    def wait_for(self, kind: str, count: int, seconds: float = 30) -> list[dict]:
        deadline = time.monotonic() + seconds
        while len(self.of_type(kind)) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.of_type(kind)

    def close(self) -> None:
        hang_up(self._response)
        self._client.close()


@pytest.fixture
def model_log(chat_server, api) -> Iterator[ModelLog]:
    log = ModelLog(chat_server.base_url, chat_server.admin_token)
    probe = {"model": SMOLLM, "messages": [{"role": "user", "content": PROBE}], "max_tokens": 1}
    for _ in range(100):  # subscribed once a probe's prompt shows up
        assert api.post("/v1/chat/completions", json=probe).status_code == 200
        deadline = time.monotonic() + 0.1
        while not log.subscribed() and time.monotonic() < deadline:
            time.sleep(0.01)
        if log.subscribed():
            break
    yield log
    log.close()


def rendered(api: httpx.Client, model: str, messages: list[dict], **extra) -> str:
    response = api.post("/apply-template", json={"model": model, "messages": messages, **extra})
    assert response.status_code == 200, response.text
    return response.json()["prompt"]


def spawn_chat(server: ChatServer, *args: str) -> pexpect.spawn:
    env = {**os.environ, "STUDIOLO_HOME": str(server.home), "TERM": "xterm", "STUDIOLO_API_TOKEN": server.chat_token}
    command = ["-m", "studiolo", "chat", *args, "--port", str(server.port)]
    # Ctrl+C must reach the chat even when the tests run in a background job, which ignores SIGINT
    child = pexpect.spawn(sys.executable, command, env=env, encoding="utf-8", timeout=60, dimensions=(50, 200),
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    child.expect_exact(PROMPT)
    return child


def plain(text: str) -> str:
    """What the terminal shows, as text: no colours, no waiting line (a slow first token erases it)."""
    return ANSI.sub("", text).replace(WAITING + "\r", "").replace("\r\n", "\n")


def say(child: pexpect.spawn, line: str) -> str:
    """Send a line and return what the chat printed until its next prompt, without the echo of the
    line, colours, or the blank rows around it."""
    child.sendline(line)
    child.expect_exact(PROMPT)
    shown = plain(child.before)
    echo, _, rest = shown.partition("\n")
    assert echo.endswith(line)
    return rest.strip("\n")


def texts(outputs: list[dict]) -> list[str]:
    return [output["text"] for output in outputs]


def leave(child: pexpect.spawn) -> None:
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_a_two_turn_conversation_streams_exact_answers_and_sends_the_history(chat_server, api, model_log):
    child = spawn_chat(chat_server, SMOLLM)
    shown = [say(child, "Hi there"), say(child, "What is your name?")]
    leave(child)
    prompts = [event["prompt"] for event in model_log.wait_for("input", 2)]

    assert shown == texts(model_log.wait_for("output", 2))
    assert not looks_like_markdown(shown[0])  # shown as it streamed, not redrawn
    first = [{"role": "user", "content": "Hi there"}]
    both = first + [{"role": "assistant", "content": shown[0]}, {"role": "user", "content": "What is your name?"}]
    assert prompts == [rendered(api, SMOLLM, first), rendered(api, SMOLLM, both)]
    history = (chat_server.home / "chat-history").read_text().splitlines()
    assert history[-3:] == ["Hi there", "What is your name?", "/exit"]

    again = spawn_chat(chat_server, SMOLLM)  # the next chat recalls them with the arrow keys
    again.send("\x1b[A\x1b[A")
    again.expect_exact("What is your name?")
    again.send("\x1b[B\r")  # back down to /exit, and enter it
    again.expect(pexpect.EOF)
    again.close()
    assert again.exitstatus == 0


def test_system_prompt_and_clear_are_seen_in_the_exact_prompt(chat_server, api, model_log):
    child = spawn_chat(chat_server, SMOLLM, "-s", "You are a pirate.")
    hello_answer = say(child, "Hello")
    assert say(child, "/system-prompt You are a poet.") == "System prompt set."
    say(child, "Who are you?")
    assert say(child, "/clear") == "Cleared the conversation."
    say(child, "Hello")
    assert say(child, "/system-prompt") == "System prompt: You are a poet."
    leave(child)
    prompts = [event["prompt"] for event in model_log.wait_for("input", 3)]

    pirate, poet = ({"role": "system", "content": f"You are a {who}."} for who in ("pirate", "poet"))
    hello = {"role": "user", "content": "Hello"}
    assert prompts == [
        rendered(api, SMOLLM, [pirate, hello]),
        rendered(api, SMOLLM, [poet, hello, {"role": "assistant", "content": hello_answer},
                               {"role": "user", "content": "Who are you?"}]),
        rendered(api, SMOLLM, [poet, hello]),  # the turns forgotten, the system prompt kept
    ]


def test_model_switches_by_key_and_from_the_list(chat_server, api, model_log):
    child = spawn_chat(chat_server, SMOLLM)
    shown = [say(child, "Hi")]
    assert say(child, f"/model {GEMMA}") == f"Model: {GEMMA}"
    shown.append(say(child, "Tell me a fact."))
    child.sendline("/model")
    child.expect_exact("model> ")
    listing = plain(child.before)
    assert f"1. {GEMMA} (loaded) (current)" in listing and f"2. {SMOLLM}" in listing
    assert say(child, "2") == f"Model: {SMOLLM}"
    assert "no-such-model" in say(child, "/model no-such-model")
    shown.append(say(child, "Thanks"))
    leave(child)
    inputs, outputs = model_log.wait_for("input", 3), model_log.wait_for("output", 3)
    history = (chat_server.home / "chat-history").read_text().splitlines()
    assert history[-5:] == ["Tell me a fact.", "/model", "/model no-such-model", "Thanks", "/exit"]  # not the "2"

    assert [event["model"] for event in inputs] == [SMOLLM, GEMMA, SMOLLM]
    assert shown == [text.strip("\n") for text in texts(outputs)]  # Gemma, a base model, ends lines
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": shown[0]},
               {"role": "user", "content": "Tell me a fact."}]
    # the conversation goes on with the other model, which reads all of it in its own template
    assert inputs[1]["prompt"] == rendered(api, GEMMA, history)


@pytest.fixture
def long_answers(chat_server) -> Iterator[None]:
    write_model_settings(chat_server.home, SMOLLM, 2000)
    yield
    write_model_settings(chat_server.home, SMOLLM, MAX_TOKENS)


def running_requests(api: httpx.Client) -> int:
    models = api.get("/api/v1/models").json()["models"]
    return sum(instance["status"]["running_requests"] for model in models for instance in model["loaded_instances"])


def test_ctrl_c_stops_the_answer_frees_the_sequence_and_keeps_the_session(chat_server, api, model_log, long_answers):
    child = spawn_chat(chat_server, SMOLLM)
    # 458 tokens at greedy: the answer still streams when Ctrl+C comes, even on a loaded machine (a
    # 122-token answer once ended first under two CPU burners)
    child.sendline("Print the multiplication table from 1 to 20.")
    child.expect(r"2 x 2 = 4\r\n")  # the answer is streaming
    child.sendcontrol("c")
    child.expect_exact("Stopped (Ctrl+C).")
    child.expect_exact(PROMPT)
    deadline = time.monotonic() + 60
    while running_requests(api) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running_requests(api) == 0  # the sequence is freed
    assert say(child, "/stats").splitlines() == ["Prediction Stats:", "  Stop Reason: userStopped"]

    # the session goes on, with the part that came kept in the conversation
    write_model_settings(chat_server.home, SMOLLM, MAX_TOKENS)
    assert "Stopped" not in say(child, "Thanks")
    inputs = model_log.wait_for("input", 2)
    assert inputs[1]["prompt"].count("<|im_start|>user") == 2
    assert "<|im_start|>assistant\n1 x 1 = 1\n2 x 2 = 4\n" in inputs[1]["prompt"]
    # an answer that ends is logged with its output; the stopped one was cancelled, and has none
    assert [output["request_id"] for output in model_log.wait_for("output", 1)] == [inputs[1]["request_id"]]

    child.send("half a line")
    child.expect_exact("half a line")
    child.sendcontrol("c")  # with text typed: the line is dropped, as in a shell
    child.expect_exact(PROMPT)
    assert "again" not in child.before
    child.sendcontrol("c")  # at an empty prompt: a warning, then leaving
    child.expect_exact("Ctrl+C again")
    child.sendcontrol("c")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_reasoning_is_shown_dimmed_apart_and_can_be_hidden(chat_server, model_log):
    """Plumbing, not thinking: OPENER is SmolLM2 under QwQ's template, which opens <think> in the
    prompt, so what the model writes up to a </think> is reasoning (here all 24 tokens of it)."""
    child = spawn_chat(chat_server, OPENER.key)
    child.sendline("Hi")
    child.expect_exact(PROMPT)
    raw = child.before
    assert say(child, "/reasoning") == "Reasoning is hidden."
    hidden = say(child, "Hi again")
    leave(child)
    first, second = model_log.wait_for("output", 2)

    assert first["reasoning"] and second["reasoning"]
    answer = f"\n\n{first['text']}" if first["text"] else ""
    assert plain(raw).partition("\n")[2].strip("\n") == first["reasoning"] + answer
    assert "\x1b[2m" in raw  # dimmed
    assert hidden == "(reasoning hidden: /reasoning shows it)" + (f"\n\n{second['text']}" if second["text"] else "")


def test_reasoning_off_reaches_the_template(chat_server, api, model_log):
    """Plumbing, not thinking: THINKER is Qwen2.5-Coder under Qwen3's template, which reads enable_thinking."""
    child = spawn_chat(chat_server, THINKER.key)
    assert say(child, "/reasoning off") == "Reasoning: off"
    say(child, "Hi")
    leave(child)
    [prompt] = model_log.wait_for("input", 1)
    expected = rendered(api, THINKER.key, [{"role": "user", "content": "Hi"}],
                        chat_template_kwargs={"enable_thinking": False})
    assert prompt["prompt"] == expected and expected.endswith("<think>\n\n</think>\n\n")


def run_chat(server: ChatServer, *args: str, stdin: str = "", token: str | None = None) -> subprocess.CompletedProcess:
    """The command run with its output captured; the token given by --api-token (default: the chat's)."""
    env = {**os.environ, "STUDIOLO_HOME": str(server.home)}
    env.pop("STUDIOLO_API_TOKEN", None)
    token_args = ["--api-token", server.chat_token if token is None else token] if token != "" else []
    command = [sys.executable, "-m", "studiolo", "chat", *args, "--port", str(server.port), *token_args]
    return subprocess.run(command, input=stdin, capture_output=True, text=True, env=env, timeout=120)


def test_prompt_option_with_stdin_prints_the_answer_alone_and_stats_apart(chat_server, api, model_log):
    unload_all(api)  # the chat's request loads the model, with the chat's --ttl
    done = run_chat(chat_server, SMOLLM, "-p", "Summarise this:", "--stats", "--ttl", "600",
                    stdin="Paris is the capital of France.\n")
    assert done.returncode == 0, done.stderr
    [instance] = loaded_instances(api).values()
    assert instance["status"]["jit_loaded"] and instance["status"]["ttl_seconds"] == 600
    [prompt], [output] = model_log.wait_for("input", 1), model_log.wait_for("output", 1)
    message = {"role": "user", "content": "Summarise this:\n\nParis is the capital of France."}
    assert prompt["prompt"] == rendered(api, SMOLLM, [message])
    assert done.stdout == output["text"] + "\n"
    lines = done.stderr.strip().splitlines()
    stop_reason = {"eos": "eosFound", "max_tokens": "maxPredictedTokensReached"}[output["stop_reason"]]
    assert lines[:2] == ["Prediction Stats:", f"  Stop Reason: {stop_reason}"]
    assert re.fullmatch(r"  Tokens/Second: \d+\.\d\d", lines[2])
    assert re.fullmatch(r"  Time to First Token: \d+\.\d{3}s", lines[3])
    # usage counts the end-of-turn token that ended the answer (docs/API.md); the model log does not
    predicted = output["completion_tokens"] + (output["stop_reason"] == "eos")
    assert lines[4:] == [f"  Prompt Tokens: {prompt['prompt_tokens']}", f"  Predicted Tokens: {predicted}",
                         f"  Total Tokens: {prompt['prompt_tokens'] + predicted}"]


def test_piped_text_alone_is_the_prompt_and_a_loaded_model_is_used(chat_server, api, model_log):
    unload_all(api)
    assert api.post("/api/v1/models/load", json={"model": GEMMA}).status_code == 200  # no model named: this one
    done = run_chat(chat_server, stdin="Hi there\n")
    assert done.returncode == 0, done.stderr
    [prompt], [output] = model_log.wait_for("input", 1), model_log.wait_for("output", 1)
    assert prompt["model"] == GEMMA
    assert prompt["prompt"] == rendered(api, GEMMA, [{"role": "user", "content": "Hi there"}])
    assert done.stdout == output["text"] + ("" if output["text"].endswith("\n") else "\n")


def test_one_shot_refusals_name_the_problem(chat_server):
    unknown = run_chat(chat_server, "no-such-model", "-p", "hi")
    assert unknown.returncode == 1 and "no-such-model" in unknown.stderr and not unknown.stdout
    nothing = run_chat(chat_server, SMOLLM, stdin="  \n")
    assert nothing.returncode == 2 and "Nothing to send" in nothing.stderr


def test_without_a_token_the_refusal_is_one_line(chat_server):
    refused = run_chat(chat_server, SMOLLM, "-p", "hi", token="")
    assert refused.returncode == 1 and not refused.stdout
    assert refused.stderr.startswith("error: ") and len(refused.stderr.strip().splitlines()) == 1
    assert "token" in refused.stderr.lower()

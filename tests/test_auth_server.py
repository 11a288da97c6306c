"""A real server started with --require-auth, called by real clients (openai, httpx) and the
``studiolo`` command: every route of the route table refuses a request without a token in its
family's shape, a token lacking a permission gets 403 naming it, revokes (from another process) and
expiry count on the next request and end an open log stream, stored responses are their token's own,
and no token's text reaches the server's log file or its log stream."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time

import anthropic
import httpx
import openai
import pytest

from studiolo.api.app import create_app
from studiolo.api.auth import route_requirements
from studiolo.api.page.routes import FILES as PAGE_FILES  # the chat page: public, to ask for a token
from studiolo.domain.auth import PUBLIC
from tests.conftest import SMOLLM, RunningServer, free_port, hang_up, home_with_models

BAD_TOKEN = "sk-lm-deadbeef:" + "Q" * 43  # well formed, never made
GARBAGE_TOKEN = "not-a-token-3f1e9c"
used_tokens: set[str] = {BAD_TOKEN, GARBAGE_TOKEN}  # every token text sent; none may reach a log


class AuthServer(RunningServer):
    ready_path = "/health"  # /v1/models needs a token here: /health alone is open


def studiolo(home, *args: str, token: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "STUDIOLO_HOME": str(home)}
    env.pop("STUDIOLO_API_TOKEN", None)
    if token:
        env["STUDIOLO_API_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "studiolo", *args], env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def home(tmp_path_factory, chat_models):
    return home_with_models(tmp_path_factory.mktemp("auth-home"), chat_models)


@pytest.fixture(scope="module")
def server(home):
    running = AuthServer(home, free_port(), ["--require-auth"])  # no token yet: it says how to make one
    yield running
    running.stop()


def cli_token(home, name: str, *permissions: str, expires_in: str | None = None) -> str:
    args = ["token", "create", "--name", name] + [f"--permission={p}" for p in permissions]
    made = studiolo(home, *args, *(["--expires-in", expires_in] if expires_in else []))
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert re.fullmatch(r"sk-lm-[0-9a-f]{8}:[A-Za-z0-9]{20}", token)  # the shape LM Studio's SDKs accept
    used_tokens.add(token)
    return token


@pytest.fixture(scope="module")
def tokens(home, server) -> dict[str, str]:
    """Made by the command line while the server runs: it reads them on the next request."""
    return {kind: cli_token(home, kind, kind) for kind in ("inference", "models", "admin")}


def call(server, method: str, path: str, token: str | None = None, *, header: str = "bearer", **kwargs):
    headers = {}
    if token is not None:
        headers = {"bearer": {"Authorization": f"Bearer {token}"}, "x-api-key": {"x-api-key": token},
                   "bare": {"Authorization": token}}[header]
    return httpx.request(method, f"{server.base_url}{path}", headers=headers, timeout=60, **kwargs)


def test_with_no_token_yet_the_server_says_how_to_make_one(server):
    assert "studiolo token create" in server.log()


def _route_calls():
    """(method, path with placeholders, requirement) for every HTTP route the app serves. The WebSocket
    routes of LM Studio's SDK protocol authenticate in their first frame: tests/test_sdk_auth.py."""
    for route, need in route_requirements(create_app().routes):
        if route.methods is None:  # a WebSocket route
            continue
        path = re.sub(r"\{[^}]+\}", "resp_placeholder", route.path)
        for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
            yield method, path, need


ROUTE_CALLS = list(_route_calls())


def _refused_in_family_shape(response: httpx.Response, path: str) -> None:
    assert response.status_code == 401, (path, response.text)
    assert response.headers["www-authenticate"] == "Bearer"
    error = response.json()["error"]
    if path.startswith("/v1/messages"):  # Anthropic's shape: its type tells the status, no code
        assert response.json()["type"] == "error" and error["type"] == "authentication_error"
        return
    assert error["code"] == "invalid_api_key"
    if path.startswith("/api/v1/"):  # LM Studio v1's shape
        assert error["type"] == "invalid_request" and set(error) == {"type", "message", "code", "param"}
    else:  # OpenAI's (/v1, /api/v0, the rest), with BladeLLM's error_info beside it
        assert error["type"] == "invalid_request_error" and response.json()["error_info"]["code"] == 401


@pytest.mark.parametrize(("method", "path", "need"), ROUTE_CALLS, ids=[f"{m} {p}" for m, p, _ in ROUTE_CALLS])
def test_every_route_needs_a_token(server, tokens, method, path, need):
    body = {"json": {}} if method in ("POST", "PUT", "PATCH") else {}
    for token in (None, BAD_TOKEN, GARBAGE_TOKEN):
        response = call(server, method, path, token, **body)
        if need == PUBLIC:
            assert response.status_code == 200, response.text
            continue
        _refused_in_family_shape(response, path)
        assert token is None or token not in response.text


def test_every_route_of_the_table_was_walked_and_only_health_and_the_sdk_greeting_are_open():
    assert len(ROUTE_CALLS) >= 25
    assert [path for _, path, need in ROUTE_CALLS if need == PUBLIC and path not in PAGE_FILES] == [
        "/health", "/lmstudio-greeting"]


@pytest.mark.parametrize("path", ["/no/such/route", "/api/v1/nothing", "/v1/nothing"])
def test_an_unknown_path_needs_a_token_too(server, tokens, path):
    _refused_in_family_shape(call(server, "GET", path), path)
    assert call(server, "GET", path, tokens["inference"]).status_code == 404


FORBIDDEN = [
    ("inference", "POST", "/api/v1/models/load", {"model": SMOLLM}, "models"),
    ("inference", "POST", "/api/v1/models/download", {"model": "x/y"}, "models"),
    ("inference", "GET", "/studiolo/log/stream", None, "admin"),
    ("inference", "GET", "/api/v1/tokens", None, "admin"),
    ("models", "POST", "/v1/chat/completions", {"model": SMOLLM, "messages": []}, "inference"),
    ("models", "GET", "/v1/models", None, "inference"),
    ("models", "POST", "/api/v1/chat", {"model": SMOLLM, "input": "hi"}, "inference"),
    ("admin", "POST", "/api/v1/models/unload", {"instance_id": "x"}, "models"),
    ("admin", "POST", "/v1/embeddings", {"model": SMOLLM, "input": "x"}, "inference"),
    ("models", "POST", "/v1/rerank", {"model": SMOLLM, "query": "q", "documents": ["d"]}, "inference"),
]


@pytest.mark.parametrize(("kind", "method", "path", "body", "missing"), FORBIDDEN,
                         ids=[f"{k} {m} {p}" for k, m, p, _, _ in FORBIDDEN])
def test_a_token_without_the_permission_gets_403_naming_it(server, tokens, kind, method, path, body, missing):
    response = call(server, method, path, tokens[kind], json=body)
    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert error["code"] == "insufficient_permissions" and f"'{missing}' permission" in error["message"]
    assert path in error["message"]
    assert error["type"] == ("invalid_request" if path.startswith("/api/v1/") else "invalid_request_error")


def test_clients_pass_with_a_token_in_each_header_form(server, tokens):
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=tokens["inference"], max_retries=0)
    reply = client.chat.completions.create(model=SMOLLM, messages=[{"role": "user", "content": "Hi"}],
                                           max_tokens=2, temperature=0)
    assert reply.choices[0].message.content
    for header in ("x-api-key", "bare", "bearer"):
        assert call(server, "GET", "/v1/models", tokens["inference"], header=header).status_code == 200
    assert call(server, "POST", "/api/v1/models/unload", tokens["models"], json={"instance_id": "none"}
                ).status_code == 404  # past auth: the instance is what is missing
    wrong = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=BAD_TOKEN, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()


def test_token_routes_make_list_and_revoke(server, tokens):
    admin = tokens["admin"]
    made = call(server, "POST", "/api/v1/tokens", admin, json={"name": "ci", "permissions": ["inference"]})
    assert made.status_code == 200, made.text
    token = made.json()["token"]
    used_tokens.add(token)
    assert token.startswith(f"sk-lm-{made.json()['id']}:") and made.json()["state"] == "active"
    listed = call(server, "GET", "/api/v1/tokens", admin)
    assert token.split(":")[1] not in listed.text and all("token" not in entry for entry in listed.json()["tokens"])
    assert {"inference", "models", "admin", "ci"} <= {entry["name"] for entry in listed.json()["tokens"]}
    assert call(server, "GET", "/v1/models", token).status_code == 200
    revoked = call(server, "DELETE", f"/api/v1/tokens/{made.json()['id']}", admin)
    assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
    refused = call(server, "GET", "/v1/models", token)
    assert refused.status_code == 401 and "revoked" in refused.json()["error"]["message"]
    missing = call(server, "DELETE", "/api/v1/tokens/00000000", admin)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "token_not_found"
    bad = call(server, "POST", "/api/v1/tokens", admin, json={"name": "x", "permissions": ["root"]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "permissions"


def test_an_expired_token_is_refused(server, tokens):
    made = call(server, "POST", "/api/v1/tokens", tokens["admin"],
                json={"name": "brief", "permissions": ["inference"], "expires_in": "2s"}).json()
    used_tokens.add(made["token"])
    assert call(server, "GET", "/v1/models", made["token"]).status_code == 200
    time.sleep(max(0.0, made["expires_at"] + 1 - time.time()))
    refused = call(server, "GET", "/v1/models", made["token"])
    assert refused.status_code == 401 and "expired" in refused.json()["error"]["message"]


class StreamReader:
    """Reads the log stream in a thread: its events, whether it opened, and when it ended."""

    def __init__(self, server, token: str, source: str = "server"):
        self.events: list[str] = []
        self.opened = threading.Event()
        self.ended = threading.Event()
        self.status: int | None = None
        self._client = httpx.Client(base_url=server.base_url, timeout=60)
        self._response: httpx.Response | None = None
        threading.Thread(target=self._read, args=(token, source), daemon=True).start()
        assert self.opened.wait(10)

    def _read(self, token: str, source: str) -> None:
        try:
            with self._client.stream("GET", "/studiolo/log/stream", params={"source": source},
                                     headers={"Authorization": f"Bearer {token}"}) as response:
                self._response = response
                self.status = response.status_code
                self.opened.set()
                for line in response.iter_lines():
                    self.events.append(line)
        except httpx.HTTPError as exc:
            self.events.append(f"error: {exc}")
        finally:
            self.opened.set()
            self.ended.set()

    def close(self) -> None:
        """Hang up: a stream left open held the server's stop for its 5 s grace period."""
        hang_up(self._response)
        self._client.close()


def test_a_revoke_from_the_command_line_cuts_the_next_request_and_an_open_log_stream(server, home, tokens):
    token = cli_token(home, "watcher", "admin")
    reader = StreamReader(server, token)
    assert reader.status == 200
    for _ in range(3):  # the stream carries the server's log lines: each request is one
        call(server, "GET", "/health")
    deadline = time.monotonic() + 10
    while not reader.events and time.monotonic() < deadline:
        time.sleep(0.05)
    assert reader.events and not reader.ended.is_set()
    revoked = studiolo(home, "token", "revoke", token.split(":")[0].removeprefix("sk-lm-"))
    assert revoked.returncode == 0, revoked.stderr
    call(server, "GET", "/health")  # the stream's next event: its token is checked again there
    assert reader.ended.wait(10), "the log stream of a revoked token is still open"
    reader.close()
    refused = call(server, "GET", "/studiolo/memory", token)
    assert refused.status_code == 401 and "revoked" in refused.json()["error"]["message"]


def test_a_revoke_ends_a_streamed_completion_at_its_next_chunk(server, tokens):
    made = call(server, "POST", "/api/v1/tokens", tokens["admin"], json={"name": "streamer"}).json()
    used_tokens.add(made["token"])
    body = {"model": SMOLLM, "messages": [{"role": "user", "content": "Count to 1000."}], "max_tokens": 1500,
            "temperature": 0, "ignore_eos": True, "stream": True}
    lines = []
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {made['token']}"}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            lines.append(line)
            if len(lines) == 10:  # streaming: revoked through the API now
                assert call(server, "DELETE", f"/api/v1/tokens/{made['id']}", tokens["admin"]).status_code == 200
    chunks = [line for line in lines if line.startswith("data: {")]
    assert "data: [DONE]" not in lines and len(chunks) < 200  # ended, not run to its 1,500 tokens
    assert not any('"finish_reason":"length"' in line.replace(" ", "") for line in chunks)


def test_stored_responses_are_their_token_s_own(server, tokens):
    admin = tokens["admin"]
    mine, theirs = (call(server, "POST", "/api/v1/tokens", admin, json={"name": n}).json()["token"]
                    for n in ("mine", "theirs"))
    used_tokens.update({mine, theirs})
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=mine, max_retries=0)
    stored = client.responses.create(model=SMOLLM, input="Hi", max_output_tokens=2, temperature=0)
    chat = call(server, "POST", "/api/v1/chat", mine, json={"model": SMOLLM, "input": "Hi", "max_output_tokens": 2})
    assert chat.status_code == 200, chat.text
    for path in (f"/v1/responses/{stored.id}", f"/v1/responses/{stored.id}/input_items"):
        assert call(server, "GET", path, mine).status_code == 200
        assert call(server, "GET", path, theirs).json()["error"]["code"] == "response_not_found"
    assert call(server, "DELETE", f"/v1/responses/{stored.id}", theirs).status_code == 404
    continued = call(server, "POST", "/v1/responses", theirs,
                     json={"model": SMOLLM, "input": "More", "previous_response_id": stored.id, "max_output_tokens": 2})
    # as for an id never stored: OpenAI's Responses API calls that a 400, LM Studio's chat a 404
    assert continued.status_code == 400 and continued.json()["error"]["code"] == "previous_response_not_found"
    v1 = call(server, "POST", "/api/v1/chat", theirs, json={"model": SMOLLM, "input": "More", "max_output_tokens": 2,
                                                            "previous_response_id": chat.json()["response_id"]})
    assert v1.status_code == 404 and v1.json()["error"]["code"] == "response_not_found"
    again = client.responses.create(model=SMOLLM, input="More", previous_response_id=stored.id, max_output_tokens=2)
    assert again.previous_response_id == stored.id
    events = list(client.responses.create(model=SMOLLM, input="Hi", max_output_tokens=2, stream=True))
    streamed = events[0].response.id  # stored from inside the stream: still the token's
    assert call(server, "GET", f"/v1/responses/{streamed}", mine).status_code == 200
    assert call(server, "GET", f"/v1/responses/{streamed}", theirs).status_code == 404
    assert call(server, "DELETE", f"/v1/responses/{stored.id}", mine).status_code == 200


def test_the_command_line_sends_the_token(server, home, tokens):
    port = str(server.port)
    listed = studiolo(home, "ls", "--port", port, "--json", token=tokens["inference"])
    assert listed.returncode == 0, listed.stderr
    assert SMOLLM in {model["key"] for model in json.loads(listed.stdout)}
    by_option = studiolo(home, "ls", "--port", port, "--json", "--token", tokens["inference"])
    assert by_option.returncode == 0, by_option.stderr
    refused = studiolo(home, "ls", "--port", port)
    assert refused.returncode != 0 and "API token is required" in refused.stderr
    shown = studiolo(home, "token", "ls")
    assert shown.returncode == 0 and "admin" in shown.stdout
    assert not any(token.split(":")[1] in shown.stdout for token in tokens.values())


def test_binding_beyond_loopback_without_auth_is_refused(tmp_path):
    refused = studiolo(tmp_path, "server", "start", "--bind", "0.0.0.0", "--port", str(free_port()), "--foreground")
    assert refused.returncode == 2
    assert "--require-auth" in refused.stderr and "--insecure-no-auth" in refused.stderr


def test_no_token_reaches_the_log_file_or_the_log_stream(server, tokens):
    """Last: every token this module sent, valid or not, is looked for in what the server logged."""
    reader = StreamReader(server, tokens["admin"])
    model_reader = StreamReader(server, tokens["admin"], source="model")
    try:
        for token in (*tokens.values(), BAD_TOKEN, GARBAGE_TOKEN):
            for header in ("bearer", "x-api-key", "bare"):
                call(server, "GET", "/v1/models", token, header=header)
                call(server, "POST", "/v1/chat/completions", token, header=header,
                     json={"model": SMOLLM, "messages": [{"role": "user", "content": "x"}], "max_tokens": 1})
        deadline = time.monotonic() + 10
        while len(reader.events) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        reader.close()
        model_reader.close()
    captured = "\n".join(reader.events + model_reader.events)
    assert "GET /v1/models" in captured  # the capture holds the requests
    logged = server.log()
    assert "/v1/chat/completions" in logged
    assert "Traceback" not in logged  # a stream cut for its token ended cleanly
    secrets = {token.split(":")[-1] for token in used_tokens}
    leaked = [t for t in used_tokens | secrets if t in logged or t in captured]
    assert not leaked


def test_a_background_server_keeps_require_auth(tmp_path):
    """`server start` re-runs itself in the background: --require-auth must reach that process."""
    port = free_port()
    started = studiolo(tmp_path, "server", "start", "--port", str(port), "--require-auth")
    try:
        assert started.returncode == 0, started.stderr
        assert "studiolo token create" in started.stderr  # no token yet: how to make one
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/v1/models").status_code == 401
        token = cli_token(tmp_path, "late", "inference")  # made while it runs: counted at once
        assert httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    finally:
        stopped = studiolo(tmp_path, "server", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert token.split(":")[1] not in (tmp_path / "logs" / "server.log").read_text()


def test_the_anthropic_sdk_sends_its_token_as_x_api_key(server, tokens):
    hello = {"model": SMOLLM, "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]}
    good = anthropic.Anthropic(base_url=server.base_url, api_key=tokens["inference"], max_retries=0)
    assert good.messages.create(**hello).usage.output_tokens >= 1
    assert good.messages.count_tokens(model=SMOLLM, messages=hello["messages"]).input_tokens > 0
    with pytest.raises(anthropic.AuthenticationError) as caught:
        anthropic.Anthropic(base_url=server.base_url, api_key=BAD_TOKEN, max_retries=0).messages.create(**hello)
    assert caught.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.PermissionDeniedError) as caught:  # Claude Code's ANTHROPIC_AUTH_TOKEN: a bearer
        anthropic.Anthropic(base_url=server.base_url, auth_token=tokens["models"], max_retries=0).messages.create(
            **hello)
    assert caught.value.body["error"]["type"] == "permission_error"

"""Browsers, origins and hosts against real servers: the Host check (DNS rebinding) on a loopback bind,
CORS off by default, ``--cors`` (any origin) with Chrome's Private Network Access preflight, and an
allowed-origins list (``--cors-origins``). WebSocket handshakes are checked on the middlewares
themselves (no route of the server takes a WebSocket yet)."""

from __future__ import annotations

import json

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

from studiolo.api.browser import BrowserOrigins, OriginPolicy
from studiolo.api.hosts import HostCheck, HostPolicy, host_name
from tests.conftest import SMOLLM, RunningServer, free_port, home_with_models

PREFLIGHT = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization, x-api-key, content-type, x-stainless-os"}
PNA = {**PREFLIGHT, "Access-Control-Request-Private-Network": "true"}
CHAT = {"model": SMOLLM, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "temperature": 0}


def _start(tmp_path_factory, chat_models, args: list[str]) -> RunningServer:
    home = home_with_models(tmp_path_factory.mktemp("browser-home"), chat_models)
    return RunningServer(home, free_port(), args)


@pytest.fixture(scope="module")
def any_origin(tmp_path_factory, chat_models):
    running = _start(tmp_path_factory, chat_models, ["--cors", "--allow-hosts", "studio.lan,*.box.example"])
    yield running
    running.stop()


@pytest.fixture(scope="module")
def listed(tmp_path_factory, chat_models):
    running = _start(tmp_path_factory, chat_models, ["--cors-origins", "https://a.example,https://b.example:8443"])
    yield running
    running.stop()


# --- the Host check -------------------------------------------------------------------------------


def test_a_loopback_server_refuses_a_rebound_host_in_each_familys_shape(server):
    openai_shape = httpx.get(f"{server.base_url}/v1/models", headers={"Host": f"evil.example:{server.port}"})
    assert openai_shape.status_code == 403
    error = openai_shape.json()["error"]
    assert error["code"] == "host_not_allowed" and error["param"] == "host" and error["type"] == "permission_error"
    assert f"evil.example:{server.port}" in error["message"]
    v1 = httpx.get(f"{server.base_url}/api/v1/models", headers={"Host": "evil.example"})
    assert v1.status_code == 403 and v1.json()["error"]["type"] == "forbidden"
    assert "error_info" not in v1.json()  # LM Studio's v1 shape, not OpenAI's
    posted = httpx.post(f"{server.base_url}/v1/chat/completions", json=CHAT, headers={"Host": "192.168.1.20"})
    assert posted.status_code == 403  # refused before any route ran: no model was asked for


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:{port}", "127.0.0.1:{port}", "127.8.9.10",
                                  "[::1]:{port}", "app.localhost:{port}"])
def test_a_loopback_server_answers_loopback_names_with_any_port(server, host):
    response = httpx.get(f"{server.base_url}/v1/models", headers={"Host": host.format(port=server.port)})
    assert response.status_code == 200, response.text


def test_named_hosts_are_answered_and_others_still_refused(any_origin):
    url = f"{any_origin.base_url}/v1/models"
    assert httpx.get(url, headers={"Host": f"studio.lan:{any_origin.port}"}).status_code == 200
    assert httpx.get(url, headers={"Host": "gpu.box.example"}).status_code == 200  # *.box.example
    assert httpx.get(url, headers={"Host": "box.example.evil"}).status_code == 403
    assert httpx.get(url, headers={"Host": "studio.lan.evil"}).status_code == 403


def test_host_names_and_the_policy_of_a_network_bind():
    assert host_name("[::1]:1234") == "::1" and host_name("Example.COM:80") == "example.com"
    assert host_name("::1") == "::1"
    assert not HostPolicy("0.0.0.0").enabled and HostPolicy("0.0.0.0").admits("anything.example")
    listed = HostPolicy("192.168.1.5", ["studio.lan"])
    assert listed.admits("studio.lan:1234") and listed.admits("192.168.1.5:1234") and listed.admits("localhost")
    assert not listed.admits("evil.example")
    assert HostPolicy("::1").enabled and HostPolicy("localhost").enabled


def _socket_app(middleware) -> Starlette:
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hello")
        await websocket.close()

    app = Starlette(routes=[WebSocketRoute("/ws", echo)])
    return middleware(app)


def test_websocket_handshakes_are_checked_for_host_and_origin():
    hosts = _socket_app(lambda app: HostCheck(app, HostPolicy("127.0.0.1")))
    with TestClient(hosts).websocket_connect("ws://localhost:1234/ws") as socket:
        assert socket.receive_text() == "hello"
    with pytest.raises(WebSocketDisconnect) as refused:
        TestClient(hosts).websocket_connect("ws://evil.example:1234/ws").__enter__()
    assert refused.value.code == 1008
    origins = _socket_app(lambda app: BrowserOrigins(app, OriginPolicy.of(False, ())))  # CORS off
    client, url = TestClient(origins), "ws://localhost:1234/ws"
    with client.websocket_connect(url) as socket:  # no Origin: not a page (an SDK, a script)
        assert socket.receive_text() == "hello"
    with client.websocket_connect(url, headers={"Origin": "http://localhost:1234"}) as socket:  # its own page
        assert socket.receive_text() == "hello"
    with pytest.raises(WebSocketDisconnect):  # a page of another origin: browsers do not apply CORS here
        client.websocket_connect(url, headers={"Origin": "https://evil.example"}).__enter__()
    listed = _socket_app(lambda app: BrowserOrigins(app, OriginPolicy.of(False, ("https://a.example",))))
    with TestClient(listed).websocket_connect("/ws", headers={"Origin": "https://a.example"}) as socket:
        assert socket.receive_text() == "hello"


# --- CORS -----------------------------------------------------------------------------------------


def test_cors_is_off_by_default(server):
    preflight = httpx.options(f"{server.base_url}/v1/chat/completions", headers=PNA)
    assert preflight.status_code == 405 and "access-control-allow-origin" not in preflight.headers
    assert "access-control-allow-private-network" not in preflight.headers
    answer = httpx.get(f"{server.base_url}/v1/models", headers={"Origin": "https://app.example"})
    assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers


def test_any_origin_preflight_allows_auth_headers_and_private_network_access(any_origin):
    preflight = httpx.options(f"{any_origin.base_url}/v1/chat/completions", headers=PNA)
    assert preflight.status_code == 204, preflight.text
    headers = preflight.headers
    assert headers["access-control-allow-origin"] == "*"
    assert "POST" in headers["access-control-allow-methods"] and "DELETE" in headers["access-control-allow-methods"]
    allowed = {name.strip() for name in headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "x-api-key", "content-type", "x-stainless-os"} <= allowed
    assert headers["access-control-max-age"] == "7200"
    assert headers["access-control-allow-private-network"] == "true"  # starlette's answered 400 here
    plain = httpx.options(f"{any_origin.base_url}/v1/models", headers=PREFLIGHT)
    assert plain.status_code == 204 and "access-control-allow-private-network" not in plain.headers


def test_any_origin_answers_carry_the_cors_headers(any_origin):
    answer = httpx.post(f"{any_origin.base_url}/v1/chat/completions", json=CHAT,
                        headers={"Origin": "https://app.example"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["access-control-allow-origin"] == "*"
    assert "Retry-After" in answer.headers["access-control-expose-headers"]
    error = httpx.post(f"{any_origin.base_url}/v1/chat/completions", json={**CHAT, "n": 0},
                       headers={"Origin": "https://app.example"})
    assert error.status_code == 400 and error.headers["access-control-allow-origin"] == "*"  # a page reads why


def test_an_allowed_origins_list_answers_those_origins_only(listed):
    url = f"{listed.base_url}/v1/chat/completions"
    preflight = httpx.options(url, headers={**PNA, "Origin": "https://b.example:8443"})
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "https://b.example:8443"
    assert "Origin" in preflight.headers["vary"]
    assert preflight.headers["access-control-allow-private-network"] == "true"
    answer = httpx.get(f"{listed.base_url}/v1/models", headers={"Origin": "https://a.example"})
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "https://a.example"
    assert "Origin" in answer.headers["vary"]


def test_an_allowed_origins_list_refuses_other_origins_even_without_a_preflight(listed):
    url = f"{listed.base_url}/v1/chat/completions"
    preflight = httpx.options(url, headers={**PNA, "Origin": "https://c.example"})
    assert preflight.status_code == 403 and "access-control-allow-origin" not in preflight.headers
    assert preflight.json()["error"]["code"] == "origin_not_allowed"
    simple = httpx.post(url, content=b'{"model": "x"}', headers={"Origin": "https://a.example.evil",
                                                                  "Content-Type": "text/plain"})
    assert simple.status_code == 403 and simple.json()["error"]["param"] == "origin"
    v1 = httpx.get(f"{listed.base_url}/api/v1/models", headers={"Origin": "http://a.example"})  # not https
    assert v1.status_code == 403 and v1.json()["error"]["type"] == "forbidden"
    own = httpx.get(f"{listed.base_url}/v1/models", headers={"Origin": listed.base_url})  # its own page
    assert own.status_code == 200
    assert httpx.get(f"{listed.base_url}/v1/models").status_code == 200  # no Origin: not a browser page


def test_a_background_server_keeps_its_origins_and_hosts_from_the_options_and_the_settings_file(tmp_path):
    from tests.test_cli_server import studiolo

    port = free_port()
    (tmp_path / "settings.json").write_text(json.dumps({"server": {"allowed_hosts": ["studio.lan"]}}))
    started = studiolo(tmp_path, "server", "start", "--port", str(port), "--cors-origins", "https://a.example")
    try:
        assert started.returncode == 0, started.stderr
        assert "CORS is on: any web page" not in started.stderr  # only the listed origins
        url = f"http://127.0.0.1:{port}/v1/models"
        preflight = httpx.options(url, headers={**PREFLIGHT, "Origin": "https://a.example"})
        assert preflight.headers["access-control-allow-origin"] == "https://a.example"
        assert httpx.get(url, headers={"Host": "studio.lan"}).status_code == 200
        assert httpx.get(url, headers={"Host": "other.lan"}).status_code == 403
    finally:
        studiolo(tmp_path, "server", "stop")


def test_with_auth_on_a_preflight_needs_no_token_and_a_401_is_readable_by_the_page(tmp_path_factory, chat_models):
    """The order of the middlewares: Host check, then origins, then auth (a browser sends no credentials
    with a preflight, so auth must not see it; a page must be able to read why it was refused)."""
    from tests.test_auth_server import AuthServer  # waits for /health: the only route open without a token

    home = home_with_models(tmp_path_factory.mktemp("browser-auth-home"), chat_models)
    guarded = AuthServer(home, free_port(), ["--cors", "--require-auth"])
    try:
        preflight = httpx.options(f"{guarded.base_url}/v1/chat/completions", headers=PNA)
        assert preflight.status_code == 204 and preflight.headers["access-control-allow-private-network"] == "true"
        refused = httpx.post(f"{guarded.base_url}/v1/chat/completions", json=CHAT,
                             headers={"Origin": "https://app.example"})
        assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == "*"
        rebound = httpx.get(f"{guarded.base_url}/v1/models", headers={"Host": "evil.example"})
        assert rebound.status_code == 403 and rebound.json()["error"]["code"] == "host_not_allowed"  # before auth
    finally:
        guarded.stop()

"""LM Studio's SDK protocol, frame by frame (api/lmstudio_sdk/): the greeting, the handshake, and what
a client that sends nonsense gets back. No model is needed: the app runs in process."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from studiolo.api.app import create_app
from studiolo.config import RequestLimits, ServerSettings

GUEST = {"authVersion": 1, "clientIdentifier": "guest:test", "clientPasskey": "secret"}


@pytest.fixture(scope="module")
def app_client(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STUDIOLO_HOME", str(home))
        with TestClient(create_app(ServerSettings()), base_url="http://localhost") as client:
            yield client


def connect(client: TestClient, namespace: str = "system"):
    socket = client.websocket_connect(f"ws://localhost/{namespace}")
    return socket


def test_greeting_says_lmstudio(app_client):
    answer = app_client.get("/lmstudio-greeting")
    assert answer.status_code == 200
    assert answer.json() == {"lmstudio": True}


def test_handshake_then_version(app_client):
    with connect(app_client) as socket:
        socket.send_json(GUEST)
        assert socket.receive_json() == {"success": True}
        socket.send_json({"type": "rpcCall", "endpoint": "version", "callId": 7})
        answer = socket.receive_json()
        assert answer["type"] == "rpcResult" and answer["callId"] == 7
        assert set(answer["result"]) == {"version", "build"}


def test_a_first_frame_that_is_not_the_handshake_is_refused(app_client):
    with connect(app_client) as socket:
        socket.send_json({"type": "rpcCall", "endpoint": "version", "callId": 1})
        answer = socket.receive_json()
        assert answer["success"] is False
        assert "authVersion" in answer["error"]


def test_unknown_endpoint_is_an_rpc_error_and_the_socket_goes_on(app_client):
    with connect(app_client) as socket:
        socket.send_json(GUEST)
        socket.receive_json()
        socket.send_json({"type": "rpcCall", "endpoint": "noSuchThing", "callId": 1})
        error = socket.receive_json()
        assert error["type"] == "rpcError" and error["callId"] == 1
        assert "system.noSuchThing" in error["error"]["title"]
        socket.send_json({"type": "channelCreate", "endpoint": "noSuchChannel", "channelId": 3})
        error = socket.receive_json()
        assert error == {"type": "channelError", "channelId": 3, "error": error["error"]}
        assert "system.noSuchChannel" in error["error"]["title"]
        socket.send_json({"type": "rpcCall", "endpoint": "version", "callId": 2})
        assert socket.receive_json()["type"] == "rpcResult"


@pytest.mark.parametrize("frame, says", [
    ([1, 2], "JSON object"),
    ({"kind": "rpcCall"}, "needs a 'type'"),
    ({"type": "rpcCall", "callId": 1}, "'endpoint'"),
    ({"type": "rpcCall", "endpoint": "version", "callId": "1"}, "'callId'"),
    ({"type": "channelSend", "channelId": 5, "message": "text"}, "'message'"),
    ({"type": "launchRockets"}, "unknown frame type"),
])
def test_malformed_frames_get_a_warning(app_client, frame, says):
    with connect(app_client) as socket:
        socket.send_json(GUEST)
        socket.receive_json()
        socket.send_json(frame)
        warning = socket.receive_json()
        assert warning["type"] == "communicationWarning"
        assert says in warning["warning"]


def test_text_that_is_not_json_gets_a_warning(app_client):
    with connect(app_client) as socket:
        socket.send_json(GUEST)
        socket.receive_json()
        socket.send_text("{not json")
        assert socket.receive_json() == {"type": "communicationWarning", "warning": "a frame must be JSON"}


def test_keep_alive_and_signals(app_client):
    with connect(app_client) as socket:
        socket.send_json(GUEST)
        socket.receive_json()
        socket.send_json({"type": "keepAlive"})
        assert socket.receive_json() == {"type": "keepAliveAck"}
        socket.send_json({"type": "signalSubscribe", "subscribeId": 4, "endpoint": "x", "creationParameter": {}})
        answer = socket.receive_json()
        assert answer["type"] == "signalError" and answer["subscribeId"] == 4


def test_message_to_a_channel_that_is_not_open(app_client):
    with connect(app_client) as socket:
        socket.send_json(GUEST)
        socket.receive_json()
        socket.send_json({"type": "channelSend", "channelId": 99, "message": {"type": "cancel"}})
        assert socket.receive_json() == {"type": "communicationWarning", "warning": "no open channel 99"}


def test_namespaces_without_endpoints_answer_with_errors(app_client):
    with connect(app_client, "repository") as socket:
        socket.send_json(GUEST)
        assert socket.receive_json() == {"success": True}
        socket.send_json({"type": "rpcCall", "endpoint": "searchModels", "callId": 1, "parameter": {}})
        error = socket.receive_json()
        assert error["type"] == "rpcError" and "repository.searchModels" in error["error"]["title"]


def test_a_frame_over_the_body_limit_closes_the_socket_with_1009(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIOLO_HOME", str(tmp_path))
    settings = ServerSettings(limits=RequestLimits(max_body_mib=1))
    with TestClient(create_app(settings), base_url="http://localhost") as client, connect(client) as socket:
        socket.send_json(GUEST)
        socket.receive_json()
        socket.send_json({"type": "rpcCall", "endpoint": "version", "callId": 1, "parameter": "x" * 2**20})
        closed = socket.receive()
        assert closed["type"] == "websocket.close" and closed["code"] == 1009
        assert "1048576 bytes" in closed["reason"]

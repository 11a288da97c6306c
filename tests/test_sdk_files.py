"""LM Studio's SDK protocol, the ``files`` namespace (api/lmstudio_sdk/handlers/files.py): images a
client uploads for its chats, kept per client while its sockets are open, within the server's limits.

The frame tests run the app in process and need no model; the last test drives a real server with
the real ``lmstudio`` SDK and an image in a chat with the vision test model (SmolLM2 with a projector
of random weights: it checks the plumbing, the image reaching the model, not what the model sees).
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import httpx
import lmstudio
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from websockets.sync.client import connect

from studiolo.api.app import create_app
from studiolo.api.lmstudio_sdk.handlers.files import CLIENT_FILES_IMAGES, FileNotFound, image_bytes
from studiolo.config import ServerSettings
from tests.conftest import RunningServer, free_port
from tests.vision_projector import SMOLLM_VISION, link_vision_models

TEST_IMAGE = Path(__file__).parent / "fixtures" / "test-1.jpeg"  # llama.cpp's tools/mtmd/test-1.jpeg


def guest(name: str) -> dict:
    return {"authVersion": 1, "clientIdentifier": f"guest:{name}", "clientPasskey": "secret"}


def png(seed: int, size: tuple[int, int] = (24, 16)) -> bytes:
    image = Image.new("RGB", size, (seed * 40 % 256, 90, 200))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


@pytest.fixture  # per test: STUDIOLO_HOME is patched only while one runs (the vision server needs the real one)
def app_client(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STUDIOLO_HOME", str(home))
        settings = ServerSettings()
        settings.limits.max_image_mib = 1  # so that the per-client total is quick to reach
        with TestClient(create_app(settings), base_url="http://localhost") as client:
            yield client


class FilesSocket:
    """A raw socket to /files (and others) for one client; each call is one frame and its answer."""

    def __init__(self, client: TestClient, name: str, namespace: str = "files"):
        self.context = client.websocket_connect(f"ws://localhost/{namespace}")
        self.name = name
        self.calls = 0

    def __enter__(self) -> FilesSocket:
        self.socket = self.context.__enter__()
        self.socket.send_json(guest(self.name))
        assert self.socket.receive_json() == {"success": True}
        return self

    def __exit__(self, *exc) -> None:
        self.context.__exit__(*exc)

    def call(self, endpoint: str, parameter) -> dict:
        self.calls += 1
        self.socket.send_json({"type": "rpcCall", "endpoint": endpoint, "callId": self.calls, "parameter": parameter})
        answer = self.socket.receive_json()
        assert answer["callId"] == self.calls
        return answer

    def upload(self, data: bytes | str, name: str = "picture.png") -> dict:
        content = data if isinstance(data, str) else base64.b64encode(data).decode()
        return self.call("uploadFileBase64", {"name": name, "contentBase64": content})


def test_an_uploaded_image_is_kept_for_the_client_until_its_last_socket_closes(app_client):
    data = png(1)
    with FilesSocket(app_client, "keeper") as files:
        answer = files.upload(data)
        assert answer["type"] == "rpcResult"
        result = answer["result"]
        assert set(result) == {"identifier", "fileType", "sizeBytes"}
        assert result["fileType"] == "image" and result["sizeBytes"] == len(data)
        # a bare file name, as the JavaScript SDK parses identifiers: no namespace colon, no slash
        assert result["identifier"].endswith(".png") and not set(":/\\") & set(result["identifier"])
        with FilesSocket(app_client, "keeper", "llm"):  # a second socket of the same client
            assert image_bytes("guest:keeper", result["identifier"]) == data
        assert image_bytes("guest:keeper", result["identifier"]) == data  # the files socket is still open
        assert app_client.get("/studiolo/memory").json()["caches"]["sdk_files"] == {
            "used_bytes": len(data), "budget_bytes": None}
        with pytest.raises(FileNotFound):  # another client does not see it
            image_bytes("guest:someone-else", result["identifier"])
    with pytest.raises(FileNotFound) as raised:  # its last socket closed: freed
        image_bytes("guest:keeper", result["identifier"], "history.messages[0].content[1]")
    assert raised.value.param == "history.messages[0].content[1]"
    assert app_client.get("/studiolo/memory").json()["caches"]["sdk_files"]["used_bytes"] == 0
    assert "prepare_image" in str(raised.value)


def test_the_same_bytes_get_the_same_identifier_and_count_once(app_client):
    with FilesSocket(app_client, "twice") as files:
        first = files.upload(png(2), "a.png")["result"]
        again = files.upload(png(2), "b.png")["result"]
        other = files.upload(png(3), "c.png")["result"]
        assert first == again
        assert other["identifier"] != first["identifier"]


@pytest.mark.parametrize("content, name, says", [
    (base64.b64encode(b"plain text, not an image").decode(), "notes.txt", "images only"),
    ("@@not base64@@", "x.png", "base64"),
    ("", "x.png", "empty"),
], ids=["a text file", "broken base64", "empty"])
def test_what_is_not_an_image_is_refused_naming_the_field(app_client, content, name, says):
    with FilesSocket(app_client, "refused") as files:
        answer = files.upload(content, name)
        assert answer["type"] == "rpcError"
        assert says in answer["error"]["title"]
        assert "contentBase64" in answer["error"]["cause"]


def test_a_parameter_of_the_wrong_shape(app_client):
    with FilesSocket(app_client, "shape") as files:
        answer = files.call("uploadFileBase64", {"name": 3, "contentBase64": "AAAA"})
        assert answer["type"] == "rpcError" and "'name'" in answer["error"]["title"]
        answer = files.call("uploadFileBase64", None)
        assert answer["type"] == "rpcError" and "contentBase64" in answer["error"]["title"]


def test_the_limits_per_file_and_per_client(app_client):
    limit = 2**20  # max_image_mib = 1 in this app
    with FilesSocket(app_client, "bounded") as files:
        too_big = files.upload(png(4) + bytes(limit))
        assert too_big["type"] == "rpcError"
        assert f"larger than {limit:,} bytes" in too_big["error"]["title"]
        # files just under the limit each: the client's total is reached after CLIENT_FILES_IMAGES of them
        for index in range(CLIENT_FILES_IMAGES):
            assert files.upload(png(10 + index) + bytes(limit - 1000))["type"] == "rpcResult"
        full = files.upload(png(99) + bytes(10_000))  # more than the 5 x ~1,000 bytes left
        assert full["type"] == "rpcError" and "freed when the client disconnects" in full["error"]["title"]
    with FilesSocket(app_client, "bounded") as files:  # a new connection starts afresh
        assert files.upload(png(99))["type"] == "rpcResult"


def test_local_file_paths_are_not_served(app_client):
    with FilesSocket(app_client, "paths") as files:
        answer = files.call("getLocalFileAbsolutePath", {"fileName": "x.png"})
        assert answer["type"] == "rpcError" and "in memory" in answer["error"]["title"]


# -- end to end: the Python SDK, a real server, the vision test model


@pytest.fixture(scope="module")
def vision_server(tmp_path_factory):
    home = link_vision_models(tmp_path_factory.mktemp("sdk-files"), (SMOLLM_VISION,))
    running = RunningServer(home, free_port(), [])
    yield running
    running.stop()


def test_prepare_image_and_a_chat_with_it(vision_server):
    question = "What is in this image?"
    with lmstudio.Client(f"127.0.0.1:{vision_server.port}") as client:
        image = client.files.prepare_image(TEST_IMAGE)
        assert (image.file_type, image.size_bytes, image.name) == ("image", TEST_IMAGE.stat().st_size,
                                                                   TEST_IMAGE.name)
        assert client.files.prepare_image(TEST_IMAGE.read_bytes()).identifier == image.identifier  # stored once
        chat = lmstudio.Chat()
        chat.add_user_message(question, images=[image])  # the Python SDK puts the text before the images
        result = client.llm.model(SMOLLM_VISION.key).respond(chat, config={"temperature": 0, "maxTokens": 6})
    url = "data:image/jpeg;base64," + base64.b64encode(TEST_IMAGE.read_bytes()).decode()
    content = [{"type": "text", "text": question}, {"type": "image_url", "image_url": {"url": url}}]
    reply = httpx.post(f"{vision_server.base_url}/v1/chat/completions", timeout=300, json={
        "model": SMOLLM_VISION.key, "messages": [{"role": "user", "content": content}], "temperature": 0,
        "max_tokens": 6}).json()
    # the same tokens as the same image over REST: the image reached the model (random projector weights:
    # plumbing, not sight)
    assert result.content == reply["choices"][0]["message"]["content"]
    assert result.stats.prompt_tokens_count == reply["usage"]["prompt_tokens"]


def test_a_file_of_another_client_is_not_found_naming_the_history_field(vision_server):
    with lmstudio.Client(f"127.0.0.1:{vision_server.port}") as owner:
        image = owner.files.prepare_image(TEST_IMAGE)  # held while its owner is connected
        with connect(f"ws://127.0.0.1:{vision_server.port}/llm") as other:
            other.send(json.dumps(guest("other")))
            assert json.loads(other.recv(timeout=10)) == {"success": True}
            part = {"type": "file", "identifier": image.identifier, "name": image.name, "fileType": "image",
                    "sizeBytes": image.size_bytes}
            history = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Look."}, part]}]}
            creation = {"modelSpecifier": {"type": "query", "query": {"identifier": SMOLLM_VISION.key}},
                        "history": history, "predictionConfigStack": {"layers": []}}
            other.send(json.dumps({"type": "channelCreate", "endpoint": "predict", "channelId": 1,
                                   "creationParameter": creation}))
            error = json.loads(other.recv(timeout=60))
    assert error["type"] == "channelError" and error["channelId"] == 1
    assert f"no file '{image.identifier}' was uploaded by this client" in error["error"]["title"]
    assert "history.messages[0].content[1].identifier" in error["error"]["cause"]

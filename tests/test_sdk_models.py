"""Models over LM Studio's SDK protocol, driven by LM Studio's own Python SDK (``lmstudio`` 1.5.0)
against a real server: the downloaded list, JIT get-or-load with TTL and auto-evict, explicit loads
with an identifier, a context length and a TTL, model info and load config, unloading, the embedding
namespace, and what a name that matches nothing gets. Every value is checked against what the REST
API (/api/v1/models) says of the same model or instance."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import lmstudio
import pytest
from websockets.sync.client import connect

from tests.conftest import GEMMA, MINILM, SMOLLM, RunningServer, free_port, home_with_models, loaded_instances

GUEST = {"authVersion": 1, "clientIdentifier": "guest:sdk-models", "clientPasskey": "test"}


@pytest.fixture(scope="module")
def server(tmp_path_factory, default_models):
    running = RunningServer(home_with_models(tmp_path_factory.mktemp("sdk-models"), default_models), free_port(), [])
    yield running
    running.stop()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.base_url, timeout=120) as session:
        yield session


@pytest.fixture(scope="module")
def sdk(server):
    with lmstudio.Client(f"127.0.0.1:{server.port}") as client:
        yield client


@pytest.fixture
def nothing_loaded(http):
    """Each test starts with no instance loaded, and leaves none behind."""
    _unload_all(http)
    yield
    _unload_all(http)


def _unload_all(http: httpx.Client) -> None:
    for instance_id in loaded_instances(http):
        http.post("/api/v1/models/unload", json={"instance_id": instance_id})


def rest_models(http: httpx.Client) -> dict[str, dict[str, Any]]:
    return {model["key"]: model for model in http.get("/api/v1/models").json()["models"]}


def wait_until(check, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


# -- the downloaded list


def test_downloaded_models_are_the_rest_list(sdk, http):
    rest = rest_models(http)
    listed = {model.model_key: model for model in sdk.list_downloaded_models()}
    assert set(listed) == set(rest) == {SMOLLM, GEMMA, MINILM}
    for key, model in listed.items():
        info, expected = model.info, rest[key]
        assert model.type == expected["type"]
        assert info.display_name == expected["display_name"]
        assert info.size_bytes == expected["size_bytes"]
        assert info.params_string == expected["params_string"]
        assert info.max_context_length == expected["max_context_length"]
        assert info.format == "gguf"
        assert info.path.startswith(key.split("/")[0] + "/") and info.path.endswith(".gguf")
        if expected["type"] == "llm":
            assert info.architecture == expected["architecture"]
            assert info.vision is expected["capabilities"]["vision"]
            assert info.trained_for_tool_use is expected["capabilities"]["trained_for_tool_use"]
    assert [m.model_key for m in sdk.list_downloaded_models("llm")] == [k for k in listed if k != MINILM]
    assert [m.model_key for m in sdk.list_downloaded_models("embedding")] == [MINILM]



def test_the_sdk_s_convenience_api_lists_and_gets(server, http, nothing_loaded):
    """``lmstudio.list_downloaded_models()`` and ``lmstudio.llm(key)``: the SDK's global client, given the
    server's address (without it the SDK probes LM Studio's own ports, not studiolo's)."""
    lmstudio.configure_default_client(f"127.0.0.1:{server.port}")
    try:
        assert {m.model_key for m in lmstudio.list_downloaded_models("embedding")} == {MINILM}
        assert lmstudio.llm(SMOLLM).identifier == SMOLLM
        assert [m.identifier for m in lmstudio.list_loaded_models("llm")] == [SMOLLM]
    finally:
        lmstudio.sync_api._reset_default_client()

# -- getOrLoad: client.llm.model(key)


def test_model_loads_just_in_time_with_the_sdk_s_ttl_then_is_already_loaded(sdk, http, nothing_loaded):
    progress: list[float] = []
    model = sdk.llm.model(SMOLLM, ttl=600, on_load_progress=progress.append)
    assert model.identifier == SMOLLM and progress[-1] == 1.0
    instance = loaded_instances(http)[SMOLLM]
    assert instance["status"]["jit_loaded"] is True and instance["status"]["ttl_seconds"] == 600
    again = sdk.llm.model(SMOLLM)  # already loaded: the same instance, not a second one
    assert again.identifier == SMOLLM
    assert list(loaded_instances(http)) == [SMOLLM]
    assert loaded_instances(http)[SMOLLM]["status"]["loaded_at"] == instance["status"]["loaded_at"]
    assert [m.identifier for m in sdk.llm.list_loaded()] == [SMOLLM]


def test_a_model_named_by_its_repo_or_path_is_found(sdk, http, nothing_loaded):
    path = next(m.info.path for m in sdk.list_downloaded_models() if m.model_key == SMOLLM)
    assert sdk.llm.model(SMOLLM.split("/")[1]).identifier == SMOLLM  # its repo alone, as REST takes it
    assert sdk.llm.model(path).identifier == SMOLLM  # LM Studio's path form
    assert list(loaded_instances(http)) == [SMOLLM]


def test_a_jit_load_evicts_the_other_jit_model_and_says_so(server, sdk, http, nothing_loaded):
    sdk.llm.model(SMOLLM)
    packets = channel(server, "llm", "getOrLoad", {"identifier": GEMMA, "loadConfigStack": {"layers": []}})
    kinds = [packet["type"] for packet in packets]
    assert kinds[:2] == ["unloadingOtherJITModel", "startLoading"] and kinds[-1] == "loadSuccess"
    assert set(kinds[2:-1]) == {"loadProgress"} and packets[-2]["progress"] == 1.0  # llama.cpp's fractions, then 1.0
    assert packets[0]["info"]["identifier"] == SMOLLM and packets[0]["info"]["modelKey"] == SMOLLM
    assert packets[1]["identifier"] == GEMMA and packets[1]["info"]["modelKey"] == GEMMA
    assert packets[-1]["info"]["identifier"] == GEMMA
    assert list(loaded_instances(http)) == [GEMMA]  # auto-evict: one JIT model at a time, as over REST


def test_a_model_that_matches_nothing_is_the_sdk_s_model_not_found(sdk):
    with pytest.raises(lmstudio.LMStudioModelNotFoundError) as raised:
        sdk.llm.model("no-such/model")
    assert "no-such/model" in str(raised.value)
    # a model of the other namespace: LM Studio's domainMismatch, saying where it belongs
    with pytest.raises(lmstudio.LMStudioServerError, match="is an LLM, not an embedding model"):
        sdk.embedding.model(SMOLLM)
    with pytest.raises(lmstudio.LMStudioServerError, match="is an embedding model, not an LLM"):
        sdk.llm.model(MINILM)


# -- loadModel: load_new_instance, then what the handle tells


def test_load_new_instance_with_identifier_context_length_and_ttl(sdk, http, nothing_loaded):
    progress: list[float] = []
    model = sdk.llm.load_new_instance(SMOLLM, "smol-sdk", ttl=900, config={"contextLength": 1024},
                                      on_load_progress=progress.append)
    assert model.identifier == "smol-sdk" and progress[0] == 0.0 and progress[-1] == 1.0
    assert progress == sorted(set(progress))  # 0.0, llama.cpp's fractions as they came, 1.0
    rest = loaded_instances(http)["smol-sdk"]
    assert rest["key"] == SMOLLM and rest["config"]["context_length"] == 1024
    assert rest["status"]["jit_loaded"] is False and rest["status"]["ttl_seconds"] == 900
    assert model.get_context_length() == 1024
    assert model.get_load_config().context_length == 1024
    info = model.get_info()
    assert isinstance(info, lmstudio.LlmInstanceInfo)
    assert (info.identifier, info.model_key, info.context_length) == ("smol-sdk", SMOLLM, 1024)
    assert info.max_context_length == rest_models(http)[SMOLLM]["max_context_length"]
    second = sdk.llm.load_new_instance(SMOLLM, ttl=None)  # a second instance, as `lms load` makes
    assert second.identifier == SMOLLM
    assert sorted(m.identifier for m in sdk.llm.list_loaded()) == sorted([SMOLLM, "smol-sdk"])
    model.unload()
    assert list(loaded_instances(http)) == [SMOLLM]
    sdk.llm.unload(SMOLLM)
    assert loaded_instances(http) == {}


def test_the_ttl_of_an_sdk_load_unloads_the_idle_instance(sdk, http, nothing_loaded):
    sdk.llm.load_new_instance(SMOLLM, "smol-brief", ttl=1)
    assert "smol-brief" in loaded_instances(http)
    assert wait_until(lambda: "smol-brief" not in loaded_instances(http))


def test_a_load_config_value_out_of_range_is_refused_naming_its_key(sdk, http, nothing_loaded):
    with pytest.raises(lmstudio.LMStudioServerError, match="llm.load.contextLength"):
        sdk.llm.load_new_instance(SMOLLM, config={"contextLength": 8})
    assert loaded_instances(http) == {}


def test_unloading_what_is_not_loaded_is_model_not_found(sdk, nothing_loaded):
    with pytest.raises(lmstudio.LMStudioModelNotFoundError):
        sdk.llm.unload("nothing-by-this-name")


# -- the embedding namespace


def test_the_embedding_namespace_gets_and_describes_its_model(sdk, http, nothing_loaded):
    model = sdk.embedding.model(MINILM)
    assert model.identifier == MINILM
    info = model.get_info()
    assert isinstance(info, lmstudio.EmbeddingModelInstanceInfo)
    assert info.model_key == MINILM
    assert info.context_length == loaded_instances(http)[MINILM]["config"]["context_length"]
    assert model.get_context_length() == info.context_length
    assert [m.identifier for m in sdk.embedding.list_loaded()] == [MINILM]
    assert sdk.llm.list_loaded() == []  # each namespace lists its own kind
    assert [m.identifier for m in sdk.list_loaded_models()] == [MINILM]
    model.unload()
    assert loaded_instances(http) == {}


# -- raw frames: what the SDK does not show


def channel(server: RunningServer, namespace: str, endpoint: str, parameter: Any) -> list[dict[str, Any]]:
    """The messages of one channel, until the server closes it (an error fails the test)."""
    with connect(f"ws://127.0.0.1:{server.port}/{namespace}") as socket:
        socket.send(json.dumps(GUEST))
        assert json.loads(socket.recv(timeout=10)) == {"success": True}
        socket.send(json.dumps({"type": "channelCreate", "endpoint": endpoint, "channelId": 1,
                                "creationParameter": parameter}))
        messages = []
        while True:
            frame = json.loads(socket.recv(timeout=120))
            if frame["type"] == "channelClose":
                return messages
            assert frame["type"] == "channelSend", frame
            messages.append(frame["message"])


def rpc(server: RunningServer, namespace: str, endpoint: str, parameter: Any = None) -> dict[str, Any]:
    with connect(f"ws://127.0.0.1:{server.port}/{namespace}") as socket:
        socket.send(json.dumps(GUEST))
        socket.recv(timeout=10)
        socket.send(json.dumps({"type": "rpcCall", "endpoint": endpoint, "callId": 1, "parameter": parameter}))
        return json.loads(socket.recv(timeout=120))


def test_instance_info_carries_every_field_lmstudio_js_requires(server, sdk, nothing_loaded):
    sdk.llm.model(SMOLLM, ttl=600)
    [info] = rpc(server, "llm", "listLoaded")["result"]
    assert set(info) >= {"type", "modelKey", "format", "displayName", "publisher", "path", "sizeBytes",
                         "indexedModelIdentifier", "deviceIdentifier", "identifier", "instanceReference",
                         "ttlMs", "lastUsedTime", "vision", "trainedForToolUse", "maxContextLength",
                         "contextLength"}
    assert info["ttlMs"] == 600_000 and abs(info["lastUsedTime"] / 1000 - time.time()) < 60
    assert info["publisher"] == SMOLLM.split("/")[0] and info["deviceIdentifier"] is None
    by_reference = rpc(server, "llm", "getModelInfo", {
        "specifier": {"type": "instanceReference", "instanceReference": info["instanceReference"]},
        "throwIfNotFound": True})
    assert by_reference["result"] == {**info, "lastUsedTime": by_reference["result"]["lastUsedTime"]}


def test_a_stale_instance_reference_matches_nothing(server, sdk, http, nothing_loaded):
    sdk.llm.model(SMOLLM)
    [info] = rpc(server, "llm", "listLoaded")["result"]
    _unload_all(http)
    sdk.llm.model(SMOLLM)  # the same identifier again: another instance, another reference
    stale = rpc(server, "llm", "getModelInfo", {
        "specifier": {"type": "instanceReference", "instanceReference": info["instanceReference"]},
        "throwIfNotFound": True})
    assert stale["type"] == "rpcError"
    assert stale["error"]["displayData"] == {"code": "generic.specificModelUnloaded"}
    absent = rpc(server, "llm", "getModelInfo", {"specifier": {"type": "query", "query": {"identifier": "nope"}},
                                                 "throwIfNotFound": False})
    assert absent == {"type": "rpcResult", "callId": 1}  # no result: the SDKs' "not found"



def test_a_reference_to_the_other_namespace_s_instance_is_a_domain_mismatch(server, sdk, nothing_loaded):
    sdk.embedding.model(MINILM)
    [info] = rpc(server, "embedding", "listLoaded")["result"]
    error = rpc(server, "llm", "getModelInfo", {
        "specifier": {"type": "instanceReference", "instanceReference": info["instanceReference"]},
        "throwIfNotFound": True})
    assert error["type"] == "rpcError"
    assert error["error"]["displayData"] == {"code": "generic.domainMismatch", "path": info["path"],
                                             "actualDomain": "embedding", "expectedDomain": "llm"}

def test_no_match_names_the_query_and_the_loaded_models(server, sdk, nothing_loaded):
    sdk.llm.model(SMOLLM)
    error = rpc(server, "llm", "getLoadConfig", {"specifier": {"type": "query", "query": {"identifier": "zzz"}}})
    assert error["type"] == "rpcError"
    assert error["error"]["displayData"] == {"code": "generic.noModelMatchingQuery", "query": {"identifier": "zzz"},
                                             "loadedModelsSample": [SMOLLM], "totalLoadedModels": 1}



def test_a_cancelled_load_leaves_no_instance(server, http, nothing_loaded):
    with connect(f"ws://127.0.0.1:{server.port}/llm") as socket:
        socket.send(json.dumps(GUEST))
        socket.recv(timeout=10)
        socket.send(json.dumps({"type": "channelCreate", "endpoint": "loadModel", "channelId": 1, "creationParameter": {
            "modelKey": SMOLLM, "identifier": "smol-cancelled", "loadConfigStack": {"layers": []}}}))
        socket.send(json.dumps({"type": "channelSend", "channelId": 1, "message": {"type": "cancel"}}))
        frames = [json.loads(socket.recv(timeout=120)) for _ in range(3)]
    assert [f.get("message", {}).get("type") for f in frames[:2]] == ["resolved", "progress"]
    assert frames[2]["type"] == "channelError" and "cancelled" in frames[2]["error"]["title"]
    assert loaded_instances(http) == {}  # llama.cpp's load ran to its end; its instance was unloaded

# -- in process, no model loaded: what a malformed call gets


@pytest.fixture(scope="module")
def app_client(tmp_path_factory, default_models):
    from fastapi.testclient import TestClient

    from studiolo.api.app import create_app
    from studiolo.config import ServerSettings

    home = home_with_models(tmp_path_factory.mktemp("sdk-models-app"), default_models)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STUDIOLO_HOME", str(home))
        with TestClient(create_app(ServerSettings()), base_url="http://localhost") as client:
            yield client


def first_answer(app_client, namespace: str, frame: dict[str, Any]) -> dict[str, Any]:
    with app_client.websocket_connect(f"ws://localhost/{namespace}") as socket:
        socket.send_json(GUEST)
        socket.receive_json()
        socket.send_json(frame)
        return socket.receive_json()


def open_channel(endpoint: str, parameter: Any) -> dict[str, Any]:
    return {"type": "channelCreate", "endpoint": endpoint, "channelId": 1, "creationParameter": parameter}


def call_rpc(endpoint: str, parameter: Any) -> dict[str, Any]:
    return {"type": "rpcCall", "endpoint": endpoint, "callId": 1, "parameter": parameter}


NO_CONFIG = {"layers": []}


def config_of(key: str, value: Any) -> dict[str, Any]:
    return {"layers": [{"layerName": "apiOverride", "config": {"fields": [{"key": key, "value": value}]}}]}


@pytest.mark.parametrize("frame, says", [
    (open_channel("getOrLoad", "smollm"), "'creationParameter' must be an object"),
    (open_channel("getOrLoad", {"loadConfigStack": NO_CONFIG}), "'identifier' must be a non-empty string"),
    (open_channel("getOrLoad", {"identifier": SMOLLM, "loadConfigStack": {"fields": []}}), "'loadConfigStack' must be"),
    (open_channel("getOrLoad", {"identifier": SMOLLM, "loadTtlMs": 0, "loadConfigStack": NO_CONFIG}), "'loadTtlMs'"),
    (open_channel("getOrLoad", {"identifier": SMOLLM, "loadConfigStack": config_of("llm.load.contextLength", "big")}),
     "'llm.load.contextLength'"),
    (open_channel("loadModel", {"modelKey": SMOLLM, "identifier": "", "loadConfigStack": NO_CONFIG}), "'identifier'"),
    (open_channel("loadModel", {"modelKey": SMOLLM, "loadConfigStack": config_of("llm.load.llama.evalBatchSize", 0)}),
     "'llm.load.llama.evalBatchSize'"),
    (call_rpc("getModelInfo", {"specifier": {"type": "byName", "name": SMOLLM}, "throwIfNotFound": True}),
     "'specifier.type' must be 'query' or 'instanceReference'"),
    (call_rpc("getModelInfo", {"specifier": {"type": "query", "query": {"identifier": 7}}, "throwIfNotFound": True}),
     "'specifier.query.identifier' must be a non-empty string"),
    (call_rpc("getLoadConfig", {"specifier": {"type": "instanceReference"}}), "'specifier.instanceReference'"),
    (call_rpc("unloadModel", {}), "'identifier' must be a non-empty string"),
])
def test_a_malformed_call_is_the_protocol_s_error_naming_the_field(app_client, frame, says):
    answer = first_answer(app_client, "llm", frame)
    assert answer["type"] == ("channelError" if frame["type"] == "channelCreate" else "rpcError"), answer
    assert says in answer["error"]["title"]


def test_nothing_loads_for_a_malformed_call(app_client):
    too_small = {"modelKey": SMOLLM, "loadConfigStack": config_of("llm.load.contextLength", 10)}
    refused = first_answer(app_client, "llm", open_channel("loadModel", too_small))
    assert refused["type"] == "channelError"
    assert first_answer(app_client, "llm", call_rpc("listLoaded", None))["result"] == []


def test_with_jit_loading_off_get_or_load_is_refused_before_announcing_a_load(app_client):
    from fastapi.testclient import TestClient

    from studiolo.api.app import create_app
    from studiolo.config import ServerSettings

    # a second app on app_client's home (its STUDIOLO_HOME is set for the module)
    with TestClient(create_app(ServerSettings(jit_loading=False)), base_url="http://localhost") as client:
        answer = first_answer(client, "llm", open_channel("getOrLoad", {"identifier": SMOLLM,
                                                                        "loadConfigStack": NO_CONFIG}))
        assert answer["type"] == "channelError" and "just in time" in answer["error"]["title"]
        assert answer["error"]["displayData"]["code"] == "generic.noModelMatchingQuery"
        assert first_answer(client, "llm", call_rpc("listLoaded", None))["result"] == []

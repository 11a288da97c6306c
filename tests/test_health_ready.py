"""``GET /health`` (liveness, open to all, no internals) and ``GET /ready`` (readiness: the store
writable and the preloaded models of the settings file loaded), against real servers."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

from studiolo import __version__
from tests.conftest import SMOLLM, RunningServer, free_port, home_with_models

MISSING = "nobody/no-such-model"


def serve(tmp_path: Path, default_models, server_section: dict) -> tuple[RunningServer, httpx.Client]:
    home = home_with_models(tmp_path / "home", {SMOLLM: default_models[SMOLLM]})
    (home / "settings.json").write_text(json.dumps({"server": server_section}))
    server = RunningServer(home, free_port(), [])
    return server, httpx.Client(base_url=server.base_url, timeout=60)


def ready_when_settled(http: httpx.Client, seconds: float = 60) -> httpx.Response:
    """/ready once no preload is still loading."""
    deadline = time.monotonic() + seconds
    while True:
        response = http.get("/ready")
        if "loading" not in response.json()["models"].values() or time.monotonic() > deadline:
            return response
        time.sleep(0.2)


def test_health_is_live_and_shows_no_internals(http, server):
    body = http.get("/health").json()
    assert set(body) == {"status", "instance", "version", "storage"}
    assert body["status"] == "ok" and body["version"] == __version__ and body["storage"] == "ok"


def test_ready_with_nothing_to_preload_and_a_writable_store(http):
    response = http.get("/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "store": "ok", "models": {}}


def test_ready_waits_for_the_preloaded_model_and_not_after_it_is_unloaded(tmp_path, default_models):
    server, http = serve(tmp_path, default_models, {"preload_models": [SMOLLM]})
    try:
        ready = ready_when_settled(http)
        assert ready.status_code == 200, ready.text
        assert ready.json() == {"status": "ready", "store": "ok", "models": {SMOLLM: "loaded"}}
        instance = http.get("/api/v1/models").json()["models"]
        loaded = [i for model in instance for i in model["loaded_instances"]]
        assert [i["id"] for i in loaded] == [SMOLLM]  # loaded at start, explicitly: no idle TTL
        assert http.post("/api/v1/models/unload", json={"instance_id": SMOLLM}).status_code == 200
        after = http.get("/ready")
        assert after.status_code == 503
        assert after.json()["missing"] == [f"model {SMOLLM}: unloaded"]
    finally:
        http.close()
        server.stop()


def test_not_ready_names_what_is_missing_by_code_never_by_path(tmp_path, default_models):
    home = tmp_path / "home"
    home.mkdir()
    (home / "responses.sqlite3").write_bytes(b"these are my notes, not a database\n" * 200)
    server, http = serve(tmp_path, default_models, {"preload_models": [MISSING, SMOLLM]})
    try:
        response = ready_when_settled(http)
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "not_ready" and body["store"] == "storage_unavailable"
        assert body["models"] == {MISSING: "failed: model_not_found", SMOLLM: "loaded"}
        assert body["missing"] == ["store: storage_unavailable", f"model {MISSING}: failed: model_not_found"]
        health = http.get("/health")  # still live: it serves everything that does not store
        assert health.status_code == 200 and health.json()["storage"] == {"code": "storage_unavailable"}
        for text in (response.text, health.text):
            assert str(home) not in text and "sqlite3" not in text
        assert f"could not preload {MISSING}" in server.log()  # the whole story is in the server's log
    finally:
        http.close()
        server.stop()

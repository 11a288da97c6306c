"""Storage faults and hostile requests against the response store (docs/API.md, "Storage faults").

``CASES`` are requests a shared, healthy server must refuse cleanly (ids built to break a query, ids
that do not exist); ``make soak`` replays them. The fault tests each run a server of their own on a
broken database: not SQLite, damaged pages, read-only, no room (``budgets.stored_file_mib`` caps the
file: SQLite then answers SQLITE_FULL, as a full disk does), and a disk too full to write server.json
(a directory in its place: the write fails with an OSError, as on a full disk; a real full disk is
tested at the store's level in test_response_store.py, where a tmpfs can be mounted). Each checks the status and code in both
API families, that generation which does not store still works, that earlier responses still read,
and that the server names the cause in its log once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from studiolo.service.items import assistant_message, user_message
from studiolo.store.responses import ResponseStore
from tests.conftest import SMOLLM, RunningServer, free_port, home_with_models
from tests.hostile import HostileCase, assert_healthy, check, error_of

DB = "responses.sqlite3"
QUICK = {"model": SMOLLM, "temperature": 0, "max_output_tokens": 4}

CASES: list[HostileCase] = [
    HostileCase("get-id-with-sql", "GET", "/v1/responses/resp_'%20OR%20'1'='1", status=404, param="response_id",
                code="response_not_found"),
    HostileCase("get-id-without-prefix", "GET", "/v1/responses/1;DROP%20TABLE%20responses", status=400,
                param="response_id", code="invalid_response_id"),
    HostileCase("get-id-4000-chars", "GET", "/v1/responses/resp_" + "a" * 4000, status=404, param="response_id"),
    HostileCase("delete-unknown-id", "DELETE", "/v1/responses/resp_" + "0" * 32, status=404, param="response_id"),
    HostileCase("input-items-limit-0", "GET", "/v1/responses/resp_x/input_items?limit=0", param="limit"),
    HostileCase("input-items-order", "GET", "/v1/responses/resp_x/input_items?order=sideways", param="order"),
    HostileCase("continue-unknown", "POST", "/v1/responses",
                {**QUICK, "input": "hi", "previous_response_id": "resp_" + "f" * 32},
                param="previous_response_id", code="previous_response_not_found"),
    HostileCase("continue-id-with-nul", "POST", "/v1/responses",
                {**QUICK, "input": "hi", "previous_response_id": "resp_\u0000' --"}, param="previous_response_id"),
    HostileCase("continue-malformed", "POST", "/v1/responses", {**QUICK, "input": "hi", "previous_response_id": 7},
                param="previous_response_id"),
    HostileCase("compact-unknown", "POST", "/v1/responses/compact",
                {"model": SMOLLM, "previous_response_id": "resp_" + "e" * 32}, param="previous_response_id"),
    HostileCase("v1-chat-continue-unknown", "POST", "/api/v1/chat",
                {**QUICK, "input": "hi", "previous_response_id": "resp_" + "d" * 32}, status=404,
                param="previous_response_id"),
    HostileCase("v1-chat-continue-malformed", "POST", "/api/v1/chat",
                {**QUICK, "input": "hi", "previous_response_id": "../responses.sqlite3"},
                param="previous_response_id"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_hostile_store_requests(http, case):
    check(http, case)


# ---- helpers ----


def seeded(home: Path, turns: int = 6) -> list[str]:
    """A database with two conversations of ``turns`` turns each, as the server stores them; their ids."""
    ids: list[str] = []
    with ResponseStore(home / DB) as store:
        for conversation in range(2):
            previous = None
            for turn in range(turns):
                text = f"conversation {conversation}, turn {turn}"
                previous = store.create(SMOLLM, [user_message(text)], [assistant_message(f"noted: {text}")],
                                        {"input_tokens": 9, "output_tokens": 4, "total_tokens": 13},
                                        previous_response_id=previous).id
                ids.append(previous)
    return ids


def new_home(tmp_path: Path, default_models, settings: dict | None = None) -> Path:
    home = home_with_models(tmp_path / "home", {SMOLLM: default_models[SMOLLM]})
    if settings:
        (home / "settings.json").write_text(json.dumps(settings))
    return home


def serving(home: Path) -> tuple[RunningServer, httpx.Client]:
    server = RunningServer(home, free_port(), [])
    return server, httpx.Client(base_url=server.base_url, timeout=120)


def assert_readable(http: httpx.Client, ids: list[str]) -> None:
    """Nothing stored was lost: every earlier response still reads back whole."""
    for response_id in ids:
        response = http.get(f"/v1/responses/{response_id}")
        assert response.status_code == 200, response.text
        assert response.json()["output"][0]["content"][0]["text"].startswith("noted: ")


def assert_storage_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers.get("x-should-retry") == "false"
    error = error_of(response)
    assert error["code"] == code and error["param"] is None, error
    return error


def assert_unstored_generation_works(http: httpx.Client) -> None:
    """Generation that stores nothing is served while storing is off."""
    plain = http.post("/v1/chat/completions", json={"model": SMOLLM, "temperature": 0, "max_tokens": 4,
                                                    "messages": [{"role": "user", "content": "Hi"}]})
    assert plain.status_code == 200, plain.text
    unstored = http.post("/v1/responses", json={**QUICK, "input": "Hi", "store": False})
    assert unstored.status_code == 200 and unstored.json()["output"], unstored.text
    v1 = http.post("/api/v1/chat", json={**QUICK, "input": "Hi", "store": False})
    assert v1.status_code == 200 and "response_id" not in v1.json(), v1.text


def assert_stored_requests_refused(http: httpx.Client, status: int, code: str, continue_from: str) -> str:
    """Every kind of stored request gets the fault, in its family's shape, before any generation."""
    responses = assert_storage_error(http.post("/v1/responses", json={**QUICK, "input": "Hi"}), status, code)
    assert responses["type"] == "server_error"
    continued = http.post("/v1/responses", json={**QUICK, "input": "Hi", "previous_response_id": continue_from})
    assert_storage_error(continued, status, code)
    v1 = assert_storage_error(http.post("/api/v1/chat", json={**QUICK, "input": "Hi"}), status, code)
    assert v1["type"] == code  # LM Studio's v1 shape: type, code, message, param
    streamed = http.post("/api/v1/chat", json={**QUICK, "input": "Hi", "stream": True})
    assert_storage_error(streamed, status, code)  # refused before the stream, not inside it
    compact = http.post("/v1/responses/compact", json={"model": SMOLLM, "input": "Hi"})
    assert_storage_error(compact, status, code)
    assert_healthy(http)
    return responses["message"]


def cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "STUDIOLO_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "studiolo", *args], env=env, capture_output=True, text=True, check=False,
                          timeout=60)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- a file that is not SQLite ----


def test_a_file_that_is_not_sqlite_turns_storing_off_until_it_is_moved_aside(tmp_path, default_models):
    home = new_home(tmp_path, default_models)
    (home / DB).write_bytes(b"these are my notes, not a database\n" * 200)
    before = digest(home / DB)
    server, http = serving(home)  # it starts: before, a traceback and no server
    try:
        message = assert_stored_requests_refused(http, 503, "storage_unavailable", "resp_" + "a" * 32)
        assert "is not an SQLite database" in message and "studiolo store recover" in message
        assert http.get("/v1/responses/resp_" + "a" * 32).status_code == 503
        assert_unstored_generation_works(http)
        assert server.log().count("is not an SQLite database") == 1  # logged once, not per request
        assert digest(home / DB) == before  # never written to
        health = http.get("/health").json()
        assert health["status"] == "ok" and health["storage"]["code"] == "storage_unavailable", health

        (home / DB).rename(home / "notes.txt")  # what the message says to do; no restart needed
        deadline = time.monotonic() + 15
        while (stored := http.post("/v1/responses", json={**QUICK, "input": "Hi"})).status_code != 200:
            assert stored.status_code == 503 and time.monotonic() < deadline, stored.text
            time.sleep(0.5)
        assert http.get(f"/v1/responses/{stored.json()['id']}").status_code == 200
        assert http.get("/health").json()["storage"] == "ok"
    finally:
        http.close()
        server.stop()
    assert digest(home / "notes.txt") == before


# ---- damaged pages, then `studiolo store check` and `recover` ----


def damage_index(path: Path) -> None:
    """Overwrites the root page of the index that every new response goes into: reads by id still work."""
    with sqlite3.connect(path) as conn:
        page = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'responses_by_previous'").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    with path.open("r+b") as file:
        file.seek((page - 1) * size)
        file.write(b"\xff" * size)


def test_a_damaged_database_serves_what_it_holds_and_is_recovered(tmp_path, default_models):
    home = new_home(tmp_path, default_models)
    ids = seeded(home)
    damage_index(home / DB)
    server, http = serving(home)
    try:
        assert_readable(http, ids)
        message = assert_stored_requests_refused(http, 503, "storage_unavailable", ids[-1])
        assert "database disk image is malformed" in message
        assert_unstored_generation_works(http)
        assert_readable(http, ids)
        assert server.log().count("is damaged (database disk image is malformed)") == 1
    finally:
        http.close()
        server.stop()
    damaged = digest(home / DB)
    checked = cli(home, "store", "check")
    assert checked.returncode == 1 and "studiolo store recover" in checked.stderr, checked
    recovered = cli(home, "store", "recover")
    assert recovered.returncode == 0 and f"recovered {len(ids)} responses" in recovered.stdout, recovered
    kept = [p for p in home.iterdir() if p.name.startswith(f"{DB}.damaged-") and not p.name.endswith(("-wal", "-shm"))]
    assert len(kept) == 1 and digest(kept[0]) == damaged  # the old file, untouched
    assert cli(home, "store", "check").returncode == 0
    server, http = serving(home)
    try:
        assert_readable(http, ids)
        continued = http.post("/v1/responses", json={**QUICK, "input": "Hi", "previous_response_id": ids[-1]})
        assert continued.status_code == 200 and continued.json()["store"] is True, continued.text
    finally:
        http.close()
        server.stop()


# ---- a read-only database ----


def make_read_only(path: Path) -> None:
    """chmod for a user; root ignores permissions, so it sets the immutable attribute instead."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)], check=False).returncode != 0:
        pytest.skip("running as root on a file system without chattr +i: no way to make a file read-only")


def make_writable(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], check=False)
    path.chmod(0o644)


def test_a_read_only_database_serves_what_it_holds(tmp_path, default_models):
    home = new_home(tmp_path, default_models)
    ids = seeded(home)
    before = digest(home / DB)
    make_read_only(home / DB)
    try:
        server, http = serving(home)
        try:
            assert_readable(http, ids)
            message = assert_stored_requests_refused(http, 503, "storage_unavailable", ids[0])
            assert "attempt to write a readonly database" in message
            assert_storage_error(http.delete(f"/v1/responses/{ids[-1]}"), 503, "storage_unavailable")
            assert_unstored_generation_works(http)
            assert_readable(http, ids)
            assert server.log().count("cannot be written (attempt to write a readonly database)") == 1
        finally:
            http.close()
            server.stop()
    finally:
        make_writable(home / DB)
    assert digest(home / DB) == before


# ---- no room: the file's cap stands for a full disk; server.json on a full disk ----

CAP_MIB = 8


def stored_turn(http: httpx.Client, text: str, **extra) -> dict:
    response = http.post("/v1/responses", json={**QUICK, "input": text, **extra})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["store"] is True and "storage_error" not in body, body
    return body


def state_sizes(path: Path) -> dict[str, int]:
    with sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT response_id, length(data) FROM response_states").fetchall()
    conn.close()
    return dict(rows)


def stream_while_filling(http: httpx.Client, path: Path, filler_id: str, filler_mib: int) -> dict:
    """A stored, streamed turn during which the database is filled past its cap by another writer:
    it takes the write lock as soon as the stream starts, so the turn's own write comes after. The
    turn's input (5 kB) is more than a page holds: storing it must take new pages."""
    notes = "Notes: " + "apple banana cherry " * 250
    body = {**QUICK, "input": f"{notes}\n\nCount from 1 to 100, separated by commas.", "max_output_tokens": 60,
            "stream": True}
    final: dict = {}
    with http.stream("POST", "/v1/responses", json=body) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if event["type"] == "response.created":
                fill(path, filler_id, filler_mib)
            elif event["type"] in ("response.completed", "response.incomplete", "response.failed"):
                final = event["response"]
    return final


def fill(path: Path, filler_id: str, mib: int) -> None:
    """Another program's data (``mib`` of it), bringing the file past the server's cap."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        conn.execute("BEGIN IMMEDIATE")
        items = json.dumps([user_message("x" * mib * 2**20)])
        conn.execute("INSERT INTO responses (id, model, created_at, status, input_items, output_items, usage, "
                     "metadata) VALUES (?, 'filler', 0, 'completed', ?, '[]', '{}', '{}')", (filler_id, items))
        conn.execute("COMMIT")
    finally:
        conn.close()


def test_no_room_drops_states_first_keeps_answers_and_refuses_before_generating(tmp_path, default_models):
    home = new_home(tmp_path, default_models, {"budgets": {"stored_file_mib": CAP_MIB}})
    (home / "server.json").mkdir()  # writing it fails, as on a full disk
    ids = seeded(home, turns=2)
    server, http = serving(home)  # it starts although it cannot record itself
    try:
        assert "could not record this server" in server.log()
        # KV states (~23 kB a token) are kept within half the room, the oldest dropped for the newest
        words = "the quick brown fox jumps over the lazy dog " * 3  # ~45 tokens: ~1 MB of state a turn
        turns = [stored_turn(http, f"Turn {i}: {words}")["id"] for i in range(8)]
        states = state_sizes(home / DB)
        assert turns[-1] in states and turns[0] not in states, states
        assert sum(states.values()) <= CAP_MIB * 2**20 / 2
        continued = stored_turn(http, "And then?", previous_response_id=turns[0])  # its state was dropped

        # filled by another writer mid-turn: the states go, and the turn is still stored
        first = stream_while_filling(http, home / DB, "resp_filler1", CAP_MIB)
        assert first["store"] is True and "storage_error" not in first, first
        assert state_sizes(home / DB) == {}
        assert http.get(f"/v1/responses/{first['id']}").status_code == 200
        # now full: refused before any generation, 507 in both families
        message = assert_stored_requests_refused(http, 507, "storage_full", turns[1])
        assert "no room to store this turn" in message and f"caps the file at {CAP_MIB} MiB" in message
        assert_unstored_generation_works(http)

        # room again, filled mid-turn with no state left to drop: the answer is still the client's
        with ResponseStore(home / DB) as other:
            other.delete("resp_filler1")
        # (as large as the whole cap: it takes every page freed so far, the states' and the first filler's)
        second = stream_while_filling(http, home / DB, "resp_filler2", 2 * CAP_MIB)
        assert second["status"] == "completed" and second["output"][0]["content"][0]["text"], second
        assert second["store"] is False and second["storage_error"]["code"] == "storage_full", second
        assert http.get(f"/v1/responses/{second['id']}").status_code == 404  # said so: not stored
        with ResponseStore(home / DB) as other:
            other.delete("resp_filler2")
        stored_turn(http, "Room again?")
        assert_readable(http, ids)
        for response_id in [*turns, continued["id"], first["id"]]:
            assert http.get(f"/v1/responses/{response_id}").status_code == 200
        log = server.log()
        assert log.count("no room to store this turn") == 1 and "response storage works again" in log
    finally:
        http.close()
        server.stop()

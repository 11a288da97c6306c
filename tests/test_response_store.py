"""The stored responses behind stateful chats (studiolo.store.responses)."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from studiolo.store import responses, schema
from studiolo.store.responses import (
    CorruptConversation,
    InvalidResponseId,
    ResponseIdTaken,
    ResponseNotFound,
    ResponseStore,
    StoredResponse,
    StoreVersionError,
)

SRC = Path(__file__).resolve().parents[1] / "src"


def user(text: str) -> list[dict]:
    return [{"type": "message", "role": "user", "content": text}]


def answer(text: str) -> list[dict]:
    content = [{"type": "output_text", "text": text}]
    return [{"type": "message", "role": "assistant", "content": content}]


@pytest.fixture
def store(tmp_path: Path):
    with ResponseStore(tmp_path / "responses.sqlite3") as s:
        yield s


def turn(store: ResponseStore, text: str, previous: StoredResponse | None = None) -> StoredResponse:
    prev_id = previous.id if previous else None
    usage = {"total_tokens": 3}
    return store.create("m", user(text), answer(text), usage, previous_response_id=prev_id)


def raw_count(path: Path, table: str) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_create_get_round_trip_of_every_field(store):
    root = turn(store, "hi")
    r = store.create(
        "smollm2-135m",
        user("é ünïcode"),
        answer("ok"),
        {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7},
        previous_response_id=root.id,
        status="incomplete",
        instructions="be brief",
        metadata={"k": "v", "n": 1},
        created_at=1700000000.25,
    )
    expected = StoredResponse(
        id=r.id,
        model="smollm2-135m",
        created_at=1700000000.25,
        previous_response_id=root.id,
        input_items=user("é ünïcode"),
        output_items=answer("ok"),
        usage={"input_tokens": 5, "output_tokens": 2, "total_tokens": 7},
        status="incomplete",
        instructions="be brief",
        metadata={"k": "v", "n": 1},
    )
    assert r == expected
    assert store.get(r.id) == expected
    assert store.input_items(r.id) == user("é ünïcode")
    defaults = (root.status, root.instructions, root.metadata, root.previous_response_id)
    assert defaults == ("completed", None, {}, None)


def test_ids_are_unique_and_well_formed(store):
    ids = [turn(store, str(i)).id for i in range(50)]
    assert len(set(ids)) == 50
    assert all(re.fullmatch(r"resp_[0-9a-f]{32}", i) for i in ids)


def test_caller_chosen_id(store):
    rid = responses.new_response_id()
    r = store.create("m", user("a"), [], {}, response_id=rid)
    assert store.get(rid) == r
    with pytest.raises(ResponseIdTaken):
        store.create("m", user("b"), [], {}, response_id=rid)
    with pytest.raises(InvalidResponseId):
        store.create("m", user("b"), [], {}, response_id="msg_1")
    assert raw_count(store.path, "responses") == 1


def test_conversation_of_a_chain_and_of_branches(store):
    a = turn(store, "a")
    b = turn(store, "b", a)
    c = turn(store, "c", b)
    assert [r.id for r in store.conversation(c.id)] == [a.id, b.id, c.id]
    assert store.conversation(a.id) == [a]
    c2 = turn(store, "c2", b)
    assert store.conversation(c2.id) == [a, b, c2]
    assert store.conversation(c.id) == [a, b, c]


def test_unknown_previous_and_malformed_ids(store):
    missing = "resp_" + "0" * 32
    with pytest.raises(ResponseNotFound) as err:
        store.create("m", user("x"), [], {}, previous_response_id=missing)
    assert err.value.response_id == missing
    for call in (store.get, store.conversation, store.delete, store.input_items, store.load_state):
        with pytest.raises(ResponseNotFound):
            call(missing)
        with pytest.raises(InvalidResponseId, match='must start with "resp_"'):
            call("chatcmpl_123")
    with pytest.raises(InvalidResponseId):
        store.create("m", [], [], {}, previous_response_id="123")
    assert raw_count(store.path, "responses") == 0


def test_items_that_are_not_json_store_nothing(store):
    with pytest.raises(ValueError):
        store.create("m", [{"x": float("nan")}], [], {})
    with pytest.raises(TypeError):
        store.create("m", {"not": "a list"}, [], {})
    assert raw_count(store.path, "responses") == 0


def test_delete_keeps_the_conversation_of_children(store):
    a = turn(store, "a")
    b = turn(store, "b", a)
    c = turn(store, "c", b)
    store.delete(b.id)
    for call in (store.get, store.input_items, store.delete, store.load_state):
        with pytest.raises(ResponseNotFound):
            call(b.id)
    with pytest.raises(ResponseNotFound):
        turn(store, "again", b)
    assert store.conversation(c.id) == [a, b, c]  # the tombstone keeps its items for c
    assert raw_count(store.path, "responses") == 3
    store.delete(c.id)  # b's last child: the tombstone goes too
    assert raw_count(store.path, "responses") == 1
    assert store.conversation(a.id) == [a]


def test_deleting_a_leaf_removes_only_it(store):
    a = turn(store, "a")
    b = turn(store, "b", a)
    store.delete(a.id)
    store.delete(b.id)  # removes b, then a's tombstone
    assert raw_count(store.path, "responses") == 0


def test_reopen_reads_everything_back(tmp_path):
    path = tmp_path / "r.sqlite3"
    with ResponseStore(path) as s:
        a = turn(s, "a")
        b = turn(s, "b", a)
        s.save_state(b.id, b"\x00kv")
    with ResponseStore(path) as s:
        assert s.conversation(b.id) == [a, b]
        assert s.load_state(b.id) == b"\x00kv"


def test_default_path_is_in_studiolo_home(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIOLO_HOME", str(tmp_path / "home"))
    with ResponseStore() as s:
        assert s.path == tmp_path / "home" / "responses.sqlite3"
        assert s.path.exists()


def test_pragmas(store):
    conn = store._conn
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone() == (1,)
    assert conn.execute("PRAGMA busy_timeout").fetchone() == (10000,)
    assert conn.execute("PRAGMA user_version").fetchone() == (len(responses.MIGRATIONS),)


WRITER = """
import sys
from studiolo.store.responses import ResponseStore
store = ResponseStore(sys.argv[1])
previous = None
for i in range(1_000_000):
    r = store.create("m", [{"n": i}], [{"out": i}], {"i": i}, previous_response_id=previous)
    print(r.id, i, flush=True)
    previous = None if i % 7 == 6 else r.id  # chains of 7: i % 7 + 1 long
"""


def test_acknowledged_responses_survive_sigkill(tmp_path):
    path = tmp_path / "r.sqlite3"
    pythonpath = os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": pythonpath}
    command = [sys.executable, "-c", WRITER, str(path)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, env=env, text=True)
    lines = [proc.stdout.readline() for _ in range(100)]
    proc.send_signal(signal.SIGKILL)
    lines += proc.stdout.read().splitlines()  # whatever else it printed before it died
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    printed = [line.split() for line in lines if line.strip()]
    assert len(printed) >= 100
    with ResponseStore(path) as s:
        assert s._conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        for rid, i in printed:
            r = s.get(rid)
            n = int(i)
            assert (r.input_items, r.output_items, r.usage) == ([{"n": n}], [{"out": n}], {"i": n})
            assert len(s.conversation(rid)) == n % 7 + 1


def test_concurrent_creates_from_threads(tmp_path):
    path = tmp_path / "r.sqlite3"
    first, second = ResponseStore(path), ResponseStore(path)  # two connections, as two processes
    root = turn(first, "root")
    ids: list[str] = []
    errors: list[BaseException] = []

    def work(n: int) -> None:
        s = first if n % 2 else second
        try:
            for i in range(20):
                ids.append(s.create("m", user(f"{n}.{i}"), [], {}, previous_response_id=root.id).id)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(ids)) == 160
    assert all(first.conversation(i)[0] == root for i in ids)
    assert raw_count(path, "responses") == 161
    first.close()
    second.close()


def test_version_1_database_is_reopened_and_migrated_with_its_data(tmp_path, monkeypatch):
    path = tmp_path / "r.sqlite3"
    with ResponseStore(path) as s:
        a = turn(s, "a")
    current = len(schema.MIGRATIONS)
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone() == (current,)
    with ResponseStore(path) as s:
        assert s.get(a.id) == a
    step = ("ALTER TABLE responses ADD COLUMN note TEXT",)
    monkeypatch.setattr(schema, "MIGRATIONS", [*schema.MIGRATIONS, step])
    with ResponseStore(path) as s:
        assert s.get(a.id) == a
        assert s._conn.execute("PRAGMA user_version").fetchone() == (current + 1,)
        assert s._conn.execute("SELECT note FROM responses").fetchall() == [(None,)]


def test_newer_database_is_refused_untouched(tmp_path):
    path = tmp_path / "r.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE future (x)")
        conn.execute("PRAGMA user_version = 99")
    conn.close()
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(StoreVersionError, match="schema version 99, newer than this studiolo"):
        ResponseStore(path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.sqlite3"]  # no -wal, no -journal


def test_save_and_load_state(store):
    a = turn(store, "a")
    b = turn(store, "b", a)
    assert store.load_state(a.id) is None
    store.save_state(a.id, b"first")
    store.save_state(a.id, bytearray(b"second"))
    store.save_state(b.id, bytes(range(256)) * 100)
    assert store.load_state(a.id) == b"second"
    assert store.load_state(b.id) == bytes(range(256)) * 100
    store.delete(a.id)  # a stays as b's tombstone, but its state goes at once
    assert raw_count(store.path, "response_states") == 1
    store.delete(b.id)
    assert raw_count(store.path, "response_states") == 0
    with pytest.raises(ResponseNotFound):
        store.save_state(b.id, b"x")


def test_corrupt_chains_raise(store, monkeypatch):
    a, b = turn(store, "a"), turn(store, "b")
    store._conn.execute("PRAGMA foreign_keys = OFF")
    store._conn.execute("UPDATE responses SET previous_response_id = ? WHERE id = ?", (b.id, a.id))
    store._conn.execute("UPDATE responses SET previous_response_id = ? WHERE id = ?", (a.id, b.id))
    with pytest.raises(CorruptConversation, match="loops"):
        store.conversation(a.id)
    c = turn(store, "c")
    chain = [c]
    for i in range(5):
        chain.append(turn(store, str(i), chain[-1]))
    monkeypatch.setattr(responses, "MAX_CONVERSATION_LENGTH", 5)
    assert len(store.conversation(chain[4].id)) == 5
    with pytest.raises(CorruptConversation, match="exceeds 5"):
        store.conversation(chain[5].id)


# ---- storage faults (store/faults.py, store/space.py, store/recovery.py) ----


def big_items(size: int) -> list[dict]:
    return user("x" * size)


def test_kv_states_are_sized_against_the_room_newest_kept(tmp_path):
    with ResponseStore(tmp_path / "r.sqlite3", file_cap_mib=4) as s:
        ids = [turn(s, f"t{i}").id for i in range(6)]
        kept = [s.keep_state(rid, bytes(600_000), 2**31) for rid in ids]
        assert all(kept)
        sizes = dict(s._conn.execute("SELECT response_id, length(data) FROM response_states").fetchall())
        assert ids[-1] in sizes and ids[0] not in sizes  # the oldest went first
        assert s.state_bytes == sum(sizes.values()) <= 2 * 2**20  # at most half the room
        assert not s.keep_state(ids[0], bytes(3 * 2**20), 2**31)  # alone over the allowance: not kept
        assert s.keep_state(ids[1], bytes(1000), 500) is False  # over the configured budget


def test_no_room_drops_every_state_before_refusing_a_response(tmp_path, caplog):
    from studiolo.store.faults import StorageFull

    with ResponseStore(tmp_path / "r.sqlite3", file_cap_mib=2) as s:
        first = turn(s, "first")
        assert s.keep_state(first.id, bytes(500_000), 2**31)
        created = []
        with pytest.raises(StorageFull, match="caps the file at 2 MiB"):
            for _ in range(100):
                created.append(s.create("m", big_items(60_000), answer("ok"), {}).id)
        assert s.state_bytes == 0 and len(created) > 8  # the state's room went to responses first
        assert "dropped all 1 saved KV states" in caplog.text
        with pytest.raises(StorageFull, match="no room to store this turn"):
            s.check_writable(1000)
        assert [s.get(rid).id for rid in [first.id, *created]] == [first.id, *created]


def test_a_file_that_is_not_sqlite_is_reported_and_retried(tmp_path, monkeypatch):
    from studiolo.store.faults import StorageUnavailable

    path = tmp_path / "r.sqlite3"
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(StorageUnavailable, match="is not an SQLite database"):
        ResponseStore(path)
    store = ResponseStore(path, tolerate_faults=True)
    with pytest.raises(StorageUnavailable, match="Move the file aside"):
        store.check_writable()
    path.rename(tmp_path / "aside")
    monkeypatch.setattr(responses, "REOPEN_SECONDS", 0.0)
    store._next_open = 0.0
    assert store.get(turn(store, "back").id).input_items == user("back")
    store.close()
    assert (tmp_path / "aside").read_bytes() == b"not a database" * 100


def test_recover_keeps_what_reads_and_the_old_file(tmp_path):
    from studiolo.store import recovery

    path = tmp_path / "r.sqlite3"
    with ResponseStore(path) as s:
        chain = [None]
        for i in range(200):
            chain.append(turn(s, f"turn {i} " + "y" * 300, chain[-1] if i % 10 else None))
        s.keep_state(chain[-1].id, b"state", 2**31)
    size = sqlite3.connect(path).execute("PRAGMA page_size").fetchone()[0]
    with path.open("r+b") as file:  # two leaf pages of the responses table
        for page in (8, 20):
            file.seek((page - 1) * size)
            file.write(b"\xff" * size)
    damaged = hashlib.sha256(path.read_bytes()).hexdigest()
    assert not recovery.check(path).ok
    report = recovery.recover(path)
    assert 150 < report.recovered < 200 and report.unreadable_regions >= 1 and report.states_dropped == 1
    assert hashlib.sha256(report.kept_as.read_bytes()).hexdigest() == damaged
    assert recovery.check(path).ok
    with ResponseStore(path) as s:
        for response in chain[1:]:
            try:
                got = s.get(response.id)
            except ResponseNotFound:
                continue  # on a damaged page
            assert got.input_items == response.input_items
            s.conversation(response.id)  # every chain is whole: lost ancestors make new roots


def test_opening_on_a_full_disk_still_reads(tmp_path):
    """A real full disk (a 3 MB tmpfs): needs root to mount, skipped otherwise."""
    from studiolo.store.faults import StorageFull

    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)],
                                           check=False, capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        with ResponseStore(disk / "r.sqlite3") as s:
            a = turn(s, "a")
        with (disk / "filler").open("wb") as filler, pytest.raises(OSError):
            while True:
                filler.write(bytes(2**16))
        with ResponseStore(disk / "r.sqlite3", tolerate_faults=True) as s:
            assert s.get(a.id) == a
            with pytest.raises(StorageFull):
                s.check_writable()
            with pytest.raises(StorageFull):
                turn(s, "b")
            assert s.get(a.id) == a
    finally:
        subprocess.run(["umount", str(disk)], check=False)

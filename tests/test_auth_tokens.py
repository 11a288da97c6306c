"""API tokens without a server: the token file (hash only, constant-time compare, revoke and expiry seen
by another connection), the route table every route declares a permission in, the bind rule, and the
response store's owner column (its migration keeps an old file's rows)."""

from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
import time

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from studiolo.api.app import create_app
from studiolo.api.auth import AuthMiddleware, UndeclaredRoutes, route_requirements, token_text
from studiolo.api.page.routes import FILES as PAGE_FILES  # the chat page: public, to ask for a token
from studiolo.api.routing import make_router
from studiolo.config import ServerSettings
from studiolo.domain.auth import PUBLIC, InvalidApiKey, Permission, parse_duration, split_token_text
from studiolo.domain.errors import InvalidRequest
from studiolo.service.auth import StreamCheck, TokenService, bind_refusal
from studiolo.store import recovery, tokens as token_store
from studiolo.store.responses import ResponseNotFound, ResponseStore


@pytest.fixture
def tokens(tmp_path):
    service = TokenService(tmp_path / "tokens.sqlite3")
    yield service
    service.close()


def test_a_token_reads_as_lm_studio_s_and_only_its_hash_is_kept(tokens, tmp_path):
    made = tokens.create("ci", ["inference", "admin"])
    public_id, secret = split_token_text(made.text)
    assert made.text == f"sk-lm-{public_id}:{secret}" and public_id == made.info.id and len(public_id) == 8
    assert re.fullmatch(r"[A-Za-z0-9]{20}", secret)  # LM Studio's SDKs' passkey: about 119 random bits
    assert made.info.permissions == (Permission.inference, Permission.admin)
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())  # the file, its WAL and index
    assert secret.encode() not in raw
    assert hashlib.sha256(secret.encode()).digest() in raw
    assert (tmp_path / "tokens.sqlite3").stat().st_mode & 0o777 == 0o600
    assert tokens.verify(made.text).id == public_id
    assert "token" not in repr(tokens.list()[0]).lower().replace("tokeninfo", "")  # no secret in a listing



def test_a_token_made_in_the_older_format_still_verifies(tokens, monkeypatch):
    # before LM Studio's SDKs were served, secrets were 43 URL-safe characters: such tokens keep working
    old_secret = secrets.token_urlsafe(32)
    monkeypatch.setattr(token_store, "new_token_text", lambda: (f"sk-lm-0badc0de:{old_secret}", "0badc0de", old_secret))
    made = tokens.create("old")
    assert len(old_secret) == 43 and made.text == f"sk-lm-0badc0de:{old_secret}"
    assert tokens.verify(made.text).id == "0badc0de"

def test_the_secret_is_compared_in_constant_time(tokens, monkeypatch):
    made = tokens.create("ci")
    calls = []
    real = token_store.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(token_store.hmac, "compare_digest", spy)
    tokens.verify(made.text)
    with pytest.raises(InvalidApiKey):
        tokens.verify(made.text[:-1] + ("A" if made.text[-1] != "A" else "B"))
    with pytest.raises(InvalidApiKey):  # an unknown id costs a compare too
        tokens.verify("sk-lm-00000000:" + "x" * 43)
    assert len(calls) == 3


@pytest.mark.parametrize("text", [None, "", "Bearer", "sk-lm-", "sk-lm-1234567:abc", "lm-studio", "x" * 5000])
def test_what_is_not_a_token_is_refused_without_being_repeated(tokens, text):
    with pytest.raises(InvalidApiKey) as refused:
        tokens.verify(text)
    assert refused.value.code == "invalid_api_key"
    assert not text or text not in str(refused.value)


def test_a_revoke_by_another_process_counts_at_the_next_check(tokens, tmp_path):
    made = tokens.create("ci", ["admin"])
    check = StreamCheck(tokens, tokens.verify(made.text), made.text)
    assert check.still_valid()
    other = TokenService(tmp_path / "tokens.sqlite3")  # as `studiolo token revoke` opens it
    try:
        other.revoke(made.info.id)
    finally:
        other.close()
    assert not check.still_valid()
    with pytest.raises(InvalidApiKey, match="revoked"):
        tokens.verify(made.text)
    assert tokens.list()[0].state(time.time()) == "revoked"


def test_an_expired_token_is_refused(tokens):
    made = tokens.create("short", expires_in=1)
    check = StreamCheck(tokens, tokens.verify(made.text), made.text)
    time.sleep(1.05)
    assert not check.still_valid()  # no write happened: the expiry alone ends it
    with pytest.raises(InvalidApiKey, match="expired"):
        tokens.verify(made.text)


@pytest.mark.parametrize(("text", "seconds"), [("30d", 30 * 86400), ("12h", 43200), ("90m", 5400), ("45s", 45),
                                               ("2w", 14 * 86400), ("600", 600), (600, 600)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["0", "-1d", "1y", "soon", "", True])
def test_bad_durations_name_the_field(text):
    with pytest.raises(InvalidRequest) as refused:
        parse_duration(text)
    assert refused.value.param == "expires_in"


@pytest.mark.parametrize("permissions", [[], ["root"], "admin", [None]])
def test_bad_permissions_name_the_field(tokens, permissions):
    with pytest.raises(InvalidRequest) as refused:
        tokens.create("x", permissions)
    assert refused.value.param == "permissions"


@pytest.mark.parametrize(("headers", "found"), [
    ([(b"authorization", b"Bearer sk-lm-1")], "sk-lm-1"),
    ([(b"authorization", b"bearer  sk-lm-2 ")], "sk-lm-2"),
    ([(b"x-api-key", b"sk-lm-3")], "sk-lm-3"),
    ([(b"authorization", b"sk-lm-4")], "sk-lm-4"),  # BladeLLM's bare header
    ([(b"x-api-key", b"sk-lm-5"), (b"authorization", b"Bearer sk-lm-6")], "sk-lm-6"),
    ([], None),
])
def test_where_a_token_is_read_from(headers, found):
    assert token_text({"headers": headers}) == found


def test_every_route_of_the_app_declares_what_it_needs():
    table = dict((getattr(route, "path", ""), need) for route, need in route_requirements(create_app().routes))
    # LM Studio's SDKs find the server by the greeting, and authenticate in their sockets' first frame
    sdk_sockets = ["/llm", "/embedding", "/system", "/files", "/repository", "/diagnostics", "/plugins",
                   "/runtime", "/retrieval"]
    assert [path for path, need in table.items() if need == PUBLIC and path not in PAGE_FILES] == [
        "/health", "/lmstudio-greeting", *sdk_sockets]
    assert table["/api/v1/models/load"] == table["/api/v1/models/download"] == Permission.models
    assert table["/studiolo/log/stream"] == table["/api/v1/tokens"] == table["/studiolo/memory"] == Permission.admin
    assert table["/v1/chat/completions"] == table["/api/v1/chat"] == table["/api/v1/models"] == Permission.inference
    assert table["/v1/messages"] == table["/v1/messages/count_tokens"] == Permission.inference


def _bare_app(settings: ServerSettings, *routers) -> FastAPI:
    app = FastAPI()
    app.add_middleware(AuthMiddleware, server=app, settings=settings)
    for router in routers:
        app.include_router(router)
    return app


def test_a_route_declaring_nothing_stops_the_server_from_starting():
    forgotten = make_router()

    @forgotten.get("/forgotten")
    async def _forgotten() -> dict:
        return {}

    with pytest.raises(UndeclaredRoutes, match="/forgotten"):
        route_requirements(_bare_app(ServerSettings()).routes + forgotten.routes)
    with pytest.raises(RuntimeError, match="forgotten"), TestClient(_bare_app(ServerSettings(), forgotten)):
        pass  # the lifespan's startup fails, with auth off as well as on


@pytest.mark.parametrize(("host", "require_auth", "insecure", "refused"), [
    ("127.0.0.1", False, False, False), ("::1", False, False, False), ("localhost", False, False, False),
    ("127.0.0.2", False, False, False), ("0.0.0.0", False, False, True), ("192.168.1.5", False, False, True),
    ("::", False, False, True), ("myhost.lan", False, False, True), ("0.0.0.0", True, False, False),
    ("0.0.0.0", False, True, False),
])
def test_binding_beyond_loopback_needs_auth_or_an_explicit_insecure(host, require_auth, insecure, refused):
    reason = bind_refusal(host, require_auth, insecure)
    assert (reason is not None) == refused
    if refused:
        assert "--require-auth" in reason and "--insecure-no-auth" in reason


def test_a_server_whose_settings_bind_beyond_loopback_without_auth_does_not_start(monkeypatch, tmp_path):
    monkeypatch.setenv("STUDIOLO_HOME", str(tmp_path))
    with pytest.raises(RuntimeError, match="Refusing to serve on 0.0.0.0"), \
            TestClient(_bare_app(ServerSettings(host="0.0.0.0"))):
        pass


OLD_SCHEMA = """CREATE TABLE responses (
    id TEXT PRIMARY KEY, previous_response_id TEXT REFERENCES responses(id), model TEXT NOT NULL,
    created_at REAL NOT NULL, status TEXT NOT NULL, instructions TEXT, input_items TEXT NOT NULL,
    output_items TEXT NOT NULL, usage TEXT NOT NULL, metadata TEXT NOT NULL, deleted_at REAL) STRICT;
CREATE INDEX responses_by_previous ON responses(previous_response_id);
CREATE TABLE response_states (response_id TEXT PRIMARY KEY REFERENCES responses(id) ON DELETE CASCADE,
    data BLOB NOT NULL) STRICT;
INSERT INTO responses VALUES ('resp_old1', NULL, 'm', 1.0, 'completed', NULL, '[{"a":1}]', '[]', '{}', '{}', NULL);
INSERT INTO responses VALUES ('resp_old2', 'resp_old1', 'm', 2.0, 'completed', NULL, '[]', '[]', '{}', '{}', NULL);
PRAGMA user_version = 1;
"""


def _old_file(path):
    conn = sqlite3.connect(path)
    conn.executescript(OLD_SCHEMA)
    conn.close()
    return path


def test_a_database_from_before_owners_opens_and_keeps_its_rows(tmp_path):
    with ResponseStore(_old_file(tmp_path / "responses.sqlite3")) as store:
        assert [r.id for r in store.conversation("resp_old2")] == ["resp_old1", "resp_old2"]
        assert store.get("resp_old1").input_items == [{"a": 1}] and store.get("resp_old1").owner is None
        with pytest.raises(ResponseNotFound):  # with auth on, nobody's rows are no token's
            store.get("resp_old1", owner="abcd1234")
        continued = store.create("m", [], [], {}, previous_response_id="resp_old2")  # auth off: all are visible
        assert continued.owner is None


def test_recovering_a_database_from_before_owners_keeps_its_rows(tmp_path):
    source = _old_file(tmp_path / "responses.sqlite3")
    report = recovery.recover(source, tmp_path / "out.sqlite3")
    assert report.recovered == 2
    with ResponseStore(tmp_path / "out.sqlite3") as store:
        assert store.get("resp_old2").previous_response_id == "resp_old1"


def test_a_token_s_responses_are_its_own(tmp_path):
    with ResponseStore(tmp_path / "responses.sqlite3") as store:
        mine = store.create("m", [{"x": 1}], [], {}, owner="aaaaaaaa")
        for read in (store.get, store.input_items, store.conversation, store.load_state, store.delete):
            with pytest.raises(ResponseNotFound):
                read(mine.id, owner="bbbbbbbb")
        with pytest.raises(ResponseNotFound):
            store.create("m", [], [], {}, previous_response_id=mine.id, owner="bbbbbbbb")
        child = store.create("m", [], [], {}, previous_response_id=mine.id, owner="aaaaaaaa")
        assert [r.id for r in store.conversation(child.id, owner="aaaaaaaa")] == [mine.id, child.id]
        assert store.get(mine.id).owner == "aaaaaaaa"  # auth off sees every response
        store.delete(child.id, owner="aaaaaaaa")

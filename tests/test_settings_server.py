"""The ``server`` section of STUDIOLO_HOME/settings.json: read by ServerSettings field name with type
checks, errors naming the key, and the precedence option given > file > default, through
`studiolo server start` (foreground and the background re-exec) as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx
import pytest

from studiolo.config import DEFAULT_PORT, EngineSettings, ServerSettings
from studiolo.server_settings import SettingsError, checked_fields, load_server_settings
from tests.conftest import SMOLLM, RunningServer, free_port, home_with_models, loaded_instances


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("STUDIOLO_HOME", str(tmp_path))
    return tmp_path


def write_settings(home: Path, document: dict) -> None:
    (home / "settings.json").write_text(json.dumps(document))


def test_without_a_file_or_a_section_the_defaults_hold(home):
    assert _comparable(load_server_settings()) == _comparable(ServerSettings())
    write_settings(home, {"limits": {"max_messages": 5}})
    settings = load_server_settings()
    assert settings.port == DEFAULT_PORT and settings.limits.max_messages == 5


def test_the_section_sets_fields_by_name_and_given_options_win(home):
    write_settings(home, {"server": {
        "port": 8080, "host": "0.0.0.0", "cors": True, "jit_loading": False, "auto_evict": False,
        "jit_ttl": 600, "reasoning_output": "content", "image_url_hosts": ["images.example"],
        "preload_models": [SMOLLM], "engine": {"parallel": 2, "context_length": 1024},
    }})
    settings = load_server_settings()
    assert (settings.port, settings.host, settings.cors, settings.jit_loading, settings.auto_evict) == (
        8080, "0.0.0.0", True, False, False)
    assert settings.jit_ttl == 600.0 and settings.reasoning_output == "content"
    assert settings.image_url_hosts == ("images.example",) and settings.preload_models == (SMOLLM,)
    assert (settings.engine.parallel, settings.engine.context_length) == (2, 1024)
    assert settings.engine.batch_size == EngineSettings.batch_size  # not named: the default

    given = load_server_settings({"port": 9090, "cors": False, "engine": {"parallel": 3}})
    assert (given.port, given.cors, given.host) == (9090, False, "0.0.0.0")
    assert (given.engine.parallel, given.engine.context_length) == (3, 1024)


def test_null_turns_the_jit_ttl_off(home):
    write_settings(home, {"server": {"jit_ttl": None}})
    assert load_server_settings().jit_ttl is None


@pytest.mark.parametrize(("section", "words"), [
    ({"prot": 8080}, "'server.prot' is not a known setting"),
    ({"port": "8080"}, "'server.port' must be a non-negative integer, not \"8080\""),
    ({"cors": 1}, "'server.cors' must be true or false, not 1"),
    ({"jit_ttl": "1h"}, "'server.jit_ttl' must be a non-negative number or null"),
    ({"preload_models": [SMOLLM, 3]}, "'server.preload_models' must be a list (each item a string)"),
    ({"reasoning_output": "thoughts"}, "'server.reasoning_output' must be one of reasoning_content, reasoning"),
    ({"engine": {"parallel": True}}, "'server.engine.parallel' must be a non-negative integer, not true"),
    ({"engine": {"gpu": 1}}, "'server.engine.gpu' is not a known setting"),
    ({"engine": 4}, "'server.engine' must be an object"),
    ({"limits": {"max_messages": 3}}, "'server.limits' cannot be set here: it is its own \"limits\" section"),
    ({"instance_id": "x"}, "'server.instance_id' cannot be set here"),
])
def test_a_bad_key_is_an_error_naming_it(home, section, words):
    write_settings(home, {"server": section})
    with pytest.raises(SettingsError) as raised:
        load_server_settings()
    assert words in str(raised.value) and str(home / "settings.json") in str(raised.value)


def test_tls_files_go_together(home):
    (home / "cert.pem").write_text("x")
    with pytest.raises(SettingsError, match="give both or neither"):
        load_server_settings({"tls_cert": str(home / "cert.pem")})
    with pytest.raises(SettingsError, match="tls_key: cannot read"):
        load_server_settings({"tls_cert": str(home / "cert.pem"), "tls_key": str(home / "absent.pem")})


@dataclass
class LaterSettings:
    """Fields other work adds to ServerSettings, as they will be declared."""

    require_auth: bool = False
    cors_origins: tuple[str, ...] = ()
    allow_hosts: tuple[str, ...] = ()
    max_queue: int | None = None
    header_names: list[str] = field(default_factory=list)
    mode: Literal["strict", "lax"] = "strict"


def test_fields_added_later_are_read_with_no_change_to_the_reader():
    values = {"require_auth": True, "cors_origins": ["https://app.example"], "allow_hosts": ["box.lan"],
              "max_queue": 8, "header_names": ["x-a"], "mode": "lax"}
    assert checked_fields(LaterSettings, values, "server") == {
        "require_auth": True, "cors_origins": ("https://app.example",), "allow_hosts": ("box.lan",), "max_queue": 8,
        "header_names": ["x-a"], "mode": "lax"}
    with pytest.raises(SettingsError, match="'server.require_auth' must be true or false"):
        checked_fields(LaterSettings, {"require_auth": "yes"}, "server")
    with pytest.raises(SettingsError, match="'server.mode' must be one of \"strict\", \"lax\", not \"loose\""):
        checked_fields(LaterSettings, {"mode": "loose"}, "server")


def _comparable(settings: ServerSettings) -> dict:
    fields = dict(vars(settings))
    fields.pop("instance_id")  # each process its own
    return fields


# ---- through the command line ----


def studiolo(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "STUDIOLO_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "studiolo", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def served_settings(port: int) -> dict:
    """What the server on ``port`` runs with, as a client sees it."""
    loaded = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=60,
                        json={"model": SMOLLM, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1})
    return {"jit": loaded.status_code == 200}


def child_arguments(home: Path) -> list[str]:
    pid = json.loads((home / "server.json").read_text())["pid"]
    arguments = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    return arguments[arguments.index("start") + 1:]


def test_start_takes_the_files_port_and_a_given_option_over_the_file(tmp_path, default_models):
    home = home_with_models(tmp_path / "home", {SMOLLM: default_models[SMOLLM]})
    from_file, given = free_port(), free_port()
    write_settings(home, {"server": {"port": from_file, "jit_loading": False}})
    started = studiolo(home, "server", "start")
    try:
        assert started.returncode == 0 and f"running on port {from_file}" in started.stdout, started.stderr
        assert child_arguments(home) == ["--foreground"]  # the child reads the file itself
        assert served_settings(from_file) == {"jit": False}
    finally:
        studiolo(home, "server", "stop")
    started = studiolo(home, "server", "start", "--port", str(given), "--jit", "--parallel", "2")
    try:
        assert started.returncode == 0 and f"running on port {given}" in started.stdout, started.stderr
        # only what was given, in the command's own spelling
        assert child_arguments(home) == ["--foreground", "--port", str(given), "--parallel", "2", "--jit"]
        assert served_settings(given) == {"jit": True}
        assert json.loads(studiolo(home, "server", "status", "--json").stdout) == {"running": True, "port": given}
    finally:
        studiolo(home, "server", "stop")


def test_start_refuses_a_bad_settings_file_naming_the_key(tmp_path):
    write_settings(tmp_path, {"server": {"port": 8080, "bind": "0.0.0.0"}})
    started = studiolo(tmp_path, "server", "start", "--foreground")
    assert started.returncode == 2 and "'server.bind' is not a known setting" in started.stderr
    assert not (tmp_path / "server.json").exists()


@pytest.mark.parametrize(("jit_ttl", "expected"), [(120, 120), (None, None)])
def test_the_files_jit_ttl_is_a_jit_loads_idle_ttl(tmp_path, default_models, jit_ttl, expected):
    home = home_with_models(tmp_path / "home", {SMOLLM: default_models[SMOLLM]})
    write_settings(home, {"server": {"jit_ttl": jit_ttl, "engine": {"context_length": 512, "parallel": 1}}})
    server = RunningServer(home, free_port(), [])
    try:
        with httpx.Client(base_url=server.base_url, timeout=60) as http:
            body = {"model": SMOLLM, "prompt": "Once", "max_tokens": 1}
            assert http.post("/v1/completions", json=body).status_code == 200
            [instance] = loaded_instances(http).values()
        assert instance["status"]["jit_loaded"] is True and instance["status"]["ttl_seconds"] == expected
        assert instance["config"]["context_length"] == 512 and instance["config"]["parallel"] == 1
    finally:
        server.stop()

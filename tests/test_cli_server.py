"""`studiolo server start|stop|status`, run as a user would, against its own STUDIOLO_HOME."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx

from tests.conftest import SMOLLM, free_port, home_with_models


def studiolo(home, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    env = {**os.environ, "STUDIOLO_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "studiolo", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_start_status_stop_in_the_background(tmp_path):
    port = free_port()
    assert json.loads(studiolo(tmp_path, "server", "status", "--json").stdout) == {"running": False}

    started = studiolo(tmp_path, "server", "start", "--port", str(port))
    try:
        assert started.returncode == 0, started.stderr
        assert f"running on port {port}" in started.stdout
        # start returned only once the server answers
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models").json()["data"] == []

        assert json.loads(studiolo(tmp_path, "server", "status", "--json").stdout) == {"running": True, "port": port}
        assert f"running on port {port}" in studiolo(tmp_path, "server", "status").stdout
        assert "already running" in studiolo(tmp_path, "server", "start", "--port", str(port)).stdout
        assert (tmp_path / "logs" / "server.log").exists()
    finally:
        stopped = studiolo(tmp_path, "server", "stop")
    assert stopped.returncode == 0 and "Stopped" in stopped.stdout
    assert json.loads(studiolo(tmp_path, "server", "status", "--json").stdout) == {"running": False}
    assert "not running" in studiolo(tmp_path, "server", "stop").stdout


def test_a_terminated_foreground_server_removes_its_record(tmp_path):
    port = free_port()
    env = {**os.environ, "STUDIOLO_HOME": str(tmp_path)}
    command = [sys.executable, "-m", "studiolo", "server", "start", "--foreground", "--port", str(port)]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and studiolo(tmp_path, "server", "status", "--json").stdout.find("true") < 0:
            time.sleep(0.2)
        assert (tmp_path / "server.json").exists()
        server.send_signal(signal.SIGTERM)  # what `kill <pid>` and service managers send
        assert server.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        server.kill()
    assert not (tmp_path / "server.json").exists()


def test_start_fails_clearly_when_the_port_is_taken(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = studiolo(tmp_path, "server", "start", "--port", str(port))
    assert result.returncode == 1
    assert "failed to start" in result.stderr
    assert json.loads(studiolo(tmp_path, "server", "status", "--json").stdout) == {"running": False}


def test_a_stale_record_pointing_at_another_process_is_ignored(tmp_path):
    """A record left by a killed server whose pid now belongs to something else: never signal it."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "server.json").write_text(json.dumps({"pid": bystander.pid, "host": "127.0.0.1", "port": 1}))
        assert json.loads(studiolo(tmp_path, "server", "status", "--json").stdout) == {"running": False}
        assert "not running" in studiolo(tmp_path, "server", "stop").stdout
        assert bystander.poll() is None  # still alive
        assert not (tmp_path / "server.json").exists()
    finally:
        bystander.kill()
        bystander.wait()


def test_start_does_not_mistake_another_server_on_the_port_for_its_own(tmp_path):
    """Another HTTP server (LM Studio also likes port 1234) answers there: start must fail, not succeed."""
    import http.server
    import threading

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        result = studiolo(tmp_path, "server", "start", "--port", str(other.server_address[1]))
    finally:
        other.shutdown()
    assert result.returncode == 1 and "failed to start" in result.stderr


def test_health_names_the_instance_not_the_process(http, server):
    """The random id the server recorded in server.json, the CLI's check; never the pid (an internal)."""
    body = http.get("/health").json()
    recorded = json.loads((server.home / "server.json").read_text())
    assert recorded["pid"] == server.process.pid
    assert body["status"] == "ok" and body["instance"] == recorded["instance"] and len(body["instance"]) == 32
    assert set(body) == {"status", "instance", "version", "storage"}


def test_cors_is_off_unless_asked(tmp_path, server):
    preflight = {"Origin": "http://example.com", "Access-Control-Request-Method": "POST"}
    plain = httpx.options(f"{server.base_url}/v1/chat/completions", headers=preflight)
    assert "access-control-allow-origin" not in plain.headers

    port = free_port()
    started = studiolo(tmp_path, "server", "start", "--port", str(port), "--cors")
    try:
        assert started.returncode == 0, started.stderr
        assert "CORS is on" in started.stderr
        response = httpx.options(f"http://127.0.0.1:{port}/v1/chat/completions", headers=preflight)
        assert response.status_code == 204  # a preflight's answer has no body (api/browser.py)
        assert response.headers["access-control-allow-origin"] == "*"
    finally:
        studiolo(tmp_path, "server", "stop")


def test_stop_ends_a_server_busy_with_an_endless_stream(tmp_path, chat_models):
    """Running requests are cut after a short grace period; the models unload and the process exits cleanly."""
    import threading

    home = home_with_models(tmp_path, chat_models)
    port = free_port()
    assert studiolo(home, "server", "start", "--port", str(port)).returncode == 0
    first_chunk = threading.Event()

    def endless_stream():
        body = {"model": SMOLLM, "prompt": "Once", "max_tokens": -1, "ignore_eos": True, "stream": True}
        try:
            with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=60) as response:
                for _ in response.iter_lines():
                    first_chunk.set()
        except httpx.HTTPError:
            pass  # the server went away, as it should

    reader = threading.Thread(target=endless_stream, daemon=True)
    reader.start()
    assert first_chunk.wait(30)
    stopped = studiolo(home, "server", "stop")
    assert stopped.returncode == 0 and "Stopped" in stopped.stdout
    log = (home / "logs" / "server.log").read_text()
    assert "Finished server process" in log  # a clean exit, not the SIGKILL fallback
    reader.join(10)

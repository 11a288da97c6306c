"""``studiolo server start|stop|status``, as ``lms server`` does them.

A server in the foreground records its pid and port in ``STUDIOLO_HOME/server.json`` and
removes the record when it exits. ``start`` without ``--foreground`` runs that same
foreground server as a detached child (output to ``STUDIOLO_HOME/logs/server.log``) and
returns once it answers HTTP.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import typer

from studiolo.config import DEFAULT_BIND, DEFAULT_PORT, EngineSettings, ServerSettings, logs_dir, server_state_file

app = typer.Typer(help="Start, stop and inspect the local server.", no_args_is_help=True)

START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 15.0


def read_state() -> dict | None:
    path = server_state_file()
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return state if _process_alive(state.get("pid", -1)) else None


def _process_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _answers(host: str, port: int) -> bool:
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    try:
        return httpx.get(f"http://{host}:{port}/v1/models", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def _recorded(host: str, port: int):
    path = server_state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": os.getpid(), "host": host, "port": port}))
    try:
        yield
    finally:
        try:
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()
        except (OSError, ValueError):
            pass


def run_foreground(settings: ServerSettings) -> None:
    import uvicorn

    from studiolo.api.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with _recorded(settings.host, settings.port):
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")


@app.command()
def start(
    port: int = typer.Option(DEFAULT_PORT, "--port", "-p", help="Port to listen on."),
    bind: str = typer.Option(DEFAULT_BIND, "--bind", help="Address to bind (0.0.0.0 serves the network)."),
    cors: bool = typer.Option(False, "--cors", help="Allow cross-origin requests from browsers."),
    foreground: bool = typer.Option(False, "--foreground", help="Serve in this process until interrupted."),
    parallel: int = typer.Option(EngineSettings.parallel, "--parallel", help="Sequences decoded together per model."),
    context_length: int = typer.Option(EngineSettings.context_length, "--context-length", help="Context per sequence."),
) -> None:
    """Start the server (in the background unless --foreground)."""
    running = read_state()
    if running:
        typer.echo(f"The server is already running on port {running['port']}.")
        return
    if cors:
        typer.echo("CORS is on: any web page you visit can call this server.", err=True)
    if bind not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(f"Serving on {bind}: other machines on the network can reach this server.", err=True)
    engine = EngineSettings(context_length=context_length, parallel=parallel)
    if foreground:
        run_foreground(ServerSettings(host=bind, port=port, cors=cors, engine=engine))
        return
    _start_background(port, bind, cors, parallel, context_length)


def _start_background(port: int, bind: str, cors: bool, parallel: int, context_length: int) -> None:
    log_path = logs_dir() / "server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "studiolo", "server", "start", "--foreground", "--port", str(port)]
    command += ["--bind", bind, "--parallel", str(parallel), "--context-length", str(context_length)]
    command += ["--cors"] if cors else []
    with log_path.open("ab") as log_file:
        child = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if child.poll() is not None:
            typer.echo(f"The server failed to start; see {log_path}:\n{_tail(log_path)}", err=True)
            raise typer.Exit(1)
        if _answers(bind, port):
            typer.echo(f"Success! Server is now running on port {port}")
            return
        time.sleep(0.2)
    child.terminate()
    typer.echo(f"The server did not answer within {START_TIMEOUT_SECONDS:.0f}s; see {log_path}", err=True)
    raise typer.Exit(1)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@app.command()
def stop() -> None:
    """Stop the running server."""
    state = read_state()
    if not state:
        typer.echo("The server is not running.")
        return
    pid = state["pid"]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while _process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _process_alive(pid):
        os.kill(pid, signal.SIGKILL)
    server_state_file().unlink(missing_ok=True)
    typer.echo("Stopped the server.")


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="Print {\"running\": ..., \"port\": ...}.")) -> None:
    """Tell whether the server runs, and on which port."""
    state = read_state()
    running = bool(state) and _answers(state.get("host", DEFAULT_BIND), state["port"])
    if as_json:
        typer.echo(json.dumps({"running": True, "port": state["port"]} if running else {"running": False}))
    elif running:
        typer.echo(f"The server is running on port {state['port']}.")
    else:
        typer.echo("The server is not running.")

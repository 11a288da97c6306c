"""``studiolo server start|stop|status``, as ``lms server`` does them.

A server in the foreground records its pid and port in ``STUDIOLO_HOME/server.json`` and
removes the record when it exits. ``start`` without ``--foreground`` runs that same
foreground server as a detached child (output to ``STUDIOLO_HOME/logs/server.log``) and
returns once the child itself answers ``/health``, not merely something on the port.

A record can outlive its server (killed, crashed), and pids get reused, so a recorded pid
counts only while its process is still a studiolo server. A record that cannot be written (a full
disk) does not stop the server: it serves what needs no disk, and says that ``status`` and ``stop``
will not find it.
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
from enum import StrEnum
from pathlib import Path

import httpx
import typer

from studiolo.config import (
    DEFAULT_BIND,
    DEFAULT_PORT,
    MAX_PARALLEL,
    MIN_CONTEXT,
    EngineSettings,
    ServerSettings,
    logs_dir,
    server_state_file,
)

app = typer.Typer(help="Start, stop and inspect the local server.", no_args_is_help=True)

START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 15.0
GRACEFUL_SHUTDOWN_SECONDS = 5


class ReasoningOutput(StrEnum):
    """ServerSettings.reasoning_output's values."""

    reasoning_content = "reasoning_content"
    reasoning = "reasoning"
    content = "content"


def read_state() -> dict | None:
    """The recorded server, if its process is still a studiolo server."""
    try:
        state = json.loads(server_state_file().read_text())
    except (OSError, ValueError):
        return None
    return state if _is_studiolo_process(state.get("pid")) else None


def _is_studiolo_process(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        return b"studiolo" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _url(host: str, port: int) -> str:
    """A URL that reaches a server bound to ``host``: wildcards become loopback, IPv6 gets brackets."""
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _answering_pid(host: str, port: int) -> int | None:
    """The pid of the studiolo server answering there; None if nothing, or something else, answers."""
    try:
        response = httpx.get(f"{_url(host, port)}/health", timeout=2.0)
        return int(response.json()["pid"]) if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


@contextmanager
def _recorded(host: str, port: int):
    path = server_state_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"pid": os.getpid(), "host": host, "port": port}))
    except OSError as exc:
        _forget_partial_record(path)
        logging.getLogger("studiolo.server").error(
            "could not record this server in %s (%s): it serves anyway, but `studiolo server status` and "
            "`studiolo server stop` will not find it (stop it with Ctrl+C or kill %d)", path, exc, os.getpid())
    try:
        yield
    finally:
        try:
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()
        except (OSError, ValueError):
            pass


def _forget_partial_record(path: Path) -> None:
    # a write cut short by a full disk leaves an empty or partial file, which would read as no server
    try:
        if path.is_file() and not path.read_text().strip().endswith("}"):
            path.unlink()
    except OSError:
        pass


def _exit_on_sigterm(signum: int, frame) -> None:
    raise SystemExit(128 + signum)


def run_foreground(settings: ServerSettings) -> None:
    import uvicorn

    from studiolo.api.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # uvicorn shuts down on SIGTERM, restores the handler it found and raises the signal again;
    # with this handler (not the default, which ends the process at once) the raise unwinds
    # through _recorded, so server.json goes with the server
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with _recorded(settings.host, settings.port):
        uvicorn.run(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_level="info",
            # on stop, give running requests a moment, then cancel them and unload models cleanly
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        )


@app.command()
def start(
    port: int = typer.Option(DEFAULT_PORT, "--port", "-p", min=1, max=65535, help="Port to listen on."),
    bind: str = typer.Option(DEFAULT_BIND, "--bind", help="Address to bind (0.0.0.0 serves the network)."),
    cors: bool = typer.Option(False, "--cors", help="Allow cross-origin requests from browsers."),
    foreground: bool = typer.Option(False, "--foreground", help="Serve in this process until interrupted."),
    parallel: int = typer.Option(
        EngineSettings.parallel, "--parallel", min=1, max=MAX_PARALLEL, help="Sequences decoded together per model."
    ),
    context_length: int = typer.Option(
        EngineSettings.context_length, "--context-length", min=MIN_CONTEXT, help="Context per sequence, in tokens."
    ),
    threads: int = typer.Option(
        EngineSettings().threads, "--threads", min=1, help="CPU threads per model (default: all cores)."
    ),
    jit: bool = typer.Option(True, "--jit/--no-jit", help="Load a model when a request names it."),
    auto_evict: bool = typer.Option(
        True, "--auto-evict/--no-auto-evict", help="Keep at most one just-in-time loaded model."
    ),
    reasoning_output: ReasoningOutput = typer.Option(
        ReasoningOutput.reasoning_content, "--reasoning-output",
        help="Where /v1/chat/completions puts a reasoning model's reasoning: the message's reasoning_content, "
             "its reasoning field (as gpt-oss clients read it), or the content, as <think>...</think>.",
    ),
    allow_image_urls: str = typer.Option(
        "", "--allow-image-urls", metavar="HOST[:PORT],...",
        help="Fetch http(s) image URLs in chat requests from these hosts only (default: none; images come "
             "inline as data: URLs). A server that fetches URLs for its clients can reach your network.",
    ),
    cors_origins: str = typer.Option(
        "", "--cors-origins", metavar="ORIGIN,...",
        help="Allow cross-origin requests from pages of these origins only (https://app.example,...).",
    ),
    allow_hosts: str = typer.Option(
        "", "--allow-hosts", metavar="HOST,...",
        help="Answer requests addressed to these host names too (*.example.com: its subdomains). On a loopback "
             "bind only loopback names are answered otherwise (DNS rebinding).",
    ),
) -> None:
    """Start the server (in the background unless --foreground)."""
    running = read_state()
    if running:
        typer.echo(f"The server is already running on port {running['port']}.")
        return
    if cors and not cors_origins:
        typer.echo("CORS is on: any web page you visit can call this server.", err=True)
    if bind not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(f"Serving on {bind}: other machines on the network can reach this server.", err=True)
    if foreground:
        engine = EngineSettings(context_length=context_length, parallel=parallel, threads=threads)
        hosts = tuple(host.strip() for host in allow_image_urls.split(",") if host.strip())
        run_foreground(ServerSettings(host=bind, port=port, cors=cors, jit_loading=jit, auto_evict=auto_evict,
                                      engine=engine, reasoning_output=reasoning_output.value,
                                      image_url_hosts=hosts, cors_origins=_listed(cors_origins),
                                      allowed_hosts=_listed(allow_hosts)))
        return
    options = ["--bind", bind, "--parallel", str(parallel), "--context-length", str(context_length)]
    options += ["--threads", str(threads), "--jit" if jit else "--no-jit"]
    options += ["--auto-evict" if auto_evict else "--no-auto-evict"] + (["--cors"] if cors else [])
    options += ["--reasoning-output", reasoning_output.value]
    options += ["--allow-image-urls", allow_image_urls] if allow_image_urls else []
    options += ["--cors-origins", cors_origins] if cors_origins else []
    options += ["--allow-hosts", allow_hosts] if allow_hosts else []
    _start_background(port, bind, options)


def _listed(values: str) -> tuple[str, ...]:
    """A comma-separated option's values."""
    return tuple(value.strip() for value in values.split(",") if value.strip())


def _start_background(port: int, bind: str, options: list[str]) -> None:
    log_path = logs_dir() / "server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "studiolo", "server", "start", "--foreground", "--port", str(port), *options]
    with log_path.open("ab") as log_file:
        child = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if child.poll() is not None:
            typer.echo(f"The server failed to start; see {log_path}:\n{_tail(log_path)}", err=True)
            raise typer.Exit(1)
        if _answering_pid(bind, port) == child.pid:
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
        server_state_file().unlink(missing_ok=True)  # a record left behind by a server that died
        typer.echo("The server is not running.")
        return
    pid = state["pid"]
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        while _process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _process_alive(pid):
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # it ended on its own meanwhile
    except PermissionError as exc:
        typer.echo(f"Not allowed to stop the server (pid {pid}): it belongs to another user.", err=True)
        raise typer.Exit(1) from exc
    server_state_file().unlink(missing_ok=True)
    typer.echo("Stopped the server.")


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help='Print {"running": ..., "port": ...}.')) -> None:
    """Tell whether the server runs, and on which port."""
    state = read_state() or {}
    running = bool(state) and _answering_pid(state.get("host", DEFAULT_BIND), state["port"]) == state["pid"]
    if as_json:
        typer.echo(json.dumps({"running": True, "port": state["port"]} if running else {"running": False}))
    elif running:
        typer.echo(f"The server is running on port {state['port']}.")
    else:
        typer.echo("The server is not running.")

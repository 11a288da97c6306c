"""``studiolo server start|stop|status``, as ``lms server`` does them.

A server in the foreground records its pid, port, random instance id (and TLS certificate) in
``STUDIOLO_HOME/server.json`` and removes the record when it exits. ``start`` without ``--foreground``
runs that same foreground server as a detached child (output to ``STUDIOLO_HOME/logs/server.log``)
and returns once the child itself answers ``/health`` with the instance id it recorded, not merely
something on the port. Options not given come from the settings file (server_settings.py).

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

from studiolo.cli.server_options import given_command_line, given_settings
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
from studiolo.server_settings import SettingsError, load_server_settings
from studiolo.service.auth import BOOTSTRAP_HINT, TokenService, bind_refusal

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


def _url(host: str, port: int, scheme: str = "http") -> str:
    """A URL that reaches a server bound to ``host``: wildcards become loopback, IPv6 gets brackets."""
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def _answering_instance(host: str, port: int, tls_cert: str | None = None) -> str | None:
    """The instance id of the studiolo server answering there; None if nothing, or something else,
    answers. With ``tls_cert``, over HTTPS trusting that certificate (the server's own)."""
    scheme, verify = ("https", tls_cert) if tls_cert else ("http", True)
    try:
        response = httpx.get(f"{_url(host, port, scheme)}/health", timeout=2.0, verify=_trust(verify))
        return str(response.json()["instance"]) if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError, KeyError, TypeError, OSError):
        return None


def _trust(verify: str | bool):
    """httpx's verify for a CA file (the server's own certificate): an SSL context trusting only it."""
    if isinstance(verify, bool):
        return verify
    import ssl

    return ssl.create_default_context(cafile=verify)


@contextmanager
def _recorded(settings: ServerSettings):
    host, port = settings.host, settings.port
    path = server_state_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # the instance id: the command line's check that the server on the port is this one
        record = {"pid": os.getpid(), "host": host, "port": port, "instance": settings.instance_id,
                  "tls_cert": settings.tls_cert}
        path.write_text(json.dumps(record))
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
    with _recorded(settings):
        uvicorn.run(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_level="info",
            # on stop, give running requests a moment, then cancel them and unload models cleanly
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
            ssl_certfile=settings.tls_cert,
            ssl_keyfile=settings.tls_key,
            # a WebSocket frame (LM Studio's SDK protocol) is bounded as a request body is; the slack lets
            # the session's own check answer first, with the limit in its close reason
            ws_max_size=(settings.limits.max_body_mib + 1) * 2**20,
        )


@app.command()
def start(
    ctx: typer.Context,
    port: int | None = typer.Option(
        None, "--port", "-p", min=1, max=65535, help=f"Port to listen on (default {DEFAULT_PORT})."
    ),
    bind: str | None = typer.Option(
        None, "--bind", help=f"Address to bind (default {DEFAULT_BIND}; 0.0.0.0 serves the network)."
    ),
    cors: bool | None = typer.Option(None, "--cors/--no-cors", help="Allow cross-origin requests from browsers."),
    foreground: bool = typer.Option(False, "--foreground", help="Serve in this process until interrupted."),
    parallel: int | None = typer.Option(
        None, "--parallel", min=1, max=MAX_PARALLEL,
        help=f"Sequences decoded together per model (default {EngineSettings.parallel}).",
    ),
    context_length: int | None = typer.Option(
        None, "--context-length", min=MIN_CONTEXT,
        help=f"Context per sequence, in tokens (default {EngineSettings.context_length}).",
    ),
    threads: int | None = typer.Option(None, "--threads", min=1, help="CPU threads per model (default: all cores)."),
    jit: bool | None = typer.Option(None, "--jit/--no-jit", help="Load a model when a request names it (default on)."),
    auto_evict: bool | None = typer.Option(
        None, "--auto-evict/--no-auto-evict", help="Keep at most one just-in-time loaded model (default on)."
    ),
    reasoning_output: ReasoningOutput | None = typer.Option(
        None, "--reasoning-output",
        help="Where /v1/chat/completions puts a reasoning model's reasoning: the message's reasoning_content "
             "(default), its reasoning field (as gpt-oss clients read it), or the content, as <think>...</think>.",
    ),
    allow_image_urls: str | None = typer.Option(
        None, "--allow-image-urls", metavar="HOST[:PORT],...",
        help="Fetch http(s) image URLs in chat requests from these hosts only (default: none; images come "
             "inline as data: URLs). A server that fetches URLs for its clients can reach your network.",
    ),
    jit_ttl: float | None = typer.Option(
        None, "--jit-ttl", min=0, metavar="SECONDS",
        help="Unload a just-in-time loaded model idle this long, unless its request set a ttl (default 3600).",
    ),
    tls_cert: Path | None = typer.Option(
        None, "--tls-cert", help="Serve HTTPS with this certificate (PEM; with --tls-key)."
    ),
    tls_key: Path | None = typer.Option(None, "--tls-key", help="The private key of --tls-cert (PEM)."),
    require_auth: bool | None = typer.Option(
        None, "--require-auth/--no-require-auth",
        help="Every route but /health needs an API token (`studiolo token create`) with the route's permission.",
    ),
    insecure_no_auth: bool | None = typer.Option(
        None, "--insecure-no-auth",
        help="Serve beyond loopback without --require-auth (refused otherwise): anyone who reaches the port "
             "can use every route.",
    ),
    cors_origins: str | None = typer.Option(
        None, "--cors-origins", metavar="ORIGIN,...",
        help="Allow cross-origin requests from pages of these origins only (https://app.example,...).",
    ),
    allow_hosts: str | None = typer.Option(
        None, "--allow-hosts", metavar="HOST,...",
        help="Answer requests addressed to these host names too (*.example.com: its subdomains). On a loopback "
             "bind only loopback names are answered otherwise (DNS rebinding).",
    ),
) -> None:
    """Start the server (in the background unless --foreground).

    Options not given come from the "server" section of STUDIOLO_HOME/settings.json, else the defaults."""
    try:
        settings = load_server_settings(given_settings(ctx.params))
    except SettingsError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc
    _check_auth(settings)
    running = read_state()
    if running:
        typer.echo(f"The server is already running on port {running['port']}.")
        return
    if settings.cors and not settings.cors_origins:
        typer.echo("CORS is on: any web page you visit can call this server.", err=True)
    if settings.host not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(f"Serving on {settings.host}: other machines on the network can reach this server.", err=True)
    if foreground:
        run_foreground(settings)
        return
    _hint_first_token(settings.require_auth)
    _start_background(settings, given_command_line(ctx))


def _check_auth(settings: ServerSettings) -> None:
    """Refuses a bind beyond loopback without auth."""
    refusal = bind_refusal(settings.host, settings.require_auth, settings.insecure_no_auth)
    if refusal:
        typer.echo(refusal, err=True)
        raise typer.Exit(2)


def _hint_first_token(require_auth: bool) -> None:
    """With auth and no token yet, says how to make one (a server in the foreground logs it itself)."""
    if require_auth:
        tokens = TokenService()
        try:
            if not tokens.has_tokens():
                typer.echo(BOOTSTRAP_HINT, err=True)
        finally:
            tokens.close()


def _start_background(settings: ServerSettings, options: list[str]) -> None:
    """Run ``start --foreground`` with the given options as a detached child (it reads the settings
    file itself) and wait until that child, by the instance id it records, answers /health."""
    log_path = logs_dir() / "server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "studiolo", "server", "start", "--foreground", *options]
    with log_path.open("ab") as log_file:
        child = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if child.poll() is not None:
            typer.echo(f"The server failed to start; see {log_path}:\n{_tail(log_path)}", err=True)
            raise typer.Exit(1)
        if _child_answers(child.pid, settings):
            typer.echo(f"Success! Server is now running on port {settings.port}")
            return
        time.sleep(0.2)
    child.terminate()
    typer.echo(f"The server did not answer within {START_TIMEOUT_SECONDS:.0f}s; see {log_path}", err=True)
    raise typer.Exit(1)


def _child_answers(pid: int, settings: ServerSettings) -> bool:
    """Whether the child recorded itself and the server on the port is it (not another program)."""
    state = read_state()
    if not state or state.get("pid") != pid:
        return False
    return _answering_instance(settings.host, settings.port, settings.tls_cert) == state.get("instance")


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
    running = bool(state) and _answers_as_recorded(state)
    if as_json:
        typer.echo(json.dumps({"running": True, "port": state["port"]} if running else {"running": False}))
    elif running:
        typer.echo(f"The server is running on port {state['port']}.")
    else:
        typer.echo("The server is not running.")


def _answers_as_recorded(state: dict) -> bool:
    """Whether the server answering on the recorded port is the recorded one (its instance id)."""
    answering = _answering_instance(state.get("host", DEFAULT_BIND), state["port"], state.get("tls_cert"))
    return answering is not None and answering == state.get("instance")

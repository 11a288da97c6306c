"""Reaching the server from the command line: find it, start it if need be, and call it.

As ``lms`` does, the model commands (``ls``, ``ps``, ``load``, ``unload``) talk to a running
server over HTTP. When nothing answers and the host is this machine, ``connect`` starts one
in the background first with ``studiolo server start``, which returns once the server
answers. A remote host is never started: there is nothing we could run there.

Every failure a user can run into (no server, a refused request, a lost connection) becomes a
``ServerError`` whose message is the one line the command prints.

A server started with ``--require-auth`` wants an API token: the commands send the one in
``STUDIOLO_API_TOKEN`` (or their ``--token``) as ``Authorization: Bearer``. ``/health``, which finds the
server, needs none.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from typing import Any

import httpx
import typer

from studiolo.cli.server import _trust, _url, read_state
from studiolo.config import DEFAULT_PORT

PROBE_TIMEOUT_SECONDS = 2.0
REQUEST_TIMEOUT_SECONDS = 60.0
# loading a large model from a slow disk can take minutes; the server answers once it is done
LOAD_TIMEOUT_SECONDS = 900.0
TOKEN_ENV = "STUDIOLO_API_TOKEN"
TOKEN_OPTION = typer.Option(None, "--token", envvar=TOKEN_ENV, show_default=False, show_envvar=True,
                            help="API token for a server started with --require-auth.")


def auth_headers(token: str | None = None) -> dict[str, str]:
    """The header carrying ``token`` (default: $STUDIOLO_API_TOKEN), or none."""
    token = token or os.environ.get(TOKEN_ENV)
    return {"Authorization": f"Bearer {token.strip()}"} if token and token.strip() else {}


class ServerError(Exception):
    """A request could not be made or was refused; the message is the line shown to the user."""


def default_port() -> int:
    """The running local server's port, as ``studiolo server start`` recorded it; else 1234."""
    state = read_state()
    port = state.get("port") if state else None
    return port if isinstance(port, int) else DEFAULT_PORT


def is_local(host: str) -> bool:
    """Whether ``host`` names this machine, where we may start a server."""
    if host.lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def base_url(host: str, port: int) -> str:
    """A URL that reaches a server at ``host``: wildcards become loopback, IPv6 gets brackets."""
    return _url(host, port)  # the same rule `server start` uses to check its own server


def one_line(text: str) -> str:
    """Server messages may span lines (a traceback, a listing); the user gets one."""
    return " ".join(text.split())


def error_message(response: httpx.Response) -> str:
    """The message of an error response, in either the v1 or the OpenAI shape (both have error.message)."""
    try:
        error = response.json()["error"]
        message = error["message"] if isinstance(error, dict) else error
    except (ValueError, KeyError, TypeError):
        message = None
    if not isinstance(message, str) or not message.strip():
        return f"HTTP {response.status_code} {response.reason_phrase}".strip()
    return one_line(message)


def local_tls(host: str, port: int) -> tuple[str, Any] | None:
    """The https URL and the trust (its own certificate) of this machine's server on ``port`` when it
    serves TLS, as its record in server.json says; else None."""
    state = read_state()
    cert = state.get("tls_cert") if state else None
    if not cert or not is_local(host) or state is None or state.get("port") != port:
        return None
    return _url(host, port, "https"), _trust(cert)


def server_answers(url: str, verify: Any = True) -> bool:
    """Whether any HTTP server answers at ``url`` (studiolo or not: LM Studio speaks the same API)."""
    try:
        httpx.get(f"{url}/health", timeout=PROBE_TIMEOUT_SECONDS, verify=verify)
    except httpx.HTTPError:
        return False
    return True


def start_local_server(host: str, port: int) -> None:
    """Start a server in the background on ``port`` and wait until it answers."""
    running = read_state()
    if running:
        # one server per STUDIOLO_HOME: `server start` would only report the one that runs
        raise ServerError(
            f"No server answers at {base_url(host, port)}, but studiolo's server runs on port "
            f"{running.get('port')} (bound to {running.get('host')}); use --port/--host, or `studiolo server stop` it."
        )
    typer.echo(f"No server answers on port {port}; starting one in the background...", err=True)
    bind = "::1" if host == "::1" else "127.0.0.1"
    command = [sys.executable, "-m", "studiolo", "server", "start", "--port", str(port), "--bind", bind]
    # output captured and passed to stderr: stdout is kept for the command's own (maybe JSON) output
    started = subprocess.run(command, capture_output=True, text=True)
    if started.returncode != 0:
        reason = started.stderr.strip().splitlines()[0] if started.stderr.strip() else "no reason given"
        raise ServerError(f"Could not start a server on port {port}: {reason}")
    if started.stdout.strip():
        typer.echo(started.stdout.strip(), err=True)


class StudioloClient:
    """Calls to one server's LM Studio REST API (v1)."""

    def __init__(self, url: str, http: httpx.Client | None = None, verify: Any = True, token: str | None = None):
        self.url = url
        self.http = http or httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_SECONDS, verify=verify,
                                         headers=auth_headers(token))

    def __enter__(self) -> StudioloClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.http.close()

    def request(self, method: str, path: str, body: dict | None = None, timeout: float | None = None) -> Any:
        """The JSON answer to one request; ServerError for a refusal or a lost connection."""
        wait = timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT
        try:
            response = self.http.request(method, path, json=body, timeout=wait)
        except httpx.ConnectError as error:
            raise ServerError(f"No server answers at {self.url}; start one with `studiolo server start`.") from error
        except httpx.TimeoutException as error:
            raise ServerError(f"The server at {self.url} did not answer {method} {path} in time.") from error
        except httpx.HTTPError as error:
            raise ServerError(f"Lost the connection to the server at {self.url}: {one_line(str(error))}") from error
        if response.status_code >= 400:
            raise ServerError(error_message(response))
        try:
            return response.json()
        except ValueError as error:
            raise ServerError(f"The server at {self.url} answered {method} {path} with something not JSON.") from error

    def list_models(self) -> list[dict]:
        """``GET /api/v1/models``: every model on disk, with its loaded instances."""
        answer = self.request("GET", "/api/v1/models")
        models = answer.get("models") if isinstance(answer, dict) else None
        if not isinstance(models, list):
            raise ServerError(f"The server at {self.url} answered GET /api/v1/models without a models list.")
        return models

    def load_model(self, body: dict) -> dict:
        """``POST /api/v1/models/load``; returns the server's answer (instance_id, load_time_seconds, ...)."""
        return self.request("POST", "/api/v1/models/load", body, timeout=LOAD_TIMEOUT_SECONDS)

    def unload_instance(self, instance_id: str) -> dict:
        """``POST /api/v1/models/unload``."""
        return self.request("POST", "/api/v1/models/unload", {"instance_id": instance_id})


def connect(host: str, port: int | None, token: str | None = None) -> StudioloClient:
    """A client for the server at host:port (port: the running local server's, else 1234), sending
    ``token`` (default: $STUDIOLO_API_TOKEN).

    On this machine a server is started when none answers; elsewhere that is an error.
    """
    port = port or default_port()
    reached = _reach(host, port, token)
    if reached is not None:
        return reached
    url = base_url(host, port)
    if not is_local(host):
        raise ServerError(f"No server answers at {url}.")
    start_local_server(host, port)
    reached = _reach(host, port, token)  # over https when the settings file gave the new server a certificate
    if reached is None:
        raise ServerError(f"Started a server on port {port}, but nothing answers at {url}.")
    return reached


def _reach(host: str, port: int, token: str | None = None) -> StudioloClient | None:
    """A client for whatever answers there: this machine's HTTPS server, as recorded, or plain HTTP."""
    tls = local_tls(host, port)
    if tls is not None and server_answers(*tls):
        return StudioloClient(tls[0], verify=tls[1], token=token)
    url = base_url(host, port)
    return StudioloClient(url, token=token) if server_answers(url) else None

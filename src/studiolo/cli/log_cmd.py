"""``studiolo log stream``: watch a running server's model input/output or its log, live.

As ``lms log stream``: ``--source model`` (the default) shows the exact formatted prompt of each
request and what each choice produced; ``--source server`` shows the server's log lines; ``--json``
prints each event as one JSON object per line, for scripts. It reads the server's
``GET /studiolo/log/stream`` and never starts a server itself: there would be nothing to log.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from datetime import datetime
from enum import StrEnum
from typing import Any, TextIO

import httpx
import typer
from rich.console import Console
from rich.text import Text

from studiolo.cli.client import TOKEN_OPTION, auth_headers, base_url, default_port
from studiolo.config import DEFAULT_BIND

app = typer.Typer(help="Watch what the server and its models do.", no_args_is_help=True)

CONNECT_TIMEOUT_SECONDS = 5.0
# the server sends a keep-alive every 15 s; three missed ones mean the connection is gone
SILENCE_TIMEOUT_SECONDS = 50.0

LEVEL_STYLES = {"DEBUG": "dim", "INFO": "green", "WARNING": "yellow", "ERROR": "bold red", "CRITICAL": "bold red"}

# Control characters (other than newline and tab) could move the cursor or restyle the terminal
# from inside a client's prompt, and lone surrogates cannot be encoded: both are spelled out.
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


class Source(StrEnum):
    model = "model"
    server = "server"


class StreamFailed(Exception):
    """The stream could not be opened or was lost; the message is the line shown to the user."""


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str) -> str:
    """``text`` as it is, except unprintable characters, which are shown as escapes (``\\x1b``)."""
    return _UNPRINTABLE.sub(_escape, text)


def read_events(response: httpx.Response) -> Iterator[str]:
    """The ``data`` of each server-sent event, as text; comments (keep-alives) are skipped."""
    data: list[str] = []
    for line in response.iter_lines():
        if not line:
            if data:
                yield "\n".join(data)
            data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))


def _refusal(response: httpx.Response, url: str) -> StreamFailed:
    response.read()
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = f"HTTP {response.status_code}"
    if response.status_code == 404:
        return StreamFailed(f"The server at {url} has no log stream ({message}); is it a studiolo server?")
    return StreamFailed(f"The server at {url} refused the log stream: {message}")


def stream_events(url: str, source: str, token: str | None = None) -> Iterator[str]:
    """Each event the server sends, as its JSON text, until the stream ends or fails."""
    timeout = httpx.Timeout(SILENCE_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS)
    opened = False
    try:
        with httpx.Client(timeout=timeout, headers=auth_headers(token)) as client:
            with client.stream("GET", f"{url}/studiolo/log/stream", params={"source": source}) as response:
                if response.status_code != 200:
                    raise _refusal(response, url)
                opened = True
                yield from read_events(response)
    except (httpx.ConnectError, httpx.ConnectTimeout) as error:
        raise StreamFailed(f"No server answers at {url}; start one with `studiolo server start`.") from error
    except httpx.ReadTimeout as error:
        raise StreamFailed(f"Lost the server at {url}: nothing heard for {SILENCE_TIMEOUT_SECONDS:.0f}s.") from error
    except httpx.RemoteProtocolError as error:
        if opened:  # the server stopped mid-stream
            raise StreamFailed(f"The server at {url} closed the log stream.") from error
        raise StreamFailed(f"Something at {url} answers, but not as an HTTP server: {error}.") from error
    except httpx.HTTPError as error:
        raise StreamFailed(f"Lost the connection to the server at {url}: {error}.") from error
    raise StreamFailed(f"The server at {url} closed the log stream.")


def clock(timestamp: Any) -> str:
    """An event's ISO-8601 UTC timestamp as local time of day, ``HH:MM:SS.mmm``."""
    try:
        return datetime.fromisoformat(str(timestamp)).astimezone().strftime("%H:%M:%S.%f")[:-3]
    except ValueError:
        return str(timestamp)


def human_console(file: TextIO | None = None) -> Console:
    # soft wrap: a long line stays one line, so the output can be searched and piped
    return Console(file=file, highlight=False, soft_wrap=True)


def _write_verbatim(console: Console, text: str) -> None:
    # straight to the file, not through rich: rich would expand tabs and drop some characters
    console.file.write(visible(text) if text.endswith("\n") else visible(text) + "\n")


def _seconds(value: Any) -> str:
    return f"{value:.3f} s" if isinstance(value, (int, float)) else "n/a"


def _rate(value: Any) -> str:
    return f"{value:.1f} tok/s" if isinstance(value, (int, float)) else "n/a tok/s"


def _print_heading(console: Console, event: dict[str, Any], label: tuple[str, str], detail: str) -> None:
    """One model event's heading line: time, input/output, request id, model, a detail."""
    console.print(
        Text.assemble(
            (clock(event.get("timestamp")), "dim"), " ", label, " ",
            (str(event.get("request_id")), "magenta"), " ", (str(event.get("model")), "bold"), " ",
            (detail, "dim"),
        )
    )


def render_input(console: Console, event: dict[str, Any]) -> None:
    _print_heading(console, event, ("input", "bold cyan"), f"({event.get('prompt_tokens')} prompt tokens)")
    _write_verbatim(console, str(event.get("prompt", "")))


def render_output(console: Console, event: dict[str, Any]) -> None:
    _print_heading(console, event, ("output", "bold green"), f"choice {event.get('index')}")
    if event.get("reasoning") is not None:  # a reasoning model's thinking, apart from its answer
        console.print(Text("reasoning:", style="bold yellow"))
        _write_verbatim(console, str(event["reasoning"]))
        console.print(Text("answer:", style="bold green"))
    _write_verbatim(console, str(event.get("text", "")))
    stats = (
        f"{event.get('completion_tokens')} tokens, {_rate(event.get('tokens_per_second'))}, "
        f"first token {_seconds(event.get('time_to_first_token'))}, stop: {event.get('stop_reason')}"
    )
    if "total_draft_tokens_count" in event:  # the choice drafted (speculative decoding)
        stats += (f", drafts ({event.get('draft_model') or 'prediction'}): "
                  f"{event.get('accepted_draft_tokens_count')} of {event['total_draft_tokens_count']} accepted")
    console.print(Text(stats, style="dim"))


def render_log(console: Console, event: dict[str, Any]) -> None:
    level = str(event.get("level"))
    line = Text.assemble(
        (clock(event.get("timestamp")), "dim"), " ", (level, LEVEL_STYLES.get(level, "")), " ",
        (f"{event.get('logger')}:", "cyan"), " ", visible(str(event.get("message", ""))),
    )
    console.print(line)
    if event.get("exception"):
        _write_verbatim(console, str(event["exception"]))


def render_dropped(console: Console, event: dict[str, Any]) -> None:
    note = f"{event.get('count')} events dropped: this stream was read too slowly"
    console.print(Text.assemble((clock(event.get("timestamp")), "dim"), " ", (note, "yellow")))


RENDERERS = {"input": render_input, "output": render_output, "log": render_log, "dropped": render_dropped}


def render_event(console: Console, event: dict[str, Any]) -> None:
    """One event for people to read: rich styles for headers, prompt and output text verbatim."""
    renderer = RENDERERS.get(event.get("type", ""))  # "" (no renderer) for an event without a type
    if renderer:
        renderer(console, event)
    else:
        console.print(Text(json.dumps(event, ensure_ascii=False)))
    console.file.flush()


def parse_event(payload: str) -> dict[str, Any]:
    try:
        event = json.loads(payload)
    except ValueError:
        event = None
    return event if isinstance(event, dict) else {"type": "unparsed", "data": payload}


def _print_json(payload: str) -> None:
    sys.stdout.write(payload + "\n")
    sys.stdout.flush()


def _quiet_stdout() -> None:
    # the reader (`| head`) has gone: stop Python from complaining while it flushes at exit
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


@app.command()
def stream(
    source: Source = typer.Option(
        Source.model, "--source", "-s", help="model: prompts and outputs; server: log lines."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per event and line."),
    host: str = typer.Option(DEFAULT_BIND, "--host", help="Host of the server."),
    port: int | None = typer.Option(
        None, "--port", "-p", min=1, max=65535, help="Port of the server (default: the running server's, else 1234)."
    ),
    token: str | None = TOKEN_OPTION,
) -> None:
    """Stream the model's input and output, or the server's log, live."""
    url = base_url(host, port or default_port())
    console = human_console()
    try:
        for payload in stream_events(url, source.value, token):
            if as_json:
                _print_json(payload)
            else:
                render_event(console, parse_event(payload))
    except StreamFailed as failure:
        typer.echo(str(failure), err=True)
        raise typer.Exit(1) from failure
    except KeyboardInterrupt as exc:
        raise typer.Exit(0) from exc
    except BrokenPipeError as exc:
        _quiet_stdout()
        raise typer.Exit(0) from exc

"""``studiolo service install|uninstall|status``: the server as a systemd *user* service, as LM
Studio's llmster daemon runs headless.

The unit runs ``<this python> -m studiolo server start --foreground`` with this STUDIOLO_HOME, so
the server takes its port, bind, CORS, auth, JIT, TTL and limits from the settings file there
(settings.json); systemd restarts it when it fails, and stops it with SIGTERM, on which it finishes
cleanly. It is written to ``$XDG_CONFIG_HOME/systemd/user/studiolo.service`` (default
``~/.config``). A user manager runs it while the user is logged in; ``loginctl enable-linger``
keeps it running without a session.

Where no user systemd answers (a container, a session without a user bus), ``install`` writes the
unit all the same and prints the commands to run where systemd is; so does ``uninstall``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import typer

from studiolo.cli.server import _answering_instance, read_state
from studiolo.config import studiolo_home

app = typer.Typer(help="Run the server as a systemd user service.", no_args_is_help=True)

UNIT_NAME = "studiolo.service"
SYSTEMCTL_TIMEOUT_SECONDS = 30


def unit_path() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "systemd" / "user" / UNIT_NAME


def _quoted(value: str) -> str:
    """A value in systemd's double quotes: backslashes and quotes escaped, % doubled (a specifier)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{escaped}"'


def unit_text(python: str, home: Path) -> str:
    """The unit file: the server in the foreground, with this home, restarted when it fails."""
    return "\n".join([
        "[Unit]",
        "Description=studiolo local LLM server",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        f"Environment={_quoted(f'STUDIOLO_HOME={home}')}",
        f"ExecStart={_quoted(python)} -m studiolo server start --foreground",
        "Restart=on-failure",
        "RestartSec=5",
        # SIGTERM: running requests get a few seconds, then models unload; past this, SIGKILL
        "TimeoutStopSec=30",
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ])


def systemctl_unusable() -> str | None:
    """Why ``systemctl --user`` cannot be used here, or None when it can."""
    if shutil.which("systemctl") is None:
        return "systemctl is not installed"
    try:
        probe = subprocess.run(["systemctl", "--user", "show-environment"], capture_output=True, text=True,
                               timeout=SYSTEMCTL_TIMEOUT_SECONDS)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"systemctl --user did not answer ({exc})"
    if probe.returncode != 0:
        reason = probe.stderr.strip().splitlines()[0] if probe.stderr.strip() else f"exit {probe.returncode}"
        return f"no user systemd answers ({reason})"
    return None


def _systemctl(*args: str) -> None:
    done = subprocess.run(["systemctl", "--user", *args], capture_output=True, text=True,
                          timeout=SYSTEMCTL_TIMEOUT_SECONDS)
    if done.returncode != 0:
        typer.echo(f"systemctl --user {' '.join(args)} failed: {done.stderr.strip()}", err=True)
        raise typer.Exit(1)


@app.command()
def install(
    no_start: bool = typer.Option(False, "--no-start", help="Only write the unit; do not enable or start it."),
) -> None:
    """Write the systemd user unit, then enable and start it."""
    path = unit_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(unit_text(sys.executable, studiolo_home().resolve()))
    typer.echo(f"Wrote {path}")
    if no_start:
        typer.echo(f"Start it with: systemctl --user daemon-reload && systemctl --user enable --now {UNIT_NAME}")
        return
    unusable = systemctl_unusable()
    if unusable:
        typer.echo(f"Cannot start it here: {unusable}. Where a user systemd runs, run:\n"
                   f"  systemctl --user daemon-reload\n  systemctl --user enable --now {UNIT_NAME}")
        return
    _systemctl("daemon-reload")
    _systemctl("enable", "--now", UNIT_NAME)
    typer.echo(f"Enabled and started {UNIT_NAME}; to keep it running after you log out: "
               "loginctl enable-linger $USER")


@app.command()
def uninstall() -> None:
    """Stop and disable the service, and remove its unit."""
    path = unit_path()
    unusable = systemctl_unusable()
    if unusable is None and path.exists():
        _systemctl("disable", "--now", UNIT_NAME)
    if path.exists():
        path.unlink()
        typer.echo(f"Removed {path}")
    else:
        typer.echo(f"No unit at {path}")
    if unusable is None:
        _systemctl("daemon-reload")
    else:
        typer.echo(f"systemd was not told ({unusable}); where it runs: "
                   f"systemctl --user disable --now {UNIT_NAME}; systemctl --user daemon-reload")


@app.command()
def status() -> None:
    """Show the unit, what systemd says of it, and whether the server answers /health."""
    path = unit_path()
    typer.echo(f"unit: {path}" + ("" if path.exists() else " (not installed)"))
    if path.exists():
        command = next((line for line in path.read_text().splitlines() if line.startswith("ExecStart=")), "")
        typer.echo(f"  {command}")
    unusable = systemctl_unusable()
    if unusable:
        typer.echo(f"systemd: unknown ({unusable})")
    else:
        active = subprocess.run(["systemctl", "--user", "is-active", UNIT_NAME], capture_output=True, text=True,
                                timeout=SYSTEMCTL_TIMEOUT_SECONDS)
        typer.echo(f"systemd: {active.stdout.strip() or 'unknown'}")
    typer.echo(f"server: {_server_line()}")


def _server_line() -> str:
    state = read_state()
    if not state:
        return "not running"
    answering = _answering_instance(state.get("host", ""), state["port"], state.get("tls_cert"))
    if answering is None or answering != state.get("instance"):
        return f"recorded on port {state['port']}, but it does not answer /health"
    return f"running on port {state['port']} (/health ok)"

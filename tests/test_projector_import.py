"""``studiolo import`` takes a vision model's projector with it (issue 20).

The projectors are written by tests/vision_projector.py with random weights: these tests check that
the files land where the catalog and libmtmd look, never a model's sight. The model is a throwaway
hard link to a copy of SmolLM2 (embedding length 576).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from studiolo.cli.main import app
from studiolo.models.catalog import Catalog
from studiolo.models.gguf_info import read_model_info
from studiolo.models.importer import ImportRefused, import_model
from studiolo.models.projector_fit import ProjectorMismatch
from tests.conftest import SMOLLM
from tests.test_gguf_info import write_tiny_gguf
from tests.vision_projector import write_projector

MODEL_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
KEY = "local/smollm2-135m-instruct"
SMOLLM_EMBEDDING = 576


@pytest.fixture(scope="module")
def masters(tmp_path_factory, default_models) -> dict[str, Path]:
    """One copy of the model and one projector of each size, linked into every test's folders."""
    folder = tmp_path_factory.mktemp("masters")
    shutil.copyfile(default_models[SMOLLM], folder / MODEL_NAME)
    return {
        "model": folder / MODEL_NAME,
        "fits": write_projector(folder / "fits.gguf", SMOLLM_EMBEDDING),
        "other": write_projector(folder / "other.gguf", 896),  # Qwen2.5-0.5B's size
    }


@pytest.fixture
def source(tmp_path, masters) -> Path:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    os.link(masters["model"], downloads / MODEL_NAME)
    return downloads / MODEL_NAME


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "home" / "models"


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir()) if folder.exists() else []


def test_projector_beside_comes_along_and_the_model_has_vision(source, root, masters):
    os.link(masters["fits"], source.parent / "mmproj-SmolLM2-F16.gguf")
    result = import_model(source, root, mode="copy")
    folder = "local/smollm2-135m-instruct"
    assert files_under(root) == [f"{folder}/{MODEL_NAME}", f"{folder}/mmproj-SmolLM2-F16.gguf"]
    entries = Catalog(root).entries()
    assert [entry.key for entry in entries] == [KEY]  # the projector is not a model of its own
    assert read_model_info(result.target).has_vision
    assert (source.parent / "mmproj-SmolLM2-F16.gguf").exists()  # copy mode left the source alone


def test_explicit_mmproj_from_another_folder_gets_the_prefix(source, root, masters, tmp_path):
    elsewhere = tmp_path / "projectors"
    elsewhere.mkdir()
    os.link(masters["fits"], elsewhere / "smollm2-vision.gguf")
    result = import_model(source, root, mode="hard-link", mmproj=elsewhere / "smollm2-vision.gguf")
    assert result.projectors == (result.target.parent / "mmproj-smollm2-vision.gguf",)
    assert result.projectors[0].samefile(masters["fits"])
    assert read_model_info(result.target).has_vision


def test_explicit_mmproj_replaces_the_one_beside(source, root, masters, tmp_path):
    os.link(masters["other"], source.parent / "mmproj-wrong.gguf")  # would not fit: --mmproj wins
    os.link(masters["fits"], tmp_path / "mmproj-right.gguf")
    result = import_model(source, root, mmproj=tmp_path / "mmproj-right.gguf")
    assert [p.name for p in result.projectors] == ["mmproj-right.gguf"]
    assert (source.parent / "mmproj-wrong.gguf").exists()


def test_mismatched_projector_refused_and_nothing_moves(source, root, masters):
    os.link(masters["other"], source.parent / "mmproj-qwen.gguf")
    with pytest.raises(ProjectorMismatch, match="projects to 896 dimensions, the model's embedding length is 576"):
        import_model(source, root)
    assert files_under(root) == []
    assert source.exists() and (source.parent / "mmproj-qwen.gguf").exists()


def test_a_model_given_as_mmproj_is_refused(source, root, masters, tmp_path):
    not_clip = write_tiny_gguf(tmp_path / "mmproj-llama.gguf", "llama")
    with pytest.raises(ProjectorMismatch, match="not a vision projector .architecture 'llama'"):
        import_model(source, root, mmproj=not_clip)
    assert files_under(root) == []


def test_missing_mmproj_is_refused(source, root, tmp_path):
    with pytest.raises(ImportRefused, match="no such projector file"):
        import_model(source, root, mmproj=tmp_path / "mmproj-none.gguf")


def test_projector_alone_is_refused(root, masters, tmp_path):
    projector = tmp_path / "mmproj-SmolLM2-F16.gguf"
    os.link(masters["fits"], projector)
    with pytest.raises(ImportRefused, match="is a vision projector, not a model"):
        import_model(projector, root)
    assert files_under(root) == []


def test_cli_mmproj_option(source, masters, tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("STUDIOLO_HOME", str(home))
    os.link(masters["fits"], tmp_path / "vision.gguf")
    arguments = ["import", str(source), "--copy", "--mmproj", str(tmp_path / "vision.gguf"), "-y"]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert "with its vision projector (mmproj-vision.gguf)" in result.output
    folder = "local/smollm2-135m-instruct"
    assert files_under(home / "models") == [f"{folder}/{MODEL_NAME}", f"{folder}/mmproj-vision.gguf"]


def test_cli_mismatch_is_a_clear_error(source, masters, tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIOLO_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(app, ["import", str(source), "--mmproj", str(masters["other"]), "-y"])
    assert result.exit_code == 1
    assert "does not fit the model" in result.output
    assert source.exists()

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
from studiolo.config import models_dir
from studiolo.engine.llama import LlamaModel
from studiolo.engine.vision import VisionContext
from studiolo.models import download as dl
from studiolo.models.catalog import Catalog
from studiolo.models.gguf_info import read_model_info, vision_projector
from studiolo.models.importer import ImportRefused, import_model
from studiolo.models.projector_fit import ProjectorMismatch
from tests import test_download
from tests.conftest import SMOLLM
from tests.test_download import catalog_keys, poll_status, run_get
from tests.test_gguf_info import write_tiny_gguf
from tests.vision_projector import write_projector

MODEL_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
KEY = "local/smollm2-135m-instruct"
SMOLLM_EMBEDDING = 576

hub, api = test_download.hub, test_download.api  # the fake hub (loopback) and the in-process app, as fixtures here too


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


# --- `studiolo get` and /api/v1/models/download: the repo's projector comes with the model ------

VISION_REPO = "Tester/SmolLM2-Vision-GGUF"
VISION_KEY = "tester/smollm2-vision-gguf"
VISION_MODEL = "SmolLM2-135M-Instruct-Q4_1.gguf"


@pytest.fixture(scope="module")
def vision_files(masters) -> dict[str, bytes]:
    # a random-weight projector (tests/vision_projector.py): plumbing only, the model sees nothing
    return {
        VISION_MODEL: masters["model"].read_bytes(),
        "mmproj-SmolLM2-Q8_0.gguf": masters["other"].read_bytes(),  # not the model's quantization, not F16
        "mmproj-SmolLM2-F16.gguf": masters["fits"].read_bytes(),
        "README.md": b"# vision\n",
    }


@pytest.fixture
def vision_hub(hub, vision_files):
    hub.add_repo(VISION_REPO, vision_files, in_git=("README.md",))
    return hub


def vision_folder() -> list[str]:
    folder = models_dir() / "tester" / "smollm2-vision-gguf"
    return sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []


def test_the_projector_is_chosen_by_the_models_quantization_else_f16():
    names = ["m-Q4_K_M.gguf", "m-Q8_0.gguf", "mmproj-m-Q8_0.gguf", "mmproj-m-f16.gguf", "mmproj-m-bf16.gguf"]
    assert dl.choose_projector(names, "m-Q8_0.gguf") == "mmproj-m-Q8_0.gguf"
    assert dl.choose_projector(names, "m-Q4_K_M.gguf") == "mmproj-m-f16.gguf"
    assert dl.choose_projector(["m.gguf", "mmproj-b.gguf", "mmproj-a.gguf"], "m.gguf") == "mmproj-a.gguf"
    assert dl.choose_projector(["m-Q8_0.gguf", "README.md"], "m-Q8_0.gguf") is None


def test_get_brings_the_projector_first_and_progress_counts_it(vision_hub, vision_files):
    plan = dl.resolve(VISION_REPO)
    assert plan.projector is not None and plan.projector.filename == "mmproj-SmolLM2-F16.gguf"
    whole = len(vision_files[VISION_MODEL]) + len(vision_files["mmproj-SmolLM2-F16.gguf"])
    assert plan.size == whole
    assert plan.description == f"{VISION_MODEL} with its vision projector mmproj-SmolLM2-F16.gguf"
    progress: list[tuple[int, int | None]] = []
    dl.download(plan, on_progress=lambda done, total: progress.append((done, total)))
    assert vision_folder() == [VISION_MODEL, "mmproj-SmolLM2-F16.gguf"]
    blobs = {vision_hub.repos[VISION_KEY].files[name].sha256: name for name in vision_files}
    fetched = [blobs[seen.path.removeprefix("/cdn/")] for seen in vision_hub.content_gets()]
    assert fetched == ["mmproj-SmolLM2-F16.gguf", VISION_MODEL]  # the model last: listed with its vision at once
    assert {total for _, total in progress} == {whole} and progress[-1] == (whole, whole)
    (entry,) = Catalog(models_dir()).entries()
    assert entry.key == VISION_KEY and read_model_info(plan.target).has_vision
    assert dl.is_downloaded(plan)


def test_a_failed_projector_leaves_nothing(vision_hub):
    vision_hub.corrupt.add("mmproj-SmolLM2-F16.gguf")
    plan = dl.resolve(VISION_REPO)
    with pytest.raises(dl.ChecksumMismatch, match="mmproj-SmolLM2-F16.gguf"):
        dl.download(plan)
    assert vision_folder() == [] and catalog_keys() == []


def test_a_failed_model_leaves_no_model_and_the_retry_fetches_only_it(vision_hub):
    vision_hub.corrupt.add(VISION_MODEL)
    plan = dl.resolve(VISION_REPO)
    with pytest.raises(dl.ChecksumMismatch, match=VISION_MODEL):
        dl.download(plan)
    assert catalog_keys() == []  # the projector placed first is no model of its own
    vision_hub.corrupt.clear()
    gets = len(vision_hub.content_gets())
    dl.download(plan)
    assert len(vision_hub.content_gets()) == gets + 1
    assert catalog_keys() == [VISION_KEY]


def test_a_model_downloaded_before_its_projector_gets_it_added(vision_hub, vision_files):
    plan = dl.resolve(VISION_REPO)
    plan.target.parent.mkdir(parents=True)
    plan.target.write_bytes(vision_files[VISION_MODEL])  # as a get before projectors came along left it
    dl.download(plan)
    assert len(vision_hub.content_gets()) == 1 and vision_folder() == [VISION_MODEL, "mmproj-SmolLM2-F16.gguf"]


def test_the_download_job_counts_the_projector_and_a_failure_lists_nothing(vision_hub, api, vision_files):
    vision_hub.corrupt.add("mmproj-SmolLM2-F16.gguf")
    started = api.post("/api/v1/models/download", json={"model": VISION_REPO}).json()
    assert started["total_size_bytes"] == len(vision_files[VISION_MODEL]) + len(vision_files["mmproj-SmolLM2-F16.gguf"])
    done = poll_status(api, started["job_id"], lambda status: status["status"] != "downloading")
    assert done["status"] == "failed" and done["error"]["code"] == "checksum_mismatch"
    assert catalog_keys() == [] and vision_folder() == []


def test_a_url_to_the_projector_is_refused(vision_hub):
    with pytest.raises(dl.FileNotFound, match="not a GGUF model"):
        dl.resolve(f"https://huggingface.co/{VISION_REPO}/blob/main/mmproj-SmolLM2-F16.gguf")


def test_cli_get_brings_the_projector_and_prints_only_the_key(vision_hub):
    result = run_get(VISION_REPO, "-y")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{VISION_KEY}\n"
    assert vision_folder() == [VISION_MODEL, "mmproj-SmolLM2-F16.gguf"]
    assert read_model_info(models_dir() / "tester" / "smollm2-vision-gguf" / VISION_MODEL).has_vision


def test_an_imported_vision_model_loads_its_projector_in_libmtmd(source, root, masters):
    """The one load check: the projector the import placed is the one the engine finds and libmtmd
    loads at the model's width (random weights: nothing about sight)."""
    os.link(masters["fits"], source.parent / "mmproj-SmolLM2-F16.gguf")
    result = import_model(source, root)
    projector = vision_projector(result.target)
    assert projector == result.projectors[0]
    model = LlamaModel(result.target)
    try:
        vision = VisionContext(model, projector, n_threads=1)
        try:
            assert vision.n_embd == SMOLLM_EMBEDDING
        finally:
            vision.close()
    finally:
        model.close()

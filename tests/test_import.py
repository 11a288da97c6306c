"""``studiolo import`` and the importer behind it, on throwaway copies of SmolLM2.

Every test works on its own hard link to one copy made per session in a tmp dir, so the
real default models are never moved, linked into a test's models folder, or changed.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from studiolo.cli import import_cmd
from studiolo.cli.main import app
from studiolo.models import importer
from studiolo.models.catalog import Catalog
from studiolo.models.gguf_info import InvalidModelFile, read_model_info
from studiolo.models.importer import ImportRefused, default_user_repo, import_model, parse_user_repo
from tests.conftest import SMOLLM
from tests.lora import write_lora_adapter
from tests.test_gguf_info import write_tiny_gguf

MODEL_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_KEY = "local/smollm2-135m-instruct"


@pytest.fixture(scope="session")
def smollm_master(tmp_path_factory, default_models) -> Path:
    master = tmp_path_factory.mktemp("master") / MODEL_NAME
    shutil.copyfile(default_models[SMOLLM], master)
    return master


@pytest.fixture
def source(tmp_path, smollm_master) -> Path:
    """A SmolLM2 file of this test's own, in a downloads folder."""
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    path = downloads / MODEL_NAME
    os.link(smollm_master, path)
    return path


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "home" / "models"


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if not p.is_dir()) if folder.exists() else []


def test_move_is_the_default(source, root):
    result = import_model(source, root)
    target = root / DEFAULT_KEY / MODEL_NAME
    assert (result.target, result.key, result.mode, result.dry_run) == (target, DEFAULT_KEY, "move", False)
    assert not source.exists()
    assert target.is_file() and not target.is_symlink()
    assert Catalog(root).resolve(DEFAULT_KEY).path == target
    assert result.info.architecture == "llama"


def test_copy(source, root):
    result = import_model(source, root, mode="copy")
    assert source.exists()
    assert result.target.is_file() and not result.target.samefile(source)
    assert result.target.stat().st_size == source.stat().st_size
    assert read_model_info(result.target).parameter_count == 134_515_008
    assert files_under(root) == [result.target]  # no .part left behind


def test_hard_link(source, root):
    result = import_model(source, root, mode="hard-link")
    assert source.exists() and result.target.samefile(source)
    assert not result.target.is_symlink()


def test_symbolic_link(source, root):
    result = import_model(source, root, mode="symbolic-link")
    assert result.target.is_symlink()
    assert result.target.resolve() == source.resolve()
    assert Catalog(root).resolve("smollm2-135m-instruct").path == result.target


@pytest.mark.parametrize("mode", importer.MODES)
def test_dry_run_changes_nothing(source, root, mode):
    result = import_model(source, root, mode=mode, dry_run=True)
    assert result.dry_run is True and result.mode == mode
    assert result.target == root / DEFAULT_KEY / MODEL_NAME
    assert not root.exists()
    assert source.is_file()


def test_move_across_file_systems_copies_then_removes(source, root, monkeypatch):
    def cross_device(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(importer.os, "rename", cross_device)
    result = import_model(source, root)
    assert not source.exists()
    assert files_under(root) == [result.target]
    assert read_model_info(result.target).quantization == "Q4_1"


def test_user_repo_sets_the_key_in_lower_case(source, root):
    result = import_model(source, root, user_repo="MyOrg/Tiny-Chat_v1.5", mode="copy")
    assert result.key == "myorg/tiny-chat_v1.5"
    assert result.target == root / "myorg" / "tiny-chat_v1.5" / MODEL_NAME
    assert Catalog(root).resolve("myorg/tiny-chat_v1.5").path == result.target


def test_existing_folder_in_other_case_is_reused(source, root):
    (root / "MyOrg").mkdir(parents=True)
    result = import_model(source, root, user_repo="myorg/tiny", mode="copy")
    assert result.target == root / "MyOrg" / "tiny" / MODEL_NAME
    assert [p.name for p in root.iterdir()] == ["MyOrg"]


def test_existing_target_is_not_overwritten(source, root):
    first = import_model(source, root, mode="copy")
    before = first.target.stat().st_mtime_ns
    with pytest.raises(ImportRefused, match="already exists"):
        import_model(source, root, mode="copy")
    with pytest.raises(ImportRefused, match="already exists"):
        import_model(source, root, mode="copy", dry_run=True)
    assert first.target.stat().st_mtime_ns == before
    assert source.exists()


def test_a_key_that_holds_another_model_is_refused(source, root, tmp_path):
    import_model(source, root, mode="copy")
    other = write_tiny_gguf(tmp_path / "smollm2-135m-instruct-f16.gguf")  # same default key
    with pytest.raises(ImportRefused, match=f"'{DEFAULT_KEY}' already holds {MODEL_NAME}"):
        import_model(other, root)
    assert other.exists()


def test_a_file_already_in_the_models_folder_is_refused(source, root, tmp_path):
    placed = import_model(source, root, user_repo="me/smol").target
    link = tmp_path / "elsewhere.gguf"
    link.symlink_to(placed)
    for path, user_repo in [(placed, None), (placed, "me/smol"), (placed, "me/other"), (link, None)]:
        with pytest.raises(ImportRefused, match="already in the models folder .*under key 'me/smol'; nothing"):
            import_model(path, root, user_repo=user_repo)
    stray = root / "stray.gguf"
    os.link(placed, stray)
    with pytest.raises(ImportRefused, match="at stray.gguf, where the catalog does not look"):
        import_model(stray, root, mode="copy")
    assert files_under(root) == [placed.parent / MODEL_NAME, stray]


@pytest.mark.parametrize("broken", ["text", "truncated"])
def test_invalid_file_is_refused_and_nothing_placed(tmp_path, root, smollm_master, broken):
    path = tmp_path / "broken.gguf"
    if broken == "text":
        path.write_text("not a model\n" * 100)
    else:
        path.write_bytes(smollm_master.read_bytes()[: smollm_master.stat().st_size // 3])
    with pytest.raises(InvalidModelFile, match=str(path)):
        import_model(path, root)
    assert path.exists()
    assert not root.exists()


def test_a_lora_adapter_is_not_imported_as_a_model(tmp_path, root, default_models):
    adapter = write_lora_adapter(default_models[SMOLLM], tmp_path / "tint.gguf")
    with pytest.raises(InvalidModelFile, match="a LoRA adapter, not a model"):
        import_model(adapter, root)
    assert adapter.exists() and not root.exists()


@pytest.mark.parametrize(
    "user_repo",
    ["noslash", "a/b/c", "../x", "a/..", "./b", "a/b c", "/b", "a/", ".hidden/x", "a\\b/c", "pub/" + "r" * 101, ""],
)
def test_bad_user_repo_is_refused(source, root, user_repo):
    with pytest.raises(ImportRefused, match="must be 'publisher/repo'"):
        import_model(source, root, user_repo=user_repo)
    assert source.exists() and not root.exists()


def test_parse_user_repo_accepts_the_usual_names():
    assert parse_user_repo("lmstudio-community/Qwen2.5-7B-Instruct-GGUF") == (
        "lmstudio-community",
        "Qwen2.5-7B-Instruct-GGUF",
    )


@pytest.mark.parametrize(
    ("file_name", "repo"),
    [
        ("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m-instruct"),
        ("gemma-3-270m-Q4_K_M.gguf", "gemma-3-270m"),
        ("Qwen2.5-7B-Instruct-IQ4_XS.gguf", "qwen2.5-7b-instruct"),
        ("phi-4-mini_bf16.gguf", "phi-4-mini"),
        ("model-f16.gguf", "model"),
        ("My Model (v2).GGUF", "my-model-v2"),
        ("Q8_0.gguf", "q8_0"),  # nothing before the tag: keep it rather than end up empty
    ],
)
def test_default_user_repo(file_name, repo):
    assert default_user_repo(Path(file_name)) == ("local", repo)


def test_sources_that_are_not_models_are_refused(tmp_path, root, smollm_master):
    with pytest.raises(ImportRefused, match="no such file"):
        import_model(tmp_path / "absent.gguf", root)
    with pytest.raises(ImportRefused, match="not a file"):
        import_model(tmp_path, root)
    renamed = tmp_path / "model.bin"
    os.link(smollm_master, renamed)
    with pytest.raises(ImportRefused, match=r"\*\.gguf"):
        import_model(renamed, root)
    projector = write_tiny_gguf(tmp_path / "mmproj-f16.gguf", "clip")
    with pytest.raises(ImportRefused, match="vision projector"):
        import_model(projector, root)
    assert not root.exists()


def test_unknown_mode_is_refused(source, root):
    with pytest.raises(ImportRefused, match="unknown import mode 'rsync'"):
        import_model(source, root, mode="rsync")


def test_vision_projector_comes_along(source, root):
    projector = write_tiny_gguf(source.parent / "mmproj-smol-f16.gguf", "clip")
    result = import_model(source, root)
    assert result.projectors == (result.target.parent / projector.name,)
    assert not projector.exists()  # moved with the model: nothing else beside it needed it
    assert read_model_info(result.target).has_vision is True
    assert [entry.key for entry in Catalog(root).entries()] == [DEFAULT_KEY]  # not a model of its own


def test_shared_projector_is_copied_not_moved(source, root):
    projector = write_tiny_gguf(source.parent / "mmproj-smol-f16.gguf", "clip")
    sibling = write_tiny_gguf(source.parent / "smol-variant-f16.gguf")
    result = import_model(source, root)
    assert not source.exists()
    assert projector.exists() and sibling.exists()  # the model left behind keeps its projector
    assert (result.target.parent / projector.name).is_file()


def test_unreadable_projector_refuses_the_import(source, root):
    (source.parent / "mmproj-broken.gguf").write_text("not gguf")
    with pytest.raises(InvalidModelFile, match="mmproj-broken.gguf"):
        import_model(source, root)
    assert source.exists() and not root.exists()


def test_failed_copy_leaves_nothing_behind(source, root, monkeypatch):
    write_tiny_gguf(source.parent / "mmproj-smol-f16.gguf", "clip")
    real_copyfile = shutil.copyfile

    def disk_fills_up(src, dst):
        if Path(src).name == MODEL_NAME:
            Path(dst).write_bytes(b"half a model")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_copyfile(src, dst)

    monkeypatch.setattr(importer.shutil, "copyfile", disk_fills_up)
    with pytest.raises(ImportRefused, match="No space left on device"):
        import_model(source, root, mode="copy")
    assert files_under(root) == []  # neither the .part nor the projector placed before it


# ---- the command ---------------------------------------------------------------------------


@pytest.fixture
def cli_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("STUDIOLO_HOME", str(home))
    return home


def run_cli(*args: str, stdin: str | None = None):
    return CliRunner().invoke(app, ["import", *args], input=stdin)


def test_cli_imports_without_asking_when_not_interactive(source, cli_home):
    result = run_cli("--copy", str(source))
    assert result.exit_code == 0, result.output
    target = cli_home / "models" / DEFAULT_KEY / MODEL_NAME
    assert result.stdout.strip() == f"Copied {MODEL_NAME} to {target} as {DEFAULT_KEY}"
    assert target.is_file() and source.exists()


@pytest.mark.parametrize(
    ("flags", "mode"), [([], "move"), (["-c"], "copy"), (["-L"], "hard-link"), (["-l"], "symbolic-link")]
)
def test_cli_flags_choose_the_mode(source, cli_home, monkeypatch, flags, mode):
    seen = []
    real_import = import_cmd.import_model

    def spy(*args, **kwargs):
        seen.append(kwargs["mode"])
        return real_import(*args, **kwargs)

    monkeypatch.setattr(import_cmd, "import_model", spy)
    result = run_cli(*flags, "--user-repo", "me/smol", "-y", str(source))
    assert result.exit_code == 0, result.output
    assert seen == [mode, mode]  # the plan, then the import
    assert "as me/smol" in result.stdout
    assert (cli_home / "models" / "me" / "smol" / MODEL_NAME).exists()


def test_cli_dry_run(source, cli_home):
    result = run_cli("--dry-run", "-l", str(source))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Would symbolically link {MODEL_NAME} to ")
    assert "dry run" in result.stdout
    assert not (cli_home / "models").exists()


def test_cli_more_than_one_mode_is_an_error(source, cli_home):
    result = run_cli("-c", "-l", str(source))
    assert result.exit_code == 1
    assert result.stderr.strip() == "Error: choose at most one of --copy, --hard-link and --symbolic-link"
    assert not (cli_home / "models").exists()


def test_cli_invalid_file_is_one_line_on_stderr(tmp_path, cli_home):
    fake = tmp_path / "fake.gguf"
    fake.write_text("hello")
    result = run_cli("-y", str(fake))
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(fake) in lines[0] and "not a GGUF file" in lines[0]
    assert fake.exists()


def test_cli_refuses_a_model_already_in_the_models_folder(source, cli_home):
    assert run_cli("-y", str(source)).exit_code == 0
    placed = cli_home / "models" / DEFAULT_KEY / MODEL_NAME
    result = run_cli("-y", "--user-repo", DEFAULT_KEY, str(placed))
    assert result.exit_code == 1 and f"under key '{DEFAULT_KEY}'" in result.stderr and "remove" not in result.stderr
    assert placed.is_file()


def test_cli_bad_user_repo(source, cli_home):
    result = run_cli("--user-repo", "just-a-name", str(source))
    assert result.exit_code == 1
    assert "user repo 'just-a-name' must be 'publisher/repo'" in result.stderr


def test_cli_asks_on_a_terminal(source, cli_home, monkeypatch):
    monkeypatch.setattr(import_cmd, "_stdin_is_interactive", lambda: True)
    declined = run_cli(str(source), stdin="n\n")
    assert declined.exit_code == 1
    assert "cancelled" in declined.stderr
    assert source.exists() and not (cli_home / "models").exists()

    accepted = run_cli(str(source), stdin="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert f"Move {MODEL_NAME} to " in accepted.stdout  # the question
    assert not source.exists()

    other = write_tiny_gguf(source.parent / "other-f16.gguf")
    unasked = run_cli("-y", str(other))  # -y: no question, no input needed
    assert unasked.exit_code == 0, unasked.output
    assert "?" not in unasked.stdout


def test_cli_entry_point_in_a_subprocess(source, tmp_path):
    home = tmp_path / "home"
    env = {**os.environ, "STUDIOLO_HOME": str(home)}
    completed = subprocess.run(
        [sys.executable, "-m", "studiolo", "import", "-c", str(source)],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    assert f"as {DEFAULT_KEY}" in completed.stdout
    assert (home / "models" / DEFAULT_KEY / MODEL_NAME).is_file()

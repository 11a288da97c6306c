"""Put a GGUF file from elsewhere into the catalog, as ``lms import`` does.

The file lands at ``<models_root>/<publisher>/<repo>/<file name>`` and is known by the key
``publisher/repo`` in lower case. Rules:

- The file is read first (``read_model_info``); a file that is not a whole GGUF model is
  refused and nothing is placed. Vision projectors (``mmproj*.gguf``) are not models.
- Without ``user_repo`` the key is ``local/<name>``: the file stem in lower case with a
  trailing quantization tag dropped (``SmolLM2-135M-Instruct.Q4_1.gguf`` ->
  ``local/smollm2-135m-instruct``) and characters other than letters, digits, ``.``,
  ``_`` and ``-`` turned into ``-``.
- ``user_repo`` must be exactly ``publisher/repo`` of those same safe characters. Folders
  are created in lower case; an existing folder that differs only in case is reused, so
  one key never maps to two folders.
- Nothing is overwritten, and a repo folder that already holds a model is refused: the
  catalog shows one model per repo folder, so a second file there would hide one of them.
- Modes: ``move`` (the default, as in lms), ``copy``, ``hard-link``, ``symbolic-link``.
  Copies (and moves across file systems) are written to ``<name>.part`` and renamed, so
  the catalog, which ignores ``.part`` files, never lists half a file. Links are atomic.
- Vision projectors (``mmproj*.gguf``) beside the source come along, placed the same way
  as the model, so the imported model keeps its vision. In move mode a projector is copied
  instead of moved while another model still sits beside it, since that model may need it.
- ``mmproj`` names the projector explicitly (``--mmproj``): then only it comes along, from any
  folder, named ``mmproj-<its name>`` in the catalog unless its name already starts with ``mmproj``
  (the catalog notices projectors by that prefix). Every projector is checked against the model
  first (models/projector_fit.py): a file that is no ``clip`` projector, or one whose projection
  size is not the model's embedding length, refuses the import before anything is placed.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from studiolo.domain.errors import InvalidRequest
from studiolo.models.gguf_info import ModelInfo, is_vision_projector, read_model_info
from studiolo.models.projector_fit import check_projector_fits
from studiolo.models.split_gguf import is_later_shard, other_shards, split_prefix

MODES = ("move", "copy", "hard-link", "symbolic-link")
DEFAULT_PUBLISHER = "local"
MAX_NAME_LENGTH = 100

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_UNSAFE_CHARACTERS = re.compile(r"[^a-z0-9._-]+")
# A quantization tag at the end of a stem: "-Q4_K_M", ".Q4_1", "_f16", "-IQ3_XXS", "-bf16".
_QUANT_SUFFIX = re.compile(r"[._-](?:i?q\d+(?:_[a-z0-9]+)*|t?q\d_\d|bf16|f16|f32|mxfp4(?:_moe)?)$", re.IGNORECASE)


class ImportRefused(InvalidRequest):
    """An import that cannot or must not be done; the message names the problem."""


@dataclass(frozen=True)
class ImportResult:
    source: Path
    target: Path
    key: str  # publisher/repo, lower case, as the catalog names the model
    mode: str
    dry_run: bool
    info: ModelInfo
    projectors: tuple[Path, ...] = ()  # where the vision projectors that came along went


def import_model(
    source: Path,
    models_root: Path,
    *,
    user_repo: str | None = None,
    mode: str = "move",
    dry_run: bool = False,
    mmproj: Path | None = None,
) -> ImportResult:
    """Place the model at ``source`` in the catalog under ``models_root`` (or only check, if dry)."""
    if mode not in MODES:
        raise ImportRefused(f"unknown import mode '{mode}'; use one of {', '.join(MODES)}")
    source = _checked_source(Path(source))
    _refuse_from_models_folder(source, Path(models_root))
    info = read_model_info(source)
    publisher, repo = parse_user_repo(user_repo) if user_repo is not None else default_user_repo(source)
    repo_dir = _repo_dir(Path(models_root), publisher, repo)
    target = repo_dir / source.name
    projectors = _projectors_beside(source) if mmproj is None else [_checked_projector(Path(mmproj))]
    for projector in projectors:
        check_projector_fits(projector, info)  # a mismatch refuses the import before anything moves
    placements = [(p, repo_dir / _projector_name(p), _projector_mode(mode, p, source)) for p in projectors]
    # a split GGUF's other shards (read_model_info checked they are there) go the same way as its first
    placements += [(shard, repo_dir / shard.name, mode) for shard in other_shards(source)]
    # Projectors and shards first: the model shows up in the catalog only once everything is in place.
    placements.append((source, target, mode))
    _check_free(target)
    for _, projector_target, _ in placements:
        _check_not_there(projector_target)
    if not dry_run:
        repo_dir.mkdir(parents=True, exist_ok=True)
        _place_all(placements)
    return ImportResult(
        source=source,
        target=target,
        key=f"{publisher}/{repo}".lower(),
        mode=mode,
        dry_run=dry_run,
        info=info,
        projectors=tuple(projector_target for _, projector_target, _ in placements[:len(projectors)]),
    )


def _place_all(placements: list[tuple[Path, Path, str]]) -> None:
    """Place every file, or, if one fails, undo the ones already placed and re-raise."""
    done: list[tuple[Path, Path, str]] = []
    try:
        for source, target, mode in placements:
            _place(source, target, mode)
            done.append((source, target, mode))
    except ImportRefused:
        for source, target, mode in reversed(done):
            _undo(source, target, mode)
        raise


def _undo(source: Path, target: Path, mode: str) -> None:
    try:
        if mode == "move":
            _move(target, source)
        else:
            target.unlink()
    except OSError:
        pass  # best effort: the error being raised already names the real problem


def _checked_source(source: Path) -> Path:
    if not source.exists():
        raise ImportRefused(f"no such file: {source}")
    if not source.is_file():
        raise ImportRefused(f"not a file: {source}")
    if not source.name.lower().endswith(".gguf"):
        raise ImportRefused(f"{source}: only GGUF model files (*.gguf) can be imported")
    if is_later_shard(source.name):
        raise ImportRefused(f"{source} is a later shard of a split GGUF; import its first shard (-00001-of-…)")
    if is_vision_projector(source):
        raise ImportRefused(f"{source} is a vision projector, not a model; import the model beside it")
    return source.absolute()


def _refuse_from_models_folder(source: Path, models_root: Path) -> None:
    """A file already in the catalog is a model of its own: moving it would change its key and
    leave its adapters behind, and "remove it first" would name the model itself."""
    root = Path(os.path.normpath(models_root.absolute()))
    for path, base in ((Path(os.path.normpath(source)), root), (source.resolve(), root.resolve())):
        # a hidden folder (``studiolo convert`` writes in ``.convert-*``) holds no catalog model
        if path.is_relative_to(base) and not path.relative_to(base).parts[0].startswith("."):
            raise ImportRefused(f"{source} is already in the models folder {base}, {_place_in(path.relative_to(base))}")


def _place_in(relative: Path) -> str:
    parts = [part.lower() for part in relative.parts]
    if len(parts) == 3:
        return f"under key '{parts[0]}/{parts[1]}'; nothing to import"
    if len(parts) == 4 and parts[2] == "adapters":
        return f"as an adapter of '{parts[0]}/{parts[1]}'; nothing to import"
    return f"at {relative}, where the catalog does not look: move it out of that folder, then import it"


def parse_user_repo(user_repo: str) -> tuple[str, str]:
    parts = user_repo.strip().split("/")
    if len(parts) != 2 or not all(_is_safe_name(part) for part in parts):
        raise ImportRefused(
            f"user repo '{user_repo}' must be 'publisher/repo', each part of letters, digits, '.', '_' and '-'"
        )
    return parts[0], parts[1]


def _is_safe_name(name: str) -> bool:
    return bool(_SAFE_NAME.match(name)) and len(name) <= MAX_NAME_LENGTH and name not in {".", ".."}


def default_user_repo(source: Path) -> tuple[str, str]:
    stem = (split_prefix(source.name) or source.name[: -len(".gguf")]).lower()
    stem = _QUANT_SUFFIX.sub("", stem)
    repo = _UNSAFE_CHARACTERS.sub("-", stem).strip("-.")[:MAX_NAME_LENGTH] or "model"
    return DEFAULT_PUBLISHER, repo


def _repo_dir(models_root: Path, publisher: str, repo: str) -> Path:
    publisher_dir = _existing_or_lower(models_root, publisher)
    return _existing_or_lower(publisher_dir, repo)


def _existing_or_lower(parent: Path, name: str) -> Path:
    """The folder for ``name`` under ``parent``: one already there in any case, else lower case."""
    if parent.is_dir():
        for child in parent.iterdir():
            if child.is_dir() and child.name.lower() == name.lower():
                return child
    return parent / name.lower()


def _check_not_there(target: Path) -> None:
    if target.exists() or target.is_symlink():
        raise ImportRefused(f"{target} already exists; remove it first or choose another --user-repo")


def _check_free(target: Path) -> None:
    _check_not_there(target)
    if not target.parent.is_dir():
        return
    taken = sorted(p.name for p in target.parent.iterdir() if _is_model_file(p))
    if taken:
        key = f"{target.parent.parent.name}/{target.parent.name}".lower()
        raise ImportRefused(f"model key '{key}' already holds {taken[0]}; choose another --user-repo")


def _is_model_file(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(".gguf") and not is_vision_projector(path) and not is_later_shard(name) and path.is_file()


def _projectors_beside(source: Path) -> list[Path]:
    return sorted(p for p in source.parent.iterdir() if is_vision_projector(p) and p.is_file())


def _checked_projector(projector: Path) -> Path:
    if not projector.is_file():
        raise ImportRefused(f"no such projector file: {projector}")
    if not projector.name.lower().endswith(".gguf"):
        raise ImportRefused(f"{projector}: a vision projector is a GGUF file (*.gguf)")
    return projector.absolute()


def _projector_name(projector: Path) -> str:
    # the catalog notices a projector by its name alone: an explicit one named otherwise gets the prefix
    return projector.name if is_vision_projector(projector) else f"mmproj-{projector.name}"


def _projector_mode(mode: str, projector: Path, source: Path) -> str:
    if mode != "move":
        return mode
    others = [p for p in projector.parent.iterdir() if p != source and _is_model_file(p)]
    return "copy" if others else "move"


def _place(source: Path, target: Path, mode: str) -> None:
    _check_not_there(target)
    try:
        if mode == "move":
            _move(source, target)
        elif mode == "copy":
            _copy_atomically(source, target)
        elif mode == "hard-link":
            os.link(source, target)
        else:
            target.symlink_to(source.resolve())
    except OSError as error:
        raise ImportRefused(_placing_error(source, target, mode, error)) from None


def _move(source: Path, target: Path) -> None:
    if source.is_symlink():  # a relative link would break in its new place: point at the file itself
        target.symlink_to(source.resolve())
        source.unlink()
        return
    try:
        os.rename(source, target)  # same file system: atomic, and instant
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
        _copy_atomically(source, target)
        source.unlink()


def _copy_atomically(source: Path, target: Path) -> None:
    partial = target.with_name(target.name + ".part")
    try:
        shutil.copyfile(source, partial)
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _placing_error(source: Path, target: Path, mode: str, error: OSError) -> str:
    if mode == "hard-link" and error.errno == errno.EXDEV:
        return f"cannot hard-link {source} into {target.parent}: different file systems; use --copy or --symbolic-link"
    return f"cannot {mode} {source} to {target}: {error.strerror or error}"

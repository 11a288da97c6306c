"""Download GGUF models from Hugging Face into the catalog folder.

What to fetch: a repo id (``owner/repo``, or ``owner/repo@Q4_K_M`` as ``lms get`` takes it)
or a URL (``https://huggingface.co/owner/repo``, or ``.../blob/<revision>/<file>.gguf`` to
name one file), and an optional quantization matched against the repo's GGUF file names.
Vision projectors (``mmproj*``) are never chosen as the model, but a repo's projector comes along
with it (``choose_projector``: the one of the model's quantization, else F16), fetched before the
model's file so the model shows up with its vision; a projector alone is no catalog entry.
A GGUF model split into ``-00001-of-0000N`` shards is one model: the plan lists every shard (a URL
to any shard means them all), each is fetched as a single file is (models/hub_fetch.py: resumed,
sha256-checked, placed whole), the later shards before the first, so the catalog, which lists a
split only with all its shards, never shows a partial one. Progress counts over the bytes of every shard.

huggingface_hub reads ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` once, when it is imported; we
read them at every call and pass the endpoint explicitly, so a mirror (or a test's fake hub)
named after import is honoured.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi

from studiolo.config import models_dir
from studiolo.models.hub_fetch import (  # noqa: F401 - re-exported: callers import them from here
    HubFile,
    ProgressCallback,
    check_cancel,
    check_disk_space,
    fetch_file,
    hub_errors,
    is_hex,
    refuse_when_offline,
    sha256_of,
    staged_bytes,
    staging_dir,
    staging_name,
)
from studiolo.models.hub_reference import (  # noqa: F401 - re-exported: callers import them from here
    _REPO_ID,
    DEFAULT_QUANTIZATION,
    AlreadyDownloading,
    AmbiguousChoice,
    ChecksumMismatch,
    DownloadCancelled,
    DownloadError,
    FileNotFound,
    FolderTaken,
    HubUnreachable,
    InvalidModelReference,
    ModelReference,
    QuantizationNotFound,
    RepoGated,
    RepoNotFound,
    _basename,
    _is_weights,
    check_quantization,
    choose_gguf,
    choose_projector,
    first_shard,
    hub_endpoint,
    model_files,
    parse_reference,
)

# --- the plan: the model's files, where they come from and where they go -------------------


@dataclass(frozen=True)
class DownloadPlan:
    repo_id: str
    revision: str  # the commit the listing came from, so the bytes are the ones its sha256 describes
    files: tuple[HubFile, ...]  # the model's file; for a split GGUF every shard, the first first
    projector: HubFile | None = None  # the vision projector fetched with it, if the repo has one

    @property
    def every_file(self) -> tuple[HubFile, ...]:
        """The model's files and its projector: everything the download fetches."""
        return self.files + ((self.projector,) if self.projector is not None else ())

    @property
    def filename(self) -> str:
        """The model's file: the only one, or a split's first shard (the one llama.cpp is given)."""
        return self.files[0].filename

    @property
    def sha256(self) -> str | None:
        """The sha256 the hub lists for ``filename``."""
        return self.files[0].sha256

    @property
    def size(self) -> int | None:
        """The bytes of every file, or None when the hub lists no size for one of them."""
        sizes = [file.size for file in self.every_file if file.size is not None]
        return sum(sizes) if len(sizes) == len(self.every_file) else None

    @property
    def key(self) -> str:
        """The catalog key the model will have: ``owner/repo`` in lower case."""
        return self.repo_id.lower()

    @property
    def target(self) -> Path:
        """Where the model's file goes (a split's first shard: its other shards go beside it)."""
        return self.target_of(self.files[0])

    def target_of(self, file: HubFile) -> Path:
        owner, repo = self.key.split("/")
        return models_dir() / owner / repo / _basename(file.filename)

    @property
    def description(self) -> str:
        """The download in words: the file, or a split's first shard and how many shards in all."""
        text = _basename(self.filename)
        if len(self.files) > 1:
            text += f" (a split model: {len(self.files)} shards)"
        if self.projector is not None:
            text += f" with its vision projector {_basename(self.projector.filename)}"
        return text


def resolve(model: str, quantization: str | None = None) -> DownloadPlan:
    """Ask the hub which file (or shards of a split model) ``model`` (and ``quantization``) means."""
    ref = parse_reference(model)
    quantization = _merge_quantization(ref, quantization)
    info = _model_info(ref)
    siblings = {sibling.rfilename: sibling for sibling in info.siblings or []}
    names = list(siblings)
    chosen = _named_file(ref, names) if ref.filename is not None else choose_gguf(names, quantization, ref.repo_id)
    projector = choose_projector(names, chosen)
    # The listing's strings end up in file names: take them only in the shapes the hub uses.
    return DownloadPlan(
        repo_id=info.id if _REPO_ID.fullmatch(info.id or "") else ref.repo_id,
        revision=info.sha if is_hex(info.sha, 40) else ref.revision or "main",
        files=tuple(_hub_file(siblings[name]) for name in model_files(chosen, names, ref.repo_id)),
        projector=_hub_file(siblings[projector]) if projector is not None else None,
    )


def _hub_file(sibling) -> HubFile:
    return HubFile(
        filename=sibling.rfilename,
        size=sibling.lfs.size if sibling.lfs else sibling.size,
        sha256=sibling.lfs.sha256 if sibling.lfs and is_hex(sibling.lfs.sha256, 64) else None,
    )


def _merge_quantization(ref: ModelReference, quantization: str | None) -> str | None:
    quantization = quantization.strip() if quantization and quantization.strip() else None
    check_quantization(quantization)  # before asking the hub anything
    if ref.quantization and quantization and ref.quantization.lower() != quantization.lower():
        raise InvalidModelReference(
            f"the model names quantization '{ref.quantization}' but quantization '{quantization}' was asked for"
        )
    return quantization or ref.quantization


def _named_file(ref: ModelReference, names: list[str]) -> str:
    """The file a URL names; a URL to any shard of a split model means the whole model, by its first shard."""
    if ref.filename not in names:
        raise FileNotFound(f"file '{ref.filename}' not found in Hugging Face repo '{ref.repo_id}'")
    if not _is_weights(ref.filename):
        raise FileNotFound(f"'{ref.filename}' is not a GGUF model file (vision projectors are not models of their own)")
    return first_shard(ref.filename)


def _model_info(ref: ModelReference):
    refuse_when_offline()
    with hub_errors(ref.repo_id, ref.revision):
        return HfApi(endpoint=hub_endpoint()).model_info(ref.repo_id, revision=ref.revision, files_metadata=True)


# --- what is there already -----------------------------------------------------------------


def _has_listed_size(plan: DownloadPlan, file: HubFile) -> bool:
    target = plan.target_of(file)
    return target.is_file() and (file.size is None or target.stat().st_size == file.size)


def _in_place(plan: DownloadPlan, file: HubFile, cancel: threading.Event | None = None) -> bool:
    """Whether the file is at its target with the listed size and checksum (with neither listed, it cannot tell)."""
    if not _has_listed_size(plan, file):
        return False
    if file.sha256:
        return sha256_of(plan.target_of(file), cancel) == file.sha256
    return file.size is not None


def is_downloaded(plan: DownloadPlan, cancel: threading.Event | None = None) -> bool:
    """Whether every file of the model is already in place with the listed size and checksum."""
    # sizes first: a shard missing answers at once, without hashing the others' gigabytes
    if not all(_has_listed_size(plan, file) for file in plan.every_file):
        return False
    return all(_in_place(plan, file, cancel) for file in plan.every_file)


def check_folder_free(plan: DownloadPlan) -> None:
    """Refuse a second model in the plan's folder: the catalog shows one model per folder, and
    the key printed after the download would then name the other file. Call it once
    ``is_downloaded`` said no: a single file at the model's target is then another model, never
    replaced. A split's shards may be there from an interrupted attempt (or with one since removed):
    one of the listed size is checked against its sha256 by ``download``, one of another size is
    another file."""
    folder = plan.target.parent
    # a model downloaded before its projector was fetched along may be there whole: sha256-checked later
    single = len(plan.files) == 1 and plan.projector is None
    for file in plan.every_file:
        if os.path.lexists(plan.target_of(file)) and (single or not _has_listed_size(plan, file)):
            raise _target_taken(plan, file)
    if not folder.is_dir():
        return
    ours = {plan.target_of(file) for file in plan.every_file}
    others = sorted(_shown(path.name) for path in folder.iterdir() if _is_weights(path.name) and path not in ours)
    if others:
        raise FolderTaken(
            f"{folder} already holds the model {', '.join(others)} (key '{plan.key}'); one model per folder:"
            " remove it to download another file of this repo"
        )


def _target_taken(plan: DownloadPlan, file: HubFile) -> FolderTaken:
    what = "sha256" if file.sha256 else "size"
    taken = FolderTaken(
        f"{plan.target_of(file)} already exists and is not the file '{file.filename}' of '{plan.repo_id}' (its"
        f" {what} differs from the hub's); it is kept: move it away to download this one"
    )
    taken.code = "model_file_exists"  # still a FolderTaken, so every caller answers it as one (409)
    return taken


def _shown(name: str) -> str:
    """A file name as messages show it: one not in UTF-8 keeps its odd bytes escaped."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


# --- downloading ----------------------------------------------------------------------------


def download(
    plan: DownloadPlan,
    *,
    on_progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> Path:
    """Fetch the plan's files into the catalog folder and return the model's path.

    Resumes from partial files left by an earlier attempt, and keeps the shards of a split
    already placed. ``on_progress`` is called from this thread with (downloaded bytes, total
    bytes) over all the files as data arrives; setting ``cancel`` stops the download at the next
    chunk received (the partial file stays, to be resumed).
    """
    if is_downloaded(plan, cancel):
        return plan.target
    check_folder_free(plan)
    refuse_when_offline()
    missing = _missing_files(plan, cancel)
    check_disk_space(sum((file.size or 0) - staged_bytes(file) for file in missing))
    done = 0
    # The projector and a split's later shards first, the model's (first) file last: the catalog lists
    # the model only once all are in place, and a projector alone is no model of its own.
    for file in (*plan.every_file[1:], plan.files[0]):
        if file in missing:
            _fetch(plan, file, _overall_progress(plan, done, on_progress), cancel)
        done += plan.target_of(file).stat().st_size
    return plan.target


def _missing_files(plan: DownloadPlan, cancel: threading.Event | None) -> list[HubFile]:
    """The files still to fetch; a shard already placed by an earlier attempt must be the hub's."""
    missing = []
    for file in plan.every_file:
        if not os.path.lexists(plan.target_of(file)):
            missing.append(file)
        elif not _in_place(plan, file, cancel):
            raise _target_taken(plan, file)
    return missing


def _fetch(plan: DownloadPlan, file: HubFile, on_progress: ProgressCallback | None, cancel) -> None:
    try:
        fetch_file(plan.repo_id, plan.revision, file, plan.target_of(file), on_progress=on_progress, cancel=cancel)
    except FileExistsError:  # another file appeared at the target while this one downloaded
        raise _target_taken(plan, file) from None


def _overall_progress(plan: DownloadPlan, before: int, on_progress: ProgressCallback | None) -> ProgressCallback | None:
    """One file's progress as the model's: the bytes of the files done before it added, over every file's."""
    if on_progress is None:
        return None
    report = on_progress

    def relay(done: int, total: int | None) -> None:
        # a single file's size may be known only once located; a split's total needs every shard's listed size
        whole = plan.size if plan.size is not None else total if len(plan.every_file) == 1 else None
        report(before + done, whole)

    return relay

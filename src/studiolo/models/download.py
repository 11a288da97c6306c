"""Download GGUF models from Hugging Face into the catalog folder.

What to fetch: a repo id (``owner/repo``, or ``owner/repo@Q4_K_M`` as ``lms get`` takes it)
or a URL (``https://huggingface.co/owner/repo``, or ``.../blob/<revision>/<file>.gguf`` to
name one file), and an optional quantization matched against the repo's GGUF file names.
Vision projectors (``mmproj*``) are never chosen and not fetched along: studiolo does not run
vision yet, and the catalog ignores them. GGUF models split over several files are refused.

How: with huggingface_hub's own calls (model info with file metadata, HEAD and ranged GET
on ``/{repo}/resolve/{revision}/{file}``), but not ``hf_hub_download``: in 2.4.0 it writes
into a temporary file unique to each call and deletes it when the call fails, so a cut
download would start over. We keep the partial file as ``STUDIOLO_HOME/downloads/<sha256>.part``
and pass its length to ``http_get`` as ``resume_size``, which asks for ``Range: bytes=<n>-``.
Once complete, the file's SHA-256 is checked against the LFS sha256 the hub lists (on a
mismatch it is deleted), then renamed to ``models/<owner>/<repo>/<file>`` so the catalog
never sees half a file.

huggingface_hub reads ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` once, when it is imported; we
read them at every call and pass the endpoint explicitly, so a mirror (or a test's fake hub)
named after import is honoured.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

# huggingface_hub 2.4.0 talks HTTP through httpx2 (a dependency it requires); its transport
# errors are how "the hub cannot be reached" shows up.
import httpx2
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import http_get
from huggingface_hub.utils import build_hf_headers

from studiolo.config import models_dir, studiolo_home
from studiolo.models.hub_reference import (  # noqa: F401 - re-exported: callers import them from here
    _NAME,
    _REPO_ID,
    _SPLIT_PART,
    DEFAULT_ENDPOINT,
    DEFAULT_QUANTIZATION,
    HUB_HOSTS,
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
    SplitModelUnsupported,
    _basename,
    _choose_by_quantization,
    _choose_default,
    _is_hub_host,
    _is_later_split_part,
    _is_weights,
    _listing,
    _matching,
    _name_tokens,
    _parse_url,
    _refuse_split,
    check_quantization,
    choose_gguf,
    hub_endpoint,
    parse_reference,
)

try:
    import fcntl
except ImportError:  # Windows: no lock, two processes could then append to one partial file
    _CAN_LOCK = False
else:
    _CAN_LOCK = True

HASH_BLOCK_BYTES = 1 << 20

ProgressCallback = Callable[[int, "int | None"], None]  # (downloaded bytes, total bytes or None)


# --- the plan: one file, where it comes from and where it goes ---------------------------


@dataclass(frozen=True)
class DownloadPlan:
    repo_id: str
    revision: str  # the commit the listing came from, so the bytes are the ones its sha256 describes
    filename: str  # path inside the repo
    size: int | None
    sha256: str | None  # the LFS sha256 the hub lists; None for a file kept in git itself

    @property
    def key(self) -> str:
        """The catalog key the model will have: ``owner/repo`` in lower case."""
        return self.repo_id.lower()

    @property
    def target(self) -> Path:
        owner, repo = self.repo_id.lower().split("/")
        return models_dir() / owner / repo / _basename(self.filename)


def resolve(model: str, quantization: str | None = None) -> DownloadPlan:
    """Ask the hub which file ``model`` (and ``quantization``) means."""
    ref = parse_reference(model)
    quantization = _merge_quantization(ref, quantization)
    info = _model_info(ref)
    siblings = {sibling.rfilename: sibling for sibling in info.siblings or []}
    if ref.filename is not None:
        name = _named_file(ref, list(siblings))
    else:
        name = choose_gguf(list(siblings), quantization, ref.repo_id)
    sibling = siblings[name]
    # The listing's strings end up in file names: take them only in the shapes the hub uses.
    return DownloadPlan(
        repo_id=info.id if _REPO_ID.fullmatch(info.id or "") else ref.repo_id,
        revision=info.sha if _is_hex(info.sha, 40) else ref.revision or "main",
        filename=name,
        size=sibling.lfs.size if sibling.lfs else sibling.size,
        sha256=sibling.lfs.sha256 if sibling.lfs and _is_hex(sibling.lfs.sha256, 64) else None,
    )


def _is_hex(text: object, length: int) -> bool:
    """A lower-case hex digest of ``length`` digits (a git commit: 40, a sha256: 64)."""
    return isinstance(text, str) and re.fullmatch(f"[0-9a-f]{{{length}}}", text) is not None


def _merge_quantization(ref: ModelReference, quantization: str | None) -> str | None:
    quantization = quantization.strip() if quantization and quantization.strip() else None
    check_quantization(quantization)  # before asking the hub anything
    if ref.quantization and quantization and ref.quantization.lower() != quantization.lower():
        raise InvalidModelReference(
            f"the model names quantization '{ref.quantization}' but quantization '{quantization}' was asked for"
        )
    return quantization or ref.quantization


def _named_file(ref: ModelReference, names: list[str]) -> str:
    if ref.filename not in names:
        raise FileNotFound(f"file '{ref.filename}' not found in Hugging Face repo '{ref.repo_id}'")
    if not _is_weights(ref.filename):
        raise FileNotFound(f"'{ref.filename}' is not a GGUF model file (vision projectors are not models of their own)")
    _refuse_split(ref.filename)
    return ref.filename


def _model_info(ref: ModelReference):
    _refuse_when_offline()
    with _hub_errors(ref.repo_id, ref.revision):
        return HfApi(endpoint=hub_endpoint()).model_info(ref.repo_id, revision=ref.revision, files_metadata=True)


def _refuse_when_offline() -> None:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise HubUnreachable("HF_HUB_OFFLINE is set: downloads from Hugging Face are turned off")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextmanager
def _hub_errors(repo_id: str, revision: str | None) -> Iterator[None]:
    """Turn huggingface_hub's exceptions into ours, each with a one-line message."""
    try:
        yield
    except GatedRepoError as exc:
        raise RepoGated(
            f"Hugging Face repo '{repo_id}' is gated: accept its terms on huggingface.co,"
            " then log in with `hf auth login` or set HF_TOKEN"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise RepoNotFound(f"Hugging Face repo '{repo_id}' not found (or it is private and no token is set)") from exc
    except RevisionNotFoundError as exc:
        raise RepoNotFound(f"revision '{revision}' not found in Hugging Face repo '{repo_id}'") from exc
    except RemoteEntryNotFoundError as exc:
        raise FileNotFound(f"a file of Hugging Face repo '{repo_id}' is gone from the hub: {exc.response.url}") from exc
    except HfHubHTTPError as exc:
        response = getattr(exc, "response", None)
        answer = f"HTTP {response.status_code}" if response is not None else _first_line(exc)
        raise DownloadError(f"the Hugging Face hub refused the request for '{repo_id}' ({answer})") from exc
    except (httpx2.TransportError, OfflineModeIsEnabled) as exc:
        raise HubUnreachable(f"cannot reach the Hugging Face hub at {hub_endpoint()}: {_first_line(exc)}") from exc


# --- fetching ------------------------------------------------------------------------------


def staging_dir() -> Path:
    """Partial downloads; inside STUDIOLO_HOME so the final rename stays on one filesystem."""
    return studiolo_home() / "downloads"


def is_downloaded(plan: DownloadPlan, cancel: threading.Event | None = None) -> bool:
    """Whether the file is already in place with the listed size and checksum."""
    target = plan.target
    if not target.is_file():
        return False
    if plan.size is not None and target.stat().st_size != plan.size:
        return False
    if plan.sha256:
        return sha256_of(target, cancel) == plan.sha256
    return plan.size is not None


def check_folder_free(plan: DownloadPlan) -> None:
    """Refuse a second model in the plan's folder: the catalog shows one model per folder, and
    the key printed after the download would then name the other file. Call it once
    ``is_downloaded`` said no: a file at the target is then another model, never replaced."""
    folder = plan.target.parent
    if os.path.lexists(plan.target):
        raise _target_taken(plan)
    if not folder.is_dir():
        return
    others = sorted(_shown(path.name) for path in folder.iterdir() if _is_weights(path.name) and path != plan.target)
    if others:
        raise FolderTaken(
            f"{folder} already holds the model {', '.join(others)} (key '{plan.key}'); one model per folder:"
            " remove it to download another file of this repo"
        )


def _target_taken(plan: DownloadPlan) -> FolderTaken:
    what = "sha256" if plan.sha256 else "size"
    taken = FolderTaken(
        f"{plan.target} already exists and is not the file '{plan.filename}' of '{plan.repo_id}' (its {what}"
        f" differs from the hub's); it is kept: move it away to download this one"
    )
    taken.code = "model_file_exists"  # still a FolderTaken, so every caller answers it as one (409)
    return taken


def _shown(name: str) -> str:
    """A file name as messages show it: one not in UTF-8 keeps its odd bytes escaped."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


def download(
    plan: DownloadPlan,
    *,
    on_progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> Path:
    """Fetch the plan's file into the catalog folder and return its path.

    Resumes from a partial file left by an earlier attempt. ``on_progress`` is called from
    this thread with (downloaded bytes, total bytes) as data arrives; setting ``cancel`` stops
    the download at the next chunk received (the partial file stays, to be resumed).
    """
    if is_downloaded(plan, cancel):
        return plan.target
    check_folder_free(plan)
    _refuse_when_offline()
    _check_cancel(cancel)
    url, size, etag, headers = _locate(plan)
    size = plan.size if plan.size is not None else size
    sha256 = plan.sha256 or (etag if _is_hex(etag, 64) else None)
    partial = staging_dir() / _staging_name(plan, sha256)
    with _locked_partial(partial, plan) as part:
        _fetch_rest(plan, url, part, size, headers, on_progress, cancel)
        _verify(partial, plan, sha256, cancel)
        _place(partial, plan)
    return plan.target


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise DownloadCancelled("download cancelled; the partial file is kept and the next attempt resumes it")


def _locate(plan: DownloadPlan) -> tuple[str, int | None, str | None, dict[str, str]]:
    """Where the bytes are (the hub redirects big files to a CDN), their size and ETag, and the headers to send."""
    endpoint = hub_endpoint()
    url = hf_hub_url(plan.repo_id, plan.filename, revision=plan.revision, endpoint=endpoint)
    with _hub_errors(plan.repo_id, plan.revision):
        metadata = get_hf_file_metadata(url, endpoint=endpoint)
    headers = build_hf_headers()
    if urlsplit(metadata.location)[:2] != urlsplit(endpoint)[:2]:
        headers.pop("authorization", None)  # a signed CDN URL: the user's token stays with the hub
    return metadata.location, metadata.size, metadata.etag, headers


def _staging_name(plan: DownloadPlan, sha256: str | None) -> str:
    if sha256:
        return f"{sha256}.part"  # named by content: a partial is only ever resumed with the same bytes
    owner, repo = plan.key.split("/")
    # a revision from a URL can be any text ("../x"): only hex goes into a file name as it is
    revision = plan.revision if re.fullmatch(r"[0-9a-f]{1,64}", plan.revision) else _digest(plan.revision)
    return f"{owner}--{repo}--{revision}--{_basename(plan.filename)}.part"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


@contextmanager
def _locked_partial(path: Path, plan: DownloadPlan) -> Iterator[BinaryIO]:
    """The partial file, open at its end, locked so a second download of it (any process) refuses."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+b") as part:
        if _CAN_LOCK:
            try:
                fcntl.flock(part, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise AlreadyDownloading(f"'{_basename(plan.filename)}' is already being downloaded") from None
        part.seek(0, os.SEEK_END)
        yield part


def _fetch_rest(
    plan: DownloadPlan,
    url: str,
    part: BinaryIO,
    size: int | None,
    headers: dict[str, str],
    on_progress: ProgressCallback | None,
    cancel: threading.Event | None,
) -> None:
    resume = part.tell()
    if size is not None and resume > size:  # not a prefix of this file: start over
        part.seek(0)
        part.truncate()
        resume = 0
    _check_disk_space(size, resume)
    if on_progress is not None:
        on_progress(resume, size)
    relay = functools.partial(_ProgressRelay, on_progress, cancel, size)
    try:
        with _hub_errors(plan.repo_id, plan.revision):
            # http_get only calls tqdm_class(...) to make its bar, so a partial serves; it is typed as a class
            http_get(url, part, resume_size=resume, headers=headers, expected_size=size,
                     tqdm_class=relay)  # type: ignore[arg-type]
    except OSError as exc:  # http_get's size check, or the disk
        raise DownloadError(f"download of '{_basename(plan.filename)}' failed: {_first_line(exc)}") from exc
    part.flush()
    os.fsync(part.fileno())


def _check_disk_space(size: int | None, resume: int) -> None:
    if size is None:
        return
    free = shutil.disk_usage(staging_dir()).free
    if free < size - resume:
        raise DownloadError(f"not enough disk space in {staging_dir()}: {size - resume} bytes needed, {free} free")


class _ProgressRelay:
    """Stands in for the tqdm bar ``http_get`` drives (it accepts any class): forwards the byte
    count, and is where a cancel lands, since ``http_get`` calls ``update`` after every chunk."""

    def __init__(self, on_progress, cancel, expected_total, *, total=None, initial=0, **_tqdm_options):
        self._on_progress = on_progress
        self._cancel = cancel
        self.total = expected_total if expected_total is not None else total
        self.n = initial

    def __enter__(self) -> _ProgressRelay:
        return self

    def __exit__(self, *exc_info) -> None:
        return None

    def update(self, n: int) -> None:
        _check_cancel(self._cancel)
        self.n += n
        if self._on_progress is not None:
            self._on_progress(self.n, self.total)


def sha256_of(path: Path, cancel: threading.Event | None = None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(HASH_BLOCK_BYTES), b""):
            _check_cancel(cancel)
            digest.update(block)
    return digest.hexdigest()


def _verify(partial: Path, plan: DownloadPlan, sha256: str | None, cancel: threading.Event | None) -> None:
    if sha256 is None:
        return  # a file kept in git itself has no sha256 listed; http_get already checked its size
    actual = sha256_of(partial, cancel)
    if actual != sha256:
        partial.unlink(missing_ok=True)
        raise ChecksumMismatch(
            f"'{_basename(plan.filename)}' does not match the sha256 the hub lists"
            f" (got {actual[:12]}…, expected {sha256[:12]}…); the download was deleted, try again"
        )


def _place(partial: Path, plan: DownloadPlan) -> None:
    """Move into the catalog folder: the file appears whole or not at all, and never over
    another file (one may have appeared there while this one downloaded)."""
    target = plan.target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            _link_then_unlink(partial, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            # models/ is on another filesystem: copy beside the target under a name the catalog ignores, then link
            beside = target.with_name(target.name + ".part")
            shutil.copyfile(partial, beside)
            try:
                _link_then_unlink(beside, target)
            finally:
                beside.unlink(missing_ok=True)
            partial.unlink()
    except FileExistsError:
        raise _target_taken(plan) from None
    except OSError as exc:
        raise DownloadError(f"cannot place the download at {target}: {_first_line(exc)}") from exc


def _link_then_unlink(source: Path, target: Path) -> None:
    """A rename that refuses an existing target (os.replace would overwrite it)."""
    try:
        os.link(source, target)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            raise
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, "file exists", str(target)) from exc
        # a filesystem without hard links: a rename, checked just before (a small window, no better offered)
        os.replace(source, target)
        return
    source.unlink()

"""Fetch one file of a Hugging Face repo into the catalog folder: resumed, checked, placed whole.

With huggingface_hub's own calls (HEAD and ranged GET on ``/{repo}/resolve/{revision}/{file}``),
but not ``hf_hub_download``: in 2.4.0 it writes into a temporary file unique to each call and
deletes it when the call fails, so a cut download would start over. We keep the partial file as
``STUDIOLO_HOME/downloads/<sha256>.part`` and pass its length to ``http_get`` as ``resume_size``,
which asks for ``Range: bytes=<n>-``. Once complete, the file's SHA-256 is checked against the
LFS sha256 the hub lists (on a mismatch it is deleted), then linked to its target in the models
folder, so the catalog never sees half a file. models/download.py decides which files to fetch.
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
from huggingface_hub import get_hf_file_metadata, hf_hub_url
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

from studiolo.config import studiolo_home
from studiolo.models.hub_reference import (
    AlreadyDownloading,
    ChecksumMismatch,
    DownloadCancelled,
    DownloadError,
    FileNotFound,
    HubUnreachable,
    RepoGated,
    RepoNotFound,
    _basename,
    hub_endpoint,
)

try:
    import fcntl
except ImportError:  # Windows: no lock, two processes could then append to one partial file
    _CAN_LOCK = False
else:
    _CAN_LOCK = True

HASH_BLOCK_BYTES = 1 << 20

ProgressCallback = Callable[[int, "int | None"], None]  # (downloaded bytes, total bytes or None)


@dataclass(frozen=True)
class HubFile:
    """One file of a repo as the hub's listing describes it."""

    filename: str  # path inside the repo
    size: int | None
    sha256: str | None  # the LFS sha256 the hub lists; None for a file kept in git itself


def staging_dir() -> Path:
    """Partial downloads; inside STUDIOLO_HOME so the final rename stays on one filesystem."""
    return studiolo_home() / "downloads"


def fetch_file(
    repo_id: str,
    revision: str,
    file: HubFile,
    target: Path,
    *,
    on_progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> None:
    """Download ``file`` to ``target``, resuming its partial file; ``on_progress`` gets (bytes of
    this file, its size). Raises FileExistsError when something else is at ``target`` by then
    (it is kept, and so is the checked download, in the staging folder)."""
    check_cancel(cancel)
    url, size, etag, headers = _locate(repo_id, revision, file)
    size = file.size if file.size is not None else size
    sha256 = file.sha256 or (etag if is_hex(etag, 64) else None)
    partial = staging_dir() / staging_name(repo_id, revision, file, sha256)
    with _locked_partial(partial, file) as part:
        _fetch_rest(repo_id, revision, file, url, part, size, headers, on_progress, cancel)
        _verify(partial, file, sha256, cancel)
        _place(partial, target)


def staged_bytes(file: HubFile) -> int:
    """How much of ``file`` an earlier attempt left in the staging folder (0 without a listed sha256)."""
    if not file.sha256:
        return 0
    partial = staging_dir() / f"{file.sha256}.part"
    return partial.stat().st_size if partial.is_file() else 0


def check_disk_space(needed: int) -> None:
    staging_dir().mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(staging_dir()).free
    if free < needed:
        raise DownloadError(f"not enough disk space in {staging_dir()}: {needed} bytes needed, {free} free")


def is_hex(text: object, length: int) -> bool:
    """A lower-case hex digest of ``length`` digits (a git commit: 40, a sha256: 64)."""
    return isinstance(text, str) and re.fullmatch(f"[0-9a-f]{{{length}}}", text) is not None


def check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise DownloadCancelled("download cancelled; the partial file is kept and the next attempt resumes it")


def refuse_when_offline() -> None:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise HubUnreachable("HF_HUB_OFFLINE is set: downloads from Hugging Face are turned off")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextmanager
def hub_errors(repo_id: str, revision: str | None) -> Iterator[None]:
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
        answer = f"HTTP {response.status_code}" if response is not None else first_line(exc)
        raise DownloadError(f"the Hugging Face hub refused the request for '{repo_id}' ({answer})") from exc
    except (httpx2.TransportError, OfflineModeIsEnabled) as exc:
        raise HubUnreachable(f"cannot reach the Hugging Face hub at {hub_endpoint()}: {first_line(exc)}") from exc


def _locate(repo_id: str, revision: str, file: HubFile) -> tuple[str, int | None, str | None, dict[str, str]]:
    """Where the bytes are (the hub redirects big files to a CDN), their size and ETag, and the headers to send."""
    endpoint = hub_endpoint()
    url = hf_hub_url(repo_id, file.filename, revision=revision, endpoint=endpoint)
    with hub_errors(repo_id, revision):
        metadata = get_hf_file_metadata(url, endpoint=endpoint)
    headers = build_hf_headers()
    if urlsplit(metadata.location)[:2] != urlsplit(endpoint)[:2]:
        headers.pop("authorization", None)  # a signed CDN URL: the user's token stays with the hub
    return metadata.location, metadata.size, metadata.etag, headers


def staging_name(repo_id: str, revision: str, file: HubFile, sha256: str | None) -> str:
    if sha256:
        return f"{sha256}.part"  # named by content: a partial is only ever resumed with the same bytes
    owner, repo = repo_id.lower().split("/")
    # a revision from a URL can be any text ("../x"): only hex goes into a file name as it is
    revision = revision if re.fullmatch(r"[0-9a-f]{1,64}", revision) else _digest(revision)
    return f"{owner}--{repo}--{revision}--{_basename(file.filename)}.part"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


@contextmanager
def _locked_partial(path: Path, file: HubFile) -> Iterator[BinaryIO]:
    """The partial file, open at its end, locked so a second download of it (any process) refuses."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+b") as part:
        if _CAN_LOCK:
            try:
                fcntl.flock(part, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise AlreadyDownloading(f"'{_basename(file.filename)}' is already being downloaded") from None
        part.seek(0, os.SEEK_END)
        yield part


def _fetch_rest(
    repo_id: str,
    revision: str,
    file: HubFile,
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
    if size is not None:
        check_disk_space(size - resume)
    if on_progress is not None:
        on_progress(resume, size)
    relay = functools.partial(_ProgressRelay, on_progress, cancel, size)
    try:
        with hub_errors(repo_id, revision):
            # http_get only calls tqdm_class(...) to make its bar, so a partial serves; it is typed as a class
            http_get(url, part, resume_size=resume, headers=headers, expected_size=size,
                     tqdm_class=relay)  # type: ignore[arg-type]
    except OSError as exc:  # http_get's size check, or the disk
        raise DownloadError(f"download of '{_basename(file.filename)}' failed: {first_line(exc)}") from exc
    part.flush()
    os.fsync(part.fileno())


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
        check_cancel(self._cancel)
        self.n += n
        if self._on_progress is not None:
            self._on_progress(self.n, self.total)


def sha256_of(path: Path, cancel: threading.Event | None = None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(HASH_BLOCK_BYTES), b""):
            check_cancel(cancel)
            digest.update(block)
    return digest.hexdigest()


def _verify(partial: Path, file: HubFile, sha256: str | None, cancel: threading.Event | None) -> None:
    if sha256 is None:
        return  # a file kept in git itself has no sha256 listed; http_get already checked its size
    actual = sha256_of(partial, cancel)
    if actual != sha256:
        partial.unlink(missing_ok=True)
        raise ChecksumMismatch(
            f"'{_basename(file.filename)}' does not match the sha256 the hub lists"
            f" (got {actual[:12]}…, expected {sha256[:12]}…); the download was deleted, try again"
        )


def _place(partial: Path, target: Path) -> None:
    """Move into the catalog folder: the file appears whole or not at all, and never over
    another file (one may have appeared there while this one downloaded: FileExistsError)."""
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
        raise
    except OSError as exc:
        raise DownloadError(f"cannot place the download at {target}: {first_line(exc)}") from exc


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

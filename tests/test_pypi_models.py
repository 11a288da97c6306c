"""The one mechanism for models shipped on PyPI (models/pypi_models.py), on small fake wheels
built here: no network. Parts concatenated, a deflated entry of a split zip, and every way an
assembly can fail (a wrong sha256, a missing member or package, an interruption) leaving
nothing in the catalog and no ``.part`` file behind."""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
import zlib
from pathlib import Path

import pytest

from studiolo.models.catalog import Catalog
from studiolo.models.hub_reference import ChecksumMismatch, FolderTaken
from studiolo.models.pypi_models import (
    PartMissing,
    PyPIModel,
    WheelPart,
    ZipEntry,
    install,
    is_installed,
    staging_dir,
    target_path,
)

KEY = "fake/model"
FILENAME = "model-q4.gguf"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("STUDIOLO_HOME", str(tmp_path / "home"))
    # a package not among the fake wheels must fail at once, never reach a registry
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    return tmp_path / "home"


def make_wheel(folder: Path, package: str, version: str, member: str, data: bytes) -> Path:
    """A wheel as PyPI serves one: a zip named after the distribution, holding ``member``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{package.replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        wheel.writestr(f"{package.replace('-', '_')}/__init__.py", "")
        wheel.writestr(member, data)
    return path


def split_model(wheels: Path, data: bytes, count: int, *, sha256: str | None = None) -> PyPIModel:
    """``data`` cut into ``count`` parts, one fake wheel each."""
    size = -(-len(data) // count)
    parts = []
    for n in range(count):
        part = WheelPart(f"fake-part{n + 1}", "1.0", f"fake_part{n + 1}/data/part{n + 1}.bin")
        make_wheel(wheels, part.package, part.version, part.member, data[n * size:(n + 1) * size])
        parts.append(part)
    return PyPIModel(KEY, FILENAME, sha256 or hashlib.sha256(data).hexdigest(), len(data), tuple(parts))


def fake_gguf(size: int) -> bytes:
    return b"GGUF" + os.urandom(size - 4)


def assert_nothing_left(home: Path) -> None:
    assert not target_path_exists(), "a file reached the catalog"
    assert Catalog(home / "models").entries() == []
    leftovers = list(staging_dir().rglob("*")) if staging_dir().exists() else []
    assert leftovers == [], f"left behind: {leftovers}"


def target_path_exists() -> bool:
    return (Path(os.environ["STUDIOLO_HOME"]) / "models" / KEY / FILENAME).exists()


def test_parts_are_concatenated_in_order_and_checked(home, tmp_path):
    data = fake_gguf(3 * 1024 * 1024 + 17)  # parts larger than a read block
    model = split_model(tmp_path / "wheels", data, 3)
    seen: list[tuple[int, int]] = []
    path = install(model, wheel_cache=tmp_path / "wheels", on_progress=lambda done, total: seen.append((done, total)))
    assert path == target_path(model) == home / "models" / KEY / FILENAME
    assert path.read_bytes() == data
    assert is_installed(model)
    assert seen[-1] == (len(data), len(data)) and all(a <= b for (a, _), (b, _) in zip(seen, seen[1:]))
    assert [entry.key for entry in Catalog(home / "models").entries()] == [KEY]
    assert list(staging_dir().iterdir()) == []
    assert len(list((tmp_path / "wheels").glob("*.whl"))) == 3  # a named wheel cache keeps them


def test_an_installed_model_is_left_as_it_is(home, tmp_path):
    model = split_model(tmp_path / "wheels", fake_gguf(4096), 2)
    path = install(model, wheel_cache=tmp_path / "wheels")
    mtime = path.stat().st_mtime_ns
    for wheel in (tmp_path / "wheels").glob("*.whl"):
        wheel.unlink()  # nothing is fetched again: the checksum says it is in place
    assert install(model, wheel_cache=tmp_path / "wheels") == path
    assert path.stat().st_mtime_ns == mtime


def test_a_wrong_sha256_leaves_nothing(home, tmp_path):
    model = split_model(tmp_path / "wheels", fake_gguf(10_000), 3, sha256="0" * 64)
    with pytest.raises(ChecksumMismatch, match="sha256 .* expected 000000000000"):
        install(model, wheel_cache=tmp_path / "wheels")
    assert_nothing_left(home)


def test_a_part_of_the_wrong_size_leaves_nothing(home, tmp_path):
    data = fake_gguf(10_000)
    model = split_model(tmp_path / "wheels", data, 2)
    shorter = PyPIModel(KEY, FILENAME, model.sha256, len(data) + 1, model.parts)
    with pytest.raises(ChecksumMismatch, match="10000 bytes, 10001 expected"):
        install(shorter, wheel_cache=tmp_path / "wheels")
    assert_nothing_left(home)


def test_an_interrupted_assembly_leaves_nothing(home, tmp_path):
    data = fake_gguf(3 * 1024 * 1024)
    model = split_model(tmp_path / "wheels", data, 3)

    def interrupt(done: int, total: int) -> None:
        if done > total // 2:
            raise KeyboardInterrupt  # Ctrl+C halfway through

    with pytest.raises(KeyboardInterrupt):
        install(model, wheel_cache=tmp_path / "wheels", on_progress=interrupt)
    assert_nothing_left(home)
    assert install(model, wheel_cache=tmp_path / "wheels").read_bytes() == data  # and a new run completes


def test_a_missing_member_leaves_nothing(home, tmp_path):
    model = split_model(tmp_path / "wheels", fake_gguf(10_000), 3)
    broken = PyPIModel(KEY, FILENAME, model.sha256, model.size,
                       model.parts[:2] + (WheelPart("fake-part3", "1.0", "fake_part3/data/elsewhere.bin"),))
    with pytest.raises(PartMissing, match="fake-part3==1.0 has no file 'fake_part3/data/elsewhere.bin'"):
        install(broken, wheel_cache=tmp_path / "wheels")
    assert_nothing_left(home)


def test_a_missing_package_leaves_nothing(home, tmp_path):
    model = split_model(tmp_path / "wheels", fake_gguf(10_000), 3)
    (tmp_path / "wheels" / "fake_part2-1.0-py3-none-any.whl").unlink()  # pip is then asked, and has none
    with pytest.raises(PartMissing, match="cannot fetch fake-part2==1.0"):
        install(model, wheel_cache=tmp_path / "wheels")
    assert_nothing_left(home)


def test_another_file_at_the_target_is_kept_unless_replacing(home, tmp_path):
    data = fake_gguf(10_000)
    model = split_model(tmp_path / "wheels", data, 2)
    target = target_path(model)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"someone else's model")
    with pytest.raises(FolderTaken, match="already exists"):
        install(model, wheel_cache=tmp_path / "wheels")
    assert target.read_bytes() == b"someone else's model"
    assert install(model, wheel_cache=tmp_path / "wheels", replace=True).read_bytes() == data


def split_archive(wheels: Path, entry_data: bytes, part_bytes: int) -> tuple[list[WheelPart], int, int, int]:
    """A zip holding a stored file, then ``entry_data`` deflated, cut into parts of ``part_bytes``;
    returns the parts and the entry's offset, compressed size and CRC-32."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(zipfile.ZipInfo("app/readme.txt"), os.urandom(5000), zipfile.ZIP_STORED)
        archive.writestr("app/resources/model.gguf", entry_data, zipfile.ZIP_DEFLATED)
    raw = buffer.getvalue()
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        info = archive.getinfo("app/resources/model.gguf")
    parts = []
    for n, start in enumerate(range(0, len(raw), part_bytes), start=1):
        part = WheelPart(f"app-part-{n:03d}", "0.0.2", f"app-part_{n:03d}/input/app.zip.{n:03d}")
        make_wheel(wheels, part.package, part.version, part.member, raw[start:start + part_bytes])
        parts.append(part)
    return parts, info.header_offset, info.compress_size, info.CRC


def test_a_deflated_entry_of_a_split_zip(home, tmp_path):
    # compressible but not trivially: inflating yields many blocks
    entry_data = b"GGUF" + b"".join(hashlib.sha256(str(i).encode()).hexdigest().encode() * 3 for i in range(40_000))
    parts, offset, compressed, crc = split_archive(tmp_path / "wheels", entry_data, 700_000)
    first = offset // 700_000  # the parts before the entry's are never fetched
    entry = ZipEntry("app/resources/model.gguf", offset - first * 700_000, compressed, crc)
    model = PyPIModel(KEY, FILENAME, hashlib.sha256(entry_data).hexdigest(), len(entry_data),
                      tuple(parts[first:]), zip_entry=entry)
    assert install(model, wheel_cache=tmp_path / "wheels").read_bytes() == entry_data
    assert zlib.crc32(entry_data) == crc


def test_a_wrong_zip_offset_or_crc_leaves_nothing(home, tmp_path):
    entry_data = b"GGUF" + os.urandom(50_000)
    parts, offset, compressed, crc = split_archive(tmp_path / "wheels", entry_data, 20_000)
    sha256 = hashlib.sha256(entry_data).hexdigest()
    moved = ZipEntry("app/resources/model.gguf", offset + 1, compressed, crc)
    with pytest.raises(ChecksumMismatch, match="no zip entry 'app/resources/model.gguf' at offset"):
        install(PyPIModel(KEY, FILENAME, sha256, len(entry_data), tuple(parts), zip_entry=moved),
                wheel_cache=tmp_path / "wheels")
    assert_nothing_left(home)
    wrong_crc = ZipEntry("app/resources/model.gguf", offset, compressed, crc ^ 1)
    with pytest.raises(ChecksumMismatch, match="CRC-32"):
        install(PyPIModel(KEY, FILENAME, sha256, len(entry_data), tuple(parts), zip_entry=wrong_crc),
                wheel_cache=tmp_path / "wheels")
    assert_nothing_left(home)

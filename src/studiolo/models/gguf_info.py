"""What a GGUF file says about its model, as LM Studio's model lists show it.

Only the header is read: the metadata key/values and the tensor descriptions, never the
weights. ``gguf.GGUFReader`` would do this too, but it builds a numpy view for every item
of every array; on Gemma 3's 262k-token vocabulary that took about 10 s (SmolLM2: 2.4 s).
So the header is scanned here with ``struct`` over a memory map, using the gguf package
for the format's constants (value types, tensor types, block sizes, file types). Arrays
(the vocabulary, merges, scores) are skipped, not decoded; none of them is needed.

Results are cached in-process by (resolved path, size, mtime_ns), so listing models per
request costs a ``stat`` once a file has been read.

Embedding models: a GGUF counts as an embedding model when its architecture is one of
llama.cpp's encoder-only architectures (``ENCODER_ARCHITECTURES``), or when it has a
``<arch>.pooling_type`` of mean, CLS or last. llama.cpp's converter writes that key only
for sentence-transformers checkpoints (BERT family, gte-Qwen2, Qwen3-Embedding, ...),
never for chat models; "none" means per-token output from a decoder.

Rerankers: a ``<arch>.pooling_type`` of "rank" (4), whatever the architecture (a BERT or
XLM-RoBERTa cross-encoder, Qwen3-Reranker), is what llama.cpp loads with its classification
head attached and what llama-server's ``/rerank`` needs; such a model is a reranker, not an
embedding model. So is an encoder with a classification head (``cls.weight`` or
``cls.output.weight``) and no pooling type at all: llama.cpp's converter writes none for BERT
and XLM-RoBERTa cross-encoders (bge-reranker, jina-reranker), which llama-server serves when
started with ``--pooling rank``; studiolo loads them with rank pooling (``ranks_by_head``). Both
kinds run on the embedding engine (``ModelInfo.pooled``).
"""

from __future__ import annotations

import dataclasses
import mmap
import re
import struct
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from gguf import (
    GGML_QUANT_SIZES,
    GGUF_DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    GGMLQuantizationType,
    GGUFValueType,
    LlamaFileType,
    PoolingType,
)

from studiolo.domain.errors import InvalidRequest
from studiolo.models.split_gguf import missing_shards, other_shards

SUPPORTED_VERSIONS = (2, 3)  # version 1 used 32-bit counts and is long gone
MAX_TENSOR_DIMS = 4  # GGML_MAX_DIMS
# The format lets arrays hold arrays (llama.cpp's reader refuses them; real files have none). The
# cap keeps a crafted file from exhausting Python's recursion limit.
MAX_ARRAY_DEPTH = 64

ENCODER_ARCHITECTURES = frozenset(
    {
        "bert",
        "modern-bert",
        "nomic-bert",
        "nomic-bert-moe",
        "neo-bert",
        "jina-bert-v2",
        "jina-bert-v3",
        "eurobert",
        "gemma-embedding",
        "llama-embed",
        "t5encoder",
    }
)
EMBEDDING_POOLING = frozenset({PoolingType.MEAN, PoolingType.CLS, PoolingType.LAST})
# what llama.cpp's rank pooling applies (a dense + tanh, then a projection; jina has only the first)
CLASSIFIER_HEAD_TENSORS = frozenset({"cls.weight", "cls.output.weight"})

# llama.cpp sets this bit in general.file_type when the type was guessed, not recorded.
_FILE_TYPE_GUESSED = LlamaFileType.GUESSED.value

_SCALAR_FORMATS = {
    GGUFValueType.UINT8: "B",
    GGUFValueType.INT8: "b",
    GGUFValueType.UINT16: "H",
    GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I",
    GGUFValueType.INT32: "i",
    GGUFValueType.FLOAT32: "f",
    GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q",
    GGUFValueType.INT64: "q",
    GGUFValueType.FLOAT64: "d",
}

_TOOLS_IN_TEMPLATE = re.compile(r"\btools\b")
# general.size_label as the converter writes it: "270M", "1.5B", "8x7B", "26B-A4B".
_SIZE_LABEL = re.compile(r"^\d[\w.\-]{0,23}$")


class InvalidModelFile(InvalidRequest):
    code = "invalid_model_file"

    def __init__(self, path: Path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = path


@dataclass(frozen=True)
class ModelInfo:
    architecture: str
    quantization: str  # "Q4_K_M", "Q4_1", "F16", ...
    bits_per_weight: float
    parameter_count: int
    params_string: str  # "135M", "1.5B", as LM Studio shows it
    size_bytes: int
    context_length: int  # trained context length; 0 when the file does not say
    chat_template: str | None
    is_embedding: bool  # makes vectors (/v1/embeddings)
    has_vision: bool  # an mmproj*.gguf sits beside the file
    supports_tools: bool  # the chat template refers to `tools`
    display_name: str
    block_count: int = 0
    embedding_length: int = 0
    head_count_kv: int = 0
    is_reranker: bool = False  # scores (query, document) pairs (/v1/rerank): rank pooling
    ranks_by_head: bool = False  # a reranker whose GGUF names no pooling: rank pooling must be asked for

    @property
    def pooled(self) -> bool:
        """Whether the model gives one output per sequence (a vector or a score), so that it runs on the
        embedding engine, not the generation engine."""
        return self.is_embedding or self.is_reranker


@dataclass(frozen=True)
class TensorHeader:
    name: str
    dims: tuple[int, ...]
    tensor_type: GGMLQuantizationType
    offset: int  # from the start of the data section

    @property
    def n_elements(self) -> int:
        count = 1
        for dim in self.dims:
            count *= dim
        return count

    @property
    def n_bytes(self) -> int:
        block_size, type_size = GGML_QUANT_SIZES[self.tensor_type]
        return self.n_elements * type_size // block_size


@dataclass
class GGUFHeader:
    """The scalar and string metadata (arrays are skipped) and the tensor descriptions."""

    metadata: dict[str, object]
    tensors: list[TensorHeader]
    data_offset: int


class _Truncated(Exception):
    """The header claims more bytes than the file has."""


class _HeaderScanner:
    """Walks a GGUF header in a memory map; raises _Truncated or ValueError on bad input."""

    def __init__(self, buffer: mmap.mmap):
        self.buffer = buffer
        self.size = len(buffer)
        self.pos = 0
        self.order = "<"

    def _take(self, length: int) -> int:
        start = self.pos
        if length < 0 or start + length > self.size:
            raise _Truncated
        self.pos = start + length
        return start

    def unpack(self, fmt: str):
        layout = struct.Struct(self.order + fmt)
        start = self._take(layout.size)
        return layout.unpack_from(self.buffer, start)[0]

    def string(self) -> str:
        length = self.unpack("Q")
        start = self._take(length)
        return self.buffer[start : start + length].decode("utf-8", errors="replace")

    def value(self, value_type: GGUFValueType, depth: int = 0) -> object:
        if value_type == GGUFValueType.STRING:
            return self.string()
        if value_type == GGUFValueType.ARRAY:
            self.skip_array(depth + 1)
            return None
        return self.unpack(_SCALAR_FORMATS[value_type])

    def skip_array(self, depth: int = 1) -> None:
        if depth > MAX_ARRAY_DEPTH:
            raise ValueError(f"arrays nested more than {MAX_ARRAY_DEPTH} deep")
        item_type = GGUFValueType(self.unpack("I"))
        count = self.unpack("Q")
        if item_type in _SCALAR_FORMATS:
            self._take(count * struct.calcsize(_SCALAR_FORMATS[item_type]))
        elif item_type == GGUFValueType.STRING:
            self._skip_strings(count)
        else:
            for _ in range(count):
                self.value(item_type, depth)

    def _skip_strings(self, count: int) -> None:
        # The hot loop for a vocabulary: every string is a u64 length and its bytes.
        if count * 8 > self.size - self.pos:
            raise _Truncated
        length_of = struct.Struct(self.order + "Q").unpack_from
        buffer, pos, size = self.buffer, self.pos, self.size
        for _ in range(count):
            if pos + 8 > size:
                raise _Truncated
            pos += 8 + length_of(buffer, pos)[0]
        if pos > size:
            raise _Truncated
        self.pos = pos


def read_header(path: Path) -> GGUFHeader:
    """Scan ``path``'s GGUF header; raise InvalidModelFile if it is not a whole GGUF file."""
    try:
        with path.open("rb") as f:
            if path.stat().st_size < 24:  # magic, version and the two counts
                raise InvalidModelFile(path, "not a GGUF file (too small)")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
                return _scan(path, _HeaderScanner(buffer))
    except IsADirectoryError:
        raise InvalidModelFile(path, "is a directory, not a GGUF file") from None
    except OSError as error:
        raise InvalidModelFile(path, f"cannot read: {error.strerror or error}") from None


def _scan(path: Path, scanner: _HeaderScanner) -> GGUFHeader:
    if scanner.unpack("I") != GGUF_MAGIC:
        raise InvalidModelFile(path, "not a GGUF file (wrong magic number)")
    version = scanner.unpack("I")
    if version & 0xFFFF == 0:  # written on a machine of the other byte order
        scanner.order, scanner.pos = ">", 4
        version = scanner.unpack("I")
    if version not in SUPPORTED_VERSIONS:
        raise InvalidModelFile(path, f"unsupported GGUF version {version}")
    try:
        tensor_count, kv_count = scanner.unpack("Q"), scanner.unpack("Q")
        metadata = _scan_metadata(scanner, kv_count)
        tensors = [_scan_tensor(scanner) for _ in range(tensor_count)]
    except _Truncated:
        raise InvalidModelFile(path, "truncated GGUF file (the header runs past the end)") from None
    except ValueError as error:  # an unknown value or tensor type: garbage, or a newer format
        raise InvalidModelFile(path, f"unreadable GGUF metadata ({error})") from None
    data_offset = _align(scanner.pos, metadata.get("general.alignment", GGUF_DEFAULT_ALIGNMENT), path)
    _check_tensor_data(path, tensors, data_offset, scanner.size)
    return GGUFHeader(metadata, tensors, data_offset)


def _scan_metadata(scanner: _HeaderScanner, count: int) -> dict[str, object]:
    metadata: dict[str, object] = {}
    for _ in range(count):
        key = scanner.string()
        value = scanner.value(GGUFValueType(scanner.unpack("I")))
        if value is not None:
            metadata[key] = value
    return metadata


def _scan_tensor(scanner: _HeaderScanner) -> TensorHeader:
    name = scanner.string()
    n_dims = scanner.unpack("I")
    if not 0 < n_dims <= MAX_TENSOR_DIMS:
        raise ValueError(f"tensor {name!r} has {n_dims} dimensions")
    dims = tuple(scanner.unpack("Q") for _ in range(n_dims))
    tensor_type = GGMLQuantizationType(scanner.unpack("I"))
    return TensorHeader(name, dims, tensor_type, scanner.unpack("Q"))


def _align(offset: int, alignment: object, path: Path) -> int:
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise InvalidModelFile(path, f"bad general.alignment {alignment!r}")
    return -(-offset // alignment) * alignment


def _check_tensor_data(path: Path, tensors: list[TensorHeader], data_offset: int, file_size: int) -> None:
    """A copy cut short keeps its header intact; only the weights' extent gives it away."""
    if not tensors:
        return
    end = data_offset + max(tensor.offset + tensor.n_bytes for tensor in tensors)
    if end > file_size:
        raise InvalidModelFile(path, f"truncated GGUF file ({file_size} bytes, its tensors need {end})")


# ---- from header to ModelInfo ------------------------------------------------------------

_cache: dict[tuple[str, int, int], ModelInfo] = {}
_cache_lock = threading.Lock()


def read_model_info(path: Path) -> ModelInfo:
    """The metadata of the GGUF model at ``path``; raise InvalidModelFile if it is not one."""
    path = Path(path)
    try:
        resolved = path.resolve()
        stat = resolved.stat()
    except OSError as error:
        raise InvalidModelFile(path, f"cannot read: {error.strerror or error}") from None
    key = (str(resolved), stat.st_size, stat.st_mtime_ns)
    with _cache_lock:
        cached = _cache.get(key)
    if cached is None:
        cached = _with_other_shards(model_info_from_header(read_header(resolved), path, stat.st_size), path)
        with _cache_lock:
            # One entry per file: an older version of this file will not be asked for again.
            for stale in [k for k in _cache if k[0] == key[0]]:
                del _cache[stale]
            _cache[key] = cached
    # A projector can be added or removed without touching the model file: look each time.
    return dataclasses.replace(cached, has_vision=has_vision_projector(path))


def _with_other_shards(info: ModelInfo, first: Path) -> ModelInfo:
    """A split GGUF's first shard describes the model; its size and parameters are all the shards'."""
    shards = other_shards(first)
    if not shards:
        return info
    if missing_shards(first):
        raise InvalidModelFile(first, f"a split GGUF whose shard {missing_shards(first)[0].name} is missing")
    size, parameters = info.size_bytes, info.parameter_count
    for shard in shards:
        size += shard.stat().st_size
        parameters += sum(tensor.n_elements for tensor in read_header(shard.resolve()).tensors)
    computed = info.params_string == _params_string(None, info.parameter_count)  # else the converter's label
    label = _params_string(None, parameters) if computed else info.params_string
    return dataclasses.replace(info, size_bytes=size, parameter_count=parameters, params_string=label,
                               bits_per_weight=round(size * 8 / parameters, 2) if parameters else 0.0)


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


def has_vision_projector(path: Path) -> bool:
    """An ``mmproj*.gguf`` beside the model makes it a vision model, as in LM Studio."""
    try:
        return any(is_vision_projector(sibling) for sibling in path.parent.iterdir())
    except OSError:
        return False


def vision_projector(path: Path) -> Path | None:
    """The projector a vision model loads with: the first ``mmproj*.gguf`` beside it by name (None: none)."""
    try:
        return min((p for p in path.parent.iterdir() if is_vision_projector(p) and p.is_file()), default=None)
    except OSError:
        return None


def is_vision_projector(path: Path) -> bool:
    name = path.name.lower()
    return name.startswith("mmproj") and name.endswith(".gguf")


def model_info_from_header(header: GGUFHeader, path: Path, size_bytes: int) -> ModelInfo:
    metadata = header.metadata
    architecture = str(metadata.get("general.architecture", "")).strip()
    if not architecture:
        raise InvalidModelFile(path, "GGUF metadata has no general.architecture")
    if metadata.get("general.type") == "adapter":
        raise InvalidModelFile(
            path, "a LoRA adapter, not a model: it goes in an 'adapters' folder beside its base model's file"
        )
    parameter_count = sum(tensor.n_elements for tensor in header.tensors)
    template = metadata.get("tokenizer.chat_template")
    template = template if isinstance(template, str) and template.strip() else None
    name = metadata.get("general.name")
    pooling_type = metadata.get(f"{architecture}.pooling_type")
    ranks_by_head = pooling_type is None and architecture in ENCODER_ARCHITECTURES and any(
        tensor.name in CLASSIFIER_HEAD_TENSORS for tensor in header.tensors)
    return ModelInfo(
        architecture=architecture,
        quantization=quantization_name(metadata.get("general.file_type"), header.tensors),
        bits_per_weight=round(size_bytes * 8 / parameter_count, 2) if parameter_count else 0.0,
        parameter_count=parameter_count,
        params_string=_params_string(metadata.get("general.size_label"), parameter_count),
        size_bytes=size_bytes,
        context_length=_int_field(metadata, f"{architecture}.context_length"),
        chat_template=template,
        is_embedding=not ranks_by_head and is_embedding_model(architecture, pooling_type),
        has_vision=False,
        supports_tools=bool(template and _TOOLS_IN_TEMPLATE.search(template)),
        display_name=name.strip() if isinstance(name, str) and name.strip() else path.name.removesuffix(".gguf"),
        block_count=_int_field(metadata, f"{architecture}.block_count"),
        embedding_length=_int_field(metadata, f"{architecture}.embedding_length"),
        head_count_kv=_int_field(metadata, f"{architecture}.attention.head_count_kv"),
        is_reranker=ranks_by_head or is_reranker(pooling_type),
        ranks_by_head=ranks_by_head,
    )


def _int_field(metadata: dict[str, object], key: str) -> int:
    # head_count_kv may be a per-layer array in some models; arrays are skipped, so 0 then.
    value = metadata.get(key)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else 0


def quantization_name(file_type: object, tensors: list[TensorHeader]) -> str:
    """LM Studio's name for the file's quantization: MOSTLY_Q4_K_M -> "Q4_K_M", ALL_F32 -> "F32"."""
    if isinstance(file_type, int) and not isinstance(file_type, bool):
        try:
            member = LlamaFileType(file_type & ~_FILE_TYPE_GUESSED)
        except ValueError:
            member = None  # a file type newer than this gguf package: look at the tensors
        if member is not None:
            return member.name.removeprefix("MOSTLY_").removeprefix("ALL_")
    return _dominant_tensor_type(tensors)


def _dominant_tensor_type(tensors: list[TensorHeader]) -> str:
    # Norms and biases stay F32 in every quantization; the 2-D weight matrices carry it.
    weights = [t.tensor_type for t in tensors if len(t.dims) == 2 and t.name.endswith(".weight")]
    counts = Counter(weights or [t.tensor_type for t in tensors])
    return counts.most_common(1)[0][0].name if counts else "unknown"


def is_embedding_model(architecture: str, pooling_type: object) -> bool:
    if is_reranker(pooling_type):
        return False
    if architecture in ENCODER_ARCHITECTURES:
        return True
    return isinstance(pooling_type, int) and pooling_type in {p.value for p in EMBEDDING_POOLING}


def is_reranker(pooling_type: object) -> bool:
    """Rank pooling: llama.cpp attaches the classification head and gives a score per sequence."""
    return isinstance(pooling_type, int) and not isinstance(pooling_type, bool) and pooling_type == PoolingType.RANK


def _params_string(size_label: object, parameter_count: int) -> str:
    """The converter's size label when it wrote a sane one ("270M", "26B-A4B"), else computed."""
    if isinstance(size_label, str) and _SIZE_LABEL.match(size_label.strip()):
        return size_label.strip()
    return format_parameter_count(parameter_count)


def format_parameter_count(count: int) -> str:
    """135_000_000 -> "135M", 1_540_000_000 -> "1.5B", 7_000_000_000 -> "7B" (LM Studio's style)."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= scale * 0.9995:  # 999.6M is shown as 1B, not 1000M
            value = count / scale
            # One decimal below 10 ("1.5B"), whole numbers above ("135M"); drop a ".0" ("7B").
            text = f"{value:.1f}" if value < 9.95 else f"{value:.0f}"
            return text.removesuffix(".0") + suffix
    return str(count)

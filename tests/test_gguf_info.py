"""GGUF metadata as the catalog shows it: the two real default models, small GGUFs written
here with the gguf package for the cases those two do not cover, and broken files."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader, GGUFWriter, LlamaFileType, PoolingType

from studiolo.models import gguf_info
from studiolo.models.gguf_info import InvalidModelFile, format_parameter_count, read_model_info
from tests.conftest import GEMMA, SMOLLM


def write_tiny_gguf(
    path: Path,
    architecture: str = "llama",
    *,
    template: str | None = None,
    pooling: PoolingType | None = None,
    file_type: int | None = None,
    name: str | None = None,
    weight_dtype=np.float16,
    head: tuple[str, ...] = (),
) -> Path:
    """A GGUF with a small vocabulary and three tensors: two 2-D weights and a 1-D norm."""
    writer = GGUFWriter(path, architecture)
    writer.add_context_length(512)
    writer.add_block_count(1)
    writer.add_token_list(["<s>", "</s>", "hello", "world"])  # a string array to skip over
    writer.add_token_types([1, 3, 1, 1])  # a scalar array to skip over
    if name is not None:
        writer.add_name(name)
    if template is not None:
        writer.add_chat_template(template)
    if pooling is not None:
        writer.add_pooling_type(pooling)
    if file_type is not None:
        writer.add_file_type(file_type)
    writer.add_tensor("token_embd.weight", np.ones((4, 8), dtype=weight_dtype))
    writer.add_tensor("blk.0.attn_q.weight", np.ones((8, 8), dtype=weight_dtype))
    writer.add_tensor("output_norm.weight", np.ones(8, dtype=np.float32))
    for tensor in head:  # a classification head's tensors (cls.weight, cls.output.weight)
        writer.add_tensor(tensor, np.ones((1, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(autouse=True)
def fresh_cache():
    gguf_info.clear_cache()
    yield
    gguf_info.clear_cache()


def test_gemma3_metadata(default_models):
    path = default_models[GEMMA]
    info = read_model_info(path)
    assert info.architecture == "gemma3"
    assert info.quantization == "Q4_K_M"
    assert info.parameter_count == 268_098_176
    assert info.params_string == "270M"  # the file's general.size_label
    assert info.size_bytes == path.stat().st_size
    assert info.bits_per_weight == round(info.size_bytes * 8 / info.parameter_count, 2)
    assert info.context_length == 32768
    assert info.chat_template is None  # a base model: chat needs the built-in Gemma template
    assert info.supports_tools is False
    assert info.is_embedding is False
    assert info.has_vision is False
    assert info.display_name == "Gemma 3 270m"
    assert (info.block_count, info.embedding_length, info.head_count_kv) == (18, 640, 1)


def test_smollm2_metadata(default_models):
    path = default_models[SMOLLM]
    info = read_model_info(path)
    assert info.architecture == "llama"
    assert info.quantization == "Q4_1"
    assert info.parameter_count == 134_515_008
    assert info.params_string == "135M"
    assert info.size_bytes == path.stat().st_size
    assert info.bits_per_weight == round(info.size_bytes * 8 / info.parameter_count, 2)
    assert info.context_length == 8192
    assert info.chat_template is not None and "<|im_start|>" in info.chat_template
    assert info.supports_tools is False  # its ChatML template never mentions tools
    assert info.is_embedding is False
    assert info.has_vision is False
    assert info.display_name == "Smollm2 135M 8k Lc100K Mix1 Ep2"
    assert (info.block_count, info.embedding_length, info.head_count_kv) == (30, 576, 3)


def test_header_scan_agrees_with_gguf_reader(default_models):
    """The fast scan against the gguf package's own (slow, complete) reader."""
    path = default_models[SMOLLM]
    reader = GGUFReader(path)
    header = gguf_info.read_header(path)
    assert header.data_offset == reader.data_offset
    assert [t.name for t in header.tensors] == [t.name for t in reader.tensors]
    assert [t.n_elements for t in header.tensors] == [int(t.n_elements) for t in reader.tensors]
    assert [t.tensor_type for t in header.tensors] == [t.tensor_type for t in reader.tensors]
    for key, field in reader.fields.items():
        if key in header.metadata:
            assert header.metadata[key] == field.contents(), key


def test_repeated_reads_come_from_the_cache(default_models, tmp_path, monkeypatch):
    link = tmp_path / "model.gguf"
    link.symlink_to(default_models[SMOLLM])
    first = read_model_info(link)

    def must_not_read(path):
        raise AssertionError(f"{path} was read again")

    monkeypatch.setattr(gguf_info, "read_header", must_not_read)
    assert read_model_info(link) == first
    assert read_model_info(default_models[SMOLLM]) == first  # same resolved file, same entry


def test_a_changed_file_is_read_again(tmp_path):
    path = write_tiny_gguf(tmp_path / "tiny.gguf", name="before")
    assert read_model_info(path).display_name == "before"
    write_tiny_gguf(path, name="after, and longer")  # other size; mtime may not tick on fast writes
    assert read_model_info(path).display_name == "after, and longer"


def test_vision_projector_beside_the_model(default_models, tmp_path):
    link = tmp_path / "model.gguf"
    link.symlink_to(default_models[SMOLLM])
    assert read_model_info(link).has_vision is False
    projector = write_tiny_gguf(tmp_path / "mmproj-model-f16.gguf", "clip")
    assert read_model_info(link).has_vision is True
    projector.unlink()
    assert read_model_info(link).has_vision is False  # not stuck in the cache


def test_tools_in_template():
    template = "{% if tools %}{{ tools | tojson }}{% endif %}{% for m in messages %}{{ m.content }}{% endfor %}"
    info = gguf_info.model_info_from_header(
        gguf_info.GGUFHeader({"general.architecture": "qwen2", "tokenizer.chat_template": template}, [], 0),
        Path("qwen.gguf"),
        1000,
    )
    assert info.supports_tools is True
    assert info.display_name == "qwen"  # no general.name: the file stem


def test_written_file_without_file_type_infers_quantization(tmp_path):
    path = write_tiny_gguf(tmp_path / "tiny.gguf", template="{{ tools }}")
    info = read_model_info(path)
    assert info.architecture == "llama"
    assert info.quantization == "F16"  # the 2-D weights are F16; the F32 norm does not count
    assert info.parameter_count == 4 * 8 + 8 * 8 + 8
    assert info.params_string == "104"
    assert info.context_length == 512
    assert info.supports_tools is True
    assert info.display_name == "tiny"
    assert (info.block_count, info.embedding_length, info.head_count_kv) == (1, 0, 0)


def test_file_type_names(tmp_path):
    for file_type, expected in [
        (LlamaFileType.ALL_F32, "F32"),
        (LlamaFileType.MOSTLY_F16, "F16"),
        (LlamaFileType.MOSTLY_IQ4_XS, "IQ4_XS"),
        (LlamaFileType.MOSTLY_Q4_K_M | LlamaFileType.GUESSED, "Q4_K_M"),
    ]:
        path = write_tiny_gguf(tmp_path / f"{expected}.gguf", file_type=int(file_type))
        assert read_model_info(path).quantization == expected


@pytest.mark.parametrize(
    ("architecture", "pooling", "expected"),
    [
        ("bert", PoolingType.MEAN, True),
        ("nomic-bert", None, True),  # an encoder-only architecture is never a chat model
        ("t5encoder", None, True),
        ("qwen3", PoolingType.LAST, True),  # Qwen3-Embedding: a decoder with sentence pooling
        ("qwen2", PoolingType.MEAN, True),  # gte-Qwen2
        ("qwen3", PoolingType.RANK, False),  # a reranker
        ("llama", PoolingType.NONE, False),
        ("llama", None, False),
    ],
)
def test_embedding_rule(tmp_path, architecture, pooling, expected):
    path = write_tiny_gguf(tmp_path / "model.gguf", architecture, pooling=pooling)
    assert read_model_info(path).is_embedding is expected


@pytest.mark.parametrize(
    ("architecture", "pooling", "expected"),
    [
        ("bert", PoolingType.RANK, True),  # a BERT cross-encoder: not an embedding model although an encoder
        ("qwen3", PoolingType.RANK, True),  # Qwen3-Reranker
        ("bert", PoolingType.CLS, False),
        ("bert", None, False),
        ("qwen3", None, False),
    ],
)
def test_reranker_rule(tmp_path, architecture, pooling, expected):
    info = read_model_info(write_tiny_gguf(tmp_path / "model.gguf", architecture, pooling=pooling))
    assert info.is_reranker is expected and not info.ranks_by_head
    assert info.pooled is (expected or info.is_embedding)
    if expected:
        assert not info.is_embedding


@pytest.mark.parametrize(
    ("count", "expected"),
    [
        (134_515_008, "135M"),
        (268_098_176, "268M"),
        (1_543_714_304, "1.5B"),
        (7_000_000_000, "7B"),
        (12_200_000_000, "12B"),
        (999_700_000, "1B"),
        (22_000, "22K"),
        (512, "512"),
    ],
)
def test_parameter_count_strings(count, expected):
    assert format_parameter_count(count) == expected


def _truncated_copy(source: Path, target: Path, length: int) -> Path:
    with source.open("rb") as src, target.open("wb") as dst:
        dst.write(src.read(length))
    return target


@pytest.mark.parametrize("keep", ["half", "header"])
def test_truncated_model_is_refused(default_models, tmp_path, keep):
    source = default_models[SMOLLM]
    length = source.stat().st_size // 2 if keep == "half" else 4096
    broken = _truncated_copy(source, tmp_path / "cut.gguf", length)
    with pytest.raises(InvalidModelFile, match="truncated") as caught:
        read_model_info(broken)
    assert str(broken) in str(caught.value)


def test_text_file_named_gguf_is_refused(tmp_path):
    fake = tmp_path / "notes.gguf"
    fake.write_text("these are my notes, not a model\n" * 10)
    with pytest.raises(InvalidModelFile, match="not a GGUF file") as caught:
        read_model_info(fake)
    assert str(fake) in str(caught.value)


@pytest.mark.parametrize("content", [b"", b"GGUF"])
def test_tiny_files_are_refused(tmp_path, content):
    path = tmp_path / "tiny.gguf"
    path.write_bytes(content)
    with pytest.raises(InvalidModelFile, match="not a GGUF file"):
        read_model_info(path)


def test_garbage_after_the_magic_is_refused(tmp_path):
    path = tmp_path / "garbage.gguf"
    path.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + bytes(range(256)) * 16)
    with pytest.raises(InvalidModelFile, match=str(path)):
        read_model_info(path)


def test_missing_file_and_directory_are_refused(tmp_path):
    with pytest.raises(InvalidModelFile, match="cannot read"):
        read_model_info(tmp_path / "absent.gguf")
    folder = tmp_path / "folder.gguf"
    folder.mkdir()
    with pytest.raises(InvalidModelFile, match="directory"):
        read_model_info(folder)


def test_a_file_repaired_in_place_is_read_again(default_models, tmp_path):
    """An invalid file is not cached: once the download completes it reads fine."""
    path = _truncated_copy(default_models[SMOLLM], tmp_path / "model.gguf", 4096)
    with pytest.raises(InvalidModelFile):
        read_model_info(path)
    shutil.copyfile(default_models[SMOLLM], path)
    assert read_model_info(path).architecture == "llama"


def _nested_arrays_gguf(path: Path, depth: int) -> Path:
    """A GGUF whose one key holds an array of an array of ... (``depth`` levels) of no bytes."""
    array, uint8 = 9, 0  # GGUFValueType.ARRAY, UINT8
    key = b"deep"
    body = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key + struct.pack("<I", array)
    body += struct.pack("<IQ", array, 1) * (depth - 1) + struct.pack("<IQ", uint8, 0)
    path.write_bytes(body)
    return path


def test_deeply_nested_arrays_are_refused_not_a_recursion_error(tmp_path):
    deep = _nested_arrays_gguf(tmp_path / "deep.gguf", 5000)
    with pytest.raises(InvalidModelFile, match="nested more than 64 deep") as caught:
        read_model_info(deep)
    assert str(deep) in str(caught.value)
    # nesting a few levels is allowed by the format, and skipped like any array
    assert gguf_info.read_header(_nested_arrays_gguf(tmp_path / "shallow.gguf", 3)).metadata == {}


@pytest.mark.parametrize(
    ("architecture", "pooling", "head", "expected"),
    [
        ("bert", None, ("cls.output.weight",), True),  # llama.cpp's converter: a cross-encoder, no pooling key
        ("jina-bert-v2", None, ("cls.weight",), True),  # jina-reranker-v1: a head without cls.output
        ("bert", PoolingType.MEAN, ("cls.output.weight",), False),  # the GGUF's pooling wins
        ("bert", PoolingType.NONE, ("cls.output.weight",), False),
        ("qwen3", None, ("cls.output.weight",), False),  # a decoder: llama.cpp would generate with it
        ("bert", None, (), False),
    ],
)
def test_an_encoder_with_a_head_and_no_pooling_type_is_a_reranker(tmp_path, architecture, pooling, head, expected):
    info = read_model_info(write_tiny_gguf(tmp_path / "model.gguf", architecture, pooling=pooling, head=head))
    assert info.ranks_by_head is expected
    assert info.is_reranker is (expected or pooling == PoolingType.RANK)
    if expected:
        assert not info.is_embedding

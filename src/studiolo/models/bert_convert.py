"""Convert a sentence-transformers BERT checkpoint into a GGUF that llama.cpp embeds with.

No torch: the weights are read with ``safetensors`` into numpy, the configuration and the
tokenizer with ``json``, and the file is written with ``gguf.GGUFWriter``, laid out the way
llama.cpp's own converter (``convert_hf_to_gguf.py``, class ``BertModel``) lays it out:

- architecture ``bert``; context length, embedding and feed-forward sizes, block and head
  counts, layer-norm epsilon from ``config.json``; attention not causal;
- ``bert.pooling_type`` from the sentence-transformers pooling module (``modules.json`` ->
  ``1_Pooling/config.json``): mean, CLS or last token. A checkpoint without one gets no
  pooling type unless one is asked for, as with llama.cpp's converter;
- tensors named by ``gguf.TensorNameMap`` (``token_embd``, ``token_types``, ``position_embd``,
  ``token_embd_norm``, ``blk.N.attn_q`` ...); the pooler and masked-LM heads are dropped,
  since llama.cpp pools itself. In F16 files the matrices are F16 and the norms, biases and
  the token-type table stay F32;
- the WordPiece vocabulary in llama.cpp's "phantom space" form: its tokenizer prepends
  ``▁`` to every word and then matches greedily, so a word-initial token ``foo`` is stored
  as ``▁foo``, a continuation ``##bar`` as ``bar``, and special tokens (``[CLS]`` ...) as
  they are, typed CONTROL;
- special token ids: CLS (as ``bos``, which is where llama.cpp looks for BERT's CLS, and as
  ``cls_token_id``), SEP, PAD, UNK and MASK; a sequence is ``[CLS] ... [SEP]``.

A cross-encoder (``BertForSequenceClassification`` with one label) becomes a reranker: rank
pooling and its pooler and classifier as llama.cpp's classification head (models/cross_encoder.py).

The source is a checkpoint folder or a zip of one (the folder may sit one level down in the
zip). Anything that is not a BERT checkpoint llama.cpp's ``bert`` graph can run is refused
with a ``ConversionRefused`` that says why, before anything is written.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any

import gguf
import numpy as np

from studiolo.models import cross_encoder
from studiolo.models.checkpoint_files import Checkpoint, ConversionRefused

PHANTOM_SPACE = "\u2581"
CLS_TOKEN_ID_KEY = "tokenizer.ggml.cls_token_id"  # older llama.cpp read CLS here; newer reads bos
BERT_ARCHITECTURES = frozenset({"BertModel", "BertForMaskedLM", "BertForPreTraining", cross_encoder.ARCHITECTURE})
SUPPORTED_ACTIVATIONS = frozenset({"gelu"})  # llama.cpp's bert graph uses GELU in the FFN

# Source tensors llama.cpp's graph does not use: its own pooling replaces the pooler.
_DROPPED_PREFIXES = ("pooler.", "cls.")
_DROPPED_NAMES = frozenset({"embeddings.position_ids"})

_SPECIAL_DEFAULTS = {"cls": "[CLS]", "sep": "[SEP]", "pad": "[PAD]", "unk": "[UNK]", "mask": "[MASK]"}


class FileType(StrEnum):
    F16 = "f16"
    F32 = "f32"


class Pooling(StrEnum):
    MEAN = "mean"
    CLS = "cls"
    LAST = "last"
    RANK = "rank"  # a reranker: only a cross-encoder's classification head has it

    @property
    def gguf_value(self) -> gguf.PoolingType:
        return gguf.PoolingType[self.name]


@dataclass(frozen=True)
class ConversionResult:
    path: Path
    name: str
    file_type: FileType
    pooling: Pooling | None
    vocab_size: int
    tensor_count: int
    embedding_length: int


@dataclass
class _Vocab:
    tokens: list[str]  # in llama.cpp's phantom-space form
    types: list[int]
    special_ids: dict[str, int]


def convert_bert(
    source: Path,
    output: Path,
    *,
    name: str | None = None,
    file_type: FileType | str = FileType.F16,
    pooling: Pooling | str | None = None,
) -> ConversionResult:
    """Write ``output`` (a GGUF) from the BERT checkpoint folder or zip at ``source``.

    ``name`` becomes ``general.name`` (default: the source's name). ``pooling`` overrides the
    checkpoint's sentence-transformers pooling, or supplies one where it has none.
    """
    file_type = FileType(file_type)
    checkpoint = Checkpoint(Path(source))
    try:
        config = _bert_config(checkpoint)
        pooling = _pooling_for(checkpoint, config, Pooling(pooling) if pooling is not None else None)
        vocab = _vocab_of(checkpoint, config)
        tensors = _tensors_of(checkpoint, config, len(vocab.tokens))
    finally:
        checkpoint.close()
    model_name = name or default_name(Path(source))
    _write(Path(output), config, vocab, tensors, model_name, file_type, pooling)
    return ConversionResult(
        path=Path(output),
        name=model_name,
        file_type=file_type,
        pooling=pooling,
        vocab_size=len(vocab.tokens),
        tensor_count=len(tensors),
        embedding_length=int(config["hidden_size"]),
    )


def default_name(source: Path) -> str:
    stem = source.stem if source.is_file() else source.name
    # A zip called model.zip says nothing; the folder it sits in usually does.
    return source.absolute().parent.name if stem.lower() in {"model", "checkpoint"} else stem


# --- configuration -------------------------------------------------------------------------


def _bert_config(checkpoint: Checkpoint) -> dict[str, Any]:
    if not checkpoint.has("config.json"):
        raise ConversionRefused(f"{checkpoint.source}: no config.json, so not a Hugging Face model checkpoint")
    config = checkpoint.read_json("config.json")
    if not isinstance(config, dict):
        raise ConversionRefused(f"{checkpoint.source}: config.json is not a JSON object")
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    if model_type != "bert":
        raise ConversionRefused(
            f"{checkpoint.source}: model_type is {model_type!r}, not 'bert'; only BERT checkpoints can be converted"
        )
    if architectures and not set(architectures) & BERT_ARCHITECTURES:
        raise ConversionRefused(
            f"{checkpoint.source}: architecture {', '.join(map(str, architectures))} is not a plain BERT encoder"
        )
    missing = [
        key
        for key in (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
        )
        if not isinstance(config.get(key), int)
    ]
    if missing:
        raise ConversionRefused(f"{checkpoint.source}: config.json lacks {', '.join(missing)}")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise ConversionRefused(
            f"{checkpoint.source}: position_embedding_type {config['position_embedding_type']!r} is not supported "
            "(llama.cpp's bert graph has absolute position embeddings only)"
        )
    activation = config.get("hidden_act", "gelu")
    if activation not in SUPPORTED_ACTIVATIONS:
        raise ConversionRefused(f"{checkpoint.source}: activation {activation!r} is not supported (only GELU)")
    if config["hidden_size"] % config["num_attention_heads"]:
        raise ConversionRefused(f"{checkpoint.source}: hidden_size is not a multiple of num_attention_heads")
    return config


def _pooling_for(checkpoint: Checkpoint, config: dict[str, Any], asked: Pooling | None) -> Pooling | None:
    """Rank for a cross-encoder, else what was asked for or the checkpoint's sentence-transformers pooling."""
    if cross_encoder.ranks(config, asked.value if asked else None, checkpoint.source):
        return Pooling.RANK
    return asked or _pooling_of(checkpoint)


def _pooling_of(checkpoint: Checkpoint) -> Pooling | None:
    """The sentence-transformers pooling mode, or None for a checkpoint without one."""
    path = _pooling_config_path(checkpoint)
    if path is None:
        return None
    settings = checkpoint.read_json(path)
    if not isinstance(settings, dict):
        raise ConversionRefused(f"{checkpoint.source}: {path} is not a JSON object")
    if settings.get("pooling_mode") in {"mean", "cls", "lasttoken"}:  # newer sentence-transformers
        return {"mean": Pooling.MEAN, "cls": Pooling.CLS, "lasttoken": Pooling.LAST}[settings["pooling_mode"]]
    if settings.get("pooling_mode_mean_tokens"):
        return Pooling.MEAN
    if settings.get("pooling_mode_cls_token"):
        return Pooling.CLS
    if settings.get("pooling_mode_lasttoken"):
        return Pooling.LAST
    modes = sorted(k for k, v in settings.items() if k.startswith("pooling_mode") and v)
    raise ConversionRefused(
        f"{checkpoint.source}: pooling {', '.join(map(str, modes)) or 'none'} in {path} is not one llama.cpp has "
        "(mean, CLS or last token)"
    )


def _pooling_config_path(checkpoint: Checkpoint) -> str | None:
    modules = checkpoint.read_json_if_there("modules.json")
    if isinstance(modules, list):
        for module in modules:
            if isinstance(module, dict) and str(module.get("type", "")).endswith(".Pooling"):
                path = str(PurePosixPath(str(module.get("path", "")), "config.json"))
                return path if checkpoint.has(path) else None
        return None
    return "1_Pooling/config.json" if checkpoint.has("1_Pooling/config.json") else None


# --- vocabulary ----------------------------------------------------------------------------


def _vocab_of(checkpoint: Checkpoint, config: dict[str, Any]) -> _Vocab:
    special_strings = _special_token_strings(checkpoint)
    by_id, special, prefix = _wordpiece_vocab(checkpoint, special_strings)
    size = max(int(config.get("vocab_size") or 0), max(by_id) + 1)
    tokens, types = _llama_tokens(by_id, special, prefix, size)
    _refuse_clashes(checkpoint, tokens)
    return _Vocab(tokens=tokens, types=types, special_ids=_special_ids(checkpoint, tokens, special_strings))


def _wordpiece_vocab(checkpoint: Checkpoint, special_strings: dict[str, str]) -> tuple[dict[int, str], set[str], str]:
    """Token by id, the special tokens and the continuation prefix, from tokenizer.json or else vocab.txt."""
    if checkpoint.has("tokenizer.json"):
        return _wordpiece_from_tokenizer_json(checkpoint)
    if checkpoint.has("vocab.txt"):
        lines = checkpoint.read_bytes("vocab.txt").decode("utf-8").splitlines()
        return dict(enumerate(lines)), set(special_strings.values()) & set(lines), "##"
    raise ConversionRefused(f"{checkpoint.source}: no tokenizer.json or vocab.txt")


def _llama_tokens(by_id: dict[int, str], special: set[str], prefix: str, size: int) -> tuple[list[str], list[int]]:
    """Every id's token in llama.cpp's form (a word's start marked by the phantom space instead of
    its continuations by the prefix) and its token type."""
    tokens: list[str] = []
    types: list[int] = []
    for token_id in range(size):
        token = by_id.get(token_id)
        if token is None:  # a hole in the vocabulary: a placeholder never produced, as llama.cpp does
            tokens.append(f"[PAD{token_id}]")
            types.append(gguf.TokenType.UNUSED)
        elif token in special:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL)
        else:
            tokens.append(token[len(prefix) :] if token.startswith(prefix) else PHANTOM_SPACE + token)
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _refuse_clashes(checkpoint: Checkpoint, tokens: list[str]) -> None:
    """Two ids with one text (or an empty one) could not be told apart by llama.cpp's tokenizer."""
    clashes = [token for token, count in Counter(tokens).items() if count > 1 or not token]
    if clashes:
        raise ConversionRefused(
            f"{checkpoint.source}: vocabulary entries clash in llama.cpp's form: {', '.join(map(repr, clashes[:5]))}"
        )


def _special_ids(checkpoint: Checkpoint, tokens: list[str], special_strings: dict[str, str]) -> dict[str, int]:
    """The id of each special role the tokenizer names; CLS, SEP and UNK are required."""
    index = {token: i for i, token in enumerate(tokens)}
    special_ids = {role: index[text] for role, text in special_strings.items() if text in index}
    for role in ("cls", "sep", "unk"):
        if role not in special_ids:
            raise ConversionRefused(f"{checkpoint.source}: the tokenizer has no {role.upper()} token")
    return special_ids


def _wordpiece_from_tokenizer_json(checkpoint: Checkpoint) -> tuple[dict[int, str], set[str], str]:
    tokenizer = checkpoint.read_json("tokenizer.json")
    model = tokenizer.get("model") if isinstance(tokenizer, dict) else None
    if not isinstance(model, dict) or model.get("type") != "WordPiece" or not isinstance(model.get("vocab"), dict):
        kind = model.get("type") if isinstance(model, dict) else None
        raise ConversionRefused(
            f"{checkpoint.source}: tokenizer.json holds a {kind or 'unknown'} tokenizer, not WordPiece"
        )
    by_id = {int(i): token for token, i in model["vocab"].items()}
    added = [t for t in tokenizer.get("added_tokens") or [] if isinstance(t, dict)]
    for entry in added:
        by_id.setdefault(int(entry["id"]), entry["content"])
    special = {entry["content"] for entry in added if entry.get("special")}
    return by_id, special, model.get("continuing_subword_prefix") or "##"


def _special_token_strings(checkpoint: Checkpoint) -> dict[str, str]:
    strings = dict(_SPECIAL_DEFAULTS)
    for file in ("special_tokens_map.json", "tokenizer_config.json"):
        settings = checkpoint.read_json_if_there(file)
        if not isinstance(settings, dict):
            continue
        for role in _SPECIAL_DEFAULTS:
            value = settings.get(f"{role}_token")
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str) and value:
                strings[role] = value
    return strings


# --- tensors -------------------------------------------------------------------------------


def _tensors_of(checkpoint: Checkpoint, config: dict[str, Any], vocab_size: int) -> dict[str, np.ndarray]:
    weights_file = "model.safetensors"
    if not checkpoint.has(weights_file):
        other = next((f for f in ("pytorch_model.bin", "model.safetensors.index.json") if checkpoint.has(f)), None)
        hint = f" (it has {other}, which this converter does not read)" if other else ""
        raise ConversionRefused(f"{checkpoint.source}: no {weights_file}{hint}")
    source_tensors = checkpoint.load_tensors(weights_file)
    head: dict[str, np.ndarray] = {}
    if cross_encoder.is_cross_encoder(config):  # before the loop below, which drops pooler and classifier
        head = cross_encoder.take_head(source_tensors, int(config["hidden_size"]), checkpoint.source)

    blocks = int(config["num_hidden_layers"])
    name_map = gguf.TensorNameMap(gguf.MODEL_ARCH.BERT, blocks)
    tensors: dict[str, np.ndarray] = {}
    unknown: list[str] = []
    for source_name, data in source_tensors.items():
        plain = source_name.removeprefix("bert.")
        plain = plain.removesuffix(".gamma") + ".weight" if plain.endswith(".gamma") else plain
        plain = plain.removesuffix(".beta") + ".bias" if plain.endswith(".beta") else plain
        if plain in _DROPPED_NAMES or plain.startswith(_DROPPED_PREFIXES):
            continue
        target = name_map.get_name(plain, try_suffixes=(".weight", ".bias"))
        if target is None:
            unknown.append(source_name)
            continue
        tensors[target] = data
    if unknown:
        raise ConversionRefused(
            f"{checkpoint.source}: tensors llama.cpp's bert graph has no place for: {', '.join(sorted(unknown)[:5])}"
        )

    missing = [n for n in _expected_shapes(config, vocab_size) if n not in tensors]
    if missing:
        raise ConversionRefused(f"{checkpoint.source}: model.safetensors lacks {', '.join(missing[:5])}")
    for tensor_name, shape in _expected_shapes(config, vocab_size).items():
        actual = tuple(tensors[tensor_name].shape)
        if actual != shape:  # token_embd too: llama.cpp wants one row per entry of the token list
            raise ConversionRefused(f"{checkpoint.source}: {tensor_name} has shape {actual}, expected {shape}")
    # In a fixed order (safetensors' order differs between file and in-memory loading), so one
    # checkpoint always gives the same bytes.
    return {tensor_name: tensors[tensor_name] for tensor_name in _expected_shapes(config, vocab_size)} | head


def _expected_shapes(config: dict[str, Any], vocab_size: int) -> dict[str, tuple[int, ...]]:
    """The tensors llama.cpp's bert graph loads, in numpy (row-major, PyTorch) shape."""
    hidden, ffn = int(config["hidden_size"]), int(config["intermediate_size"])
    shapes: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (vocab_size, hidden),
        "token_types.weight": (int(config.get("type_vocab_size") or 2), hidden),
        "position_embd.weight": (int(config["max_position_embeddings"]), hidden),
        "token_embd_norm.weight": (hidden,),
        "token_embd_norm.bias": (hidden,),
    }
    for block in range(int(config["num_hidden_layers"])):
        for part, shape in (
            ("attn_q", (hidden, hidden)),
            ("attn_k", (hidden, hidden)),
            ("attn_v", (hidden, hidden)),
            ("attn_output", (hidden, hidden)),
            ("ffn_up", (ffn, hidden)),
            ("ffn_down", (hidden, ffn)),
        ):
            shapes[f"blk.{block}.{part}.weight"] = shape
            shapes[f"blk.{block}.{part}.bias"] = (shape[0],)
        for norm in ("attn_output_norm", "layer_output_norm"):
            shapes[f"blk.{block}.{norm}.weight"] = (hidden,)
            shapes[f"blk.{block}.{norm}.bias"] = (hidden,)
    return shapes


def _stored(name: str, data: np.ndarray, file_type: FileType) -> np.ndarray:
    data = np.ascontiguousarray(data, dtype=np.float32)
    # As llama.cpp's converter: vectors (norms, biases) and the token-type table stay F32.
    keep_f32 = data.ndim <= 1 or name.startswith("token_types.")
    return data if file_type is FileType.F32 or keep_f32 else data.astype(np.float16)


# --- writing -------------------------------------------------------------------------------


def _write(
    output: Path,
    config: dict[str, Any],
    vocab: _Vocab,
    tensors: dict[str, np.ndarray],
    name: str,
    file_type: FileType,
    pooling: Pooling | None,
) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(output, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.BERT])
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if file_type is FileType.F16 else gguf.LlamaFileType.ALL_F32)
        writer.add_context_length(int(config["max_position_embeddings"]))
        writer.add_embedding_length(int(config["hidden_size"]))
        writer.add_feed_forward_length(int(config["intermediate_size"]))
        writer.add_block_count(int(config["num_hidden_layers"]))
        writer.add_head_count(int(config["num_attention_heads"]))
        writer.add_layer_norm_eps(float(config.get("layer_norm_eps", 1e-12)))
        writer.add_causal_attention(False)
        if pooling is not None:
            writer.add_pooling_type(pooling.gguf_value)

        writer.add_tokenizer_model("bert")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(vocab.tokens)
        writer.add_token_types(vocab.types)
        writer.add_token_type_count(int(config.get("type_vocab_size") or 2))
        ids = vocab.special_ids
        writer.add_bos_token_id(ids["cls"])  # llama.cpp starts a BERT sequence with "bos"
        writer.add_uint32(CLS_TOKEN_ID_KEY, ids["cls"])
        writer.add_sep_token_id(ids["sep"])
        writer.add_unk_token_id(ids["unk"])
        if "pad" in ids:
            writer.add_pad_token_id(ids["pad"])
        if "mask" in ids:
            writer.add_mask_token_id(ids["mask"])
        ranks = pooling is Pooling.RANK  # pairs: [CLS] query [SEP] document [SEP], [SEP] as EOS
        if ranks:
            writer.add_eos_token_id(ids["sep"])
            writer.add_classifier_output_labels(cross_encoder.labels_of(config))
        writer.add_add_bos_token(True)
        writer.add_add_sep_token(not ranks)
        writer.add_add_eos_token(ranks)

        for tensor_name, data in tensors.items():
            writer.add_tensor(tensor_name, _stored(tensor_name, data, file_type))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()

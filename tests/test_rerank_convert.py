"""``studiolo convert`` on a cross-encoder: a tiny ``BertForSequenceClassification`` checkpoint with one
label, written here (config.json, vocab.txt, model.safetensors from seeded numpy), becomes a reranker
that a real server loads and scores with.

The weights are random, so this checks the conversion, not relevance: the server's score of each pair
must be the checkpoint's own function of it, computed here in numpy (BERT, then the pooler's dense +
tanh on [CLS], then the classifier), with every token in segment 0 as llama.cpp's BERT graph has it.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import httpx
import numpy as np
import pytest
from safetensors.numpy import save_file
from typer.testing import CliRunner

from studiolo.cli.main import app
from studiolo.models.bert_convert import ConversionRefused, convert_bert
from studiolo.models.gguf_info import read_model_info
from tests.conftest import RunningServer, free_port
from tests.numpy_bert import bert_hidden_states, linear_layer

HIDDEN, HEADS, FFN, BLOCKS, POSITIONS = 32, 4, 64, 2, 64
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "where", "is", "the", "tower", "?", "it", "in", "paris",
         "bananas", "are", "yellow", ".", "eiffel", "##s", "built"]
KEY = "test/tiny-cross-encoder"
QUERY = "where is the tower?"
DOCUMENTS = ["the tower is in paris.", "bananas are yellow.", "eiffel built the towers.", "paris"]


def _config(**changes) -> dict:
    return {"architectures": ["BertForSequenceClassification"], "model_type": "bert", "hidden_size": HIDDEN,
            "num_hidden_layers": BLOCKS, "num_attention_heads": HEADS, "intermediate_size": FFN,
            "max_position_embeddings": POSITIONS, "vocab_size": len(VOCAB), "type_vocab_size": 2,
            "hidden_act": "gelu", "layer_norm_eps": 1e-12, "id2label": {"0": "LABEL_0"},
            "label2id": {"LABEL_0": 0}, **changes}


def _weights(seed: int = 7) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def normal(*shape, scale=0.2):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    weights = {
        "bert.embeddings.word_embeddings.weight": normal(len(VOCAB), HIDDEN, scale=1.0),
        "bert.embeddings.position_embeddings.weight": normal(POSITIONS, HIDDEN),
        "bert.embeddings.token_type_embeddings.weight": normal(2, HIDDEN),
        "bert.embeddings.LayerNorm.weight": 1 + normal(HIDDEN, scale=0.1),
        "bert.embeddings.LayerNorm.bias": normal(HIDDEN, scale=0.1),
        "bert.pooler.dense.weight": normal(HIDDEN, HIDDEN),
        "bert.pooler.dense.bias": normal(HIDDEN),
        "classifier.weight": normal(1, HIDDEN, scale=1.0),
        "classifier.bias": normal(1),
    }
    for block in range(BLOCKS):
        p = f"bert.encoder.layer.{block}"
        for name, shape in (("attention.self.query", (HIDDEN, HIDDEN)), ("attention.self.key", (HIDDEN, HIDDEN)),
                            ("attention.self.value", (HIDDEN, HIDDEN)), ("attention.output.dense", (HIDDEN, HIDDEN)),
                            ("intermediate.dense", (FFN, HIDDEN)), ("output.dense", (HIDDEN, FFN))):
            weights[f"{p}.{name}.weight"] = normal(*shape)
            weights[f"{p}.{name}.bias"] = normal(shape[0], scale=0.1)
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            weights[f"{p}.{norm}.weight"] = 1 + normal(HIDDEN, scale=0.1)
            weights[f"{p}.{norm}.bias"] = normal(HIDDEN, scale=0.1)
    return weights


def write_checkpoint(folder: Path, config: dict | None = None, weights: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config or _config()))
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    save_file(weights if weights is not None else _weights(), str(folder / "model.safetensors"))
    return folder


def reference_score(weights: dict[str, np.ndarray], ids: list[int]) -> float:
    """BertForSequenceClassification's logit in float64 numpy, every token in segment 0."""
    x = bert_hidden_states(weights, ids, BLOCKS, HIDDEN, HEADS)
    pooled = np.tanh(linear_layer(weights, x[0], "bert.pooler.dense"))
    return float(linear_layer(weights, pooled, "classifier")[0])


def pair_ids(query: str, document: str) -> list[int]:
    """[CLS] query [SEP] document [SEP], by hand (these words are whole tokens, but "towers")."""
    def ids(text: str) -> list[int]:
        words = text.replace("?", " ?").replace(".", " .").split()
        return [i for word in words for i in ([VOCAB.index("tower"), VOCAB.index("##s")] if word == "towers"
                                              else [VOCAB.index(word)])]
    return [VOCAB.index("[CLS]"), *ids(query), VOCAB.index("[SEP]"), *ids(document), VOCAB.index("[SEP]")]


def test_a_converted_cross_encoder_is_a_reranker_the_server_scores_as_the_checkpoint_does(tmp_path, monkeypatch):
    checkpoint = write_checkpoint(tmp_path / "checkpoint")
    home = tmp_path / "home"
    monkeypatch.setenv("STUDIOLO_HOME", str(home))
    result = CliRunner().invoke(app, ["convert", str(checkpoint), "--name", KEY, "--outtype", "f32"])
    assert result.exit_code == 0, result.output
    assert "rank pooling: a reranker" in result.output
    path = next((home / "models" / KEY).glob("*.gguf"))
    info = read_model_info(path)
    assert info.is_reranker and not info.is_embedding

    reader = gguf.GGUFReader(path)
    assert reader.fields["bert.pooling_type"].contents() == gguf.PoolingType.RANK
    assert reader.fields["bert.classifier.output_labels"].contents() == ["LABEL_0"]
    shapes = {tensor.name: tuple(int(d) for d in tensor.shape) for tensor in reader.tensors}
    assert shapes["cls.weight"] == (HIDDEN, HIDDEN) and shapes["cls.output.weight"] == (HIDDEN, 1)

    server = RunningServer(home, free_port(), [])
    try:
        response = httpx.post(f"{server.base_url}/v1/rerank", timeout=120,
                              json={"model": KEY, "query": QUERY, "documents": DOCUMENTS})
    finally:
        server.stop()
    assert response.status_code == 200, response.text
    body = response.json()
    weights = _weights()
    expected = {index: reference_score(weights, pair_ids(QUERY, document)) for index, document in enumerate(DOCUMENTS)}
    got = {result["index"]: result["relevance_score"] for result in body["results"]}
    # float rounding in llama.cpp's kernels: measured within 7.1e-3 of the float64 reference. A wrong
    # head would be far off: no pooler (llama.cpp's converter) gives 13-16, no tanh 0.95-9.5, and even
    # the document in segment 1 (Hugging Face's own function, which llama.cpp cannot run) moves each
    # score by 0.18-0.84
    assert got == pytest.approx(expected, abs=2e-2)
    assert [r["index"] for r in body["results"]] == sorted(expected, key=lambda i: -expected[i])
    tokens = sum(len(pair_ids(QUERY, document)) for document in DOCUMENTS)
    assert body["usage"]["prompt_tokens"] == tokens


@pytest.mark.parametrize(
    ("config", "pooling", "says"),
    [
        (_config(id2label={"0": "no", "1": "yes"}), None, "has 2 labels"),
        (_config(), "mean", "has no mean pooling"),
        (_config(architectures=["BertModel"]), "rank", "rank pooling needs a cross-encoder"),
    ],
)
def test_checkpoints_that_are_not_one_label_cross_encoders_are_refused(tmp_path, config, pooling, says):
    checkpoint = write_checkpoint(tmp_path / "checkpoint", config)
    with pytest.raises(ConversionRefused, match=says):
        convert_bert(checkpoint, tmp_path / "out.gguf", pooling=pooling)
    assert not (tmp_path / "out.gguf").exists()


def test_a_cross_encoder_without_its_pooler_is_refused(tmp_path):
    weights = {name: value for name, value in _weights().items() if not name.startswith("bert.pooler.")}
    checkpoint = write_checkpoint(tmp_path / "checkpoint", weights=weights)
    with pytest.raises(ConversionRefused, match=r"cls\.weight \(pooler/classifier\) is missing"):
        convert_bert(checkpoint, tmp_path / "out.gguf")

"""BERT's forward pass in float64 numpy, the reference the converter's tests hold llama.cpp to: the
last layer's hidden states for token ids, every token in segment 0 (as llama.cpp gives them)."""

from __future__ import annotations

import math

import numpy as np


def bert_hidden_states(weights: dict[str, np.ndarray], ids: list[int], blocks: int, hidden: int,
                       heads: int) -> np.ndarray:
    """The (tokens, hidden) output of the encoder; ``weights`` named as Hugging Face's BertModel's
    (a ``bert.`` prefix, as BertForSequenceClassification has, is taken off)."""
    w = {name.removeprefix("bert."): value.astype(np.float64) for name, value in weights.items()}

    def layer_norm(x, prefix):
        centered = x - x.mean(-1, keepdims=True)
        scale = np.sqrt((centered**2).mean(-1, keepdims=True) + 1e-12)
        return centered / scale * w[prefix + ".weight"] + w[prefix + ".bias"]

    def linear(x, prefix):
        return x @ w[prefix + ".weight"].T + w[prefix + ".bias"]

    def split_heads(x):
        return x.reshape(len(ids), heads, hidden // heads).transpose(1, 0, 2)

    erf = np.vectorize(math.erf)
    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][: len(ids)]
    x = layer_norm(x + w["embeddings.token_type_embeddings.weight"][0], "embeddings.LayerNorm")
    for block in range(blocks):
        p = f"encoder.layer.{block}"
        q, k, v = (split_heads(linear(x, f"{p}.attention.self.{n}")) for n in ("query", "key", "value"))
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(hidden // heads)
        attention = np.exp(scores - scores.max(-1, keepdims=True))
        attention /= attention.sum(-1, keepdims=True)
        context = (attention @ v).transpose(1, 0, 2).reshape(len(ids), hidden)
        x = layer_norm(x + linear(context, f"{p}.attention.output.dense"), f"{p}.attention.output.LayerNorm")
        inner = linear(x, f"{p}.intermediate.dense")
        inner = 0.5 * inner * (1 + erf(inner / math.sqrt(2)))
        x = layer_norm(x + linear(inner, f"{p}.output.dense"), f"{p}.output.LayerNorm")
    return x


def linear_layer(weights: dict[str, np.ndarray], x: np.ndarray, prefix: str) -> np.ndarray:
    """``x`` through the dense layer ``prefix`` of ``weights`` (float64)."""
    return x @ weights[prefix + ".weight"].astype(np.float64).T + weights[prefix + ".bias"].astype(np.float64)

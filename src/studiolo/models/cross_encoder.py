"""What a BERT cross-encoder (``BertForSequenceClassification`` with one label, as sentence-transformers'
``CrossEncoder`` saves one) adds to a BERT checkpoint, for ``models/bert_convert.py``.

Hugging Face scores a pair as ``classifier(tanh(pooler.dense(h[CLS])))``. llama.cpp's rank pooling
computes ``cls.output(tanh(cls(h[CLS])))``, so the pooler becomes ``cls`` and the classifier
``cls.output``, and the GGUF gets ``bert.pooling_type`` rank and the label as
``bert.classifier.output_labels``. (llama.cpp's own converter drops the pooler, so its BERT
rerankers skip the dense + tanh step; the layout here keeps the model's own function.)

A pair is tokenized ``[CLS] query [SEP] document [SEP]`` as Hugging Face does: the GGUF says EOS is
[SEP] and is added, and SEP is not added on its own (engine/rank_input.py reads these flags, as
llama-server does). One thing llama.cpp cannot follow: its BERT graph gives every token the
token-type embedding of segment 0, where Hugging Face gives the document's tokens segment 1, so
scores differ somewhat from the checkpoint's own (the ranking mostly agrees).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from studiolo.models.checkpoint_files import ConversionRefused

ARCHITECTURE = "BertForSequenceClassification"
# source tensor (without the "bert." prefix) -> the GGUF tensor llama.cpp's rank pooling reads
_HEAD_TENSORS = {
    "pooler.dense.weight": "cls.weight",
    "pooler.dense.bias": "cls.bias",
    "classifier.weight": "cls.output.weight",
    "classifier.bias": "cls.output.bias",
}


def is_cross_encoder(config: dict[str, Any]) -> bool:
    return ARCHITECTURE in (config.get("architectures") or [])


def labels_of(config: dict[str, Any]) -> list[str]:
    """The classifier's labels in order (``id2label``; Hugging Face's default is two)."""
    id2label = config.get("id2label")
    if isinstance(id2label, dict) and id2label:
        return [str(label) for _, label in sorted(id2label.items(), key=lambda item: int(item[0]))]
    return [f"LABEL_{i}" for i in range(int(config.get("num_labels") or 2))]


def ranks(config: dict[str, Any], pooling: str | None, source: Path) -> bool:
    """Whether the checkpoint converts to a reranker (rank pooling); ``pooling``: the one asked for, if any.
    Refuses a cross-encoder asked for embedding pooling or with more than one label, and rank pooling
    asked of a checkpoint without a classifier."""
    if not is_cross_encoder(config):
        if pooling == "rank":
            raise ConversionRefused(f"{source}: rank pooling needs a cross-encoder's classification head "
                                    f"({ARCHITECTURE} with one label)")
        return False
    if pooling not in (None, "rank"):
        raise ConversionRefused(f"{source}: a cross-encoder scores pairs (rank pooling); it has no {pooling} pooling")
    labels = labels_of(config)
    if len(labels) != 1:
        raise ConversionRefused(f"{source}: its classifier has {len(labels)} labels ({', '.join(labels[:4])}); a "
                                "reranker has one, its relevance score")
    return True


def take_head(source_tensors: dict[str, np.ndarray], hidden: int, source: Path) -> dict[str, np.ndarray]:
    """Remove the pooler and classifier from ``source_tensors`` and return them under llama.cpp's names;
    refuses a head that is missing or misshapen."""
    head: dict[str, np.ndarray] = {}
    for source_name in list(source_tensors):
        target = _HEAD_TENSORS.get(source_name.removeprefix("bert."))
        if target is not None:
            head[target] = source_tensors.pop(source_name)
    expected = {"cls.weight": (hidden, hidden), "cls.bias": (hidden,), "cls.output.weight": (1, hidden),
                "cls.output.bias": (1,)}
    problems = [f"{name} (pooler/classifier) is missing" for name in expected if name not in head]
    problems += [f"{name} has shape {tuple(head[name].shape)}, expected {shape}"
                 for name, shape in expected.items() if name in head and tuple(head[name].shape) != shape]
    if problems:
        raise ConversionRefused(f"{source}: {'; '.join(problems)}")
    return {name: head[name] for name in expected}

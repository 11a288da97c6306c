"""A reranker's input: one (query, document) pair as the token sequence the model was trained on.

The layout is llama-server's (``format_prompt_rerank`` in tools/server), so a GGUF scores the same
here as there:

- when the GGUF has a ``rerank`` prompt (``tokenizer.chat_template.rerank``, as Qwen3-Reranker's
  converter writes it), ``{query}`` and ``{document}`` in it are replaced by the texts and the whole
  is tokenized with special-token markup parsed and nothing added;
- otherwise ``[BOS] query [EOS] [SEP] document [EOS]``, each special token only where the
  vocabulary says to add it (``add_bos``, ``add_eos``, ``add_sep``), with SEP standing in for a
  missing EOS. A BERT cross-encoder converted by ``studiolo convert`` (or llama.cpp's converter)
  adds BOS = [CLS] and EOS = [SEP]: ``[CLS] query [SEP] document [SEP]``, as Hugging Face
  encodes a pair. The texts themselves are tokenized as plain text: a document that says
  ``[SEP]`` cannot end the query early.

Two things differ from llama-server on purpose: both placeholders are replaced in one pass (a
query that contains ``{document}`` stays as written), and a WordPiece model's texts are
normalized first (engine/llama.py ``bert_normalized``), as its plain tokenization is.
"""

from __future__ import annotations

import re

from studiolo.engine.llama import LlamaModel, bert_normalized

RERANK_TEMPLATE = "rerank"  # the name of the prompt template in the GGUF (tokenizer.chat_template.rerank)
_PLACEHOLDER = re.compile(r"\{(query|document)\}")


def rank_pair_tokens(model: LlamaModel, query: str, document: str) -> list[int]:
    """The tokens of one (query, document) pair for ``model``, a reranker."""
    template = model.chat_template(RERANK_TEMPLATE)
    if template is not None:
        return _templated(model, template, query, document)
    tokens: list[int] = []
    eos = model.eos_id if model.is_valid_token(model.eos_id) else model.sep_id
    if model.add_bos:
        tokens.append(model.bos_id)
    tokens += model.tokenize(query, add_special=False, parse_special=False)
    if model.add_eos:
        tokens.append(eos)
    if model.add_sep:
        tokens.append(model.sep_id)
    tokens += model.tokenize(document, add_special=False, parse_special=False)
    if model.add_eos:
        tokens.append(eos)
    return tokens


def _templated(model: LlamaModel, template: str, query: str, document: str) -> list[int]:
    if model.wordpiece:  # with markup parsed, the tokenizer does not normalize: do it for the texts
        query, document = bert_normalized(query), bert_normalized(document)
    texts = {"query": query, "document": document}
    prompt = _PLACEHOLDER.sub(lambda found: texts[found.group(1)], template)
    return model.tokenize(prompt, add_special=False, parse_special=True)

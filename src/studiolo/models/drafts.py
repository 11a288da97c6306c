"""Draft models for speculative decoding, attached to the instance they draft for.

A draft model is not an instance of its own: it rides on its target's instance, as LoRA adapters
do, with a context beside the target's engine (engine/draft_model.py) holding one sequence per
target slot. It is loaded the first time a request (or the target's load) names it, checked for
a vocabulary the target shares, counted in the memory guard and in the target's footprint, and
unloaded with the target (its TTL, an eviction, an explicit unload).
"""

from __future__ import annotations

import asyncio

from studiolo.domain.errors import InvalidRequest
from studiolo.engine.draft_model import DraftModel, check_compatible
from studiolo.engine.engine import Engine
from studiolo.engine.llama import LlamaModel, ModelLoadError
from studiolo.models.catalog import Catalog, CatalogEntry, ModelNotFound
from studiolo.models.gguf_info import InvalidModelFile, read_model_info
from studiolo.models.instance import Instance
from studiolo.models.memory import check_fits, context_footprint, estimate

NGRAM = "ngram"  # draft_model's name for drafting without a model (prompt lookup)
NO_DRAFT = ("", "none")  # draft_model's names for none, even where the model has a default


class InvalidDraftModel(InvalidRequest):
    code, param = "invalid_draft_model", "draft_model"


def draft_entry(catalog: Catalog, name: str) -> CatalogEntry:
    """The catalog entry ``draft_model`` names; a 400 naming the field when it cannot draft."""
    try:
        entry = catalog.resolve(name)
    except ModelNotFound:
        raise InvalidDraftModel(f"no model '{name}' to draft with; `studiolo ls` lists the models on disk, "
                                f"or use '{NGRAM}' to draft without a model") from None
    if entry.is_adapter:
        raise InvalidDraftModel(f"'{entry.key}' is a LoRA adapter, not a model that can draft")
    try:
        info = read_model_info(entry.path)
    except (InvalidModelFile, OSError) as exc:
        raise InvalidDraftModel(f"cannot draft with '{entry.key}': {exc}") from None
    if info.pooled:
        kind = "a reranker" if info.is_reranker else "an embedding model"
        raise InvalidDraftModel(f"'{entry.key}' is {kind}: it cannot draft tokens")
    return entry


async def attach_draft(instance: Instance, entry: CatalogEntry) -> DraftModel:
    """The instance's draft context of ``entry``, loading the draft model onto it the first time."""
    engine = instance.engine
    if not isinstance(engine, Engine):
        raise InvalidDraftModel(f"'{instance.id}' is an embedding model: it has nothing to draft for")
    async with instance.draft_lock:  # concurrent first requests load the draft once
        draft = engine.drafts.get(entry.key)
        if draft is None:
            draft = await asyncio.to_thread(_attach_blocking, instance, engine, entry)
            # its logits come out for a few rows a step: the output buffer llama.cpp made is its largest
            instance.footprint += context_footprint(draft.model, draft.context, output_rows=0)
        return draft


def _attach_blocking(instance: Instance, engine: Engine, entry: CatalogEntry) -> DraftModel:
    try:
        model = LlamaModel(entry.path)
    except ModelLoadError as exc:
        raise InvalidDraftModel(f"cannot draft with '{entry.key}': {exc}") from None
    try:
        check_compatible(instance.model, model, entry.key)
        cells = engine.context_length * engine.parallel
        check_fits(f"{entry.key} (the draft model of {instance.id})", estimate(model, cells, engine.context.n_batch))
        return engine.attach_draft(model, entry.key)
    except BaseException:
        model.close()
        raise

"""What a request drafts with: its ``draft_model``, or its model's default, and its prediction.

``draft_model`` names a model to draft with (loaded onto the target's instance the first time,
models/drafts.py), ``"ngram"`` for drafting without a model (a lookup in the sequence's own prompt
and output), or ``"none"`` (or ``""``) for no drafting even where the model was loaded with a
draft. Left out, the model's load-time draft applies. OpenAI's Predicted Outputs give a text the
output is expected to resemble; it is tried before the draft model (engine/speculation.py).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from studiolo.engine.speculation import Speculation
from studiolo.models.drafts import NGRAM, NO_DRAFT
from studiolo.models.manager import ModelManager, Target


@dataclass(frozen=True)
class Drafting:
    """A request's speculation for the engine, and the draft model its stats name (None: none)."""

    speculation: Speculation | None = None
    draft_model: str | None = None


async def drafting_for(manager: ModelManager, target: Target, draft_model: str | None,
                       prediction: str | None) -> Drafting:
    """Raises a 400 naming ``draft_model`` for a model that cannot draft for the target."""
    instance = target.instance
    name = draft_model if draft_model is not None else instance.draft_model
    tokens: tuple[int, ...] = ()
    if prediction:
        tokens = tuple(await asyncio.to_thread(instance.model.tokenize, prediction, add_special=False,
                                               parse_special=False))
    if name is None or name.strip().lower() in NO_DRAFT:
        return Drafting(Speculation(prediction=tokens) or None)
    if name.strip().lower() == NGRAM:
        return Drafting(Speculation(prediction=tokens, ngram=True), NGRAM)
    draft = await manager.draft(instance, name)
    return Drafting(Speculation(prediction=tokens, draft=draft), draft.key)

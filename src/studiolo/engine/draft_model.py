"""A small model drafting tokens for a bigger one with the same vocabulary.

A ``DraftModel`` is a llama.cpp context of the draft model beside its target's engine, with one
sequence id per target slot (the same ids). Each of the target's steps that speculates asks it
for drafts for some sequences: it brings each sequence's cells up to what the target has fed
(the draft only ever saw the tokens the target accepted, and drops the drafts the target
rejected), then decodes one token per sequence per round, all sequences in one batch, taking its
own most likely token each time. Drafts are the draft model's argmax: a deterministic proposal,
so verifying them by sampling the target and comparing (engine/speculation.py) keeps the target's
distribution exactly.

Each draft costs a round of the draft model and a row in the target's step, and is worth a token
only if it is accepted. The draft model's own probability of its token estimates that: a sequence
stops drafting at a token it is less sure of than what a round costs, as a share of a target step
(``DraftWanted.worth``; llama.cpp's ``--draft-p-min``, with a price). The product of the
probabilities, the chance that a whole run holds, would be the exact worth of a run if they were
calibrated; they are not (SmolLM2 drafting for itself stopped after two tokens that were all
accepted). The cost is estimated from the two models' sizes, since a single-token step on a CPU
reads every weight once (``draft_cost``). Whether drafting pays at all is decided from what was
accepted (engine/speculation.py).

It runs on the compute thread only, like its target's context.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from studiolo.domain.errors import InvalidRequest
from studiolo.engine.llama import ContextParams, LlamaContext, LlamaModel
from studiolo.engine.prompt_cache import common_prefix_length

# A draft model's round, as a share of its target's step: the share of the weights it reads, plus
# what a decode costs whatever the model (measured on the Qwen2.5-Coder pair, bench/speculative.py).
ROUND_OVERHEAD = 0.15
MOST_COST = 0.75  # a draft as big as its target can never pay; it may still draft where it is sure
VOCAB_SIZE_SLACK = 128  # token lists may differ in length by padding (llama.cpp allows as much)
FIRST_CHECKED_TOKEN = 5  # ids below are control tokens some conversions name differently


class IncompatibleDraft(InvalidRequest):
    code, param = "incompatible_draft_model", "draft_model"


def check_compatible(target: LlamaModel, draft: LlamaModel, draft_key: str) -> None:
    """Refuse a draft whose tokens mean something else than the target's: its drafts would be
    verified as other tokens (the checks llama.cpp's speculative decoding makes)."""

    def refuse(why: str) -> None:
        raise IncompatibleDraft(f"'{draft_key}' cannot draft for this model: {why}")

    if target.vocab_type != draft.vocab_type:
        refuse("its tokenizer is of another kind")
    if (target.add_bos, target.bos_id, target.eos_id) != (draft.add_bos, draft.bos_id, draft.eos_id):
        refuse("its begin and end of text tokens differ")
    if abs(target.n_vocab - draft.n_vocab) > VOCAB_SIZE_SLACK:
        refuse(f"its vocabulary has {draft.n_vocab} tokens, the model's {target.n_vocab}")
    for token in range(FIRST_CHECKED_TOKEN, min(target.n_vocab, draft.n_vocab)):
        if target.token_text(token) != draft.token_text(token):
            refuse(f"token {token} is {draft.token_text(token)!r} in it, {target.token_text(token)!r} in the model")


def draft_cost(target: LlamaModel, draft: LlamaModel) -> float:
    """A round of ``draft`` as a share of a step of ``target``."""
    return min(MOST_COST, ROUND_OVERHEAD + draft.size_bytes / max(1, target.size_bytes))


@dataclass
class DraftWanted:
    """One sequence's request for drafts: the tokens the target has fed (its slot's), the token it
    feeds next, how many drafts at most, and the least probability of a draft worth its round."""

    seq_id: int
    fed: list[int]
    pending: int
    count: int
    worth: float


# a sequence's tokens to feed in a round, and whether it drafts from the last one's logits
_Feed = tuple[DraftWanted, list[int], bool]


class DraftModel:
    def __init__(self, model: LlamaModel, key: str, *, slots: int, context_length: int, batch_size: int,
                 threads: int, cost: float):
        self.model = model
        self.key = key
        self.cost = cost  # a round, as a share of the target's step (draft_cost)
        self.context = LlamaContext(
            model,
            ContextParams(n_ctx=slots * context_length, n_batch=batch_size, n_seq_max=slots, n_threads=threads),
        )
        self._held: list[list[int]] = [[] for _ in range(slots)]  # what each sequence id's cells hold

    def close(self) -> None:
        """Free its context, then its model (it owns both)."""
        self.context.close()
        self.model.close()

    def draft(self, wanted: list[DraftWanted], threads: int) -> dict[int, list[int]]:
        """Drafts by sequence id. A sequence whose cells are far behind its target's (a long prompt
        the draft has not seen) catches up over as many steps as it takes, drafting nothing meanwhile."""
        self.context.set_threads(threads)
        budget = self.context.n_batch
        feeds: list[_Feed] = []
        for want in sorted(wanted, key=lambda w: len(w.fed) - len(self._held[w.seq_id])):
            missing = self._sync(want)
            if len(missing) + 1 <= budget:
                feeds.append((want, [*missing, want.pending], True))
                budget -= len(missing) + 1
            elif budget > 0:
                feeds.append((want, missing[:budget], False))
                budget = 0
        drafts: dict[int, list[int]] = {want.seq_id: [] for want, _, drafting in feeds if drafting}
        while feeds and (rows := self._decode(feeds)) is not None:
            feeds = self._next_round(feeds, rows, drafts)
        return drafts

    def _sync(self, want: DraftWanted) -> list[int]:
        """Drop the cells the target's tokens no longer match (rejected drafts, another sequence in
        the slot); the target's fed tokens the draft still lacks."""
        held = self._held[want.seq_id]
        n = min(len(held), len(want.fed))
        keep = n if held[:n] == want.fed[:n] else common_prefix_length(held, want.fed)
        if keep < len(held):
            if not self.context.remove_from(want.seq_id, keep):
                self.context.remove_from(want.seq_id, 0)
                keep = 0
            del held[keep:]
        return want.fed[keep:]

    def _decode(self, feeds: list[_Feed]) -> list[int] | None:
        """Decode one batch of the feeds; the batch row of each feed's last token (None on failure)."""
        batch = self.context.batch
        batch.clear()
        rows = []
        for want, tokens, drafting in feeds:
            start = len(self._held[want.seq_id])
            first = batch.add(tokens, start, want.seq_id, len(tokens) - 1 if drafting else len(tokens))
            rows.append(first + len(tokens) - 1)
        if self.context.decode() != 0:  # the cache is full or broken: drop what the batch may have left
            for want, _, _ in feeds:
                self.context.remove_from(want.seq_id, 0)
                self._held[want.seq_id].clear()
            return None
        for want, tokens, _ in feeds:
            self._held[want.seq_id].extend(tokens)
        return rows

    def _next_round(self, feeds: list[_Feed], rows: list[int], drafts: dict[int, list[int]]) -> list[_Feed]:
        following = []
        for (want, _, drafting), row in zip(feeds, rows, strict=True):
            if not drafting:
                continue
            logits = self.context.logits(row)
            token = int(logits.argmax())
            if _probability_of_best(logits) < want.worth or not self.model.is_valid_token(token):
                continue
            found = drafts[want.seq_id]
            found.append(token)
            # the last draft is not fed: nothing would read its logits
            if len(found) < want.count and not self.model.is_eog(token):
                following.append((want, [token], True))
        return following


def _probability_of_best(logits: np.ndarray) -> float:
    peak = logits.max()
    return float(1.0 / np.exp(logits - peak, dtype=np.float32).sum(dtype=np.float64))

"""Speculative decoding: several tokens of one sequence per step of its model.

A decoding sequence normally feeds one token per step. A speculating one feeds its pending token
followed by drafts (guesses at the tokens after it), all with logits, in the same batch as every
other sequence's work; one ``llama_decode`` then gives the model's next-token logits after each of
them. The engine samples the first row as always; while the token it samples equals the draft at
that place, the draft's cell is right and the next row's logits are valid too, so it samples that
row, and so on. The first token that differs from its draft is kept (it is what the model would
have produced there), and the cells of the drafts after it are removed.

Each emitted token is still drawn from the model's own distribution, given exactly the tokens
before it, by the same sampler, with one random draw per token as without drafts. So a seeded
sampled request gives the same output with or without speculation, and greedy output is the same
too (both up to batched arithmetic at near-ties, tests/batching.py), whatever the drafts were.
With deterministic drafts (a draft model's argmax, an n-gram lookup, a prediction) this is
rejection sampling with a one-hot proposal: a draft is accepted with the model's probability of it
and otherwise replaced by a draw from the rest of the distribution.

Drafts come from, in this order (the first that proposes any): a predicted output (OpenAI's
Predicted Outputs), an n-gram lookup in the sequence's own prompt and output, a draft model.
How many a sequence drafts adapts to how many it gets accepted. A draft costs a row in the step
(``VERIFY_COST``) and, from a draft model, a round of it (even a round that drafts nothing): a
source whose accepted drafts, a running figure, gain fewer tokens than it spends in steps rests for
a while, then tries again (resting longer each time it still does not pay); a prediction never
rests, since the caller says the output follows it (after an edit it is found again). When many
sequences decode together, the model's step is no longer bound by reading its weights once per
step but by arithmetic, and each verified draft costs nearly what a decoded token does:
speculation steps back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from studiolo.engine.draft_model import DraftModel, DraftWanted
from studiolo.engine.ngram import PredictionLookup, PromptLookup

MAX_SPECULATING_STREAMS = 2  # more decoding sequences in a step than this: nobody drafts
# drafts per sequence and step: where each source starts, and the most it grows to
START_LENGTH = {"prediction": 16, "ngram": 8, "draft": 4}
MAX_LENGTH = {"prediction": 32, "ngram": 16, "draft": 12}
GROW, SHRINK = 2, 1  # after a draft accepted whole, or not
# One more row in a single sequence's step, as a share of a one-row step (Qwen2.5-Coder-1.5B
# Q4_K_M on 2 cores: 0.2 to 0.58 a row, timing decodes of 1 to 17 rows; 0.3 from 4 to 13).
VERIFY_COST = 0.3
RUNNING_WEIGHT = 0.3  # of the latest draft in a source's running gain and spending
FIRST_REST, LONGEST_REST = 16, 256  # steps a source rests when its drafts do not pay; doubling


@dataclass(frozen=True)
class Speculation:
    """Where a request's drafts come from; any combination, tried in the order of the fields."""

    prediction: tuple[int, ...] = ()  # tokens the output is expected to resemble
    ngram: bool = False  # look up the sequence's own prompt and output
    draft: DraftModel | None = None  # a draft model attached to the engine

    def __bool__(self) -> bool:
        return bool(self.prediction) or self.ngram or self.draft is not None


@dataclass
class DraftStats:
    """LM Studio's draft statistics for one sequence: every drafted token ends up in exactly one of
    accepted (the model produced it too), rejected (verified, and the model produced something else
    there or before it) and ignored (never verified: the output's grammar could not take it, or the
    sequence ended before it)."""

    drafted: int = 0
    accepted: int = 0
    rejected: int = 0
    ignored: int = 0


class SequenceSpeculation:
    """One sequence's drafting state: its lookups, its current draft length per source, its stats."""

    def __init__(self, spec: Speculation, prompt: list[int]):
        self.spec = spec
        self._prediction = PredictionLookup(spec.prediction) if spec.prediction else None
        self._lookup = PromptLookup(prompt) if spec.ngram else None
        self._length = dict(START_LENGTH)
        # running figures per draft: tokens it gained (accepted), steps it cost; a fresh source pays
        self._gain = dict.fromkeys(START_LENGTH, 1.0)
        self._spent = dict.fromkeys(START_LENGTH, 0.0)
        self._rounds = 0  # of the draft model, spent on the drafts under verification
        self._rest = dict.fromkeys(START_LENGTH, FIRST_REST)
        self._resting = dict.fromkeys(START_LENGTH, 0)  # steps left before the source drafts again
        self.source = ""  # where the drafts under verification came from
        self.stats = DraftStats()
        self._drafted = self._accepted = 0  # of the drafts under verification
        self._mismatch = False

    def length(self, source: str) -> int:
        return self._length[source]

    def round_cost(self) -> float:
        """A round of the draft model, as a share of a step."""
        return self.spec.draft.cost if self.spec.draft is not None else 0.0

    def drafts_from(self, source: str) -> bool:
        """Whether ``source`` may draft this step; each call counts a step of its rest."""
        if self._resting[source]:
            self._resting[source] -= 1
            return False
        return True

    def look_up(self, output: list[int], room: int) -> list[int]:
        """Drafts from the prediction or the n-gram lookup, at most ``room`` (empty: none found)."""
        for source, lookup in (("prediction", self._prediction), ("ngram", self._lookup)):
            if lookup is not None and self.drafts_from(source):
                drafts = lookup.propose(output, min(room, self._length[source]))
                if drafts:
                    self.source = source
                    return drafts
        return []

    def drafted_by_model(self, drafts: int, rounds: int) -> None:
        """The draft model spent ``rounds`` on this step's drafts; with none, that is all there is."""
        self._rounds = rounds
        if not drafts:
            self._account("draft", 0.0, rounds * self.round_cost())

    def start(self, drafted: int) -> None:
        """A step is about to verify ``drafted`` drafts of this sequence."""
        self._drafted, self._accepted, self._mismatch = drafted, 0, False

    def checked(self, matched: bool) -> None:
        """The model's token at the next draft's place was the draft (or another, ending the run)."""
        if matched:
            self._accepted += 1
        else:
            self._mismatch = True

    def settle(self, ended: bool) -> None:
        """Count the verified draft's fate; ``ended``: the sequence stopped during it. Adapt the
        source's draft length to how much of it held."""
        if not self._drafted:
            return
        stats, drafted, accepted = self.stats, self._drafted, self._accepted
        stats.drafted += drafted
        stats.accepted += accepted
        if self._mismatch:
            stats.rejected += drafted - accepted
        else:  # the sequence ended on an accepted draft: the rest were never looked at
            stats.ignored += drafted - accepted
        if not ended:
            length = self._length[self.source]
            grown = length + GROW if accepted == drafted else length - SHRINK
            self._length[self.source] = max(1, min(MAX_LENGTH[self.source], grown))
            rounds, self._rounds = (self._rounds, 0) if self.source == "draft" else (0, 0)
            self._account(self.source, accepted, drafted * VERIFY_COST + rounds * self.round_cost())
        self._drafted = 0

    def _account(self, source: str, gained: float, spent: float) -> None:
        """Add a draft's gain (tokens) and cost (steps) to the source's running figures; rest the
        source while they do not pay."""
        if gained >= spent:  # this one paid: the next rest is a short one again
            self._rest[source] = FIRST_REST
        self._gain[source] += RUNNING_WEIGHT * (gained - self._gain[source])
        self._spent[source] += RUNNING_WEIGHT * (spent - self._spent[source])
        if self._gain[source] >= self._spent[source] or source == "prediction":
            return  # a prediction is the caller's word that the output follows it: it only shrinks
        # it comes back with fresh figures, so one good draft is enough to keep it
        self._gain[source], self._spent[source] = 1.0, 0.0
        self._resting[source] = self._rest[source]
        self._rest[source] = min(LONGEST_REST, 2 * self._rest[source])

    def ignored(self, count: int) -> None:
        """Drafts dropped before verification (the output's grammar forbids them)."""
        self.stats.drafted += count
        self.stats.ignored += count


@dataclass
class Speculating:
    """What the engine tells the drafting about one decoding sequence of the step."""

    seq_id: int  # its slot's sequence id (the draft model's too)
    state: SequenceSpeculation
    fed: list[int]  # the tokens its cells hold
    pending: int
    output: list[int]  # the tokens generated so far, pending last
    room: int  # drafts it may take: what max_tokens and the context leave after the pending token
    valid_prefix: Callable[[list[int]], int] | None  # how many drafts its grammar takes, if it has one


def propose(sequences: list[Speculating], decoding: int, threads: int) -> dict[int, list[int]]:
    """Drafts for the step, by sequence id; none when ``decoding`` sequences are too many to gain."""
    if decoding > MAX_SPECULATING_STREAMS:
        return {}
    proposed: dict[int, list[int]] = {}
    by_draft_model: dict[int, tuple[DraftModel, list[Speculating]]] = {}
    for seq in sequences:
        if seq.room <= 0:
            continue
        drafts = seq.state.look_up(seq.output, seq.room)
        if drafts:
            proposed[seq.seq_id] = drafts
        elif (draft := seq.state.spec.draft) is not None and seq.state.drafts_from("draft"):
            by_draft_model.setdefault(id(draft), (draft, []))[1].append(seq)
            seq.state.source = "draft"
    for draft, asking in by_draft_model.values():
        proposed.update(_from_draft_model(draft, asking, threads))
    for seq in sequences:
        found = proposed.get(seq.seq_id, [])
        if found and seq.valid_prefix is not None:
            allowed = seq.valid_prefix(found)
            if allowed < len(found):
                seq.state.ignored(len(found) - allowed)
                proposed[seq.seq_id] = found[:allowed]
    return {seq_id: drafts for seq_id, drafts in proposed.items() if drafts}


def _from_draft_model(draft: DraftModel, asking: list[Speculating], threads: int) -> dict[int, list[int]]:
    """One draft model's drafts for the sequences asking it, its rounds charged to each."""
    wanted = [DraftWanted(seq.seq_id, seq.fed, seq.pending, min(seq.room, seq.state.length("draft")),
                          seq.state.round_cost()) for seq in asking]
    drafted = draft.draft(wanted, threads)
    for seq, want in zip(asking, wanted, strict=True):
        if (found := drafted.get(seq.seq_id)) is not None:  # else: catching up, not drafting yet
            # a round per draft, and one more for the token that stopped it short
            seq.state.drafted_by_model(len(found), len(found) + (len(found) < want.count))
    return drafted

"""Choosing the next token from a sequence's logits.

Each step works on a zero-copy view of the logits llama.cpp computed, in this order:

1. log-probabilities of the raw distribution, when the request asked for them;
2. ``logit_bias`` and the repetition penalties, in place, on the few tokens they touch
   (the penalty window holds at most ``penalty_last_n`` tokens);
3. greedy (``temperature <= 0``): an argmax; otherwise llama.cpp's C sampler chain
   (top-k, top-p, min-p, temperature, seeded draw). With top-k on and a large vocabulary
   (CUT_FIRST_FROM), numpy picks the k candidates and the chain runs on those k alone
   (engine/candidates.py: the same distribution, and the same tokens for a seed); otherwise
   the chain reads the whole logits buffer itself.

Doing 2, 3-greedy and the top-k cut in numpy keeps both paths to about one pass over the
vocabulary, which matters with Gemma 3's 262k tokens (docs/ENGINE.md, "Sampling on a 262k
vocabulary").
"""

from __future__ import annotations

import random
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass

import llama_cpp as llama
import numpy as np

from studiolo.domain.sampling import SamplingParams
from studiolo.engine.candidates import CandidateArray, top_k_ids
from studiolo.engine.llama import LlamaContext

PENALTY_LAST_N = 64  # llama.cpp's default repetition window
# From this many tokens on, numpy's top-k cut before the chain costs less than the chain over the
# whole vocabulary; below it, more. Measured per token right after a decode (caches cold, as in the
# engine): SmolLM2's 49k tokens 147 us cut first against 71 us whole, Qwen2.5's 152k 194 against 190,
# Gemma 3's 262k 250 against 281.
CUT_FIRST_FROM = 131_072


@dataclass(frozen=True)
class TopLogprob:
    token: int
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    """The chosen token's log-probability under the model, and the k most likely tokens."""

    logprob: float
    top: tuple[TopLogprob, ...]


def log_normalizer(logits: np.ndarray) -> float:
    """log Σ exp(logits): subtracted from a logit, it gives that token's log-probability."""
    peak = float(logits.max())
    return peak + float(np.log(np.exp(logits - peak, dtype=np.float32).sum(dtype=np.float64)))


def logprobs_of(logits: np.ndarray, chosen: int, k: int) -> TokenLogprob:
    """Log-softmax of raw logits: the chosen token's value and the top k (k may be 0)."""
    log_norm = log_normalizer(logits)
    top: tuple[TopLogprob, ...] = ()
    if k > 0:
        best = np.argpartition(logits, -k)[-k:]
        best = best[np.argsort(-logits[best], kind="stable")]
        top = tuple(TopLogprob(int(t), float(logits[t]) - log_norm) for t in best)
    return TokenLogprob(float(logits[chosen]) - log_norm, top)


_LLAMA_RANDOM_SEED = 0xFFFFFFFF  # llama.cpp draws a random seed when given this value


def _llama_seed(seed: int | None) -> int:
    """A 32-bit seed for llama.cpp: any integer maps to a fixed one, never to 'random'."""
    if seed is None or seed < 0:  # llama.cpp's convention: negative means random
        return random.randrange(_LLAMA_RANDOM_SEED)
    return seed % _LLAMA_RANDOM_SEED


class TokenSampler:
    """Per-sequence sampling state: penalty window, random state, C sampler chain."""

    def __init__(self, params: SamplingParams, history: Iterable[int] = ()):
        self.params = params
        self._window: deque[int] = deque(maxlen=PENALTY_LAST_N)
        self._counts: Counter[int] = Counter()
        for token in history:
            self.accept(token)
        self._bias_ids = np.fromiter(params.logit_bias.keys(), dtype=np.int64)
        self._bias_values = np.fromiter(params.logit_bias.values(), dtype=np.float32)
        self._chain = None if params.greedy else self._build_chain(params)
        self._candidates: CandidateArray | None = None  # made at the first draw: top_k may exceed the vocabulary

    @staticmethod
    def _build_chain(params: SamplingParams):
        chain = llama.llama_sampler_chain_init(llama.llama_sampler_chain_default_params())
        if params.top_k > 0:
            llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_top_k(params.top_k))
        if params.top_p < 1.0:
            llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_top_p(params.top_p, 1))
        if params.min_p > 0.0:
            llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_min_p(params.min_p, 1))
        llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_temp(params.temperature))
        llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_dist(_llama_seed(params.seed)))
        return chain

    def accept(self, token: int) -> None:
        """Record a token in the penalty window (prompt tokens too, as llama-server does)."""
        if len(self._window) == self._window.maxlen:
            evicted = self._window[0]
            self._counts[evicted] -= 1
            if not self._counts[evicted]:
                del self._counts[evicted]
        self._window.append(token)
        self._counts[token] += 1

    def adjust(self, logits: np.ndarray) -> None:
        """Apply logit_bias and the repetition penalties to the logits, in place."""
        if self._bias_ids.size:
            logits[self._bias_ids] += self._bias_values
        params = self.params
        if not params.penalizes or not self._counts:
            return
        ids = np.fromiter(self._counts.keys(), dtype=np.int64, count=len(self._counts))
        values = logits[ids]
        if params.repeat_penalty != 1.0:
            values = np.where(values > 0, values / params.repeat_penalty, values * params.repeat_penalty)
        if params.frequency_penalty or params.presence_penalty:  # both off by default: skip the arithmetic
            counts = np.fromiter(self._counts.values(), dtype=np.float32, count=len(self._counts))
            values -= counts * params.frequency_penalty + params.presence_penalty
        logits[ids] = values

    def choose(self, context: LlamaContext, batch_index: int, logits: np.ndarray) -> int:
        """Pick the next token from logits already adjusted in place."""
        if self._chain is None:
            return int(logits.argmax())
        if 0 < self.params.top_k < logits.size and logits.size >= CUT_FIRST_FROM:
            token = self.choose_top_k_first(logits)
            if token is not None:
                return token
        return self.choose_over_vocabulary(context, batch_index)

    def choose_top_k_first(self, logits: np.ndarray) -> int | None:
        """The chain over the top-k candidates alone (None when every logit is -inf: the
        whole-vocabulary path copes as it can)."""
        assert self._chain is not None, "greedy sequences have no chain"
        top_k = self.params.top_k
        ids = top_k_ids(logits, top_k)
        if not ids.size:
            return None
        if self._candidates is None:
            self._candidates = CandidateArray(top_k)
        return self._candidates.draw(self._chain, ids, logits)

    def choose_over_vocabulary(self, context: LlamaContext, batch_index: int) -> int:
        """The chain over every logit of the context's row, as llama.cpp's own sampling does."""
        assert self._chain is not None, "greedy sequences have no chain"
        return llama.llama_sampler_sample(self._chain, context.handle, batch_index)

    def close(self) -> None:
        if self._chain is not None:
            llama.llama_sampler_free(self._chain)
            self._chain = None

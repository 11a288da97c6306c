"""Top-k first: numpy picks the k candidates, llama.cpp's chain draws among them.

The cut must leave the distribution of LM Studio's default sampling as it was (top-k 40,
top-p 0.95, min-p 0.05, temperature 0.8) and, for a seed, the very tokens the chain over the
whole vocabulary draws: shown here on synthetic 262k-wide logits and on Gemma 3's own.
"""

from __future__ import annotations

import ctypes
import math
from collections import Counter

import llama_cpp as llama
import numpy as np
import pytest

from studiolo.domain.sampling import SamplingParams
from studiolo.engine import sampling
from studiolo.engine.candidates import TOKEN_DATA, top_k_ids
from studiolo.engine.llama import ContextParams, LlamaContext, LlamaModel
from studiolo.engine.sampling import CUT_FIRST_FROM, TokenSampler

from .conftest import GEMMA, SMOLLM

LM_STUDIO = SamplingParams(seed=3)  # temperature 0.8, top_p 0.95, top_k 40, min_p 0.05, repeat 1.1
GEMMA_VOCABULARY = 262_144
DRAWS = 20_000


def gemma_like_logits(seed: int, size: int = GEMMA_VOCABULARY) -> np.ndarray:
    """A wide, mostly flat distribution with a head of a few dozen plausible tokens, scattered."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, size).astype(np.float32)
    head = rng.choice(size, min(60, size), replace=False)
    logits[head] = 14.0 + rng.normal(0.0, 1.5, head.size).astype(np.float32)
    return logits


def token_data(logits: np.ndarray) -> np.ndarray:
    rows = np.zeros(logits.size, dtype=TOKEN_DATA)
    rows["id"] = np.arange(logits.size)
    rows["logit"] = logits
    return rows


def whole_vocabulary_draw(sampler: TokenSampler, every_token: np.ndarray) -> int:
    """What llama_sampler_sample does with a context's row: every logit, unsorted, through the chain."""
    rows = every_token.copy()  # the chain sorts and cuts it in place
    array = llama.llama_token_data_array(rows.ctypes.data_as(llama.llama_token_data_p), rows.size, -1, False)
    chain = sampler._chain
    llama.llama_sampler_apply(chain, ctypes.pointer(array))
    token = int(array.data[array.selected].id)
    llama.llama_sampler_accept(chain, token)
    return token


def expected_distribution(logits: np.ndarray, params: SamplingParams) -> dict[int, float]:
    """The chain's filters written out: top-k, top-p, min-p on raw logits, then temperature."""
    order = np.argsort(-logits, kind="stable")[: params.top_k]
    values = logits[order].astype(np.float64)
    probs = np.exp(values - values[0])
    probs /= probs.sum()
    keep = int(np.searchsorted(np.cumsum(probs), params.top_p)) + 1  # first prefix reaching top_p
    keep = min(keep, (values >= values[0] + math.log(params.min_p)).sum())
    tempered = np.exp((values[:keep] - values[0]) / params.temperature)
    return dict(zip(order[:keep].tolist(), (tempered / tempered.sum()).tolist(), strict=True))


def chi_square_critical(degrees: int, z: float = 3.29) -> float:
    """Wilson-Hilferty: the chi-square value exceeded with probability ~0.0005 (z's upper tail)."""
    ratio = 2.0 / (9.0 * degrees)
    return degrees * (1.0 - ratio + z * math.sqrt(ratio)) ** 3


def assert_drawn_from(counts: Counter[int], expected: dict[int, float]) -> None:
    assert set(counts) <= set(expected), "a token outside top-k/top-p/min-p was drawn"
    total = sum(counts.values())
    chi_square = sum((counts[t] - total * p) ** 2 / (total * p) for t, p in expected.items())
    assert chi_square < chi_square_critical(len(expected) - 1), (chi_square, len(expected))


@pytest.mark.parametrize("size", [7, 1000, 49_152, 49_155, GEMMA_VOCABULARY])
@pytest.mark.parametrize("k", [1, 40, 200])
def test_top_k_ids_are_the_k_largest_in_descending_order(size, k):
    logits = gemma_like_logits(size, size)
    expected = np.argsort(-logits, kind="stable")[:k]
    np.testing.assert_array_equal(top_k_ids(logits, k), expected)


def test_a_peak_in_the_last_tokens_outside_the_grid_is_found():
    logits = np.zeros(49_155, dtype=np.float32)  # 49,155 = 32 * 1,536 + 3 tokens past the grid
    logits[-1], logits[-3] = 9.0, 8.0
    assert top_k_ids(logits, 2).tolist() == [49_154, 49_152]


def test_tokens_a_constraint_forbids_are_never_candidates():
    logits = np.full(GEMMA_VOCABULARY, -np.inf, dtype=np.float32)
    allowed = [5, 70_000, 262_143]
    logits[allowed] = [1.0, 3.0, 2.0]
    assert top_k_ids(logits, 40).tolist() == [70_000, 262_143, 5]
    assert top_k_ids(np.full(100, -np.inf, dtype=np.float32), 40).size == 0
    sampler = TokenSampler(LM_STUDIO)
    assert {sampler.choose(None, 0, logits) for _ in range(200)} <= set(allowed)
    sampler.close()


@pytest.mark.parametrize("params", [LM_STUDIO, SamplingParams(temperature=1.3, top_k=5, top_p=1.0, min_p=0.0, seed=9)])
def test_a_seed_draws_the_same_tokens_as_the_chain_over_the_whole_vocabulary(params):
    logits = gemma_like_logits(1)
    top_k_first, whole = TokenSampler(params), TokenSampler(params)
    fast = [top_k_first.choose(None, 0, logits) for _ in range(500)]
    every_token = token_data(logits)
    slow = [whole_vocabulary_draw(whole, every_token) for _ in range(500)]
    assert fast == slow
    assert len(set(fast)) > 1
    top_k_first.close(), whole.close()


def test_the_distribution_is_the_chain_s_own_over_20000_draws():
    """Old and new paths, each from its own seed, both fit the filters' distribution.

    On a 32k vocabulary (still cut by the grid) so that 20,000 whole-vocabulary draws stay quick.
    """
    logits = gemma_like_logits(2, 32_768)
    expected = expected_distribution(logits, LM_STUDIO)
    assert 10 < len(expected) < 40  # top-p and min-p both cut something
    top_k_first, whole = TokenSampler(SamplingParams(seed=101)), TokenSampler(SamplingParams(seed=202))
    fast = Counter(top_k_first.choose_top_k_first(logits) for _ in range(DRAWS))
    every_token = token_data(logits)
    slow = Counter(whole_vocabulary_draw(whole, every_token) for _ in range(DRAWS))
    assert_drawn_from(fast, expected)
    assert_drawn_from(slow, expected)
    with pytest.raises(AssertionError):  # the check has the power to see a temperature 0.1 off
        assert_drawn_from(fast, expected_distribution(logits, SamplingParams(temperature=0.9)))
    top_k_first.close(), whole.close()


@pytest.fixture(scope="module")
def gemma_rows(default_models):
    """Gemma 3's logits at each position of a short prompt, in a live context."""
    model = LlamaModel(default_models[GEMMA])
    context = LlamaContext(model, ContextParams(n_ctx=128, n_batch=32, n_seq_max=1, n_threads=2))
    tokens = model.tokenize("The old library kept its maps in a room behind the", add_special=True)
    context.batch.add(tokens, 0, 0, logits_from=0)
    assert context.decode() == 0
    yield context, tokens
    context.close()
    model.close()


def test_on_gemma_s_logits_a_seed_draws_what_llama_cpp_s_own_sampling_draws(gemma_rows):
    context, tokens = gemma_rows
    top_k_first, whole = TokenSampler(LM_STUDIO), TokenSampler(LM_STUDIO)
    for index in range(len(tokens)):
        logits = context.logits(index)
        for _ in range(20):
            assert top_k_first.choose(context, index, logits) == whole.choose_over_vocabulary(context, index)
    top_k_first.close(), whole.close()


def test_with_top_k_off_the_whole_vocabulary_is_sampled(gemma_rows):
    context, tokens = gemma_rows
    params = SamplingParams(top_k=0, top_p=1.0, min_p=0.0, temperature=1.0, seed=4)
    first, again = TokenSampler(params), TokenSampler(params)
    index = len(tokens) - 1
    draws = [first.choose(context, index, context.logits(index)) for _ in range(50)]
    assert draws == [again.choose(context, index, context.logits(index)) for _ in range(50)]
    assert len(set(draws)) > 1
    first.close(), again.close()


def test_a_top_k_past_the_vocabulary_samples_the_whole_of_it(gemma_rows):
    """top_k has no upper bound on the wire: a huge one must not size anything by itself."""
    context, tokens = gemma_rows
    index = len(tokens) - 1
    huge, off = (TokenSampler(SamplingParams(top_k=k, seed=8)) for k in (10**9, 0))
    assert [huge.choose(context, index, context.logits(index)) for _ in range(30)] == [
        off.choose(context, index, context.logits(index)) for _ in range(30)]
    huge.close(), off.close()


def test_only_a_large_vocabulary_is_cut_to_its_top_k_first(default_models, monkeypatch):
    """Right after a decode the cut's numpy calls start cold and cost more than llama.cpp's one
    pass over a small vocabulary (docs/ENGINE.md): SmolLM2's 49k tokens go to the chain whole."""
    cuts = []

    def counted(logits, k):
        cuts.append(logits.size)
        return top_k_ids(logits, k)

    monkeypatch.setattr(sampling, "top_k_ids", counted)
    model = LlamaModel(default_models[SMOLLM])
    context = LlamaContext(model, ContextParams(n_ctx=128, n_batch=32, n_seq_max=1, n_threads=2))
    try:
        tokens = model.tokenize("The old library kept its maps in a room behind the", add_special=True)
        context.batch.add(tokens, 0, 0, logits_from=len(tokens) - 1)
        assert context.decode() == 0 and model.n_vocab < CUT_FIRST_FROM
        index = len(tokens) - 1
        small, whole = TokenSampler(LM_STUDIO), TokenSampler(LM_STUDIO)
        drawn = [small.choose(context, index, context.logits(index)) for _ in range(20)]
        assert drawn == [whole.choose_over_vocabulary(context, index) for _ in range(20)]
        assert cuts == []
        large = TokenSampler(LM_STUDIO)
        large.choose(None, 0, gemma_like_logits(5))
        assert cuts == [GEMMA_VOCABULARY]
        small.close(), whole.close(), large.close()
    finally:
        context.close()
        model.close()

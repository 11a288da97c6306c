"""Comparing a batched greedy run with the same request run alone.

Batching changes where a sequence's cells sit and which kernel paths a batch takes (by its
shape), so logprobs move by rounding: up to 0.27 nats measured over 64 concurrent SmolLM2
streams with the default f16 KV cache, and every parting happened where the solo run's two
best tokens were within 0.18 nats. A run may therefore part from its solo run only at such a
near-tie, by taking one of the tokens within that gap of the best (two or more); a swapped or
mixed sequence differs where the model is sure.
The bounds leave room for other CPUs.
"""

from __future__ import annotations

NEAR_TIE_LOGPROB_GAP = 0.5  # top-1 minus top-2 logprob below which rounding may flip greedy
ROUNDING_LOGPROB_BOUND = 1.0  # how far the chosen token's logprob may move before parting

# One generated token: its identity and the logprobs of the solo run's top alternatives.
Step = tuple[object, dict[object, float]]


def assert_same_or_parted_at_a_near_tie(label: str, solo: list[Step], batched: list[Step]) -> None:
    parted = next((i for i, (a, b) in enumerate(zip(solo, batched)) if a[0] != b[0]), None)
    for (token, top_solo), (_, top_batched) in zip(solo[:parted], batched[:parted]):
        if token in top_solo and token in top_batched:
            moved = abs(top_solo[token] - top_batched[token])
            assert moved < ROUNDING_LOGPROB_BOUND, f"{label}: logprob of {token!r} moved by {moved}"
    if parted is None:
        if len(solo) == len(batched):
            return
        # one run ended (end of turn) where the other went on: a parting too, judged by the
        # longer run's alternatives there, among which the end token is
        parted = min(len(solo), len(batched))
        longer = solo if len(solo) > len(batched) else batched
        gap = _gap(longer[parted][1])
        assert gap < NEAR_TIE_LOGPROB_GAP, f"{label}: one run ended at token {parted} where the model was sure"
        return
    # a near-tie may hold more than two candidates: the batched run may take any of them
    token, alternatives = batched[parted][0], solo[parted][1]
    assert token in alternatives, (
        f"{label}: at token {parted} took {token!r}, outside the solo run's top {len(alternatives)}"
    )
    behind = max(alternatives.values()) - alternatives[token]
    assert behind < NEAR_TIE_LOGPROB_GAP, (
        f"{label}: parted at token {parted} where the model was sure ({token!r} {behind:.3f} nats behind)"
    )


def _gap(alternatives: dict[object, float]) -> float:
    best, second = sorted(alternatives.values(), reverse=True)[:2]
    return best - second

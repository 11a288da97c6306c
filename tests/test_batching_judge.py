"""The rule the end-to-end tests judge batched greedy runs by (tests/batching.py)."""

from __future__ import annotations

import pytest

from tests.batching import assert_same_or_parted_at_a_near_tie

SOLO = [("The", {"The": -0.1, "A": -3.0}), (" sky", {" sky": -1.00, " sea": -1.05, " sun": -1.20, " cat": -4.0})]


def test_a_parting_may_take_any_token_of_a_near_tie_of_three():
    assert_same_or_parted_at_a_near_tie("three-way", SOLO, [SOLO[0], (" sun", {" sun": -1.1})])


def test_a_parting_where_the_model_was_sure_fails():
    with pytest.raises(AssertionError, match="where the model was sure"):
        assert_same_or_parted_at_a_near_tie("sure", SOLO, [SOLO[0], (" cat", {" cat": -1.0})])


def test_a_token_the_solo_run_did_not_rank_fails():
    with pytest.raises(AssertionError, match="outside the solo run's top 4"):
        assert_same_or_parted_at_a_near_tie("unranked", SOLO, [SOLO[0], (" dog", {" dog": -1.0})])


def test_a_logprob_that_moved_too_far_before_the_parting_fails():
    moved = [("The", {"The": -2.0, "A": -3.0}), SOLO[1]]
    with pytest.raises(AssertionError, match="moved by"):
        assert_same_or_parted_at_a_near_tie("moved", SOLO, moved)

"""The catalog's name resolution and the in-place logit adjustments, without a model."""

from __future__ import annotations

import os

import numpy as np
import pytest

from studiolo.api.errors import field_path
from studiolo.domain.sampling import SamplingParams
from studiolo.engine.sampling import TokenSampler, logprobs_of
from studiolo.models.catalog import AmbiguousModelName, Catalog, ModelNotFound


@pytest.fixture
def catalog(tmp_path):
    for relative in [
        "google/gemma-3-270m/gemma-3-270m-Q4_K_M.gguf",
        "huggingfacetb/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf",
        "acme/vision-7b/vision-7b.gguf",
        "acme/vision-7b/mmproj-vision-7b.gguf",
        "other/vision-7b/vision-7b-q8.gguf",
        "acme/downloading/model.gguf.part",
    ]:
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"GGUF")
    return Catalog(tmp_path)


def test_entries_are_keyed_publisher_slash_repo_and_skip_projectors_and_partials(catalog):
    keys = [entry.key for entry in catalog.entries()]
    assert keys == ["acme/vision-7b", "google/gemma-3-270m", "huggingfacetb/smollm2-135m-instruct", "other/vision-7b"]
    assert catalog.resolve("acme/vision-7b").path.name == "vision-7b.gguf"


def test_resolve_by_key_short_name_or_file_name(catalog):
    assert catalog.resolve("google/gemma-3-270m").key == "google/gemma-3-270m"
    assert catalog.resolve("gemma-3-270m").key == "google/gemma-3-270m"
    assert catalog.resolve("SmolLM2-135M-Instruct").key == "huggingfacetb/smollm2-135m-instruct"
    assert catalog.resolve("SmolLM2-135M-Instruct.Q4_1.gguf").key == "huggingfacetb/smollm2-135m-instruct"


def test_ambiguous_and_unknown_names(catalog):
    with pytest.raises(AmbiguousModelName, match="acme/vision-7b"):
        catalog.resolve("vision-7b")
    with pytest.raises(ModelNotFound) as unknown:
        catalog.resolve("llama-70b")
    assert "GET /v1/models" in str(unknown.value) and "google/gemma-3-270m" not in str(unknown.value)


def test_names_that_are_not_utf8_are_skipped_with_a_warning(catalog, caplog):
    odd = os.fsdecode(b"bad\xff")  # as a folder from another system's encoding reads
    for relative in [f"test/{odd}/m.gguf", f"{odd}/repo/m.gguf", f"google/gemma-3-270m/adapters/{odd}.gguf"]:
        path = catalog.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"GGUF")
    keys = [entry.key for entry in catalog.entries() + catalog.adapters()]
    assert keys == ["acme/vision-7b", "google/gemma-3-270m", "huggingfacetb/smollm2-135m-instruct", "other/vision-7b"]
    with pytest.raises(ModelNotFound) as caught:
        catalog.resolve("llama-70b")
    str(caught.value).encode("utf-8")  # the message goes into a JSON body
    assert "not valid UTF-8" in caplog.text


def test_logit_bias_and_penalties_apply_in_place():
    logits = np.array([2.0, -1.0, 0.5, 3.0], dtype=np.float32)
    params = SamplingParams(repeat_penalty=2.0, presence_penalty=0.5, frequency_penalty=0.25, logit_bias={3: -100})
    sampler = TokenSampler(params, history=[0, 0, 1])
    sampler.adjust(logits)
    # token 0: seen twice, positive: 2/2 - (2*0.25 + 0.5) = 0; token 1: once, negative: -1*2 - 0.75
    np.testing.assert_allclose(logits, [0.0, -2.75, 0.5, -97.0])


def test_penalty_window_forgets_old_tokens():
    sampler = TokenSampler(SamplingParams(repeat_penalty=2.0), history=[7] + [1] * 64)
    logits = np.ones(8, dtype=np.float32)
    sampler.adjust(logits)
    assert logits[7] == 1.0 and logits[1] == 0.5


def test_greedy_picks_the_argmax_after_adjustment():
    sampler = TokenSampler(SamplingParams(temperature=0, repeat_penalty=1.0, logit_bias={1: -100}))
    logits = np.array([0.0, 5.0, 1.0], dtype=np.float32)
    sampler.adjust(logits)
    assert sampler.choose(None, 0, logits) == 2


def test_logprobs_are_a_normalised_log_softmax():
    logits = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    result = logprobs_of(logits, chosen=1, k=2)
    expected = logits - np.log(np.exp(logits).sum())
    assert result.logprob == pytest.approx(expected[1], abs=1e-6)
    assert [alt.token for alt in result.top] == [2, 1]
    assert result.top[0].logprob == pytest.approx(expected[2], abs=1e-6)


def test_field_path_names_nested_fields():
    assert field_path(("body", "messages", 0, "role")) == "messages[0].role"
    assert field_path(("body", "stop", "list[str]", 3)) == "stop[3]"
    assert field_path(("body",)) == ""

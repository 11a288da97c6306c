"""``GET /v1/models`` answers Anthropic's SDK as well as OpenAI's: the same objects carry both families'
fields (``client.models.list()`` and ``retrieve()`` of the anthropic package, on the session's server)."""

from __future__ import annotations

import anthropic
import pytest

from tests.conftest import SMOLLM


@pytest.fixture(scope="module")
def claude(server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key="not-needed", max_retries=0, timeout=120)


def test_anthropic_lists_the_same_models_openai_does(claude, client):
    listed = list(claude.models.list())
    assert [m.id for m in listed] == [m.id for m in client.models.list()]
    smollm = next(m for m in listed if m.id == SMOLLM)
    assert smollm.type == "model" and smollm.display_name == SMOLLM and smollm.created_at.year >= 2024


def test_anthropic_retrieves_one_model(claude):
    model = claude.models.retrieve(SMOLLM)
    assert (model.id, model.type) == (SMOLLM, "model")
    with pytest.raises(anthropic.NotFoundError):
        claude.models.retrieve("nobody/nothing")

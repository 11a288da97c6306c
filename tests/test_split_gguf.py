"""Split GGUFs (``name-00001-of-0000N.gguf``): imported, listed and loaded as one model. The
split is SmolLM2 cut into three shards by the ``gguf`` package's writer (llama.cpp's gguf-split
format), so the split model answers exactly as SmolLM2 does."""

from __future__ import annotations

import shutil

import httpx
import openai
import pytest

from studiolo.models.catalog import Catalog
from studiolo.models.gguf_info import InvalidModelFile, read_model_info
from studiolo.models.importer import ImportRefused, import_model
from tests.conftest import SMOLLM, RunningServer, free_port, home_with_models
from tests.split_gguf import split_gguf_once

SPLIT_KEY = "local/smollm2-split"


@pytest.fixture(scope="module")
def shards(tmp_path_factory, default_models) -> list:
    folder = tmp_path_factory.mktemp("split")
    made = split_gguf_once(default_models[SMOLLM], folder / "smollm2-split.gguf", tensors_per_shard=100)
    assert [path.name for path in made] == [f"smollm2-split-0000{n}-of-00003.gguf" for n in (1, 2, 3)]
    return made


def copied(shards, folder) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    return [shutil.copy(shard, folder / shard.name) for shard in shards]


def test_a_split_model_reads_as_one(shards, default_models):
    info = read_model_info(shards[0])
    whole = read_model_info(default_models[SMOLLM])
    assert info.size_bytes == sum(shard.stat().st_size for shard in shards)
    assert (info.parameter_count, info.params_string, info.architecture) == (
        whole.parameter_count, whole.params_string, whole.architecture)


def test_import_brings_every_shard_and_the_catalog_lists_one_model(shards, tmp_path):
    sources = copied(shards, tmp_path / "incoming")
    result = import_model(sources[0], tmp_path / "models", mode="move")
    assert result.key == SPLIT_KEY  # the shard suffix is not part of the key
    placed = sorted(path.name for path in (tmp_path / "models" / "local" / "smollm2-split").iterdir())
    assert placed == [shard.name for shard in shards]
    assert list((tmp_path / "incoming").iterdir()) == []
    (entry,) = Catalog(tmp_path / "models").entries()
    assert (entry.key, entry.path.name) == (SPLIT_KEY, shards[0].name)
    assert entry.size_bytes == sum(shard.stat().st_size for shard in shards)


def test_a_later_shard_is_refused_and_a_missing_one_refuses_the_import(shards, tmp_path):
    sources = copied(shards, tmp_path / "incoming")
    with pytest.raises(ImportRefused, match="later shard of a split GGUF; import its first shard"):
        import_model(sources[1], tmp_path / "models", mode="copy")
    sources[2].unlink()
    with pytest.raises(InvalidModelFile, match="shard smollm2-split-00003-of-00003.gguf is missing"):
        import_model(sources[0], tmp_path / "models", mode="copy")
    assert not (tmp_path / "models").exists()


def test_a_split_model_missing_a_shard_is_not_listed(shards, tmp_path):
    copied(shards[:2], tmp_path / "models" / "local" / "smollm2-split")
    assert Catalog(tmp_path / "models").entries() == []


def test_a_split_model_is_listed_and_loaded_by_the_server(shards, default_models, tmp_path):
    home = home_with_models(tmp_path / "home", {SMOLLM: default_models[SMOLLM]})
    import_model(shards[0], home / "models", user_repo="local/smollm2-split", mode="copy")
    server = RunningServer(home, free_port(), [])
    try:
        listed = httpx.get(f"{server.base_url}/api/v1/models").json()["models"]
        split = next(model for model in listed if model["key"] == SPLIT_KEY)
        assert split["size_bytes"] == sum(shard.stat().st_size for shard in shards)
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none")
        answers = [
            client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "What is the capital of France?"}],
                max_tokens=16, temperature=0, seed=1,
            ).choices[0].message.content
            for model in (SPLIT_KEY, SMOLLM)
        ]
        assert answers[0] and answers[0] == answers[1]  # the same weights, whole or in shards
    finally:
        server.stop()

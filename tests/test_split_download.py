"""Split GGUFs downloaded from a (fake) Hugging Face hub as one model: SmolLM2 cut into three
shards by tests/split_gguf.py, served by tests/fakehub.py beside a single-file decoy, fetched
through the REST route of a running server and through ``studiolo get``."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from studiolo.config import models_dir
from studiolo.models import download as dl
from studiolo.models.catalog import Catalog
from tests import test_download
from tests.conftest import SMOLLM, RunningServer, free_port
from tests.split_gguf import split_gguf_once
from tests.test_download import catalog_keys, poll_status, run_get, staged_files

hub, api = test_download.hub, test_download.api  # the fake hub and the in-process app, as fixtures here too

REPO = "Tester/SmolLM2-Split-GGUF"
KEY = "tester/smollm2-split-gguf"
SHARDS = [f"SmolLM2-135M-Instruct-Q4_1-0000{n}-of-00003.gguf" for n in (1, 2, 3)]
DECOY = "SmolLM2-135M-Instruct-Q8_0.gguf"  # another quantization, in one file: never the one asked for


@pytest.fixture(scope="module")
def shard_bytes(tmp_path_factory, default_models) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("split-source")
    made = split_gguf_once(default_models[SMOLLM], folder / "SmolLM2-135M-Instruct-Q4_1.gguf", tensors_per_shard=100)
    assert [path.name for path in made] == SHARDS
    return {path.name: path.read_bytes() for path in made}


@pytest.fixture
def split_hub(hub, shard_bytes):
    hub.add_repo(REPO, {**shard_bytes, DECOY: b"GGUF not really", "README.md": b"# split\n"}, in_git=("README.md",))
    return hub


def total(shard_bytes) -> int:
    return sum(len(data) for data in shard_bytes.values())


def placed() -> list[str]:
    folder = models_dir() / "tester" / "smollm2-split-gguf"
    return sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []


def shard_url(name: str) -> str:
    return f"https://huggingface.co/{REPO}/blob/main/{name}"


# --- which files ----------------------------------------------------------------------------


def test_a_split_is_chosen_by_its_quantization_and_brings_every_shard():
    names = ["README.md", "model-Q8_0.gguf", *(f"Q4_K_M/model-Q4_K_M-0000{n}-of-00003.gguf" for n in (3, 1, 2))]
    first = dl.choose_gguf(names, "Q4_K_M", "o/r")
    assert first == "Q4_K_M/model-Q4_K_M-00001-of-00003.gguf"
    assert dl.choose_gguf(names, None, "o/r") == first  # the single Q4_K_M model, though in three files
    assert dl.model_files(first, names, "o/r") == [f"Q4_K_M/model-Q4_K_M-0000{n}-of-00003.gguf" for n in (1, 2, 3)]
    assert dl.first_shard("Q4_K_M/model-Q4_K_M-00003-of-00003.gguf") == first
    assert dl.model_files("model-Q8_0.gguf", names, "o/r") == ["model-Q8_0.gguf"]
    with pytest.raises(dl.FileNotFound, match="first of 3 shards .* lacks model-Q4_K_M-00002-of-00003.gguf"):
        dl.model_files(first, names[:-1], "o/r")


def test_the_plan_lists_every_shard_whichever_shard_a_url_names(split_hub, shard_bytes):
    plan = dl.resolve(REPO, "q4_1")
    assert [file.filename for file in plan.files] == SHARDS
    assert [file.sha256 for file in plan.files] == [split_hub.repos[KEY].files[name].sha256 for name in SHARDS]
    assert plan.size == total(shard_bytes) and plan.filename == SHARDS[0]
    assert plan.target == models_dir() / "tester" / "smollm2-split-gguf" / SHARDS[0]
    assert plan.description == f"{SHARDS[0]} (a split model: 3 shards)"
    for name in SHARDS:
        assert dl.resolve(shard_url(name)) == plan


# --- downloading ----------------------------------------------------------------------------


def test_the_shards_come_later_ones_first_with_progress_over_the_total(split_hub, shard_bytes):
    plan = dl.resolve(f"{REPO}@Q4_1")
    progress: list[tuple[int, int | None]] = []
    assert dl.download(plan, on_progress=lambda done, whole: progress.append((done, whole))) == plan.target
    assert placed() == SHARDS and catalog_keys() == [KEY] and staged_files() == []
    for name in SHARDS:
        assert (plan.target.parent / name).read_bytes() == shard_bytes[name]
    blobs = {split_hub.repos[KEY].files[name].sha256: name for name in SHARDS}
    assert [blobs[seen.path.removeprefix("/cdn/")] for seen in split_hub.content_gets()] == [*SHARDS[1:], SHARDS[0]]
    whole = total(shard_bytes)
    assert progress[0] == (0, whole) and progress[-1] == (whole, whole)
    assert {seen_total for _, seen_total in progress} == {whole}
    assert [done for done, _ in progress] == sorted(done for done, _ in progress)
    assert dl.is_downloaded(plan)
    (entry,) = Catalog(models_dir()).entries()
    assert entry.size_bytes == whole

    (plan.target.parent / SHARDS[2]).unlink()  # a shard lost: the model is not listed, a new get brings it back
    assert catalog_keys() == [] and not dl.is_downloaded(plan)
    dl.download(plan)
    assert len(split_hub.content_gets()) == 4 and placed() == SHARDS and catalog_keys() == [KEY]


def test_a_failed_shard_leaves_nothing_listed_and_the_retry_fetches_only_it(split_hub, shard_bytes):
    split_hub.corrupt.add(SHARDS[0])  # the first shard, fetched last: the later two are in place by then
    plan = dl.resolve(REPO, "Q4_1")
    with pytest.raises(dl.ChecksumMismatch, match=SHARDS[0]):
        dl.download(plan)
    assert placed() == SHARDS[1:] and catalog_keys() == []
    assert not dl.is_downloaded(plan)
    dl.check_folder_free(plan)  # the later shards are this model's own: no conflict

    split_hub.corrupt.clear()
    gets = len(split_hub.content_gets())
    dl.download(plan)
    assert len(split_hub.content_gets()) == gets + 1  # the first shard only
    assert placed() == SHARDS and catalog_keys() == [KEY]


def test_a_cut_shard_resumes_and_a_foreign_shard_is_kept(split_hub, shard_bytes):
    split_hub.cut_next, split_hub.cut_at = 1, 1 << 20
    plan = dl.resolve(REPO, "Q4_1")
    folder = plan.target.parent
    folder.mkdir(parents=True)
    (folder / SHARDS[2]).write_bytes(shard_bytes[SHARDS[1]])  # another file under a shard's name
    with pytest.raises(dl.FolderTaken, match=f"{SHARDS[2]} already exists"):
        dl.download(plan)
    assert split_hub.content_gets() == []
    (folder / SHARDS[2]).unlink()
    dl.download(plan)
    assert [seen.range for seen in split_hub.content_gets()][:2] == [None, f"bytes={1 << 20}-"]
    assert placed() == SHARDS and catalog_keys() == [KEY]


def test_a_failed_job_reports_it_and_lists_nothing(split_hub, api, shard_bytes):
    split_hub.corrupt.add(SHARDS[0])
    started = api.post("/api/v1/models/download", json={"model": REPO, "quantization": "Q4_1"}).json()
    assert started["total_size_bytes"] == total(shard_bytes)
    done = poll_status(api, started["job_id"], lambda s: s["status"] != "downloading")
    assert done["status"] == "failed" and done["error"]["code"] == "checksum_mismatch"
    assert SHARDS[0] in done["error"]["message"]
    assert catalog_keys() == [] and placed() == SHARDS[1:]


def test_the_cli_gets_a_split_from_a_url_to_one_shard(split_hub, shard_bytes):
    result = run_get("-y", shard_url(SHARDS[1]))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{KEY}\n"
    assert placed() == SHARDS and catalog_keys() == [KEY]
    again = run_get("-y", f"{REPO}@Q4_1")
    assert again.returncode == 0 and again.stdout == f"{KEY}\n" and "Already downloaded" in again.stderr
    assert len(split_hub.content_gets()) == 3


def test_a_server_downloads_a_split_lists_it_once_complete_and_it_answers_like_smollm2(
    split_hub, shard_bytes, default_models
):
    split_hub.pause_at, split_hub.pause_in = 0, SHARDS[2]  # the second shard fetched waits for release()
    home = models_dir().parent  # the hub fixture's STUDIOLO_HOME, with SmolLM2 beside the split to come
    smollm = home / "models" / "huggingfacetb" / "smollm2-135m-instruct" / default_models[SMOLLM].name
    smollm.parent.mkdir(parents=True)
    smollm.symlink_to(default_models[SMOLLM])
    server = RunningServer(home, free_port(), [])
    try:
        http = httpx.Client(base_url=server.base_url, timeout=60)
        whole = total(shard_bytes)
        started = http.post("/api/v1/models/download", json={"model": REPO, "quantization": "Q4_1"}).json()
        assert started["status"] == "downloading" and started["total_size_bytes"] == whole
        status_url = f"/api/v1/models/download/status/{started['job_id']}"
        midway = poll_until(http, status_url, lambda s: s["downloaded_bytes"] >= len(shard_bytes[SHARDS[1]]))
        assert midway["status"] == "downloading" and midway["total_size_bytes"] == whole
        assert midway["downloaded_bytes"] == len(shard_bytes[SHARDS[1]])  # shard 2 done, shard 3 not begun
        assert KEY not in listed_keys(http)  # a shard placed, the split not whole: not a model yet
        split_hub.release()
        done = poll_until(http, status_url, lambda s: s["status"] != "downloading")
        assert done["status"] == "completed" and done["downloaded_bytes"] == done["total_size_bytes"] == whole
        models = http.get("/api/v1/models").json()["models"]
        (split,) = [model for model in models if model["key"] == KEY]
        assert split["size_bytes"] == whole and sorted(listed_keys(http)) == sorted([KEY, SMOLLM])
        assert answer(server, KEY) == answer(server, SMOLLM) != ""  # the same weights, whole or in shards
    finally:
        split_hub.release()
        server.stop()


def poll_until(http: httpx.Client, url: str, until) -> dict:
    deadline = time.monotonic() + 60
    while True:
        body = http.get(url).json()
        if until(body) or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def listed_keys(http: httpx.Client) -> list[str]:
    return [model["key"] for model in http.get("/api/v1/models").json()["models"]]


def answer(server: RunningServer, model: str) -> str:
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none")
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=16, temperature=0, seed=1,
    )
    return reply.choices[0].message.content or ""

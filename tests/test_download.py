"""Downloading models from Hugging Face, against a fake hub on loopback (never the internet)."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import threading
import time

import pytest
from fastapi.testclient import TestClient
from huggingface_hub import constants as hf_constants
from typer.testing import CliRunner

from studiolo.api.app import create_app
from studiolo.cli import get_cmd
from studiolo.cli.main import app as cli_app
from studiolo.config import models_dir
from studiolo.models import download as dl
from studiolo.models.catalog import Catalog
from studiolo.models.download_jobs import DownloadJobs, iso_utc
from tests.conftest import free_port
from tests.fakehub import FakeHub

MIB = 1 << 20
FILE_BYTES = 3 * MIB
CHUNK_BYTES = 64 * 1024  # http_get reports progress (and sees a cancel) once per chunk; 10 MiB by default
HALF = FILE_BYTES // 2  # a multiple of CHUNK_BYTES, so a cut there loses nothing already received
REPO = "Tester/Tiny-GGUF"
KEY = "tester/tiny-gguf"
ISO_MS_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def payload(seed: int) -> bytes:
    return random.Random(seed).randbytes(FILE_BYTES)


TINY_FILES = {
    "tiny-Q4_K_M.gguf": payload(1),
    "tiny-Q8_0.gguf": payload(2),
    "README.md": b"# tiny\n",
}


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A fake hub with one repo, huggingface_hub pointed at it, and a fresh STUDIOLO_HOME."""
    hf_home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(hf_home))
    for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    # huggingface_hub read these when it was imported; point them at this test's world
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(hf_home / "token"))
    monkeypatch.setattr(hf_constants, "DOWNLOAD_CHUNK_SIZE", CHUNK_BYTES)
    monkeypatch.setenv("STUDIOLO_HOME", str(tmp_path / "studiolo-home"))
    with FakeHub() as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)
        fake.add_repo(REPO, TINY_FILES, in_git=("README.md",))
        yield fake


def staged_files() -> list[str]:
    folder = dl.staging_dir()
    return sorted(os.listdir(folder)) if folder.is_dir() else []


def catalog_keys() -> list[str]:
    return [entry.key for entry in Catalog(models_dir()).entries()]


# --- what the user asked for ---------------------------------------------------------------


def test_repo_ids_and_urls_parse(hub):
    assert dl.parse_reference(" owner/Repo-GGUF ") == dl.ModelReference("owner/Repo-GGUF")
    assert dl.parse_reference("owner/repo@Q8_0") == dl.ModelReference("owner/repo", quantization="Q8_0")
    assert dl.parse_reference("https://huggingface.co/owner/repo/") == dl.ModelReference("owner/repo")
    assert dl.parse_reference("hf.co/owner/repo") == dl.ModelReference("owner/repo")
    assert dl.parse_reference("https://huggingface.co/owner/repo/blob/main/sub/m-Q4_K_M.gguf") == dl.ModelReference(
        "owner/repo", revision="main", filename="sub/m-Q4_K_M.gguf"
    )
    assert dl.parse_reference("https://huggingface.co/owner/repo/resolve/v1.0/m.gguf?download=true") == (
        dl.ModelReference("owner/repo", revision="v1.0", filename="m.gguf")
    )
    assert dl.parse_reference("https://huggingface.co/owner/repo/tree/dev") == dl.ModelReference("owner/repo", "dev")
    # the configured endpoint (a mirror, here the fake hub) is a hub host too
    assert dl.parse_reference(f"{hub.endpoint}/owner/repo") == dl.ModelReference("owner/repo")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "just-a-name",
        "a/b/c",
        "owner/re po",
        "https://example.com/owner/repo",
        "https://huggingface.co/datasets/owner/repo",
        "https://huggingface.co/owner",
        "ftp://huggingface.co/owner/repo",
        "http://[::1",
        "https://[huggingface.co/owner/repo",
    ],
)
def test_bad_references_are_refused(text):
    with pytest.raises(dl.InvalidModelReference) as caught:
        dl.parse_reference(text)
    assert "\n" not in str(caught.value)


# --- which file -----------------------------------------------------------------------------


FILES = ["README.md", "m-Q4_K_M.gguf", "m-Q4_K_S.gguf", "m-Q8_0.gguf", "mmproj-m-f16.gguf", "m-Q4_K_M-imat.gguf"]


def test_quantization_picks_the_file_case_insensitively():
    assert dl.choose_gguf(FILES, "q8_0", "o/r") == "m-Q8_0.gguf"
    assert dl.choose_gguf(FILES, "Q4_K_S", "o/r") == "m-Q4_K_S.gguf"


def test_a_whole_name_part_beats_a_substring():
    # 'Q4_K_M' is a part of both m-Q4_K_M.gguf and m-Q4_K_M-imat.gguf: refused, both listed
    with pytest.raises(dl.AmbiguousChoice, match="m-Q4_K_M-imat.gguf, m-Q4_K_M.gguf"):
        dl.choose_gguf(FILES, "Q4_K_M", "o/r")
    # 'imat' is a whole part of one name only
    assert dl.choose_gguf(FILES, "imat", "o/r") == "m-Q4_K_M-imat.gguf"
    # 'Q4_K' is no whole part: substring matches, several, refused
    with pytest.raises(dl.AmbiguousChoice):
        dl.choose_gguf(FILES, "Q4_K", "o/r")


def test_unknown_quantization_lists_the_files():
    with pytest.raises(dl.QuantizationNotFound) as caught:
        dl.choose_gguf(FILES, "IQ2_XS", "o/r")
    message = str(caught.value)
    assert "IQ2_XS" in message and "m-Q8_0.gguf" in message and "mmproj" not in message


def test_without_quantization_one_gguf_is_taken_else_q4_k_m_else_refused():
    assert dl.choose_gguf(["README.md", "only-F16.gguf", "mmproj-x.gguf"], None, "o/r") == "only-F16.gguf"
    assert dl.choose_gguf(["a-Q8_0.gguf", "a-q4_k_m.gguf", "a-F16.gguf"], None, "o/r") == "a-q4_k_m.gguf"
    with pytest.raises(dl.AmbiguousChoice, match="a-F16.gguf, a-Q8_0.gguf"):
        dl.choose_gguf(["a-Q8_0.gguf", "a-F16.gguf"], None, "o/r")


def test_a_repo_without_gguf_is_refused():
    with pytest.raises(dl.FileNotFound, match="no GGUF"):
        dl.choose_gguf(["model.safetensors", "mmproj-only.gguf"], None, "o/r")


def test_split_models_count_once_by_their_first_shard():
    names = ["big-Q8_0-00001-of-00002.gguf", "big-Q8_0-00002-of-00002.gguf", "big-Q4_K_M.gguf"]
    assert dl.choose_gguf(names, None, "o/r") == "big-Q4_K_M.gguf"
    assert dl.choose_gguf(names, "Q8_0", "o/r") == "big-Q8_0-00001-of-00002.gguf"


# --- asking the hub -------------------------------------------------------------------------


def test_resolve_lists_the_repo_with_file_metadata(hub):
    plan = dl.resolve("tester/tiny-gguf")  # any case: the hub answers with the repo's own spelling
    assert plan.repo_id == REPO and plan.key == KEY
    assert plan.filename == "tiny-Q4_K_M.gguf"
    assert plan.size == FILE_BYTES
    assert plan.sha256 == hub.repos[KEY].files["tiny-Q4_K_M.gguf"].sha256
    assert plan.revision == hub.repos[KEY].commit  # the download is pinned to the listed commit
    assert plan.target == models_dir() / "tester" / "tiny-gguf" / "tiny-Q4_K_M.gguf"
    assert hub.requests[0].path == "/api/models/tester/tiny-gguf"


def test_resolve_by_quantization_and_by_file_url(hub):
    assert dl.resolve(REPO, "Q8_0").filename == "tiny-Q8_0.gguf"
    assert dl.resolve(f"{REPO}@q8_0").filename == "tiny-Q8_0.gguf"
    assert dl.resolve(f"https://huggingface.co/{REPO}/blob/main/tiny-Q8_0.gguf").filename == "tiny-Q8_0.gguf"
    with pytest.raises(dl.FileNotFound, match="not found"):
        dl.resolve(f"https://huggingface.co/{REPO}/blob/main/nope.gguf")


def test_resolve_errors_name_the_problem(hub):
    with pytest.raises(dl.RepoNotFound, match="'nobody/nothing' not found"):
        dl.resolve("nobody/nothing")
    with pytest.raises(dl.RepoNotFound, match="revision 'v9'"):
        dl.resolve(f"https://huggingface.co/{REPO}/tree/v9")
    with pytest.raises(dl.QuantizationNotFound, match="tiny-Q8_0.gguf"):
        dl.resolve(REPO, "IQ1_S")


def test_a_listing_cannot_name_files_outside_the_staging_folder(hub, tmp_path):
    hub.listed_sha256["tiny-Q4_K_M.gguf"] = "../../escape"
    hub.listed_commit = "../../rev"
    plan = dl.resolve(REPO)
    assert plan.sha256 is None and plan.revision == "main"  # not hex: taken as absent
    assert dl.download(plan).read_bytes() == TINY_FILES["tiny-Q4_K_M.gguf"]  # checked against the ETag
    assert not (tmp_path / "escape.part").exists() and staged_files() == []
    # a revision from a URL goes into a staging name as hex only
    name = dl.staging_name(REPO, "../../x", dl.HubFile("tiny-Q4_K_M.gguf", None, None), None)
    assert "/" not in name and ".." not in name


def test_no_network_is_reported_as_such(hub, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(dl.HubUnreachable, match="cannot reach the Hugging Face hub"):
        dl.resolve(REPO)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(dl.HubUnreachable, match="HF_HUB_OFFLINE"):
        dl.resolve(REPO)


# --- downloading ----------------------------------------------------------------------------


def test_download_places_the_file_for_the_catalog(hub):
    plan = dl.resolve(REPO)
    progress: list[tuple[int, int | None]] = []
    path = dl.download(plan, on_progress=lambda done, total: progress.append((done, total)))
    assert path == plan.target
    assert path.read_bytes() == TINY_FILES["tiny-Q4_K_M.gguf"]
    assert catalog_keys() == [KEY]
    assert staged_files() == []
    assert progress[0] == (0, FILE_BYTES) and progress[-1] == (FILE_BYTES, FILE_BYTES)
    assert [done for done, _ in progress] == sorted(done for done, _ in progress)
    # the bytes came from the CDN the hub redirected to, whole, in one request
    assert [seen.range for seen in hub.content_gets()] == [None]


def test_a_cut_connection_resumes_with_a_range_request(hub):
    hub.cut_next, hub.cut_at = 1, HALF
    path = dl.download(dl.resolve(REPO))
    assert path.read_bytes() == TINY_FILES["tiny-Q4_K_M.gguf"]
    assert [seen.range for seen in hub.content_gets()] == [None, f"bytes={HALF}-"]


def test_a_later_attempt_fetches_only_the_rest(hub):
    plan = dl.resolve(REPO)
    # what an interrupted earlier attempt leaves behind
    dl.staging_dir().mkdir(parents=True)
    (dl.staging_dir() / f"{plan.sha256}.part").write_bytes(TINY_FILES["tiny-Q4_K_M.gguf"][:HALF])
    assert dl.download(plan).read_bytes() == TINY_FILES["tiny-Q4_K_M.gguf"]
    assert [seen.range for seen in hub.content_gets()] == [f"bytes={HALF}-"]
    assert staged_files() == []


def test_a_cancelled_download_leaves_nothing_listed_and_resumes_later(hub):
    plan = dl.resolve(REPO)
    cancel = threading.Event()

    def cancel_past_half(done: int, total: int | None) -> None:
        if done >= HALF:
            cancel.set()

    with pytest.raises(dl.DownloadCancelled):
        dl.download(plan, on_progress=cancel_past_half, cancel=cancel)
    assert not plan.target.exists() and catalog_keys() == []
    kept = (dl.staging_dir() / f"{plan.sha256}.part").stat().st_size
    assert HALF <= kept < FILE_BYTES

    assert dl.download(plan).read_bytes() == TINY_FILES["tiny-Q4_K_M.gguf"]
    assert hub.content_gets()[-1].range == f"bytes={kept}-"


def test_a_checksum_mismatch_leaves_nothing(hub):
    hub.corrupt.add("tiny-Q4_K_M.gguf")
    plan = dl.resolve(REPO)
    with pytest.raises(dl.ChecksumMismatch, match="does not match the sha256"):
        dl.download(plan)
    assert not plan.target.exists() and catalog_keys() == []
    assert staged_files() == []  # a wrong file is not worth resuming


def test_a_hub_error_mid_download_fails_cleanly(hub):
    hub.fail_next = 500
    plan = dl.resolve(REPO)
    with pytest.raises(dl.DownloadError, match="HTTP 500"):
        dl.download(plan)
    assert catalog_keys() == []


def test_already_downloaded_fetches_nothing(hub):
    plan = dl.resolve(REPO)
    assert not dl.is_downloaded(plan)
    dl.download(plan)
    assert dl.is_downloaded(plan)
    gets = len(hub.content_gets())
    assert dl.download(plan) == plan.target
    assert len(hub.content_gets()) == gets
    # a file of the same name with other bytes is not "already downloaded"
    plan.target.write_bytes(TINY_FILES["tiny-Q8_0.gguf"])
    assert not dl.is_downloaded(plan)


def test_one_model_per_folder(hub, api):
    """The catalog shows one model per folder: a second quantization of a repo is refused."""
    first = dl.resolve(REPO)
    first.target.parent.mkdir(parents=True)
    (first.target.parent / "mmproj-tiny-F16.gguf").write_bytes(b"projector")  # a projector does not count
    dl.download(first)
    with pytest.raises(dl.FolderTaken, match="already holds the model tiny-Q4_K_M.gguf"):
        dl.download(dl.resolve(REPO, "Q8_0"))
    refused = api.post("/api/v1/models/download", json={"model": REPO, "quantization": "Q8_0"})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "model_folder_taken"
    assert sorted(path.name for path in first.target.parent.iterdir()) == ["mmproj-tiny-F16.gguf", "tiny-Q4_K_M.gguf"]


def test_another_file_of_the_same_name_is_kept_not_replaced(hub, api):
    plan = dl.resolve(REPO)
    plan.target.parent.mkdir(parents=True)
    plan.target.write_bytes(TINY_FILES["tiny-Q8_0.gguf"])
    with pytest.raises(dl.FolderTaken, match="already exists"):
        dl.download(plan)
    refused = api.post("/api/v1/models/download", json={"model": REPO})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "model_file_exists"
    result = run_get("-y", REPO)
    assert result.returncode == 1 and result.stdout == "" and "already exists" in result.stderr
    assert plan.target.read_bytes() == TINY_FILES["tiny-Q8_0.gguf"] and hub.content_gets() == []


def test_a_file_that_appears_during_the_download_is_kept(hub):
    hub.pause_at = HALF
    plan = dl.resolve(REPO)
    failure = []
    worker = threading.Thread(target=lambda: failure.append(pytest.raises(dl.FolderTaken, dl.download, plan)))
    worker.start()
    wait_for(lambda: len(hub.content_gets()) == 1)
    plan.target.parent.mkdir(parents=True)
    plan.target.write_bytes(b"another model")
    hub.release()
    worker.join(30)
    assert failure and "already exists" in str(failure[0].value)
    assert plan.target.read_bytes() == b"another model"


def test_jobs_for_one_folder_join_or_refuse(hub):
    hub.pause_at = HALF
    jobs = DownloadJobs()
    try:
        first = jobs.submit(REPO)
        assert jobs.submit(f"{REPO}@Q4_K_M") == first  # the same file: the running job
        with pytest.raises(dl.FolderTaken, match=first["job_id"]):
            jobs.submit(REPO, "Q8_0")
    finally:
        hub.release()
        jobs.close()
    assert len(hub.content_gets()) == 1


def test_the_same_file_is_not_downloaded_twice_at_once(hub):
    hub.pause_at = HALF
    plan = dl.resolve(REPO)
    first = threading.Thread(target=dl.download, args=(plan,))
    first.start()
    try:
        wait_for(lambda: len(hub.content_gets()) == 1)
        with pytest.raises(dl.AlreadyDownloading):
            dl.download(plan)
    finally:
        hub.release()
        first.join(30)
    assert plan.target.read_bytes() == TINY_FILES["tiny-Q4_K_M.gguf"]


def wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# --- the command line ----------------------------------------------------------------------


def run_get(*args: str) -> subprocess.CompletedProcess:
    # the environment the hub fixture set up: STUDIOLO_HOME, HF_ENDPOINT, HF_HOME
    return subprocess.run(
        [sys.executable, "-m", "studiolo", "get", *args], capture_output=True, text=True, timeout=120, env=os.environ
    )


def test_cli_get_downloads_and_prints_the_key(hub):
    result = run_get(REPO, "-q", "Q8_0")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{KEY}\n"
    assert (models_dir() / "tester" / "tiny-gguf" / "tiny-Q8_0.gguf").read_bytes() == TINY_FILES["tiny-Q8_0.gguf"]
    again = run_get(REPO, "--quantization", "q8_0", "--yes")
    assert again.returncode == 0 and again.stdout == f"{KEY}\n"
    assert "Already downloaded" in again.stderr


def test_cli_get_errors_are_one_line(hub):
    result = run_get("nobody/nothing")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("error: Hugging Face repo 'nobody/nothing' not found")
    malformed = run_get("http://[::1")
    assert malformed.returncode == 1 and malformed.stderr == "error: 'http://[::1' is not a valid URL (Invalid IPv6 URL)\n"


def test_cli_get_asks_first_on_a_terminal(hub, monkeypatch):
    monkeypatch.setattr(get_cmd, "_can_ask", lambda: True)
    declined = CliRunner().invoke(cli_app, ["get", REPO], input="n\n")
    assert declined.exit_code == 1
    assert "Download tiny-Q4_K_M.gguf (3.1 MB) from Tester/Tiny-GGUF?" in declined.output
    assert catalog_keys() == [] and hub.content_gets() == []

    accepted = CliRunner().invoke(cli_app, ["get", REPO], input="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert catalog_keys() == [KEY]


# --- the HTTP endpoints ---------------------------------------------------------------------


@pytest.fixture
def api(hub):
    app = create_app()
    # a loopback name: the server's Host check (api/hosts.py) refuses TestClient's default "testserver"
    with TestClient(app, base_url="http://localhost") as client:
        yield client
    if getattr(app.state, "downloads", None) is not None:
        app.state.downloads.close()


def poll_status(api, job_id: str, until) -> dict:
    deadline = time.monotonic() + 30
    while True:
        body = api.get(f"/api/v1/models/download/status/{job_id}").json()
        if until(body) or time.monotonic() > deadline:
            return body
        time.sleep(0.02)


def test_download_job_runs_to_completed(hub, api):
    hub.pause_at = HALF
    started = api.post("/api/v1/models/download", json={"model": REPO, "quantization": "Q8_0"})
    assert started.status_code == 200
    body = started.json()
    assert set(body) == {"job_id", "status", "total_size_bytes", "started_at"}
    assert re.fullmatch(r"job_[0-9a-f]{10}", body["job_id"])
    assert body["status"] == "downloading" and body["total_size_bytes"] == FILE_BYTES
    assert ISO_MS_Z.fullmatch(body["started_at"])

    midway = poll_status(api, body["job_id"], lambda s: s["downloaded_bytes"] >= HALF)
    assert midway["status"] == "downloading" and midway["downloaded_bytes"] == HALF
    assert midway["bytes_per_second"] > 0 and ISO_MS_Z.fullmatch(midway["estimated_completion"])
    assert "completed_at" not in midway
    hub.release()

    done = poll_status(api, body["job_id"], lambda s: s["status"] != "downloading")
    assert done["status"] == "completed", done
    assert done["downloaded_bytes"] == done["total_size_bytes"] == FILE_BYTES
    assert ISO_MS_Z.fullmatch(done["completed_at"]) and done["started_at"] == body["started_at"]
    assert catalog_keys() == [KEY]

    again = api.post("/api/v1/models/download", json={"model": f"https://huggingface.co/{REPO}/blob/main/tiny-Q8_0.gguf"})
    assert again.status_code == 200
    assert again.json() == {"status": "already_downloaded", "total_size_bytes": FILE_BYTES}


def test_a_failed_job_reports_why(hub, api):
    hub.corrupt.add("tiny-Q4_K_M.gguf")
    job_id = api.post("/api/v1/models/download", json={"model": REPO}).json()["job_id"]
    done = poll_status(api, job_id, lambda s: s["status"] != "downloading")
    assert done["status"] == "failed"
    assert done["error"]["code"] == "checksum_mismatch"
    assert catalog_keys() == []


def test_close_cancels_running_jobs(hub, api):
    hub.pause_at = HALF
    job_id = api.post("/api/v1/models/download", json={"model": REPO}).json()["job_id"]
    poll_status(api, job_id, lambda s: s["downloaded_bytes"] >= HALF)
    api.app.state.downloads.close(timeout=0)  # cancels at once; the worker sees it with the next chunk
    hub.release()
    done = poll_status(api, job_id, lambda s: s["status"] != "downloading")
    assert done["status"] == "failed" and done["error"]["code"] == "cancelled"
    assert catalog_keys() == []
    assert staged_files() == [f"{dl.resolve(REPO).sha256}.part"]  # kept for the next attempt to resume


def test_unknown_job_is_404_in_the_v1_shape(api):
    response = api.get("/api/v1/models/download/status/job_0123456789")
    assert response.status_code == 404
    assert response.json() == {
        "error": {
            "type": "job_not_found",
            "message": "no download job 'job_0123456789'",
            "code": "job_not_found",
            "param": "job_id",
        }
    }


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "model"),
        ({"model": 5}, "model"),
        ({"model": "  "}, "model"),
        ({"model": REPO, "quantization": 4}, "quantization"),
        ([REPO], "body"),  # not an object: the error names the body
    ],
)
def test_a_bad_body_is_400_naming_the_field(api, body, param):
    response = api.post("/api/v1/models/download", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request" and error["param"] == param
    if param:
        assert f"'{param}'" in error["message"]


def test_a_body_that_is_not_json_is_400(api):
    response = api.post("/api/v1/models/download", content=b"{model", headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


def test_hub_errors_map_to_v1_errors(api):
    missing = api.post("/api/v1/models/download", json={"model": "nobody/nothing"})
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "model_not_found"
    assert missing.json()["error"]["param"] == "model"
    no_quant = api.post("/api/v1/models/download", json={"model": REPO, "quantization": "IQ1_S"})
    assert no_quant.status_code == 404 and no_quant.json()["error"]["param"] == "quantization"
    bad = api.post("/api/v1/models/download", json={"model": "not a repo"})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request"
    malformed = api.post("/api/v1/models/download", json={"model": "http://[::1"})
    assert malformed.status_code == 400 and malformed.json()["error"]["param"] == "model"
    assert malformed.json()["error"]["code"] == "invalid_model_reference"


def test_times_are_iso_utc_with_milliseconds():
    assert iso_utc(1759505603.4961) == "2025-10-03T15:33:23.496Z"
    assert iso_utc(0) == "1970-01-01T00:00:00.000Z"


def test_a_closed_registry_starts_nothing(hub):
    jobs = DownloadJobs()
    jobs.close()
    with pytest.raises(dl.DownloadError, match="shutting down"):
        jobs.submit(REPO)

"""A small fake Hugging Face hub on loopback, so download tests never touch the internet.

It answers the calls huggingface_hub 2.4.0 makes for one file, the way huggingface.co does:

- ``GET /api/models/{owner}/{repo}[/revision/{rev}]?blobs=true``: model info; ``siblings``
  lists every file with ``size`` and, for LFS files, ``lfs: {size, sha256, pointerSize}``.
- ``HEAD|GET /{owner}/{repo}/resolve/{rev}/{file}``: for an LFS file, a 302 to the "CDN" with
  ``X-Repo-Commit``, ``X-Linked-Etag`` (the sha256) and ``X-Linked-Size``; a file kept in git
  is answered in place with ``ETag`` and ``Content-Length``.
- ``HEAD|GET /cdn/{sha256}`` on a second server (another port, so the redirect leaves the
  hub's origin as the real one does): the bytes, honouring ``Range: bytes=a-`` / ``a-b``.

Errors carry ``X-Error-Code`` (RepoNotFound, RevisionNotFound, EntryNotFound), which
huggingface_hub turns into its typed exceptions. Knobs for tests: ``cut_next`` (send part
of the body, then close), ``corrupt`` (serve altered bytes under the listed sha256),
``fail_next`` (answer the next content GET with an HTTP error), ``pause_at`` (stop after that
many body bytes until ``release()``; only in the file named ``pause_in`` when it is set),
``listed_sha256`` and ``listed_commit`` (what a hostile listing claims instead of the real
values). Every request is logged in ``requests``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from functools import cached_property
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

PIECE_BYTES = 64 * 1024
PAUSE_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class SeenRequest:
    method: str
    path: str
    range: str | None


@dataclass
class FakeFile:
    name: str
    data: bytes
    lfs: bool

    @cached_property  # every request looks blobs up by it: a model's shards are tens of MB
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @cached_property
    def git_sha1(self) -> str:
        return hashlib.sha1(b"blob %d\0" % len(self.data) + self.data).hexdigest()


@dataclass
class FakeRepo:
    repo_id: str
    files: dict[str, FakeFile]
    commit: str = field(init=False)

    def __post_init__(self) -> None:
        self.commit = hashlib.sha1(self.repo_id.encode()).hexdigest()

    def sibling(self, file: FakeFile) -> dict:
        entry = {"rfilename": file.name, "size": len(file.data), "blobId": file.git_sha1}
        if file.lfs:
            entry["lfs"] = {"size": len(file.data), "sha256": file.sha256, "pointerSize": 134}
        return entry

    def info(self) -> dict:
        return {
            "_id": self.commit[:24],
            "id": self.repo_id,
            "modelId": self.repo_id,
            "sha": self.commit,
            "private": False,
            "tags": ["gguf"],
            "siblings": [self.sibling(file) for file in self.files.values()],
        }


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.requests: list[SeenRequest] = []
        self.cut_next = 0  # how many content GETs to cut short
        self.cut_at = 0  # bytes of body sent before the cut
        self.corrupt: set[str] = set()  # file names served with altered bytes
        self.fail_next: int | None = None  # HTTP status for the next content GET
        self.pause_at: int | None = None  # body bytes sent before waiting for release()
        self.pause_in: str | None = None  # the file whose body pauses; None: any
        self.listed_sha256: dict[str, str] = {}  # file name -> the lfs.sha256 the listing claims
        self.listed_commit: str | None = None  # the "sha" the listing claims
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._hub = self._server()
        self._cdn = self._server()

    # --- set-up -----------------------------------------------------------------------

    def add_repo(self, repo_id: str, files: dict[str, bytes], *, in_git: tuple[str, ...] = ()) -> FakeRepo:
        """A repo of ``files``; names in ``in_git`` are kept in git (no LFS entry), like README.md."""
        repo = FakeRepo(repo_id, {name: FakeFile(name, data, name not in in_git) for name, data in files.items()})
        self.repos[repo_id.lower()] = repo
        return repo

    @property
    def endpoint(self) -> str:
        return _origin(self._hub)

    def release(self) -> None:
        self._released.set()

    def content_gets(self) -> list[SeenRequest]:
        with self._lock:
            return [seen for seen in self.requests if seen.method == "GET" and seen.path.startswith("/cdn/")]

    # --- lifecycle --------------------------------------------------------------------

    def __enter__(self) -> FakeHub:
        for server in (self._hub, self._cdn):
            threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._released.set()  # let a paused response finish so its thread ends
        for server in (self._hub, self._cdn):
            server.shutdown()
            server.server_close()

    def _server(self) -> ThreadingHTTPServer:
        hub = self

        class Handler(_Handler):
            fake = hub

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        return server

    # --- answers ----------------------------------------------------------------------

    def record(self, method: str, path: str, range_header: str | None) -> None:
        with self._lock:
            self.requests.append(SeenRequest(method, path, range_header))

    def find_repo(self, repo_id: str) -> FakeRepo | None:
        return self.repos.get(repo_id.lower())

    def find_blob(self, sha256: str) -> FakeFile | None:
        for repo in self.repos.values():
            for file in repo.files.values():
                if file.lfs and file.sha256 == sha256:
                    return file
        return None

    def listing(self, repo: FakeRepo) -> dict:
        info = repo.info()
        if self.listed_commit is not None:
            info["sha"] = self.listed_commit
        for sibling in info["siblings"]:
            if sibling["rfilename"] in self.listed_sha256 and "lfs" in sibling:
                sibling["lfs"]["sha256"] = self.listed_sha256[sibling["rfilename"]]
        return info

    def cdn_url(self, file: FakeFile) -> str:
        return f"{_origin(self._cdn)}/cdn/{file.sha256}"

    def take_cut(self) -> bool:
        with self._lock:
            if self.cut_next <= 0:
                return False
            self.cut_next -= 1
            return True

    def take_failure(self) -> int | None:
        with self._lock:
            status, self.fail_next = self.fail_next, None
            return status

    def served_bytes(self, file: FakeFile) -> bytes:
        if file.name not in self.corrupt:
            return file.data
        return bytes([file.data[0] ^ 0xFF]) + file.data[1:]  # same size, other sha256

    def wait_for_release(self) -> None:
        self._released.wait(PAUSE_TIMEOUT_SECONDS)


def _origin(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}"


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.0"  # one request per connection: a cut is simply a close

    def log_message(self, format: str, *args) -> None:
        pass

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def do_GET(self) -> None:
        self._answer(head=False)

    def _answer(self, *, head: bool) -> None:
        path = urlsplit(self.path).path
        self.fake.record(self.command, path, self.headers.get("Range"))
        segments = [unquote(part) for part in path.split("/") if part]
        if segments[:2] == ["api", "models"]:
            self._model_info(segments[2:])
        elif len(segments) >= 5 and segments[2] == "resolve":
            self._resolve(segments, head=head)
        elif len(segments) == 2 and segments[0] == "cdn":
            self._content(segments[1], head=head)
        else:
            self._error(404, "NotFound", "no such route")

    def _model_info(self, rest: list[str]) -> None:
        repo = self.fake.find_repo("/".join(rest[:2])) if len(rest) >= 2 else None
        if repo is None:
            return self._error(404, "RepoNotFound", "Repository not found")
        if len(rest) == 4 and rest[2] == "revision" and rest[3] not in ("main", repo.commit):
            return self._error(404, "RevisionNotFound", "Invalid rev id")
        self._json(self.fake.listing(repo))

    def _resolve(self, segments: list[str], *, head: bool) -> None:
        repo = self.fake.find_repo("/".join(segments[:2]))
        if repo is None:
            return self._error(404, "RepoNotFound", "Repository not found")
        if segments[3] not in ("main", repo.commit):
            return self._error(404, "RevisionNotFound", "Invalid rev id")
        file = repo.files.get("/".join(segments[4:]))
        if file is None:
            return self._error(404, "EntryNotFound", "Entry not found", commit=repo.commit)
        if not file.lfs:
            return self._bytes(file.data, etag=file.git_sha1, commit=repo.commit, head=head)
        self.send_response(302)
        self.send_header("Location", self.fake.cdn_url(file))
        self.send_header("X-Repo-Commit", repo.commit)
        self.send_header("ETag", f'"{file.git_sha1}"')
        self.send_header("X-Linked-Etag", f'"{file.sha256}"')
        self.send_header("X-Linked-Size", str(len(file.data)))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _content(self, sha256: str, *, head: bool) -> None:
        file = self.fake.find_blob(sha256)
        if file is None:
            return self._error(404, "EntryNotFound", "no such blob")
        if not head and (status := self.fake.take_failure()) is not None:
            return self._error(status, "ServerError", "simulated failure")
        pause = self.fake.pause_in is None or self.fake.pause_in == file.name
        self._bytes(self.fake.served_bytes(file), etag=file.sha256, commit=None, head=head, pause=pause)

    def _bytes(self, data: bytes, *, etag: str, commit: str | None, head: bool, pause: bool = True) -> None:
        start, end = _byte_range(self.headers.get("Range"), len(data))
        body = data[start : end + 1]
        self.send_response(206 if (start, end) != (0, len(data) - 1) else 200)
        if start or end != len(data) - 1:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", f'"{etag}"')
        self.send_header("Accept-Ranges", "bytes")
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.end_headers()
        if not head:
            self._send_body(body, pause)

    def _send_body(self, body: bytes, pause: bool) -> None:
        limit = self.fake.cut_at if self.fake.take_cut() else len(body)
        pause_at = self.fake.pause_at if pause else None
        sent = 0
        while sent < limit:
            if pause_at is not None and sent >= pause_at:
                self.fake.wait_for_release()
                pause_at = None
            piece_end = min(limit, sent + PIECE_BYTES, pause_at if pause_at is not None else limit)
            self.wfile.write(body[sent:piece_end])
            self.wfile.flush()
            sent = piece_end
        # on a cut, returning here closes the connection with the body short of Content-Length

    def _json(self, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, code: str, message: str, *, commit: str | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def _byte_range(header: str | None, size: int) -> tuple[int, int]:
    """'bytes=10-' -> (10, size - 1); no header -> the whole file."""
    if not header or not header.startswith("bytes="):
        return 0, size - 1
    first, _, last = header.removeprefix("bytes=").partition("-")
    return int(first), int(last) if last else size - 1

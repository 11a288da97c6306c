"""The server's download jobs, for LM Studio's ``/api/v1/models/download`` endpoints.

Each job downloads one model (one file, or every shard of a split GGUF, their sizes counted
together) in a worker thread of its own; the registry keeps the jobs in memory (they do not
outlive the server) and renders their status in LM Studio's shape:
``job_id``, ``status``, ``total_size_bytes``, ``downloaded_bytes``, ``started_at``, and
``bytes_per_second`` / ``estimated_completion`` while downloading, ``completed_at`` when done.
Times are ISO-8601 UTC with milliseconds and ``Z``, as LM Studio writes them.

A failed job also carries ``error: {code, message}`` (LM Studio documents no field for the
reason; clients that do not know it ignore it). ``close()`` cancels running jobs; their
partial files stay in ``STUDIOLO_HOME/downloads`` and the next request for the same model
resumes them.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from studiolo.domain.errors import NotFound
from studiolo.models.download import (
    DownloadError,
    DownloadPlan,
    FolderTaken,
    check_folder_free,
    download,
    is_downloaded,
    resolve,
)

log = logging.getLogger(__name__)

SPEED_WINDOW_SECONDS = 10.0  # bytes_per_second is the rate over this much recent time
MAX_FINISHED_JOBS = 100  # finished jobs kept for status queries; the oldest go first


def iso_utc(timestamp: float) -> str:
    """1759505603.4961 -> '2025-10-03T15:33:23.496Z'."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_job_id() -> str:
    return "job_" + secrets.token_hex(5)


class JobNotFound(NotFound):
    code, param = "job_not_found", "job_id"

    def __init__(self, job_id: str):
        super().__init__(f"no download job '{job_id}'")
        self.job_id = job_id


@dataclass
class DownloadJob:
    id: str
    plan: DownloadPlan
    started_at: float = field(default_factory=time.time)
    status: str = "downloading"  # then "completed" or "failed"
    downloaded_bytes: int = 0
    total_bytes: int | None = None
    completed_at: float | None = None
    error: DownloadError | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    # (monotonic time, downloaded bytes) over the last SPEED_WINDOW_SECONDS, oldest first
    _samples: deque = field(default_factory=deque, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self.total_bytes = self.plan.size

    def record_progress(self, downloaded: int, total: int | None) -> None:
        """The download's progress callback; runs in the job's worker thread."""
        now = time.monotonic()
        with self._lock:
            self.downloaded_bytes = downloaded
            if total is not None:
                self.total_bytes = total
            self._samples.append((now, downloaded))
            self._forget_old_samples(now)

    def _forget_old_samples(self, now: float) -> None:
        # keep the newest sample older than the window: it is where the window's count starts
        while len(self._samples) > 1 and self._samples[1][0] <= now - SPEED_WINDOW_SECONDS:
            self._samples.popleft()

    def bytes_per_second(self) -> float | None:
        now = time.monotonic()
        with self._lock:
            self._forget_old_samples(now)
            if len(self._samples) < 2:
                return None
            (first_time, first_bytes), (_, last_bytes) = self._samples[0], self._samples[-1]
        # measured up to now, not to the last chunk, so a stalled download shows its speed falling
        elapsed = now - first_time
        return (last_bytes - first_bytes) / elapsed if elapsed > 0 else None

    def finish(self) -> None:
        self.downloaded_bytes = self.total_bytes or self.downloaded_bytes
        self.completed_at = time.time()
        self.status = "completed"

    def fail(self, error: DownloadError) -> None:
        self.error = error
        self.status = "failed"

    def start_body(self) -> dict[str, Any]:
        """The answer to the POST that started (or joined) this job."""
        body: dict[str, Any] = {"job_id": self.id, "status": self.status}
        if self.total_bytes is not None:
            body["total_size_bytes"] = self.total_bytes
        body["started_at"] = iso_utc(self.started_at)
        return body

    def status_body(self) -> dict[str, Any]:
        body = self.start_body()
        body["downloaded_bytes"] = self.downloaded_bytes
        if self.status == "downloading":
            body.update(self._speed_fields())
        elif self.status == "completed" and self.completed_at is not None:
            body["completed_at"] = iso_utc(self.completed_at)
        elif self.status == "failed" and self.error is not None:
            body["error"] = {"code": self.error.code, "message": str(self.error)}
        return body

    def _speed_fields(self) -> dict[str, Any]:
        rate = self.bytes_per_second()
        if rate is None:
            return {}
        fields: dict[str, Any] = {"bytes_per_second": round(rate)}
        if rate > 0 and self.total_bytes is not None:
            remaining = max(self.total_bytes - self.downloaded_bytes, 0)
            fields["estimated_completion"] = iso_utc(time.time() + remaining / rate)
        return fields


class DownloadJobs:
    """The registry: starts jobs, answers status queries, cancels everything on close."""

    def __init__(self) -> None:
        self._jobs: dict[str, DownloadJob] = {}
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, model: str, quantization: str | None = None) -> dict[str, Any]:
        """Resolve ``model`` and start downloading it; returns the POST's answer.

        Blocks on the hub (and on hashing a file already present), so call it from a worker
        thread. Raises DownloadError when the hub has no such model or cannot be reached.
        """
        plan = resolve(model, quantization)
        running = self._running_job_for(plan)
        if running is not None:
            return running.start_body()  # the same file twice at once: join the running job
        if is_downloaded(plan):
            body: dict[str, Any] = {"status": "already_downloaded"}
            if plan.size is not None:
                body["total_size_bytes"] = plan.size
            return body
        check_folder_free(plan)
        return self._start(plan).start_body()

    def status(self, job_id: str) -> dict[str, Any]:
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job.status_body()

    def close(self, timeout: float = 5.0) -> None:
        """Cancel running jobs and wait (up to ``timeout`` in all) for their threads to stop.

        A worker blocked on a silent connection notices the cancel only when the next chunk
        arrives or the read times out; its thread is a daemon, so it never holds up exit.
        """
        with self._lock:
            self._closed = True
            running = [job for job in self._jobs.values() if job.status == "downloading"]
        for job in running:
            job.cancel.set()
        deadline = time.monotonic() + timeout
        for job in running:
            if job.thread is not None:
                job.thread.join(max(0.0, deadline - time.monotonic()))

    def _running_job_for(self, plan: DownloadPlan) -> DownloadJob | None:
        with self._lock:
            return self._running_locked(plan)

    def _running_locked(self, plan: DownloadPlan) -> DownloadJob | None:
        """The running job for the plan's file; refuses while another file goes into its folder."""
        for job in self._jobs.values():
            if job.status != "downloading" or job.plan.target.parent != plan.target.parent:
                continue
            if job.plan.target != plan.target:
                raise FolderTaken(
                    f"{job.plan.filename} is being downloaded for '{plan.key}' (job {job.id}); one model per folder"
                )
            return job
        return None

    def _start(self, plan: DownloadPlan) -> DownloadJob:
        with self._lock:
            if self._closed:
                raise DownloadError("the server is shutting down; no new downloads")
            running = self._running_locked(plan)
            if running is not None:
                return running
            job = DownloadJob(self._unused_id(), plan)
            self._jobs[job.id] = job
            self._forget_old_jobs()
            job.thread = threading.Thread(target=self._run, args=(job,), name=f"download-{job.id}", daemon=True)
        job.thread.start()
        return job

    def _unused_id(self) -> str:
        job_id = new_job_id()
        while job_id in self._jobs:
            job_id = new_job_id()
        return job_id

    def _forget_old_jobs(self) -> None:
        finished = [job_id for job_id, job in self._jobs.items() if job.status != "downloading"]
        for job_id in finished[: max(0, len(finished) - MAX_FINISHED_JOBS)]:
            del self._jobs[job_id]

    def _run(self, job: DownloadJob) -> None:
        try:
            download(job.plan, on_progress=job.record_progress, cancel=job.cancel)
        except DownloadError as exc:
            log.warning("download %s of %s failed: %s", job.id, job.plan.filename, exc)
            job.fail(exc)
        except Exception as exc:  # a bug must still end the job, not leave it "downloading" forever
            log.exception("download %s of %s failed", job.id, job.plan.filename)
            job.fail(DownloadError(f"download failed: {exc}"))
        else:
            log.info("downloaded %s to %s", job.plan.filename, job.plan.target)
            job.finish()

"""Downloads of GGUF models from Hugging Face, for the server's routes and the command line.

The server runs downloads as jobs (``DownloadService``: start one, ask its status, cancel them
all on close); ``studiolo get`` downloads in its own process with the same steps (``resolve``,
``is_downloaded``, ``check_folder_free``, ``download``). Both write into the catalog folder, so a
running server sees a new model at its next request.

Importing this module imports huggingface_hub, which takes a noticeable time: commands that do
not download import it late.
"""

from __future__ import annotations

from typing import Any

from studiolo.models.download import DownloadPlan, check_folder_free, download, is_downloaded, resolve
from studiolo.models.download_jobs import DownloadJobs


class DownloadService:
    """The server's download jobs; each runs in a worker thread of its own and lives as long as
    the server. Answers are in LM Studio's v1 shape already (models/download_jobs.py)."""

    def __init__(self) -> None:
        self._jobs = DownloadJobs()

    def start(self, model: str, quantization: str | None = None) -> dict[str, Any]:
        """Resolve ``model`` and start downloading it (or join the job already downloading it).

        Asks the hub, and may hash a file already present: call it from a worker thread. Raises a
        DownloadError when the hub has no such model or cannot be reached.
        """
        return self._jobs.submit(model, quantization)

    def status(self, job_id: str) -> dict[str, Any]:
        """Where the job is; raises JobNotFound for an id this server never gave."""
        return self._jobs.status(job_id)

    def close(self, timeout: float = 5.0) -> None:
        """Cancel running jobs, waiting up to ``timeout`` for them; partial files stay, to resume."""
        self._jobs.close(timeout)


# what `studiolo get` uses in-process: the same steps a download job takes
__all__ = ["DownloadPlan", "DownloadService", "check_folder_free", "download", "is_downloaded", "resolve"]

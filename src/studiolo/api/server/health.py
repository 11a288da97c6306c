"""``GET /health``: liveness, and which process answers (llama-server has the same route).

``storage`` says whether stored responses can be written: ``"ok"``, or the fault last seen
(``{"code": "storage_unavailable" | "storage_full", "message"}``). The server stays live without
storage (it serves everything that does not store), so the status stays ``"ok"`` and 200.

The command line uses the pid to be sure the server answering on a port is the one it
started, not another program on the same port (LM Studio's default is 1234 too).
"""

from __future__ import annotations

import os

from fastapi import Request

from studiolo import __version__
from studiolo.api.routing import make_router
from studiolo.domain.auth import PUBLIC

router = make_router(permission=PUBLIC)


@router.get("/health")
async def health(request: Request) -> dict:
    return {"status": "ok", "pid": os.getpid(), "version": __version__, "storage": _storage(request)}


def _storage(request: Request) -> str | dict:
    conversations = getattr(request.app.state, "conversations", None)
    fault = conversations.storage_fault() if conversations is not None else None
    return "ok" if fault is None else {"code": fault.code, "message": str(fault)}

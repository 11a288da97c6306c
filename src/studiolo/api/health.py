"""``GET /health``: liveness, and which process answers (llama-server has the same route).

The command line uses the pid to be sure the server answering on a port is the one it
started, not another program on the same port (LM Studio's default is 1234 too).
"""

from __future__ import annotations

import os

from studiolo import __version__
from studiolo.api.routing import make_router

router = make_router()


@router.get("/health")
async def health() -> dict:
    return {"status": "ok", "pid": os.getpid(), "version": __version__}

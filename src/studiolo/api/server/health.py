"""``GET /health``: liveness, and which process answers (llama-server has the same route).

``storage`` says whether stored responses can be written: ``"ok"``, or the fault last seen
(``{"code": "storage_unavailable" | "storage_full"}``). The server stays live without
storage (it serves everything that does not store), so the status stays ``"ok"`` and 200.

``instance`` is the random id this server process wrote into ``STUDIOLO_HOME/server.json`` (the
user's own file): the command line compares the two to be sure the server answering on a port is
the one it started, not another program on the same port (LM Studio's default is 1234 too). The
process id is an internal and is not shown: this route answers everyone, even with auth on.
"""

from __future__ import annotations

from fastapi import Request

from studiolo import __version__
from studiolo.api.routing import make_router
from studiolo.domain.auth import PUBLIC

router = make_router(permission=PUBLIC)


@router.get("/health")
async def health(request: Request) -> dict:
    settings = getattr(request.app.state, "settings", None)
    instance = settings.instance_id if settings is not None else None
    return {"status": "ok", "instance": instance, "version": __version__, "storage": _storage(request)}


def _storage(request: Request) -> str | dict:
    conversations = getattr(request.app.state, "conversations", None)
    fault = conversations.storage_fault() if conversations is not None else None
    # the code only: the message names the database's path, and this route answers everyone
    return "ok" if fault is None else {"code": fault.code}

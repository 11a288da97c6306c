"""The routes of LM Studio's SDK protocol: ``GET /lmstudio-greeting``, by which the SDKs recognise a
server, and one WebSocket route per namespace.

Both are PUBLIC at the HTTP level: the SDKs send no token in headers, they authenticate in the
socket's first frame (session.py), where the server's token requirement is applied. The origin and
Host checks (api/browser.py, api/hosts.py) still refuse a web page's cross-site socket.
"""

from __future__ import annotations

from fastapi import WebSocket

from studiolo.api.lmstudio_sdk import handlers  # noqa: F401  (the namespaces' endpoints join the registry)
from studiolo.api.lmstudio_sdk.endpoints import NAMESPACES, namespace
from studiolo.api.lmstudio_sdk.session import Session
from studiolo.api.routing import declare, make_router
from studiolo.domain.auth import PUBLIC

router = make_router(permission=PUBLIC, tags=["lmstudio-sdk"])


@router.get("/lmstudio-greeting")
async def greeting() -> dict[str, bool]:
    return {"lmstudio": True}


def _socket_route(name: str) -> None:
    @declare(PUBLIC)
    async def serve(websocket: WebSocket) -> None:
        await Session(websocket, namespace(name)).run()

    serve.__name__ = f"lmstudio_sdk_{name}"
    router.add_api_websocket_route(f"/{name}", serve)


for _name in NAMESPACES:
    _socket_route(_name)

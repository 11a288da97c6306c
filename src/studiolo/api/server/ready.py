"""``GET /ready``: 200 when the server can take traffic, else 503 saying what is missing
(service/readiness.py: the store writable, the preloaded models loaded).

A route of its own rather than ``/health/ready``: ``/health`` is the one route open to all with
auth on, and a path under it could be taken for part of it by a prefix rule; readiness names
the server's models, so it is covered like any other route.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse

from studiolo.api.routing import make_router
from studiolo.domain.auth import Permission
from studiolo.service.readiness import readiness

router = make_router(permission=Permission.inference)


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    runtime = request.app.state.runtime
    state = await readiness(runtime.conversations, runtime.preloads)
    status = "ready" if state.ready else "not_ready"
    body: dict[str, object] = {"status": status, "store": state.store, "models": state.models}
    if not state.ready:
        body["missing"] = state.missing()
    return JSONResponse(body, status_code=200 if state.ready else 503)

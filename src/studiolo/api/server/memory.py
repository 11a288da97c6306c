"""``GET /studiolo/memory``: where the server's memory goes (service/memory.py), for ``studiolo ps``.

studiolo's own path, as ``/studiolo/log/stream`` is: LM Studio's REST API has no such route, and
one under ``/api/v0`` could collide with a route LM Studio adds later. Every value is bytes or a
count under a fixed name, so that each maps to one Prometheus gauge.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request

from studiolo.api.routing import make_router
from studiolo.domain.auth import Permission

router = make_router(permission=Permission.admin)


@router.get("/studiolo/memory")
async def memory(request: Request) -> dict[str, Any]:
    return request.app.state.memory.report()

"""``GET /metrics``: Prometheus' text format, from this server's own registry (service/metrics.py
says what is in it). With auth on it needs the admin permission: it shows which models are loaded
and how busy the server is."""

from __future__ import annotations

from fastapi import Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from studiolo.api.routing import make_router
from studiolo.domain.auth import Permission

router = make_router(permission=Permission.admin)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    # scraped on the event loop, where the model manager changes what the collector reads
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

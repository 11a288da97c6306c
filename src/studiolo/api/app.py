"""The FastAPI application: routers, error handlers, and the objects they share."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from studiolo import __version__
from studiolo.api.anthropic.routes import router as anthropic_router
from studiolo.api.auth import AuthMiddleware
from studiolo.api.browser import BrowserOrigins, OriginPolicy
from studiolo.api.decisions.routes import router as decisions_router
from studiolo.api.errors import install_error_handlers
from studiolo.api.hosts import HostCheck, HostPolicy
from studiolo.api.lmstudio.chat_routes import router as v1_chat_router
from studiolo.api.lmstudio.downloads import router as download_router
from studiolo.api.lmstudio.v0 import router as v0_router
from studiolo.api.lmstudio.v1 import router as v1_router
from studiolo.api.lmstudio_sdk.routes import router as sdk_router
from studiolo.api.openai.embeddings import router as embeddings_router
from studiolo.api.openai.routes import router as openai_router
from studiolo.api.page.routes import router as page_router
from studiolo.api.request_metrics import RequestMetrics
from studiolo.api.rerank.routes import router as rerank_router
from studiolo.api.responses.routes import router as responses_router
from studiolo.api.server.health import router as health_router
from studiolo.api.server.log import router as log_router
from studiolo.api.server.memory import router as memory_router
from studiolo.api.server.metrics import router as metrics_router
from studiolo.api.server.ready import router as ready_router
from studiolo.api.server.tokenize import router as tokenize_router
from studiolo.api.server.tokens import router as tokens_router
from studiolo.config import ServerSettings
from studiolo.service.runtime import Runtime


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = Runtime.open(settings)
        _share(app, runtime)
        try:
            yield
        finally:
            await runtime.close()

    app = FastAPI(title="studiolo", version=__version__, lifespan=lifespan)
    # the last added runs first: Host check, then origins (CORS), then auth, then the app
    app.add_middleware(AuthMiddleware, server=app, settings=settings)
    app.add_middleware(BrowserOrigins, policy=OriginPolicy.of(settings.cors, settings.cors_origins))
    app.add_middleware(HostCheck, policy=HostPolicy(settings.host, settings.allowed_hosts))
    install_error_handlers(app)
    app.include_router(health_router)
    app.include_router(openai_router)
    app.include_router(embeddings_router)
    app.include_router(rerank_router)
    app.include_router(decisions_router)
    app.include_router(responses_router)
    app.include_router(anthropic_router)
    app.include_router(v0_router)
    app.include_router(v1_router)
    app.include_router(v1_chat_router)
    app.include_router(download_router)
    app.include_router(log_router)
    app.include_router(memory_router)
    app.include_router(metrics_router)
    app.include_router(ready_router)
    app.add_middleware(RequestMetrics)  # outermost: refusals by the other middleware count too
    app.include_router(tokens_router)
    app.include_router(tokenize_router)
    app.include_router(sdk_router)
    app.include_router(page_router)
    return app


def _share(app: FastAPI, runtime: Runtime) -> None:
    """Where the routes find the runtime's services (request.app.state)."""
    state = app.state
    state.settings = runtime.settings
    state.runtime = runtime
    state.log_hub = runtime.log_hub
    state.service = runtime.generation
    state.embeddings = runtime.embeddings
    state.rerank = runtime.rerank
    state.decisions = runtime.decisions
    state.token_tools = runtime.token_tools
    state.conversations = runtime.conversations
    state.memory = runtime.memory
    state.models = runtime.models
    state.downloads = runtime.downloads
    state.metrics = runtime.metrics

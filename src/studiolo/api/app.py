"""The FastAPI application: routers, error handlers, and the objects they share."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from studiolo import __version__
from studiolo.api.errors import install_error_handlers
from studiolo.api.health import router as health_router
from studiolo.api.openai_routes import router as openai_router
from studiolo.config import ServerSettings, models_dir
from studiolo.models.catalog import Catalog
from studiolo.models.manager import ModelManager
from studiolo.service.generation import GenerationService


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        manager = ModelManager(Catalog(models_dir()), settings.engine, jit_loading=settings.jit_loading)
        app.state.settings = settings
        app.state.service = GenerationService(manager)
        try:
            yield
        finally:
            await manager.close()

    app = FastAPI(title="studiolo", version=__version__, lifespan=lifespan)
    if settings.cors:
        app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"])
    install_error_handlers(app)
    app.include_router(health_router)
    app.include_router(openai_router)
    return app

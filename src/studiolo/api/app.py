"""The FastAPI application: routers, error handlers, and the objects they share."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from studiolo import __version__
from studiolo.api.errors import install_error_handlers
from studiolo.api.lmstudio.chat_routes import router as v1_chat_router
from studiolo.api.lmstudio.downloads import router as download_router
from studiolo.api.lmstudio.v0 import router as v0_router
from studiolo.api.lmstudio.v1 import router as v1_router
from studiolo.api.openai.embeddings import router as embeddings_router
from studiolo.api.openai.routes import router as openai_router
from studiolo.api.responses.routes import router as responses_router
from studiolo.api.server.health import router as health_router
from studiolo.api.server.log import router as log_router
from studiolo.api.server.memory import router as memory_router
from studiolo.config import ServerSettings, models_dir
from studiolo.models.catalog import Catalog
from studiolo.models.manager import ModelManager
from studiolo.service.conversations import Conversations
from studiolo.service.embeddings import EmbeddingService
from studiolo.service.generation import GenerationService
from studiolo.service.memory import MIB, MemoryMonitor
from studiolo.service.model_log import LogHub, install_server_log_handler, remove_server_log_handler
from studiolo.store.responses import ResponseStore


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        manager = ModelManager(Catalog(models_dir()), settings.engine, jit_loading=settings.jit_loading,
                               auto_evict=settings.auto_evict, budgets=settings.budgets)
        app.state.settings = settings
        app.state.log_hub = LogHub(budget_bytes=settings.budgets.log_queue_mib * MIB)
        app.state.service = GenerationService(manager, app.state.log_hub, settings.limits)
        app.state.embeddings = EmbeddingService(manager)
        # STUDIOLO_HOME/responses.sqlite3: stateful chats' responses. A file that cannot be opened (not
        # SQLite, no room) does not stop the server: storing is off, each stored request says why
        budgets = settings.budgets
        store = ResponseStore(file_cap_mib=budgets.stored_file_mib, tolerate_faults=True)
        app.state.conversations = Conversations(app.state.service, store, budgets.stored_state_mib * 2**20)
        log_handler = install_server_log_handler(app.state.log_hub)
        app.state.memory = MemoryMonitor(manager, app.state.log_hub)
        # on disk, not in memory, but it grows with traffic under a budget like the others
        conversations = app.state.conversations
        app.state.memory.register("stored_states", lambda: (store.state_bytes, conversations.state_budget))
        app.state.memory.start()
        try:
            yield
        finally:
            downloads = getattr(app.state, "downloads", None)
            if downloads is not None:
                await asyncio.to_thread(downloads.close)  # partial files stay, to resume
            await app.state.memory.close()
            await manager.close()
            store.close()
            remove_server_log_handler(log_handler)

    app = FastAPI(title="studiolo", version=__version__, lifespan=lifespan)
    if settings.cors:
        app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"])
    install_error_handlers(app)
    app.include_router(health_router)
    app.include_router(openai_router)
    app.include_router(embeddings_router)
    app.include_router(responses_router)
    app.include_router(v0_router)
    app.include_router(v1_router)
    app.include_router(v1_chat_router)
    app.include_router(download_router)
    app.include_router(log_router)
    app.include_router(memory_router)
    return app

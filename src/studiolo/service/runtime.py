"""The server's composition root: every long-lived object of a server process, opened together and
closed in order.

The API builds one ``Runtime`` when it starts and closes it when it stops; routes reach the
services through it (generation, embeddings, conversations, models, downloads, memory, logs)
and never build or open anything below the service floor themselves.
"""

from __future__ import annotations

import asyncio

from studiolo.config import ServerSettings, models_dir
from studiolo.models.catalog import Catalog
from studiolo.models.manager import ModelManager
from studiolo.service.conversations import Conversations
from studiolo.service.decisions import DecisionService
from studiolo.service.downloads import DownloadService
from studiolo.service.embeddings import EmbeddingService
from studiolo.service.generation import GenerationService
from studiolo.service.mcp_integrations import McpIntegrations
from studiolo.service.memory import MIB, MemoryMonitor
from studiolo.service.metrics import ServerMetrics
from studiolo.service.model_log import LogHub, LogHubHandler, install_server_log_handler, remove_server_log_handler
from studiolo.service.models import ModelService
from studiolo.service.readiness import Preloads
from studiolo.service.rerank import RerankService
from studiolo.service.token_tools import TokenTools
from studiolo.store.responses import ResponseStore


class Runtime:
    """Build with ``Runtime.open(settings)`` on the event loop; end with ``await runtime.close()``."""

    def __init__(self, settings: ServerSettings):
        budgets = settings.budgets
        self.settings = settings
        self._manager = ModelManager(Catalog(models_dir()), settings.engine, jit_loading=settings.jit_loading,
                                     auto_evict=settings.auto_evict, budgets=budgets, jit_ttl=settings.jit_ttl)
        self.metrics = ServerMetrics(self._manager)  # GET /metrics: this server's own registry
        self.log_hub = LogHub(budget_bytes=budgets.log_queue_mib * MIB)
        self.generation = GenerationService(self._manager, self.log_hub, settings.limits,
                                            image_url_hosts=settings.image_url_hosts, metrics=self.metrics)
        self.embeddings = EmbeddingService(self._manager)
        self.rerank = RerankService(self._manager)
        self.decisions = DecisionService(self._manager, self.generation.prompts, settings.limits)
        self.token_tools = TokenTools(self._manager, self.generation, settings.limits)
        self.models = ModelService(self._manager)
        self.preloads = Preloads(self.models, settings.preload_models)  # GET /ready waits for them
        self.downloads = DownloadService()
        # STUDIOLO_HOME/responses.sqlite3: stateful chats' responses. A file that cannot be opened (not
        # SQLite, no room) does not stop the server: storing is off, each stored request says why
        self._store = ResponseStore(file_cap_mib=budgets.stored_file_mib, tolerate_faults=True)
        self.conversations = Conversations(self.generation, self._store, budgets.stored_state_mib * 2**20)
        # MCP servers for /api/v1/chat's integrations; it runs mcp.json's stdio servers, stopped at close
        self.mcp = McpIntegrations(settings.require_auth, settings.limits)
        self._log_handler: LogHubHandler | None = None
        self.memory = MemoryMonitor(self._manager, self.log_hub)
        # on disk, not in memory, but it grows with traffic under a budget like the others
        store, conversations = self._store, self.conversations
        self.memory.register("stored_states", lambda: (store.state_bytes, conversations.state_budget))

    @classmethod
    def open(cls, settings: ServerSettings) -> Runtime:
        """Build everything, send the server's log records to the log hub and start the memory janitor."""
        runtime = cls(settings)
        runtime._log_handler = install_server_log_handler(runtime.log_hub)
        runtime.memory.start()
        runtime.preloads.start()
        return runtime

    async def close(self) -> None:
        """Stop downloads (their partial files stay, to resume), MCP servers, the janitor, the models, then storage."""
        await asyncio.to_thread(self.downloads.close)
        await self.mcp.close()
        await self.preloads.close()
        await self.memory.close()
        await self._manager.close()
        self._store.close()
        if self._log_handler is not None:
            remove_server_log_handler(self._log_handler)
            self._log_handler = None

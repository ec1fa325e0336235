"""Picks the backend for each request from the current mode, holds the current model catalog,
and tells the supervisor which models the current config may run."""

from __future__ import annotations

import logging

from backends.base import Backend
from backends.catalog import Catalog, build_catalog
from backends.router import Router
from backends.specs import server_plan
from gateway.config import Settings
from gateway.schemas import RuntimeConfig
from supervisor.actor import Supervisor

log = logging.getLogger("ai_server.dispatcher")


class Dispatcher:
    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        supervisor: Supervisor,
        router: Router,
        *,
        server: Backend,
        cli: Backend,
    ) -> None:
        self._settings = settings
        self.catalog = catalog  # replaced whole on a rescan; a request keeps the one it read
        self._supervisor = supervisor
        self._router = router
        self._backends = {"server": server, "cli": cli}

    def backend_for(self, config: RuntimeConfig) -> Backend:
        """A request keeps the backend it started on, whatever switches happen meanwhile."""
        return self._backends[config.backend]

    async def reconfigure(self, config: RuntimeConfig) -> None:
        """Server mode: the models `config` may run (a changed startup parameter replaces a
        loaded model's process after draining; a sampling parameter changes nothing). Cli
        mode: none at all, which is the point of that mode, and no remote ones either."""
        server = config.backend == "server"
        self._router.configure(self.catalog, config.llm_params, server_mode=server)
        await self._supervisor.apply(server_plan(self.catalog, config.llm_params) if server else {})

    async def rescan(self, config: RuntimeConfig) -> Catalog:
        """Read `[pool] models_dir` again (POST /api/models/rescan, SIGHUP) and apply it."""
        self.catalog = build_catalog(self._settings)
        log.info("dispatcher.rescanned models=%d", len(self.catalog.models))
        await self.reconfigure(config)
        return self.catalog

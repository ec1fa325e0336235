"""Picks the backend for each request from the current mode, holds the current model catalog,
and tells the supervisor which models the current config may run."""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
import anyio.to_thread

from backends.base import Backend
from backends.catalog import Catalog, build_catalog
from backends.cli import CliBackend
from backends.router import Router
from backends.specs import server_plan
from backends.tools import ToolCalling
from core.config import RuntimeConfig, Settings
from supervisor.actor import Supervisor
from supervisor.logtail import LogTail

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
        cli: CliBackend,
        tool_call_failed: Callable[[str], None] = lambda model: None,
    ) -> None:
        self._settings = settings
        self.catalog = catalog  # replaced whole on a rescan; a request keeps the one it read
        self._supervisor = supervisor
        self._router = router
        self._cli = cli
        # Tool calling is the same scheme over both modes (backends.tools).
        self._backends: dict[str, Backend] = {
            "server": ToolCalling(server, tool_call_failed),
            "cli": ToolCalling(cli, tool_call_failed),
        }
        # Plans are built in a worker thread; one at a time, so they apply in call order.
        self._applying = anyio.Lock()

    def backend_for(self, config: RuntimeConfig) -> Backend:
        """A request keeps the backend it started on, whatever switches happen meanwhile."""
        return self._backends[config.backend]

    def log_of(self, config: RuntimeConfig, name: str, replica: int = 0) -> LogTail | None:
        """Model `name`'s llama.cpp output in `config`'s mode: its local instance `replica`'s
        llama-server in server mode, its last runs in cli mode; None before there is any."""
        if config.backend == "cli":
            return self._cli.log_of(name)
        return self._supervisor.log_of(name, replica)

    async def reconfigure(self, config: RuntimeConfig) -> None:
        """Server mode: the models `config` may run (a changed startup parameter replaces a
        loaded model's process after draining; a sampling parameter changes nothing). Cli
        mode: none at all, which is the point of that mode, and no remote ones either."""
        server = config.backend == "server"
        async with self._applying:
            self._router.configure(self.catalog, config.llm_params, server_mode=server)
            # A plan reads every model's GGUF header for its memory estimate: off the loop.
            plan = (
                await anyio.to_thread.run_sync(server_plan, self.catalog, config.llm_params)
                if server
                else {}
            )
            await self._supervisor.apply(plan)

    async def rescan(self, config: RuntimeConfig) -> Catalog:
        """Read `[pool] models_dir` again (POST /api/models/rescan, SIGHUP) and apply it;
        the directory and the GGUF headers are read in a worker thread."""
        self.catalog = await anyio.to_thread.run_sync(build_catalog, self._settings)
        log.info("dispatcher.rescanned models=%d", len(self.catalog.models))
        await self.reconfigure(config)
        return self.catalog

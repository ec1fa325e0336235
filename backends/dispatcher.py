"""Picks the backend for each request from the current mode, and tells the supervisor which
llama-server processes the current config needs."""

from __future__ import annotations

import logging

from backends.base import Backend
from backends.specs import server_specs
from gateway.config import Settings
from gateway.errors import MissingComponent
from gateway.schemas import RuntimeConfig
from supervisor.actor import Supervisor
from supervisor.command import ServerSpec

log = logging.getLogger("ai_server.dispatcher")


class Dispatcher:
    def __init__(
        self, settings: Settings, supervisor: Supervisor, *, server: Backend, cli: Backend
    ) -> None:
        self._settings = settings
        self._supervisor = supervisor
        self._backends = {"server": server, "cli": cli}

    def backend_for(self, config: RuntimeConfig) -> Backend:
        """A request keeps the backend it started on, whatever switches happen meanwhile."""
        return self._backends[config.backend]

    async def reconfigure(self, config: RuntimeConfig) -> None:
        """Server mode: run exactly the processes `config` needs (a changed startup parameter
        replaces its process after draining; a sampling parameter changes nothing). Cli mode:
        none at all, which is the point of that mode."""
        specs: frozenset[ServerSpec] = frozenset()
        if config.backend == "server":
            try:
                specs = frozenset(server_specs(self._settings, config.llm_params).values())
            except MissingComponent as exc:
                log.error("dispatcher.model_missing %s", exc.message)
        await self._supervisor.apply(specs)

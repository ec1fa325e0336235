"""What the gateway runs while it is up: opened in order, closed in reverse, nothing global.

The lifespan opens the shared aiohttp session and a task group, starts the supervisor in
it, applies the saved runtime config, and yields `Services` (as ``request.state.services``).
On the way out every llama-server is stopped before the task group closes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import aiohttp
import anyio
import msgspec
from starlette.applications import Starlette
from starlette.requests import Request

from backends import toolchain
from backends.catalog import Catalog
from backends.cli import CliBackend
from backends.dispatcher import Dispatcher
from backends.router import Router
from backends.server import ServerBackend
from backends.spares import Spares
from core.config import Settings
from core.errors import MissingComponent
from gateway.admission import Admission
from gateway.metrics import Metrics
from gateway.runtime_config import ConfigStore
from supervisor.actor import Supervisor
from supervisor.config import SupervisorConfig
from supervisor.config import supervisor_config as supervisor_config_of
from supervisor.remote import Fleet

log = logging.getLogger("ai_server.gateway")


class Services(msgspec.Struct, frozen=True, kw_only=True):
    settings: Settings
    store: ConfigStore
    dispatcher: Dispatcher
    supervisor: Supervisor
    router: Router
    admission: Admission
    metrics: Metrics
    budget_mb: int  # the model pool's memory budget


def services(request: Request) -> Services:
    found: Services = request.state.services
    return found


def supervisor_config(settings: Settings, budget_mb: int) -> SupervisorConfig:
    try:
        binary = str(
            toolchain.resolve_binary(
                "llama-server", settings.binaries.llama_server, settings.cache_path()
            )
        )
    except MissingComponent as exc:
        # Cli mode works without it; server mode reports the failure per process.
        log.error("gateway.binary_missing %s", exc.message)
        binary = "llama-server"
    return supervisor_config_of(
        settings.llama_server,
        binary=binary,
        state_dir=str(settings.state_path()),
        memory_budget_mb=budget_mb,
        memory_wait=settings.limits.queue_timeout_s,
    )


Lifespan = Callable[[Starlette], AbstractAsyncContextManager[dict[str, Services]]]


def make_lifespan(
    settings: Settings, metrics: Metrics, store: ConfigStore, catalog: Catalog, budget_mb: int
) -> Lifespan:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Services]]:
        # No total timeout here: each backend bounds its own calls.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5)
        # Idle connections are dropped before llama-server's keep-alive timeout (5 s) ends
        # them, so a request never takes one the server is closing (backends.spares).
        connector = aiohttp.TCPConnector(keepalive_timeout=4)
        async with (
            aiohttp.ClientSession(timeout=timeout, connector=connector) as http,
            anyio.create_task_group() as tg,
        ):
            admission = Admission(settings.limits)
            config = supervisor_config(settings, budget_mb)
            supervisor = Supervisor(config, http, queued=admission.queued)

            async def supervise(
                *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
            ) -> None:
                """A supervisor that dies (a bug) must not leave a gateway that answers 503
                to everything while /health says ok: /health fails, and `ai-server serve`
                exits 1 for the service manager to restart it."""
                try:
                    await supervisor.run(task_status=task_status)
                except Exception as exc:
                    log.critical("gateway.supervisor_crashed %r", exc, exc_info=exc)
                    while isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
                        exc = exc.exceptions[0]  # the actor's own task group wraps it
                    app.state.fatal = f"the supervisor crashed: {exc!r}"
                    if (stop := getattr(app.state, "stop", None)) is not None:
                        stop()

            await tg.start(supervise)
            fleet = Fleet(
                http,
                connect_timeout=settings.remote.connect_timeout_s,
                probe_interval=settings.remote.probe_interval_s,
                probe_timeout=settings.remote.probe_timeout_s,
                default_slots=settings.limits.max_concurrency,
                on_change=lambda model: admission.lane("server", model).poke(),
            )
            await tg.start(fleet.run)
            router = Router(supervisor, fleet, settings.limits.max_concurrency)
            admission.capacity_of = router.capacity_of
            spares = Spares(http)
            await tg.start(spares.run)
            server = ServerBackend(supervisor, router, settings.limits.request_timeout_s, spares)
            cli = CliBackend(settings)
            dispatcher = Dispatcher(
                settings, catalog, supervisor, router, server=server, cli=cli,
                tool_call_failed=lambda model: metrics.tool_call_failures.labels(model).inc(),
            )  # fmt: skip
            await dispatcher.reconfigure(store.current)
            app.state.rescan = lambda: dispatcher.rescan(store.current)  # SIGHUP
            unwatch = metrics.watch(supervisor, admission, fleet)
            try:
                yield {
                    "services": Services(
                        settings=settings,
                        store=store,
                        dispatcher=dispatcher,
                        supervisor=supervisor,
                        router=router,
                        admission=admission,
                        metrics=metrics,
                        budget_mb=budget_mb,
                    )
                }
            finally:
                unwatch()
                with anyio.CancelScope(shield=True), anyio.move_on_after(30):
                    await supervisor.stop_all()
                tg.cancel_scope.cancel()

    return lifespan

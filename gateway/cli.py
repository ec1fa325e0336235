"""The `ai-server` command: `serve` runs the gateway, `doctor` checks the machine, `worker`
serves a model (or llama.cpp's RPC backend) to a front gateway from another host."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Iterator
from typing import cast

import anyio
import uvicorn
from starlette.applications import Starlette

from core.config import ConfigError, Settings, load_settings
from gateway import logs, protocol, systemd, worker
from gateway.app import create_app
from gateway.doctor import run_doctor

log = logging.getLogger("ai_server.gateway")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # Ours: `_on_signals` turns SIGTERM/SIGINT into a graceful stop and a clean exit 0,
        # where uvicorn's would re-raise the signal after shutting down.
        yield


async def _on_signals(server: uvicorn.Server) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP:
                await _rescan(server)
                continue
            if server.should_exit and signum == signal.SIGINT:
                server.force_exit = True  # a second Ctrl-C: stop waiting
            log.info("gateway.stopping signal=%s", signal.Signals(signum).name)
            systemd.notify("STOPPING=1\nSTATUS=Stopping: finishing the requests in flight")
            # Endless streams (a dashboard's log view) end on it, not at the grace's end.
            cast(Starlette, server.config.app).state.stopping = True
            server.should_exit = True


async def _rescan(server: uvicorn.Server) -> None:
    """SIGHUP: read `[pool] models_dir` again, as POST /api/models/rescan does."""
    app = cast(Starlette, server.config.app)
    rescan = getattr(app.state, "rescan", None)
    if rescan is None:
        return
    try:
        await rescan()
    except ConfigError as exc:
        log.error("gateway.rescan_failed %s", exc)


async def _announce(server: uvicorn.Server) -> None:
    """READY=1 once requests are accepted, then WATCHDOG=1 from this event loop."""
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to wait on
        await anyio.sleep(0.05)
    config = server.config
    systemd.notify(f"READY=1\nSTATUS=Serving on http://{config.host}:{config.port}/")
    interval = systemd.watchdog_interval()
    while interval:
        systemd.notify("WATCHDOG=1")
        await anyio.sleep(interval)


async def _run(server: uvicorn.Server) -> bool:
    loop = type(asyncio.get_running_loop())
    http = getattr(server.config.http, "stack", server.config.http)
    log.info("gateway.stack loop=%s.%s http=%s", loop.__module__, loop.__name__, http)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_on_signals, server)
        tg.start_soon(_announce, server)
        await server.serve()
        systemd.notify("STOPPING=1")
        tg.cancel_scope.cancel()
    return server.started


def serve(settings: Settings) -> int:
    with logs.configured(settings.logging.format, settings.logging.level):
        return _serve(settings)


def server_for(app: Starlette, settings: Settings) -> uvicorn.Server:
    """How `ai-server serve` serves `app` (the e2e tests serve it the same way): on
    `settings`' host and port, through the guarded protocol, with our signal handling. Run
    its `serve()` on uvloop, as `serve` does."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        lifespan="on",
        log_config=None,
        timeout_graceful_shutdown=settings.limits.shutdown_grace_s,
        # httptools, guarded against slow clients and too many connections (gateway.protocol);
        # no WebSocket upgrades (no route takes one), so every connection stays under its guard.
        http=protocol.bound(settings.limits, app.state.metrics),
        ws="none",
    )
    return _Server(config)


def _serve(settings: Settings) -> int:
    app = create_app(settings)
    if warning := protocol.fd_limit_warning(settings.limits):
        log.warning(warning)
    server = server_for(app, settings)
    app.state.stop = lambda: setattr(server, "should_exit", True)  # see gateway.lifespan
    # anyio.run owns the loop (uvicorn's `loop` setting never applies): uvloop is asked here.
    started = anyio.run(_run, server, backend_options={"use_uvloop": True})
    if getattr(app.state, "fatal", None):
        return 1
    return 0 if started else 3  # 3: uvicorn's code for a failed startup


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="ai-server", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("serve", "run the gateway"),
        ("doctor", "check binaries, models, ports, remote instances and RPC workers"),
        ("worker", "serve one model, or llama.cpp's rpc-server, to a front AI Server"),
    ):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--config", help="TOML config file (default: $AI_SERVER_CONFIG)")
        if name == "worker":
            worker.add_arguments(cmd)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
        if args.command == "doctor":
            return run_doctor(settings)
        if args.command == "worker":
            return worker.run_worker(args, settings)
        return serve(settings)
    except ConfigError as exc:
        error = "<3>" if logs.to_journal(sys.stderr) else ""  # its priority in the journal
        print(f"{error}ai-server: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

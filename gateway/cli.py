"""The `ai-server` command: `serve` runs the gateway, `doctor` checks the machine, `worker`
serves a model (or llama.cpp's RPC backend) to a front gateway from another host."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import signal
import socket
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


def _bind(host: str, port: int, setting: str) -> socket.socket:
    """A socket bound to host:port as uvicorn binds one; a ConfigError naming `setting`
    if that cannot be."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            why = "another program listens there"
            if setting.startswith("[ollama]"):
                why += " (an Ollama?): set [ollama] listen to another address, or [ollama] "
                why += "enabled = false to serve without the Ollama listener"
            else:
                why += f": change {setting}"
        else:
            why = f"{exc.strerror}: check {setting}"
        raise ConfigError(f"cannot listen on {host}:{port} ({setting}): {why}") from None
    # Not inheritable (Python's default, unlike uvicorn's bind_socket): a llama-server
    # spawned later must not hold our port after we are gone (SIGKILLed, say).
    return sock


def listen_sockets(settings: Settings) -> list[socket.socket]:
    """The gateway's sockets, bound before anything starts: `host`:`port`, and the Ollama
    listener's (`[ollama] listen`) unless it is off. ConfigError for one that is taken."""
    wanted = [(settings.host, settings.port, "host and port")]
    if settings.ollama.enabled:
        wanted.append((*settings.ollama.address(), "[ollama] listen"))
    bound: list[socket.socket] = []
    try:
        for host, port, setting in wanted:
            bound.append(_bind(host, port, setting))
    except ConfigError:
        for sock in bound:
            sock.close()
        raise
    return bound


async def _run(server: uvicorn.Server, sockets: list[socket.socket]) -> bool:
    loop = type(asyncio.get_running_loop())
    http = getattr(server.config.http, "stack", server.config.http)
    log.info("gateway.stack loop=%s.%s http=%s", loop.__module__, loop.__name__, http)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_on_signals, server)
        tg.start_soon(_announce, server)
        await server.serve(sockets=sockets)
        systemd.notify("STOPPING=1")
        tg.cancel_scope.cancel()
    return server.started


def serve(settings: Settings) -> int:
    with logs.configured(settings.logging.format, settings.logging.level):
        return _serve(settings)


def server_for(app: Starlette, settings: Settings) -> uvicorn.Server:
    """How `ai-server serve` serves `app` (the e2e tests serve it the same way): through the
    guarded protocol, with our signal handling. Run its `serve(sockets=listen_sockets(...))`
    on uvloop, as `serve` does: the main port and the Ollama listener's."""
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
    sockets = listen_sockets(settings)  # before the lifespan starts any llama-server
    server = server_for(app, settings)
    app.state.stop = lambda: setattr(server, "should_exit", True)  # see gateway.lifespan
    # anyio.run owns the loop (uvicorn's `loop` setting never applies): uvloop is asked here.
    started = anyio.run(_run, server, sockets, backend_options={"use_uvloop": True})
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

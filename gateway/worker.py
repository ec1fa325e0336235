"""`ai-server worker`: what another host on the LAN runs to give a front AI Server more room.

    ai-server worker --model NAME|PATH --host ADDR --port PORT --api-key-file FILE
        one llama-server of a model (a built-in or configured name, or a GGUF path), which
        the front lists as `[[models.NAME.remote]] url = "http://ADDR:PORT"`;
    ai-server worker --rpc --host ADDR --port PORT
        llama.cpp's rpc-server, which the front names in `rpc_workers` to put layers on.

Either process is supervised by the gateway's own actor (restart with backoff, health),
with its own state directory: its pidfiles never meet a gateway's. The startup parameters
come from `--config` (the gateway's TOML: `[llm_params]`, `[models.NAME]`, `[binaries]`)
and the flags, the flags winning.

Two refusals, because both servers face the LAN: llama-server on a non-loopback address
without a key (it would serve anyone), and rpc-server on a wildcard address (it has no
authentication at all; upstream says never to expose it on an open network).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
from pathlib import Path

import aiohttp
import anyio
import msgspec

from backends import toolchain
from backends.catalog import ModelDef, build_catalog
from backends.specs import server_spec
from core.config import ConfigError, Settings
from core.errors import MissingComponent
from gateway import logs
from supervisor.actor import Supervisor
from supervisor.command import ServerSpec, rpc_server_spec
from supervisor.config import SupervisorConfig, supervisor_config
from supervisor.pool import Policy

log = logging.getLogger("ai_server.worker")

DEFAULT_STATE_DIR = "~/.local/state/ai-server-worker"
DEFAULT_PORTS = {"llama-server": 8080, "rpc-server": 50052}


def add_arguments(cmd: argparse.ArgumentParser) -> None:
    what = cmd.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="a model name (built-in or from --config) or a GGUF path")
    what.add_argument("--rpc", action="store_true", help="serve llama.cpp's rpc-server")
    cmd.add_argument("--host", default="127.0.0.1", help="address to listen on")
    cmd.add_argument("--port", type=int, help="port (default 8080; 50052 with --rpc)")
    cmd.add_argument("--api-key-file", help="llama-server's API key (needed off loopback)")
    cmd.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help="pidfiles (%(default)s)")
    cmd.add_argument("--ctx-size", type=int)
    cmd.add_argument("--batch-size", type=int)
    cmd.add_argument("--ubatch-size", type=int)
    cmd.add_argument("--threads", type=int, help="CPU threads (default: llama.cpp's)")
    cmd.add_argument("--chat-template", help="a llama.cpp template name or Jinja source")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: assume the LAN


def _model(arg: str, settings: Settings) -> ModelDef:
    path = Path(arg).expanduser()
    if path.suffix == ".gguf" or "/" in arg:
        if not path.is_file():
            raise ConfigError(f"--model {arg}: no such file")
        return ModelDef(name=path.stem, path=str(path))
    try:
        model = build_catalog(settings).resolve(arg, "chat")
        model.file()
    except MissingComponent as exc:
        raise ConfigError(exc.message) from None
    except Exception as exc:
        raise ConfigError(f"--model {arg}: {getattr(exc, 'message', exc)}") from None
    return model


def worker_spec(args: argparse.Namespace, settings: Settings) -> ServerSpec:
    """What the worker runs, from its flags and config; ConfigError for what it refuses."""
    if args.rpc:
        if args.host in ("0.0.0.0", "::", ""):  # noqa: S104 - this is the refusal
            raise ConfigError(
                "rpc-server has no authentication: bind it to the address of a trusted LAN "
                "interface, never to every interface (--host 0.0.0.0)"
            )
        return rpc_server_spec(threads=args.threads)
    if args.api_key_file is None and not _loopback(args.host):
        raise ConfigError(
            f"--host {args.host} is reachable from the LAN: llama-server there needs "
            "--api-key-file (anyone could use it otherwise)"
        )
    if args.api_key_file is not None and not Path(args.api_key_file).is_file():
        raise ConfigError(f"--api-key-file {args.api_key_file}: no such file")
    model = _model(args.model, settings)
    spec = server_spec(model, settings.llm_params)
    overrides = {
        "ctx_size": args.ctx_size,
        "batch_size": args.batch_size,
        "ubatch_size": args.ubatch_size,
        "threads": args.threads,
        "chat_template": args.chat_template,
        "api_key_file": args.api_key_file and str(Path(args.api_key_file).resolve()),
    }
    return msgspec.structs.replace(spec, **{k: v for k, v in overrides.items() if v is not None})


def worker_config(
    args: argparse.Namespace, settings: Settings, spec: ServerSpec
) -> SupervisorConfig:
    explicit = settings.binaries.get(spec.kind)
    try:
        binary = toolchain.resolve_binary(spec.kind, explicit, settings.cache_path())
    except MissingComponent as exc:
        raise ConfigError(exc.message) from None
    return supervisor_config(
        settings.llama_server,
        binary=str(binary),
        state_dir=str(Path(args.state_dir).expanduser()),
        host=args.host,
        base_port=args.port or DEFAULT_PORTS[spec.kind],
    )


async def _serve(config: SupervisorConfig, spec: ServerSpec) -> None:
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5)
    async with aiohttp.ClientSession(timeout=timeout) as http, anyio.create_task_group() as tg:
        supervisor = Supervisor(config, http)
        await tg.start(supervisor.run)
        await supervisor.apply({spec: Policy(autostart=True)})
        log.info(
            "worker.serving %s on %s:%d", spec.name or spec.model, config.host, config.base_port
        )
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("worker.stopping signal=%s", signal.Signals(signum).name)
                break
        with anyio.move_on_after(config.stop_grace * 2):
            await supervisor.stop_all()
        tg.cancel_scope.cancel()


def run_worker(args: argparse.Namespace, settings: Settings) -> int:
    with logs.configured(settings.logging.format, settings.logging.level):
        spec = worker_spec(args, settings)
        anyio.run(_serve, worker_config(args, settings, spec), spec)
    return 0
